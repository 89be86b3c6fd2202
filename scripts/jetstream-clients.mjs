// Jetstream v1 (`GET /subscribe`) checked with the clients people use: @skyware/jetstream (0.2) for
// the stream, @skyware/firehose (0.5) for the ground truth (the relay's own subscribeRepos, decoded
// by a client we did not write). Filtering is asserted both ways (nothing unwanted, nothing wanted
// missed) by (did, rev, path, action) for commits and by (did, seq) for identity/account events:
//
//   1. replay from cursor 1 (the oldest stored) with wantedCollections (an NSID and a `.*` prefix)
//      and wantedDids;
//   2. replay with no filter: every op of every commit, every identity and account event;
//   3. a time cursor taken from an event resumes exactly there (inclusive);
//   4. live: a filtered and an unfiltered subscriber while new traffic arrives (peers.sh seed);
//      then options_update narrows the unfiltered one to likes, and only likes (plus identity and
//      account events, which pass collection filters) arrive from the next traffic on;
//   5. listReposByCollection, paged with URLSearchParams, lists every active account the firehose
//      shows creating posts.
//
// Writes the ground truth (every commit op, identity and account event from cursor 0) to OUT for the
// Python v2 check. Prints `JETSTREAM v1 OK {...}` or exits 1 with the differences.
//
//   node jetstream-clients.mjs HTTP_BASE WS_BASE PEERS_SH PEERS_DIR OUT
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { Jetstream } from '@skyware/jetstream';
import { Firehose } from '@skyware/firehose';
import WebSocket from 'ws';

const [, , base, wsBase, peersSh, peersDir, out] = process.argv;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const failures = [];
const fail = (m) => { failures.push(m); console.error('FAIL', m); };

// Every event from a subscribeRepos stream until it is quiet for `idleMs` (and at least `minMs`).
function firehose(cursor) {
  const events = [];
  let last = Date.now();
  const fh = new Firehose({ relay: wsBase, ws: WebSocket, autoReconnect: false, ...(cursor !== undefined ? { cursor: String(cursor) } : {}) });
  const seen = (e) => { last = Date.now(); events.push(e); };
  fh.on('commit', (c) => {
    for (const op of c.ops) {
      const [collection, rkey] = op.path.split('/');
      seen({ kind: 'commit', seq: c.seq, did: c.repo, rev: c.rev, collection, rkey, action: op.action });
    }
    if (c.ops.length === 0) last = Date.now();
  });
  fh.on('identity', (i) => seen({ kind: 'identity', seq: i.seq, did: i.did }));
  fh.on('account', (a) => seen({ kind: 'account', seq: a.seq, did: a.did }));
  fh.on('sync', () => { last = Date.now(); });
  fh.on('error', ({ error }) => fail(`firehose: ${error}`));
  fh.start();
  return { events, quietFor: () => Date.now() - last, close: () => fh.close() };
}

// A @skyware/jetstream subscriber collecting commits, identity and account events.
function jetstream(options) {
  const events = [];
  let last = Date.now();
  const js = new Jetstream({ ws: WebSocket, endpoint: `${wsBase}/subscribe`, ...options });
  js.on('commit', (e) => {
    last = Date.now();
    const c = e.commit;
    events.push({ kind: 'commit', did: e.did, rev: c.rev, collection: c.collection, rkey: c.rkey, action: c.operation, time_us: e.time_us, record: c.record });
  });
  js.on('identity', (e) => { last = Date.now(); events.push({ kind: 'identity', did: e.did, seq: e.identity.seq, time_us: e.time_us }); });
  js.on('account', (e) => { last = Date.now(); events.push({ kind: 'account', did: e.did, seq: e.account.seq, time_us: e.time_us }); });
  js.on('error', (e) => fail(`jetstream: ${e}`));
  js.start();
  return { js, events, quietFor: () => Date.now() - last };
}

// Waits until every stream has had no event for 2.5 s, counted from this call at the earliest: a
// stream that saw nothing yet waits for traffic that is still on its way (a seed has returned, but
// its last events may still be between the PDS, the relay's group commit and the socket).
async function quiet(...streams) {
  const start = Date.now();
  for (let i = 0; i < 600; i++) {
    await sleep(100);
    if (streams.every((s) => Math.min(s.quietFor(), Date.now() - start) > 2500)) return;
  }
  fail('streams did not settle in 60 s');
}

const key = (e) => (e.kind === 'commit' ? `${e.did} ${e.rev} ${e.collection}/${e.rkey} ${e.action}` : `${e.did} ${e.kind} ${e.seq}`);

function same(name, got, want) {
  const g = got.map(key);
  const w = want.map(key);
  if (new Set(g).size !== g.length) fail(`${name}: duplicates delivered`);
  const gs = new Set(g);
  const ws = new Set(w);
  const missing = w.filter((k) => !gs.has(k));
  const unwanted = g.filter((k) => !ws.has(k));
  if (missing.length) fail(`${name}: ${missing.length} wanted events missed, e.g. ${missing.slice(0, 3).join(' | ')}`);
  if (unwanted.length) fail(`${name}: ${unwanted.length} unwanted events delivered, e.g. ${unwanted.slice(0, 3).join(' | ')}`);
  return { name, delivered: g.length, wanted: w.length };
}

