//! Inputs from outside the relay's own tests: hostile HTTP requests, real clients' query strings,
//! lexicon conformance of answers and relayed frames, quirks of real hosts (null `since`, missing
//! deprecated fields, seq replays), and the SSRF guard on `did:web`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use support::{ADMIN_PASSWORD, Account, FakeHost, FakePlc, Relay, Seen, read_until_idle, subscribe};
use wire::Did;
use wire::frame::Event;
use wire::testkit::{Op, Signer, SigningKey, SimAccount};

const WAIT: Duration = Duration::from_secs(20);

/// Sends raw bytes as a request and returns the response (head and body) as text.
fn raw_request(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn body_json(resp: &str) -> serde_json::Value {
    resp.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or_default()
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

/// One unauthenticated request used to panic the API core for good (a byte-offset slice of the
/// hostname); every request below must get a well-formed answer and leave the relay healthy.
#[test]
fn hostile_requests_get_answers_and_the_api_stays_up() {
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--admin-password", ADMIN_PASSWORD];
    let relay = Relay::start_hosts(support::free_port(), &dir.path().join("data"), &[], &plc.url, &args);
    let crawl = "/xrpc/com.atproto.sync.requestCrawl";
    for hostname in ["ééééé.com", "é", "https://é", "💥://x", "\u{0}", "[", "xn--", "a:99999999999", "ftp://é.com"]
    {
        let (status, v) = relay.post(crawl, &json!({ "hostname": hostname }).to_string());
        assert!((400..500).contains(&status), "{hostname:?}: {status} {v}");
        assert!(v["error"].is_string(), "{hostname:?}: XRPC error JSON, got {v}");
        assert_eq!(relay.get("/xrpc/_health").0, 200, "healthy after {hostname:?}");
    }
    let admin = relay.admin_post("pds/requestCrawl", json!({ "hostname": "ééééé.com:9x" }));
    assert_eq!(admin.0, 400, "{admin:?}");
    for raw in [
        &b"GET /xrpc/com.atproto.sync.getRepoStatus?did=%ff%fe%00 HTTP/1.1\r\n\r\n"[..],
        b"GET /xrpc/com.atproto.sync.listRepos?cursor=%E2%82&limit=%F0%9F%92%A5 HTTP/1.1\r\n\r\n",
        b"GET /xrpc/\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"GET /xrpc/com.atproto.sync.getHostStatus?hostname=%C3%A9%C3%A9.com%3A443 HTTP/1.1\r\n\r\n",
        b"POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n[1]",
        b"POST /admin/pds/changeLimits HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Basic \xff\xfe\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /xrpc/com.atproto.sync.listHosts?limit=-1&limit=2000 HTTP/1.1\r\n\r\n",
        b"DELETE /xrpc/_health HTTP/1.1\r\n\r\n",
    ] {
        let resp = raw_request(relay.port, raw);
        let status = status_of(&resp);
        assert!((400..=501).contains(&status), "{:?} -> {resp}", String::from_utf8_lossy(raw));
        assert!(body_json(&resp)["error"].is_string(), "{:?} -> {resp}", String::from_utf8_lossy(raw));
    }
    // A body over the limit: the reference server's error name.
    let resp = raw_request(
        relay.port,
        b"POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n",
    );
    assert_eq!((status_of(&resp), body_json(&resp)["error"].as_str()), (413, Some("PayloadTooLarge")), "{resp}");
    // Wrong HTTP method: 400 InvalidRequest, as @atproto/xrpc-server answers.
    let resp = raw_request(relay.port, b"POST /xrpc/com.atproto.sync.listRepos HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((status_of(&resp), body_json(&resp)["error"].as_str()), (400, Some("InvalidRequest")), "{resp}");
    assert!(body_json(&resp)["message"].as_str().unwrap().contains("Incorrect HTTP method (POST) expected GET"));
    // Stream endpoints called with another method than GET: 405 (specs/event-stream), XRPC JSON.
    for raw in [
        &b"POST /xrpc/com.atproto.sync.subscribeRepos HTTP/1.1\r\nContent-Length: 0\r\n\r\n"[..],
        b"PUT /xrpc/com.atproto.sync.subscribeRepos?cursor=0 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"DELETE /subscribe HTTP/1.1\r\n\r\n",
        b"POST /xrpc/network.bsky.jetstream.subscribeEvents HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ] {
        let resp = raw_request(relay.port, raw);
        assert_eq!((status_of(&resp), body_json(&resp)["error"].as_str()), (405, Some("MethodNotAllowed")), "{resp}");
        assert!(resp.contains("Allow: GET"), "{resp}");
    }
    // subscribeRepos without an upgrade: 426 naming the protocol.
    let resp = raw_request(relay.port, b"GET /xrpc/com.atproto.sync.subscribeRepos HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&resp), 426, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("upgrade: websocket"), "{resp}");
    assert_eq!(relay.get("/xrpc/_health").0, 200);
    relay.stop();
}

/// An empty admin password would enable `admin:` with no password: refused at start.
#[test]
fn an_empty_admin_password_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--plc-url", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin-password", ""])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--admin-password") && stderr.contains("empty"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--plc-url", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RELAY_ADMIN_PASSWORD", "  ")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the environment variable too");
}

