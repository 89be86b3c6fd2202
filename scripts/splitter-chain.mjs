// relay -> splitter A -> splitter B, checked from the outside (scripts/e2e-pds.sh): every stream is
// read from cursor 0 with a plain websocket and each frame hashed by its seq; the splitters must hold
// exactly the relay's seqs with byte-identical frames. Then @skyware/firehose (0.5) reads the last
// splitter from cursor 0 and must decode every event, in increasing seq order, of every type.
// Usage: node splitter-chain.mjs ws://relay ws://splitterA ws://splitterB ...
// Prints one line `SPLITTERS {...}`; exits 1 on any difference.
import crypto from 'node:crypto';
import { decode, decodeFirst } from '@atcute/cbor';
import { Firehose } from '@skyware/firehose';
import WebSocket from 'ws';

const bases = process.argv.slice(2);
const failures = [];
const fail = (m) => { failures.push(m); console.error('FAIL', m); };

// The seq of a frame's body (header, then body: two DAG-CBOR items); undefined for a frame that is
// not two items or whose body has no integer seq.
function seqOf(buf) {
  try {
    const [, rest] = decodeFirst(new Uint8Array(buf));
    const body = decode(rest);
    return Number.isInteger(body?.seq) ? body.seq : undefined;
  } catch {
    return undefined;
  }
}

// seq -> sha256 of the frame's bytes, every frame from cursor 0 until none came for 3 s.
function rawStream(base) {
  return new Promise((resolve) => {
    const frames = new Map();
    const ws = new WebSocket(`${base}/xrpc/com.atproto.sync.subscribeRepos?cursor=0`);
    let timer;
    const done = () => { ws.terminate(); resolve(frames); };
    const arm = () => { clearTimeout(timer); timer = setTimeout(done, 3000); };
    ws.on('open', arm);
    ws.on('message', (data) => {
      const seq = seqOf(data);
      if (seq === undefined) { fail(`${base}: a frame without a seq (${data.length} bytes)`); return; }
      if (frames.has(seq)) fail(`${base}: seq ${seq} twice`);
      frames.set(seq, crypto.createHash('sha256').update(data).digest('hex'));
      arm();
    });
    ws.on('error', (e) => { fail(`${base}: ${e.message}`); done(); });
  });
}

function skyware(base) {
  return new Promise((resolve) => {
    const counts = { commit: 0, identity: 0, account: 0, sync: 0 };
    let last = 0;
    let timer;
    const fh = new Firehose({ relay: base, ws: WebSocket, autoReconnect: false, cursor: '0' });
    const done = () => { fh.close(); resolve({ counts, last }); };
    const seen = (kind, seq) => {
      if (seq <= last) fail(`@skyware/firehose on ${base}: seq ${seq} after ${last}`);
      last = seq;
      counts[kind]++;
      clearTimeout(timer);
      timer = setTimeout(done, 3000);
    };
    fh.on('commit', (c) => seen('commit', c.seq));
    fh.on('identity', (i) => seen('identity', i.seq));
    fh.on('account', (a) => seen('account', a.seq));
    fh.on('sync', (s) => seen('sync', s.seq));
    fh.on('error', ({ error }) => fail(`@skyware/firehose on ${base}: ${error}`));
    fh.on('open', () => { timer = setTimeout(done, 3000); });
    fh.start();
  });
}

const streams = await Promise.all(bases.map(rawStream));
const [relay, ...splitters] = streams;
if (relay.size === 0) fail('the relay sent no frame');
splitters.forEach((frames, i) => {
  const name = bases[i + 1];
  if (frames.size !== relay.size) fail(`${name} holds ${frames.size} frames, the relay ${relay.size}`);
  let differ = 0;
  for (const [seq, hash] of relay) {
    if (!frames.has(seq)) { fail(`${name} lacks seq ${seq}`); continue; }
    if (frames.get(seq) !== hash) differ++;
  }
  if (differ > 0) fail(`${name}: ${differ} frames differ from the relay's bytes`);
});
const sky = await skyware(bases[bases.length - 1]);
const decoded = Object.values(sky.counts).reduce((a, b) => a + b, 0);
if (decoded !== relay.size) fail(`@skyware/firehose decoded ${decoded} events, the relay sent ${relay.size}`);
for (const t of ['commit', 'identity', 'account', 'sync']) if (sky.counts[t] === 0) fail(`@skyware/firehose saw no #${t}`);
console.log('SPLITTERS ' + JSON.stringify({
  frames: relay.size, lastSeq: Math.max(...relay.keys()), byteIdentical: splitters.length, skyware: sky.counts,
}));
process.exit(failures.length ? 1 : 0);