const matches = (e, cols, dids) => {
  if (dids.length && !dids.includes(e.did)) return false;
  if (e.kind !== 'commit' || cols.length === 0) return true;
  return cols.some((c) => (c.endsWith('.*') ? e.collection.startsWith(c.slice(0, -1)) : e.collection === c));
};

const results = [];

// Ground truth: everything stored, from cursor 0.
const truth = firehose(0);
await quiet(truth);
truth.close();
const all = truth.events;
fs.writeFileSync(out, JSON.stringify(all));
const commitDids = [...new Set(all.filter((e) => e.kind === 'commit').map((e) => e.did))];
if (commitDids.length < 3 || !all.some((e) => e.kind === 'identity') || !all.some((e) => e.kind === 'account')) {
  fail(`ground truth too thin: ${all.length} events, ${commitDids.length} accounts with commits`);
}

// 1. Filtered replay.
const cols = ['app.bsky.feed.post', 'app.bsky.graph.*'];
const dids = commitDids.slice(0, 3);
const f1 = jetstream({ wantedCollections: cols, wantedDids: dids, cursor: 1 });
await quiet(f1);
f1.js.close();
results.push(same('replay filtered', f1.events, all.filter((e) => matches(e, cols, dids))));
if (!f1.events.some((e) => e.collection === 'app.bsky.graph.follow')) fail('the prefix app.bsky.graph.* matched no follow');
if (!f1.events.some((e) => e.kind === 'commit' && e.action === 'create' && e.record?.$type === e.collection)) {
  fail('records did not arrive as JSON with their $type');
}

// 2. Unfiltered replay: every op.
const f2 = jetstream({ cursor: 1 });
await quiet(f2);
f2.js.close();
results.push(same('replay all', f2.events, all));
const times = f2.events.map((e) => e.time_us);
if (times.some((t, i) => i > 0 && t < times[i - 1])) fail('time_us decreased along the stream');

// 3. A time cursor resumes exactly there (inclusive).
const mid = f2.events[Math.floor(f2.events.length / 2)];
const f3 = jetstream({ cursor: mid.time_us });
await quiet(f3);
f3.js.close();
results.push(same('time cursor', f3.events, f2.events.filter((e) => e.time_us >= mid.time_us)));

// 4. Live, then options_update.
const liveTruth = firehose();
const fa = jetstream({ wantedCollections: ['app.bsky.feed.post'] });
const fb = jetstream({});
await sleep(1500);
execFileSync(peersSh, ['seed', peersDir, 'jsa'], { stdio: ['ignore', 'ignore', 'inherit'] });
await quiet(liveTruth, fa, fb);
const phase1 = liveTruth.events.length;
if (phase1 === 0) fail('no live traffic seen');
results.push(same('live filtered', fa.events, liveTruth.events.filter((e) => matches(e, ['app.bsky.feed.post'], []))));
results.push(same('live all', fb.events, liveTruth.events));
const bBefore = fb.events.length;
fb.js.updateOptions({ wantedCollections: ['app.bsky.feed.like'], wantedDids: [] });
await sleep(1500);
execFileSync(peersSh, ['seed', peersDir, 'jsb'], { stdio: ['ignore', 'ignore', 'inherit'] });
await quiet(liveTruth, fb);
liveTruth.close();
fa.js.close();
fb.js.close();
const phase2 = liveTruth.events.slice(phase1);
results.push(same('options_update narrows', fb.events.slice(bBefore), phase2.filter((e) => matches(e, ['app.bsky.feed.like'], []))));
if (!fb.events.slice(bBefore).some((e) => e.collection === 'app.bsky.feed.like')) fail('no like after options_update');

// 5. listReposByCollection against the firehose's posts.
const listed = [];
let cursor;
for (let page = 0; page < 1000; page++) {
  const qs = new URLSearchParams({ collection: 'app.bsky.feed.post', limit: '2', ...(cursor ? { cursor } : {}) });
  const r = await fetch(`${base}/xrpc/com.atproto.sync.listReposByCollection?${qs}`);
  const body = await r.json();
  if (r.status !== 200) { fail(`listReposByCollection: ${r.status} ${JSON.stringify(body)}`); break; }
  listed.push(...body.repos.map((x) => x.did));
  cursor = body.cursor;
  if (!cursor) break;
}
if (new Set(listed).size !== listed.length) fail('listReposByCollection repeated an account');
const posters = [...new Set([...all, ...liveTruth.events].filter((e) => e.kind === 'commit' && e.collection === 'app.bsky.feed.post' && e.action === 'create').map((e) => e.did))];
let activePosters = 0;
for (const did of posters) {
  const r = await fetch(`${base}/xrpc/com.atproto.sync.getRepoStatus?${new URLSearchParams({ did })}`);
  const st = await r.json();
  if (!st.active) continue;
  activePosters++;
  if (!listed.includes(did)) fail(`listReposByCollection misses ${did}, which created a post`);
}
for (const did of listed) {
  const r = await fetch(`${base}/xrpc/com.atproto.sync.getRepoStatus?${new URLSearchParams({ did })}`);
  if (!(await r.json()).active) fail(`listReposByCollection lists ${did}, which is not active`);
}
results.push({ name: 'listReposByCollection', listed: listed.length, activePosters });

if (failures.length) {
  console.error(JSON.stringify(results));
  process.exit(1);
}
console.log(`JETSTREAM v1 OK ${JSON.stringify(results)}`);
process.exit(0);