/// Real clients percent-encode query values (`did%3Aplc%3A…`); paging with such cursors reaches the
/// end, and every value is decoded once (lowercase escapes, `host:443`).
#[test]
fn paginated_methods_end_with_percent_encoded_cursors() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let pds = format!("http://{}", host.hostname());
    let mut seq = 0;
    let mut dids = Vec::new();
    for i in 0..7u8 {
        let mut a = Account::new(&format!("did:plc:page{i:0>20}"), 20 + i);
        plc.put(&a.did, a.did_doc(&pds));
        seq += 1;
        let (_, f) = a.commit(seq, None);
        host.push(seq, f);
        dids.push(a.did.to_string());
    }
    let extra_hosts: Vec<FakeHost> = (0..4).map(|_| FakeHost::start()).collect();
    let mut names: Vec<String> = extra_hosts.iter().map(FakeHost::hostname).collect();
    names.push(host.hostname());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_hosts(support::free_port(), &dir.path().join("data"), &refs, &plc.url, &[]);
    relay.wait_until(WAIT, "7 commits", || relay.metric("relay_events_relayed_total", "") >= 7);

    // Encoded the way URLSearchParams does (the `url` crate implements the WHATWG URL standard).
    let page_all = |method: &str, list: &str, key: &str| -> Vec<String> {
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let mut url = url::Url::parse(&format!("http://127.0.0.1:{}/xrpc/{method}", relay.port)).unwrap();
            url.query_pairs_mut().append_pair("limit", "2");
            if let Some(c) = &cursor {
                url.query_pairs_mut().append_pair("cursor", c);
            }
            let path = format!("{}?{}", url.path(), url.query().unwrap());
            if cursor.is_some() {
                assert!(path.contains("%3A"), "the client encoded the cursor: {path}");
            }
            let (status, v) = relay.get_json(&path);
            assert_eq!(status, 200, "{path}: {v}");
            got.extend(v[list].as_array().unwrap().iter().map(|r| r[key].as_str().unwrap().to_owned()));
            match v["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return got,
            }
        }
        panic!("{method} did not end in 20 pages: {got:?}");
    };
    let mut want_dids = dids.clone();
    want_dids.sort();
    assert_eq!(page_all("com.atproto.sync.listRepos", "repos", "did"), want_dids);
    let mut want_hosts = names.clone();
    want_hosts.sort();
    assert_eq!(page_all("com.atproto.sync.listHosts", "hosts", "hostname"), want_hosts);

    // One decoder for every method: lowercase escapes, and host:443 is the host.
    let lower = dids[0].replace(':', "%3a");
    assert_eq!(relay.get_json(&format!("/xrpc/com.atproto.sync.getRepoStatus?did={lower}")).0, 200);
    assert_eq!(relay.get_json(&format!("/xrpc/com.atproto.sync.getLatestCommit?did={lower}")).0, 200);
    let encoded_host = host.hostname().replace(':', "%3A");
    assert_eq!(relay.get_json(&format!("/xrpc/com.atproto.sync.getHostStatus?hostname={encoded_host}")).0, 200);
    relay.stop();
}

