"""Jetstream v2 (`network.bsky.jetstream.subscribeEvents`) checked with the Python `atproto` SDK's
`atproto_jetstream` client, compression negotiated (it fetches `getZstdDictionary` and passes
`zstdDictionary`), and v1 `compress=true` read with a plain websocket and `zstandard`.

Against the ground truth the v1 check wrote (every commit op, identity and account event of the
relay's subscribeRepos from cursor 0, decoded by @skyware/firehose):

1. kinds=commit,identity + collections (an NSID and a prefix) + dids, from cursor 0: exactly the
   wanted events, by (did, rev, path, action) and (did, seq); the stream was compressed;
2. a seq cursor taken from a message resumes there, inclusive;
3. v1 `compress=true`: every message is a zstd frame that decompresses with the relay's dictionary.

Usage: jetstream_v2.py WS_BASE HTTP_BASE GROUND_TRUTH_JSON
Prints `JETSTREAM v2 OK {...}` or exits 1.
"""

import asyncio
import json
import sys
import time
import urllib.request

import websockets
import zstandard
from atproto_jetstream import AsyncJetstreamClient

WS_BASE, HTTP_BASE, TRUTH = sys.argv[1], sys.argv[2], sys.argv[3]
failures = []


def fail(msg):
    failures.append(msg)
    print('FAIL', msg, file=sys.stderr)


def key(e):
    if e['kind'] == 'commit':
        return f"{e['did']} {e['rev']} {e['collection']}/{e['rkey']} {e['action']}"
    return f"{e['did']} {e['kind']} {e['seq']}"


def same(name, got, want):
    g, w = [key(e) for e in got], [key(e) for e in want]
    if len(set(g)) != len(g):
        fail(f'{name}: duplicates delivered')
    missing = [k for k in w if k not in set(g)]
    unwanted = [k for k in g if k not in set(w)]
    if missing:
        fail(f'{name}: {len(missing)} wanted events missed, e.g. {missing[:3]}')
    if unwanted:
        fail(f'{name}: {len(unwanted)} unwanted events delivered, e.g. {unwanted[:3]}')
    return {'name': name, 'delivered': len(g), 'wanted': len(w)}


def as_event(m):
    t = m.py_type.split('#')[-1]
    if t == 'commit':
        return {'kind': 'commit', 'did': m.did, 'rev': m.rev, 'collection': m.collection, 'rkey': m.rkey,
                'action': m.operation, 'seq2': m.seq}
    if t in ('identity', 'account'):
        inner = m.identity if t == 'identity' else m.account
        return {'kind': t, 'did': m.did, 'seq': inner.seq, 'seq2': m.seq}
    return {'kind': t, 'seq2': getattr(m, 'seq', None)}


async def collect(params, idle=3.0):
    client = AsyncJetstreamClient(params=params, base_uri=f'{WS_BASE}/xrpc', compress=True, recv_timeout=30)
    got = []
    last = [time.monotonic()]

    async def on_message(m):
        last[0] = time.monotonic()
        got.append(as_event(m))

    task = asyncio.create_task(client.start(on_message))
    while time.monotonic() - last[0] < idle:
        await asyncio.sleep(0.2)
    await client.stop()
    await asyncio.wait_for(task, 10)
    return client, got


async def v1_compressed(dictionary):
    d = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
    n = 0
    async with websockets.connect(f'{WS_BASE}/subscribe?compress=true&cursor=1', max_size=None) as ws:
        while True:
            try:
                msg = await asyncio.wait_for(ws.recv(), 3)
            except asyncio.TimeoutError:
                break
            if not isinstance(msg, bytes):
                fail('v1 compress=true sent a text message')
                break
            event = json.loads(d.decompress(msg, max_output_size=1 << 24))
            if 'time_us' not in event or 'kind' not in event:
                fail(f'v1 compressed message is not a Jetstream event: {event}')
            n += 1
    return n


async def main():
    truth = json.load(open(TRUTH))
    dids = sorted({e['did'] for e in truth if e['kind'] == 'commit'})[:3]
    cols = ['app.bsky.feed.like', 'app.bsky.actor.*']
    params = {'kinds': ['commit', 'identity'], 'collections': cols, 'dids': dids, 'cursor': 0}

    def wanted(e):
        if e['did'] not in dids or e['kind'] not in ('commit', 'identity'):
            return False
        return e['kind'] != 'commit' or e['collection'] == cols[0] or e['collection'].startswith('app.bsky.actor.')

    results = []
    client, got = await collect(params)
    if not client.compressed:
        fail('the client did not negotiate compression')
    results.append(same('v2 filtered from cursor 0', [e for e in got if e['kind'] != 'info'], [e for e in truth if wanted(e)]))

    # A seq cursor resumes there, inclusive. Without #sync: atproto_jetstream 0.0.73 cannot parse the
    # `blocks` of a #sync payload ({"$bytes": ...}, as Bluesky's Jetstream sends it too) and stops.
    kinds = ['commit', 'identity', 'account']
    _, everything = await collect({'cursor': 0, 'kinds': kinds})
    seqs = [e['seq2'] for e in everything if e['seq2'] is not None]
    if seqs != sorted(seqs) or len(set(seqs)) != len(seqs):
        fail('v2 seqs are not strictly increasing')
    if len(everything) > 4:
        mid = everything[len(everything) // 2]
        _, resumed = await collect({'cursor': mid['seq2'], 'kinds': kinds})
        want = [e for e in everything if e['seq2'] is not None and e['seq2'] >= mid['seq2']]
        got_seqs = [e['seq2'] for e in resumed if e['seq2'] is not None]
        if got_seqs != [e['seq2'] for e in want]:
            fail(f'seq cursor {mid["seq2"]}: got {len(got_seqs)} messages, wanted {len(want)}')
        results.append({'name': 'v2 seq cursor', 'resumed': len(got_seqs)})

    dictionary = urllib.request.urlopen(f'{HTTP_BASE}/xrpc/network.bsky.jetstream.getZstdDictionary').read()
    n = await v1_compressed(dictionary)
    if n == 0:
        fail('v1 compress=true delivered nothing')
    results.append({'name': 'v1 compress=true', 'messages': n})

    if failures:
        print(json.dumps(results), file=sys.stderr)
        sys.exit(1)
    print('JETSTREAM v2 OK ' + json.dumps(results))


asyncio.run(main())
