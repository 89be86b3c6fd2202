"""A firehose consumer built on the Python atproto SDK (MarshalX, PyPI `atproto`), as many consumers are.

Reads the relay's subscribeRepos from a cursor until no frame has come for IDLE seconds, parses every
message with the SDK (its pydantic models validate the message shapes), checks that seqs strictly
increase, and verifies every #commit and #sync signature against the account's key resolved from the
PLC directory with the SDK's IdResolver.

Usage: firehose_consumer.py WS_BASE PLC_URL CURSOR IDLE_SECS
Prints `STATS {...}`; exits 1 on any failure or when no frame arrived.
"""
import json
import sys
import threading
import time

import libipld
from atproto import CAR, FirehoseSubscribeReposClient, firehose_models, models, parse_subscribe_repos_message
from atproto_crypto.verify import verify_signature
from atproto_identity.resolver import IdResolver

base, plc_url, cursor, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
resolver = IdResolver(plc_url=plc_url)
keys = {}
stats = {'frames': 0, 'commit': 0, 'sync': 0, 'identity': 0, 'account': 0, 'info': 0,
         'sig_ok': 0, 'sig_fail': 0, 'parse_fail': 0, 'seq_regress': 0}
last_seq = [0]
last_frame = [time.monotonic()]
lock = threading.Lock()


def signing_key(did):
    if did not in keys:
        keys[did] = resolver.did.resolve_atproto_key(did)
    return keys[did]


def check_signature(did, blocks):
    car = CAR.from_bytes(blocks)
    commit = dict(car.blocks[car.root])
    sig = commit.pop('sig')
    ok = verify_signature(signing_key(did), libipld.encode_dag_cbor(commit), sig)
    stats['sig_ok' if ok else 'sig_fail'] += 1


def on_message(message: firehose_models.MessageFrame) -> None:
    with lock:
        last_frame[0] = time.monotonic()
        stats['frames'] += 1
        try:
            msg = parse_subscribe_repos_message(message)
        except Exception as e:  # the SDK's validation of the message shape
            stats['parse_fail'] += 1
            print(f'parse failure: {e}', file=sys.stderr)
            return
        seq = getattr(msg, 'seq', None)
        if seq is not None:
            if seq <= last_seq[0]:
                stats['seq_regress'] += 1
            last_seq[0] = seq
        if isinstance(msg, models.ComAtprotoSyncSubscribeRepos.Commit):
            stats['commit'] += 1
            check_signature(msg.repo, msg.blocks)
        elif isinstance(msg, models.ComAtprotoSyncSubscribeRepos.Sync):
            stats['sync'] += 1
            check_signature(msg.did, msg.blocks)
        elif isinstance(msg, models.ComAtprotoSyncSubscribeRepos.Identity):
            stats['identity'] += 1
        elif isinstance(msg, models.ComAtprotoSyncSubscribeRepos.Account):
            stats['account'] += 1
        else:
            stats['info'] += 1


client = FirehoseSubscribeReposClient(params={'cursor': cursor}, base_uri=f'{base}/xrpc')


def watchdog():
    while time.monotonic() - last_frame[0] < idle:
        time.sleep(0.2)
    client.stop()


threading.Thread(target=watchdog, daemon=True).start()
client.start(on_message)
print('STATS ' + json.dumps(stats), flush=True)
bad = stats['sig_fail'] or stats['parse_fail'] or stats['seq_regress'] or stats['frames'] == 0
sys.exit(1 if bad else 0)