/// Some hosts omit the deprecated fields the lexicon still requires (`tooBig`, `rebase`, `blobs`);
/// the relay accepts the commit, counts the omission and writes the fields, so a consumer that
/// validates against the lexicon (`@atproto/sync`) does not skip it.
#[test]
fn commits_without_deprecated_fields_are_relayed_with_them() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:legacyfields000000000000", 31);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let rev = alice.next_rev();
    let mut ev = alice.commit_with(1, &rev, None, 64, &alice.key.clone());
    (ev.too_big, ev.rebase, ev.blobs) = (None, None, None);
    host.push(1, Event::Commit(ev).encode().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
    relay.wait_until(WAIT, "relayed", || relay.metric("relay_events_relayed_total", "") >= 1);
    let mut sub = subscribe(relay.port, Some("0"));
    let seen = read_until_idle(&mut sub, Duration::from_millis(500));
    let [Seen::Event(Event::Commit(c))] = seen.as_slice() else { panic!("{seen:?}") };
    assert_eq!((c.too_big, c.rebase, c.blobs.as_deref()), (Some(false), Some(false), Some(&[][..])));
    for field in ["tooBig", "rebase", "blobs"] {
        assert_eq!(relay.metric("relay_lexicon_tolerated_total", &format!("field=\"{field}\"")), 1, "{field}");
    }
    relay.stop();
}

/// `since: null` on every commit with a correct `prevData` (arroba does this): accepted and counted;
/// a null `since` whose `prevData` does not continue the stored state is a discontinuity.
#[test]
fn null_since_is_tolerated_when_prev_data_continues() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let did = Did::new("did:plc:nullsince0000000000000000").unwrap();
    let mut acct = SimAccount::new(did, SigningKey::k256(41), now_us() - 3_600_000_000);
    plc.put(&acct.did, acct.did_doc(&format!("http://{}", host.hostname())));
    let mut frames = Vec::new();
    for seq in 1..=5u64 {
        let ops = vec![Op::Create { path: format!("app.bsky.feed.post/{}", acct.next_rkey()), bytes: 100 }];
        let mut ev = acct.commit(seq as i64, &ops, &Signer::Own);
        ev.since = None;
        frames.push(Event::Commit(ev));
    }
    // A fork: valid signature and proof, but its prevData is not what the relay stored.
    let mut fork = acct.clone();
    let ops = vec![Op::Create { path: format!("app.bsky.feed.post/{}", fork.next_rkey()), bytes: 100 }];
    let _skipped = fork.commit(6, &ops, &Signer::Own);
    let ops = vec![Op::Create { path: format!("app.bsky.feed.post/{}", fork.next_rkey()), bytes: 100 }];
    let mut broken = fork.commit(6, &ops, &Signer::Own);
    broken.since = None;
    frames.push(Event::Commit(broken));
    for (i, f) in frames.iter().enumerate() {
        host.push(i as u64 + 1, f.encode().unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
    relay.wait_until(WAIT, "all processed", || {
        relay.metric("relay_events_relayed_total", "") + relay.metric("relay_events_dropped_total", "") >= 6
    });
    assert_eq!(relay.metric("relay_events_relayed_total", ""), 6);
    assert_eq!(
        relay.metric("relay_sync_tolerated_total", "reason=\"since_null\""),
        4,
        "all but the genesis and the fork"
    );
    // The fork is valid but does not continue the stored state: relayed as-is, counted.
    assert_eq!(relay.metric("relay_sync_discontinuities_total", "reason=\"prev_data\""), 1);
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0);
    // Relayed with the previous relayed rev as `since`, so the chain a consumer checks holds.
    let mut sub = subscribe(relay.port, Some("0"));
    let commits: Vec<wire::frame::CommitEvent> = read_until_idle(&mut sub, Duration::from_millis(500))
        .into_iter()
        .map(|s| match s {
            Seen::Event(Event::Commit(c)) => c,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(commits.len(), 6);
    assert_eq!(commits[0].since, None, "genesis");
    for pair in commits[..5].windows(2) {
        assert_eq!(pair[1].since.as_ref(), Some(&pair[0].rev));
    }
    assert_eq!(commits[5].since, None, "the discontinuous commit is relayed as-is");
    relay.stop();
}

/// A host that replays frames at or below the cursor the relay resumed from (it ignores `cursor`)
/// gets them dropped as `seq_not_increasing`: nothing is relayed twice and the cursor does not move
/// back.
#[test]
fn a_host_replaying_below_the_cursor_is_not_relayed_twice() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:replayer00000000000000000", 51);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    host.push(1, alice.identity(1));
    let (rev1, f) = alice.commit(2, None);
    host.push(2, f);
    host.push(3, alice.account(3, true));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &[]);
    relay.wait_until(WAIT, "3 relayed", || relay.metric("relay_events_relayed_total", "") >= 3);
    relay.stop();

    host.mode.ignore_cursor.store(true, std::sync::atomic::Ordering::Release);
    let (_, f) = alice.commit(4, Some(rev1));
    host.push(4, f);
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &[]);
    relay.wait_until(WAIT, "the new commit", || relay.metric("relay_events_relayed_total", "") >= 1);
    relay.wait_until(WAIT, "the replay dropped", || {
        relay.metric("relay_events_dropped_total", "reason=\"seq_not_increasing\"") >= 3
    });
    let mut sub = subscribe(relay.port, Some("0"));
    let seen: Vec<&'static str> = read_until_idle(&mut sub, Duration::from_millis(500))
        .iter()
        .map(|s| match s {
            Seen::Event(e) => e.type_name(),
            Seen::Error(_) => "error",
        })
        .collect();
    assert_eq!(seen, ["#identity", "#commit", "#account", "#commit"], "each once");
    let (_, v) = relay.get_json(&format!("/xrpc/com.atproto.sync.getHostStatus?hostname={}", host.hostname()));
    assert_eq!(v["seq"], 4, "{v}");
    relay.stop();
}

