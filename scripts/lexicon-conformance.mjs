// Checks what the relay answers and emits against the com.atproto.sync lexicons, with Bluesky's own
// validators (not ours): every XRPC output with @atproto/lexicon (the schemas bundled in
// @atproto/api), every XRPC error's name against the method's declared errors (or the standard XRPC
// names), and every firehose frame from cursor 0 with both @atproto/lexicon and @atproto/sync's
// message check (the one its Firehose applies before handing an event to a consumer: a frame that
// fails it is skipped by Bluesky's consumers).
//
// The relay's Jetstream v2 endpoint is checked the same way against bluesky-social/jetstream's
// published lexicons (network.bsky.jetstream.subscribeEvents and getZstdDictionary, vendored in
// scripts/lexicons/jetstream/): every v2 message from cursor 1, and the pre-upgrade errors.
//
// Usage: node lexicon-conformance.mjs http://127.0.0.1:2470 ws://127.0.0.1:2470 HOSTNAME [JETSTREAM_LEXICON_DIR]
// Prints one summary line; exits 1 on any failure.
import { readFileSync } from 'node:fs';
import { lexicons } from '@atproto/api';
import { decodeAll } from '@atproto/lex-cbor';
import { jsonToLex } from '@atproto/lexicon';

const { com } = await import(new URL('./node_modules/@atproto/sync/dist/lexicons/index.js', import.meta.url));
const [, , base, ws, host, jetstreamDir] = process.argv;
const failures = [];
const fail = (msg) => failures.push(msg);
const STANDARD_ERRORS = new Set([
  'InvalidRequest', 'ExpiredToken', 'InvalidToken', 'AuthenticationRequired', 'Forbidden', 'NotFound',
  'PayloadTooLarge', 'RateLimitExceeded', 'InternalServerError', 'MethodNotImplemented', 'UpstreamFailure',
  'NotEnoughResources', 'UpstreamTimeout',
]);
let outputs = 0;
let errors = 0;

async function call(nsid, params = {}, init = {}) {
  const qs = new URLSearchParams(params).toString();
  const r = await fetch(`${base}/xrpc/${nsid}${qs ? `?${qs}` : ''}`, { redirect: 'manual', ...init });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { fail(`${nsid}: body is not JSON: ${text.slice(0, 80)}`); }
  return { status: r.status, body };
}

function checkOutput(nsid, { status, body }) {
  if (status !== 200) { fail(`${nsid}: status ${status} ${JSON.stringify(body)}`); return; }
  try { lexicons.assertValidXrpcOutput(nsid, body); outputs++; } catch (e) { fail(`${nsid} output: ${e.message}`); }
}

function checkError(nsid, { status, body }, want) {
  const declared = (lexicons.getDefOrThrow(nsid).errors ?? []).map((e) => e.name);
  if (status < 400 || typeof body?.error !== 'string' || typeof body?.message !== 'string') {
    fail(`${nsid}: not an XRPC error: ${status} ${JSON.stringify(body)}`);
    return;
  }
  if (!declared.includes(body.error) && !STANDARD_ERRORS.has(body.error)) {
    fail(`${nsid}: error ${body.error} is neither declared (${declared}) nor a standard XRPC error`);
  }
  if (want && body.error !== want) fail(`${nsid}: error ${body.error}, expected ${want}`);
  errors++;
}

