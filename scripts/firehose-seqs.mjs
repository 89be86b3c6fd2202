// Prints the relay seq of every frame of a subscribeRepos stream, one per line, then exits when no
// frame has arrived for IDLE_MS. Usage: node firehose-seqs.mjs ws://127.0.0.1:2470 [cursor] [idleMs]
// Exits 1 on an error frame or when the stream closes with an error.
import { decodeAll } from '@atproto/lex-cbor';

const [, , base, cursor, idleArg] = process.argv;
const idleMs = Number(idleArg || 3000);
const url = `${base}/xrpc/com.atproto.sync.subscribeRepos` + (cursor !== undefined ? `?cursor=${cursor}` : '');
const ws = new WebSocket(url);
ws.binaryType = 'arraybuffer';
let timer;
let failed = false;
const done = () => { ws.close(); process.exit(failed ? 1 : 0); };
const arm = () => { clearTimeout(timer); timer = setTimeout(done, idleMs); };
ws.onopen = arm;
ws.onmessage = (m) => {
  const [header, body] = [...decodeAll(new Uint8Array(m.data))];
  if (header.op !== 1) { console.error('error frame', JSON.stringify(body)); failed = true; return; }
  if (typeof body.seq === 'number') console.log(`${body.seq} ${header.t}`);
  arm();
};
ws.onerror = (e) => { console.error('websocket error', e.message); failed = true; done(); };