/// `did:web` follows specs/did: `localhost` and ports only in development, and only hostnames that
/// are valid handles with an allowed TLD. A DID naming a loopback server with a port
/// (`did:web:localhost%3A6379` would make the relay talk to a local port) is refused outright and
/// nothing is fetched; in development mode (`--dev-localhost-port`) the same DID resolves.
#[test]
fn did_web_outside_the_spec_is_not_fetched() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let web = FakePlc::start();
    let port = web.url.rsplit(':').next().unwrap().to_owned();
    let did = format!("did:web:localhost%3A{port}");
    let mut acct = Account::new(&did, 61);
    web.put_path(".well-known/did.json", acct.did_doc(&format!("http://{}", host.hostname())));
    let (rev, f) = acct.commit(1, None);
    host.push(1, f);
    // Names the spec refuses whatever the network: a disallowed TLD, a port, a single label.
    for (seq, name) in [(2, "did:web:pds.example"), (3, "did:web:host.test%3A8443"), (4, "did:web:intranet")] {
        let mut other = Account::new(name, 62);
        let (_, f) = other.commit(seq, None);
        host.push(seq, f);
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
    relay.wait_until(WAIT, "the drops", || {
        relay.metric("relay_events_dropped_total", "reason=\"did_web_not_allowed\"") >= 4
    });
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 4);
    assert_eq!(web.requests.load(std::sync::atomic::Ordering::Acquire), 0, "nothing was fetched");
    relay.stop();

    // Development mode: the localhost DID resolves (through plain HTTP, the developer's own server).
    let (_, f) = acct.commit(5, Some(rev));
    host.push(5, f);
    let relay = Relay::start(&dir.path().join("data2"), &host.hostname(), &plc.url, &["--dev-localhost-port", "2583"]);
    relay.wait_until(WAIT, "relayed", || relay.metric("relay_events_relayed_total", "") >= 2);
    assert!(web.requests.load(std::sync::atomic::Ordering::Acquire) >= 1);
    relay.stop();
}

