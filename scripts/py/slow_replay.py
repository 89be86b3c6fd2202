"""A slow firehose consumer on Python's `websockets` (the library under the `atproto` SDK), default
keepalive: it pings every 20 s and closes the connection when a pong takes longer than 20 s.

Reads N frames from URL doing WORK seconds of work per frame, then prints
`REPLAY {"frames": n, "seconds": t}`. Exits 1 if the connection closes first (e.g. "keepalive ping
timeout").

Usage: slow_replay.py URL N WORK_SECONDS
"""
import json
import sys
import time

from websockets.sync.client import connect

url, n, work = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
started = time.monotonic()
frames = 0
try:
    # Defaults on purpose: ping_interval=20, ping_timeout=20.
    with connect(url, max_size=None) as ws:
        while frames < n:
            ws.recv()
            frames += 1
            time.sleep(work)
except Exception as e:  # noqa: BLE001 - report whatever ended the stream
    print(f'closed after {frames} frames and {time.monotonic() - started:.1f} s: {e!r}', flush=True)
    sys.exit(1)
print('REPLAY ' + json.dumps({'frames': frames, 'seconds': round(time.monotonic() - started, 1)}), flush=True)