// Outputs, paging with URLSearchParams-encoded cursors.
const dids = [];
let cursor;
for (let page = 0; page < 100; page++) {
  const res = await call('com.atproto.sync.listRepos', { limit: '2', ...(cursor ? { cursor } : {}) });
  checkOutput('com.atproto.sync.listRepos', res);
  dids.push(...(res.body?.repos ?? []).map((r) => r.did));
  cursor = res.body?.cursor;
  if (!cursor) break;
}
if (dids.length === 0) fail('listRepos listed no account');
if (new Set(dids).size !== dids.length) fail('listRepos repeated an account across pages');
for (const did of dids) {
  checkOutput('com.atproto.sync.getRepoStatus', await call('com.atproto.sync.getRepoStatus', { did }));
  const latest = await call('com.atproto.sync.getLatestCommit', { did });
  if (latest.status === 200) checkOutput('com.atproto.sync.getLatestCommit', latest);
  else checkError('com.atproto.sync.getLatestCommit', latest);
}
// listReposByCollection, paged with an encoded cursor.
const byCollection = [];
cursor = undefined;
for (let page = 0; page < 100; page++) {
  const params = { collection: 'app.bsky.feed.post', limit: '2', ...(cursor ? { cursor } : {}) };
  const res = await call('com.atproto.sync.listReposByCollection', params);
  checkOutput('com.atproto.sync.listReposByCollection', res);
  byCollection.push(...(res.body?.repos ?? []).map((r) => r.did));
  cursor = res.body?.cursor;
  if (!cursor) break;
}
if (byCollection.length === 0) fail('listReposByCollection listed no account with posts');
if (new Set(byCollection).size !== byCollection.length) fail('listReposByCollection repeated an account');
checkError('com.atproto.sync.listReposByCollection',
  await call('com.atproto.sync.listReposByCollection', { collection: 'not an nsid' }), 'InvalidRequest');
checkOutput('com.atproto.sync.listHosts', await call('com.atproto.sync.listHosts'));
checkOutput('com.atproto.sync.getHostStatus', await call('com.atproto.sync.getHostStatus', { hostname: host }));

// Errors, each with its declared name.
const nobody = 'did:plc:nobodynobodynobodynobody';
checkError('com.atproto.sync.getRepoStatus', await call('com.atproto.sync.getRepoStatus', { did: nobody }), 'RepoNotFound');
checkError('com.atproto.sync.getLatestCommit', await call('com.atproto.sync.getLatestCommit', { did: nobody }), 'RepoNotFound');
checkError('com.atproto.sync.getRepo', await call('com.atproto.sync.getRepo', { did: nobody }), 'RepoNotFound');
checkError('com.atproto.sync.getHostStatus', await call('com.atproto.sync.getHostStatus', { hostname: 'nohost.example.com' }), 'HostNotFound');
checkError('com.atproto.sync.getRepoStatus', await call('com.atproto.sync.getRepoStatus', { did: 'not a did' }), 'InvalidRequest');
checkError('com.atproto.sync.listRepos', await call('com.atproto.sync.listRepos', { limit: '0' }), 'InvalidRequest');
checkError('com.atproto.sync.listRepos', await call('com.atproto.sync.listRepos', {}, { method: 'POST' }), 'InvalidRequest');
checkError('com.atproto.sync.requestCrawl', await call('com.atproto.sync.requestCrawl', {}, {
  method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ hostname: '1.2.3.4' }),
}), 'InvalidRequest');
const redirect = await call('com.atproto.sync.getRepo', { did: dids[0] });
if (redirect.status !== 302) checkError('com.atproto.sync.getRepo', redirect);

// Frames from cursor 0, then the FutureCursor error frame.
function frames(url, idleMs) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.binaryType = 'arraybuffer';
    const got = [];
    let timer;
    const done = () => { socket.close(); resolve(got); };
    const arm = () => { clearTimeout(timer); timer = setTimeout(done, idleMs); };
    socket.onopen = arm;
    socket.onmessage = (m) => { got.push([...decodeAll(new Uint8Array(m.data))]); arm(); };
    socket.onclose = () => { clearTimeout(timer); resolve(got); };
    socket.onerror = (e) => reject(new Error(`websocket: ${e.message}`));
  });
}
const method = 'com.atproto.sync.subscribeRepos';
const counts = {};
for (const [header, body] of await frames(`${ws}/xrpc/${method}?cursor=0`, 3000)) {
  if (header.op !== 1) { fail(`error frame from cursor 0: ${JSON.stringify(body)}`); continue; }
  const value = { ...body, $type: `${method}${header.t}` };
  counts[header.t] = (counts[header.t] ?? 0) + 1;
  try { lexicons.assertValidXrpcMessage(method, value); } catch (e) { fail(`seq ${body.seq} ${header.t} (@atproto/lexicon): ${e.message}`); }
  const parsed = com.atproto.sync.subscribeRepos.$message.safeParse(value);
  if (!parsed.success) fail(`seq ${body.seq} ${header.t} (@atproto/sync): ${parsed.reason?.message ?? parsed.reason}`);
}
const future = await frames(`${ws}/xrpc/${method}?cursor=999999999`, 3000);
const declaredStream = (lexicons.getDefOrThrow(method).errors ?? []).map((e) => e.name);
if (future.length !== 1 || future[0][0].op !== -1 || future[0][1].error !== 'FutureCursor' || !declaredStream.includes('FutureCursor')) {
  fail(`a future cursor: ${JSON.stringify(future)}`);
}