/// `getRepo` answers the lexicon's errors for accounts inactive at the relay instead of redirecting,
/// and redirects with the scheme the relay reaches the host by.
#[test]
fn get_repo_refuses_inactive_accounts_and_keeps_the_hosts_scheme() {
    let ca = support::TestCa::new();
    let plc = FakePlc::start();
    let host = FakeHost::start_tls(&ca);
    let mut alice = Account::new("did:plc:getrepo00000000000000000", 71);
    let mut bob = Account::new("did:plc:getrepobob000000000000000", 72);
    for a in [&alice, &bob] {
        plc.put(&a.did, a.did_doc(&format!("https://{}", host.hostname())));
    }
    let (_, f) = alice.commit(1, None);
    host.push(1, f);
    let (_, f) = bob.commit(2, None);
    host.push(2, f);
    host.push(3, bob.account(3, false));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let args = ["--tls-ca", ca_file.to_str().unwrap(), "--admin-password", ADMIN_PASSWORD];
    let upstream = format!("wss://{}", host.hostname());
    let relay = Relay::start(&dir.path().join("data"), &upstream, &plc.url, &args);
    relay.wait_until(WAIT, "3 relayed", || relay.metric("relay_events_relayed_total", "") >= 3);
    let resp = support::http_get_raw(relay.port, &format!("/xrpc/com.atproto.sync.getRepo?did={}", alice.did)).unwrap();
    assert_eq!(status_of(&resp), 302, "{resp}");
    let want = format!("location: https://{}/xrpc/com.atproto.sync.getRepo?did={}", host.hostname(), alice.did);
    assert!(resp.to_ascii_lowercase().contains(&want.to_ascii_lowercase()), "{resp}");
    let (status, v) = relay.get_json(&format!("/xrpc/com.atproto.sync.getRepo?did={}", bob.did));
    assert_eq!((status, v["error"].as_str()), (400, Some("RepoDeactivated")), "{v}");
    assert_eq!(relay.admin_post("repo/takeDown", json!({ "did": alice.did.as_str() })).0, 200);
    relay.wait_until(WAIT, "the takedown", || {
        relay.get_json(&format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", alice.did)).1["status"] == "takendown"
    });
    let (status, v) = relay.get_json(&format!("/xrpc/com.atproto.sync.getRepo?did={}", alice.did));
    assert_eq!((status, v["error"].as_str()), (400, Some("RepoTakendown")), "{v}");
    relay.stop();
}

/// The relay process's resident memory, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB");
    kb.trim().parse::<u64>().unwrap() * 1024
}

/// 400 clients each send 500 KiB of a request head (under the 512 KiB head limit, so each is a
/// request still being read) and wait: 200 MiB if every head were buffered. The one fanout core's
/// request memory (`REQUEST_MEMORY_BYTES`, 64 MiB) is taken first; past it a request is answered
/// `503 NotEnoughResources`, the relay's memory grows by little more than the cap, and once the
/// clients go away requests are served again. The per-address limit is lifted here so that one
/// address can hold 400 connections: the cap must hold whatever the number of clients.
#[test]
fn request_memory_is_capped_whatever_the_number_of_clients() {
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--ingest-cores",
        "0",
        "--fanout-cores",
        "1",
        "--sequencer-core",
        "0",
        "--compaction-core",
        "0",
        "--max-connections-per-ip",
        "1000",
    ];
    let relay = Relay::start_hosts(support::free_port(), &dir.path().join("data"), &[], &plc.url, &args);
    assert_eq!(relay.get("/xrpc/_health").0, 200);
    let before = rss_bytes(relay.pid());
    let mut head = b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.resize(500 * 1024, b'a');
    let mut clients = Vec::new();
    for _ in 0..400 {
        let mut s = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        // A client refused part-way (503, then closed) stops taking bytes; that is the point.
        let _ = s.write_all(&head);
        clients.push(s);
    }
    // Answers come as the relay reads the heads: collect them for up to 20 s.
    let mut answered = vec![false; clients.len()];
    let mut refused = 0;
    let started = std::time::Instant::now();
    while refused < 272 && started.elapsed() < Duration::from_secs(20) {
        for (s, done) in clients.iter_mut().zip(answered.iter_mut()).filter(|(_, d)| !**d) {
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let resp = String::from_utf8_lossy(&buf[..n]);
                    assert!(resp.starts_with("HTTP/1.1 503") && resp.contains("NotEnoughResources"), "{resp}");
                    refused += 1;
                    *done = true;
                }
                // Closed unanswered: the head's read timed out (it would, uncapped, after buffering).
                Ok(_) => *done = true,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("a client's connection: {e}"),
            }
        }
    }
    let during = rss_bytes(relay.pid());
    let waiting = answered.iter().filter(|a| !**a).count();
    let grown = during.saturating_sub(before);
    eprintln!("rss {before} -> {during} (+{grown}); {refused} refused with 503, {waiting} still being read");
    assert!(refused >= 200, "past 64 MiB of heads (~128 of them) requests are refused: {refused} of 400");
    assert!(waiting >= 100, "what fits in the cap is still read: {waiting}");
    assert!(grown < 110 << 20, "memory grew by {grown} bytes for 200 MiB offered");
    drop(clients);
    relay.wait_until(WAIT, "requests are served again", || relay.get("/xrpc/_health").0 == 200);
}
