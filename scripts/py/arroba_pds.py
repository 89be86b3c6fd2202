"""arroba (the Python PDS library Bridgy Fed runs, PyPI `arroba`) as a second, independent upstream.

Serves `subscribeRepos`, `describeServer`, `getRepoStatus`, `getLatestCommit`, `getBlocks`, ... on
127.0.0.1:PORT with Flask, registers its accounts' did:plc in a real PLC directory (the one
`peers.sh start` runs), then waits for GO_FILE to exist (the relay has subscribed) and generates
traffic: new accounts (arroba emits #commit, #identity, #account, #sync for each), creates, updates
and deletes. Every commit carries `since: null` and a correct `prevData`, as arroba always does.

Usage: arroba_pds.py PORT PLC_URL GO_FILE ACCOUNTS COMMITS_PER_ACCOUNT
Prints `READY` when serving, `OFFERED n` (events it sequenced after GO) and `DONE` at the end.
"""
import logging
import os
import sys
import threading
import time

port, plc_url, go_file, accounts, commits = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
# arroba builds https://$PLC_HOST/... URLs; post_fn below sends them to the local http:// directory.
os.environ['PLC_HOST'] = 'plc.invalid'
os.environ['PDS_HOST'] = f'localhost:{port}'
os.environ.setdefault('REPO_TOKEN', 'unused')

import requests  # noqa: E402
from flask import Flask  # noqa: E402
import lexrpc.flask_server  # noqa: E402
import arroba.server  # noqa: E402
from arroba import did as arroba_did  # noqa: E402
from arroba import firehose, xrpc_repo, xrpc_server, xrpc_sync  # noqa: E402,F401
from arroba.repo import Repo  # noqa: E402
from arroba.storage import Action, MemoryStorage, Write  # noqa: E402

logging.basicConfig(level=logging.WARNING)


def post_fn(url, **kwargs):
    return requests.post(url.replace('https://plc.invalid', plc_url), **kwargs)


def callback(data=None, lost_seq=None):
    if data:
        firehose.send_events()
    elif lost_seq:
        firehose.mark_seq_lost(lost_seq)


storage = MemoryStorage()
arroba.server.storage = storage
app = Flask('arroba-pds')
lexrpc.flask_server.init_flask(arroba.server.server, app)
pds_url = f'http://localhost:{port}'
repos = []


def new_account(i):
    plc = arroba_did.create_plc(f'arroba{i}-{int(time.time())}.test', pds_url=pds_url, post_fn=post_fn)
    repo = Repo.create(storage, plc.did, signing_key=plc.signing_key, rotation_key=plc.rotation_key,
                       handle=f'arroba{i}.test', callback=callback)
    repos.append(repo)
    return repo


# One account before serving: arroba's firehose needs a sequence to exist.
new_account(0)
firehose.start()
threading.Thread(target=lambda: app.run(host='127.0.0.1', port=int(port), threaded=True), daemon=True).start()
for _ in range(100):
    try:
        requests.get(f'{pds_url}/xrpc/com.atproto.server.describeServer', timeout=1)
        break
    except requests.RequestException:
        time.sleep(0.1)
print('READY', flush=True)
while not os.path.exists(go_file):
    time.sleep(0.1)

seq_before = storage.sequences.last('com.atproto.sync.subscribeRepos')
for i in range(1, accounts):
    new_account(i)
for n in range(commits):
    for r, repo in enumerate(list(repos)):
        rkey = f'3k{r:02d}{n:08d}'
        writes = [Write(Action.CREATE, 'app.bsky.feed.post', rkey,
                        {'$type': 'app.bsky.feed.post', 'text': f'arroba post {n}',
                         'createdAt': '2026-11-27T00:00:00.000Z'})]
        if n % 5 == 4:
            prev = f'3k{r:02d}{n - 1:08d}'
            writes.append(Write(Action.UPDATE, 'app.bsky.feed.post', prev,
                                {'$type': 'app.bsky.feed.post', 'text': f'edited {n}',
                                 'createdAt': '2026-11-27T00:00:00.000Z'}))
        if n % 7 == 6:
            writes.append(Write(Action.DELETE, 'app.bsky.feed.post', f'3k{r:02d}{n - 2:08d}'))
        storage.commit(repo, writes)
        time.sleep(0.02)
seq_after = storage.sequences.last('com.atproto.sync.subscribeRepos')
print(f'OFFERED {seq_after - seq_before}', flush=True)
print('DONE', flush=True)
# Keep serving (the relay may still be reading, and restarts reconnect).
while True:
    time.sleep(60)
