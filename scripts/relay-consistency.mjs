// Checks that the relay's sync queries agree with what it relayed and with the PDS:
//   - listHosts names exactly HOST, active; getHostStatus agrees with it;
//   - getHostStatus.accountCount = the relay's accounts on HOST that are not deleted (listRepos);
//   - for every active account of listRepos: getRepoStatus says active, and getLatestCommit's rev and
//     cid equal listRepos' and the PDS's own getLatestCommit.
// Usage: node relay-consistency.mjs http://127.0.0.1:2470 http://localhost:2583 localhost:2583
// Prints one summary line; exits 1 on any disagreement.
const [, , relay, pds, host] = process.argv;
const get = async (base, path) => {
  const r = await fetch(`${base}/xrpc/${path}`);
  return { status: r.status, body: await r.json() };
};
const fail = (msg) => { console.error(`MISMATCH: ${msg}`); process.exitCode = 1; };

const hosts = (await get(relay, 'com.atproto.sync.listHosts')).body.hosts;
if (hosts.length !== 1 || hosts[0].hostname !== host || hosts[0].status !== 'active') {
  fail(`listHosts ${JSON.stringify(hosts)}`);
}
const hs = await get(relay, `com.atproto.sync.getHostStatus?hostname=${host}`);
if (hs.status !== 200 || JSON.stringify(hs.body) !== JSON.stringify(hosts[0])) {
  fail(`getHostStatus ${JSON.stringify(hs.body)} vs listHosts ${JSON.stringify(hosts[0])}`);
}
const repos = [];
let cursor;
do {
  const page = (await get(relay, `com.atproto.sync.listRepos?limit=1000${cursor ? `&cursor=${cursor}` : ''}`)).body;
  repos.push(...page.repos);
  cursor = page.cursor;
} while (cursor);
const counted = repos.filter((r) => r.status !== 'deleted').length;
if (hs.body.accountCount !== counted) fail(`accountCount ${hs.body.accountCount}, listRepos has ${counted} not deleted`);
let checked = 0;
for (const r of repos.filter((r) => r.active)) {
  const st = await get(relay, `com.atproto.sync.getRepoStatus?did=${r.did}`);
  if (!st.body.active) fail(`getRepoStatus ${r.did}: ${JSON.stringify(st.body)}`);
  const mine = await get(relay, `com.atproto.sync.getLatestCommit?did=${r.did}`);
  const theirs = await get(pds, `com.atproto.sync.getLatestCommit?did=${r.did}`);
  if (mine.body.rev !== r.rev || mine.body.cid !== r.head) fail(`${r.did}: getLatestCommit ${JSON.stringify(mine.body)} vs listRepos ${r.rev} ${r.head}`);
  if (mine.body.rev !== theirs.body.rev || mine.body.cid !== theirs.body.cid) {
    fail(`${r.did}: relay ${JSON.stringify(mine.body)} vs PDS ${JSON.stringify(theirs.body)}`);
  }
  checked++;
}
console.log(`CONSISTENT host=${host} seq=${hs.body.seq} accountCount=${hs.body.accountCount} repos=${repos.length} active_checked=${checked}`);