// Jetstream v2 against its own lexicons.
const V2 = 'network.bsky.jetstream.subscribeEvents';
const v2Counts = {};
if (jetstreamDir) {
  for (const name of [`${V2}.json`, 'network.bsky.jetstream.getZstdDictionary.json']) {
    lexicons.add(JSON.parse(readFileSync(`${jetstreamDir}/${name}`, 'utf8')));
  }
  const v2Frames = await new Promise((resolve, reject) => {
    const socket = new WebSocket(`${ws}/xrpc/${V2}?cursor=1`, 'xrpc.v1.json');
    const got = [];
    let timer;
    const arm = () => { clearTimeout(timer); timer = setTimeout(() => { socket.close(); resolve(got); }, 3000); };
    socket.onopen = arm;
    socket.onmessage = (m) => { got.push(JSON.parse(m.data)); arm(); };
    socket.onclose = () => { clearTimeout(timer); resolve(got); };
    socket.onerror = (e) => reject(new Error(`websocket: ${e.message}`));
  });
  for (const frame of v2Frames) {
    if (frame.$type !== 'message') { fail(`v2: not a message frame: ${JSON.stringify(frame).slice(0, 120)}`); continue; }
    const kind = String(frame.payload?.$type).split('#')[1];
    v2Counts[kind] = (v2Counts[kind] ?? 0) + 1;
    // JSON to the data model first ({"$bytes"} to bytes, {"$link"} to CIDs), as a client does.
    try { lexicons.assertValidXrpcMessage(V2, jsonToLex(frame.payload)); } catch (e) {
      fail(`v2 seq ${frame.payload?.seq} #${kind}: ${e.message}`);
    }
  }
  if (!v2Counts.commit) fail(`v2 from cursor 1 carried no commit: ${JSON.stringify(v2Counts)}`);
  // Parameters are checked before the upgrade, so a plain GET gets the error.
  const v2Error = async (params, want) => checkError(V2, await call(V2, params), want);
  await v2Error({ kinds: 'posts' }, 'InvalidRequest');
  await v2Error({ wantedCollections: 'app.bsky.feed.post' }, 'InvalidRequest');
  await v2Error({ kinds: 'identity', collections: 'app.bsky.feed.post' }, 'InvalidRequest');
  await v2Error({ zstdDictionary: '4242' }, 'UnknownZstdDictionary');
  const dict = await fetch(`${base}/xrpc/network.bsky.jetstream.getZstdDictionary`);
  const dictBytes = (await dict.arrayBuffer()).byteLength;
  if (dict.status !== 200 || dict.headers.get('content-type') !== 'application/octet-stream' || dictBytes === 0) {
    fail(`getZstdDictionary: ${dict.status} ${dict.headers.get('content-type')} ${dictBytes} bytes`);
  }
  checkError('network.bsky.jetstream.getZstdDictionary',
    await call('network.bsky.jetstream.getZstdDictionary', { id: '4242' }), 'DictionaryNotFound');
}

for (const f of failures) console.error(`NONCONFORMANT: ${f}`);
console.log(`LEXICON ${failures.length === 0 ? 'CONFORMANT' : 'FAILED'} outputs=${outputs} errors=${errors} frames=${JSON.stringify(counts)} jetstream_v2=${JSON.stringify(v2Counts)} failures=${failures.length}`);
process.exit(failures.length === 0 ? 0 : 1);
