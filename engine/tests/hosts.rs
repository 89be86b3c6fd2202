//! Hosts and the host XRPC/admin surface: `requestCrawl` (each documented error and the success
//! path), host lifecycle (kill, ban, domain ban, limits, throttled accounts, rate limits),
//! `FutureCursor` recovery, the relay-loop guard and `relay pull-hosts`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{ADMIN_PASSWORD, Account, FakeHost, FakePlc, Relay};
use wire::frame::Event;

const CRAWL: &str = "/xrpc/com.atproto.sync.requestCrawl";
const WAIT: Duration = Duration::from_secs(20);

fn crawl(relay: &Relay, hostname: &str) -> (u16, serde_json::Value) {
    relay.post(CRAWL, &json!({ "hostname": hostname }).to_string())
}

#[test]
fn request_crawl_adds_a_host_and_refuses_bad_ones() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:crawlalice000000000000000", 11);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let dir = tempfile::tempdir().unwrap();
    let port = host.port.to_string();
    let args = ["--dev-localhost-port", &port, "--new-hosts-per-day", "1", "--admin-password", ADMIN_PASSWORD];
    let relay = Relay::start_hosts(support::free_port(), &dir.path().join("data"), &[], &plc.url, &args);
    assert_eq!(relay.get_json("/xrpc/com.atproto.sync.listHosts").1["hosts"], json!([]));

    // Errors, each with its XRPC error name.
    assert_eq!(relay.get_json(CRAWL).0, 400);
    let (status, v) = relay.post(CRAWL, "not json");
    assert_eq!((status, v["error"].as_str()), (400, Some("InvalidRequest")));
    for bad in ["1.2.3.4", "pds.example.com:8080", "pds", "bad host.com"] {
        let (status, v) = crawl(&relay, bad);
        assert_eq!((status, v["error"].as_str()), (400, Some("InvalidRequest")), "{bad}: {v}");
    }
    assert_eq!(relay.admin_post("subs/banDomain", json!({ "domain": "banned.example" })).0, 200);
    let (status, v) = crawl(&relay, "pds.eu.banned.example");
    assert_eq!((status, v["error"].as_str()), (400, Some("HostBanned")));
    // Not a PDS: describeServer fails. Its quota slot is given back.
    let not_pds = FakeHost::start();
    not_pds.mode.no_describe.store(true, std::sync::atomic::Ordering::Release);
    let (status, v) = crawl(&relay, &not_pds.hostname());
    assert_eq!((status, v["error"].as_str()), (400, Some("HostNotFound")), "{v}");
    // Disabled by the operator.
    assert_eq!(relay.admin_post("subs/setEnabled", json!({ "enabled": false })).0, 200);
    assert_eq!(relay.admin_get("subs/getEnabled").1["enabled"], false);
    let (status, v) = crawl(&relay, "localhost");
    assert_eq!((status, v["error"].as_str()), (403, Some("Forbidden")));
    assert_eq!(relay.admin_post("subs/setEnabled", json!({ "enabled": true })).0, 200);

    // Success: the dev-env PDS says `localhost`, which dev mode maps to localhost:{port}.
    let (status, v) = crawl(&relay, "localhost");
    assert_eq!(status, 200, "{v}");
    let (rev1, f) = alice.commit(1, None);
    host.push(1, f);
    relay.wait_until(WAIT, "the crawled host's commit", || relay.head() == 1);
    let hostname = host.hostname();
    let (_, hosts) = relay.get_json("/xrpc/com.atproto.sync.listHosts");
    assert_eq!(hosts["hosts"][0]["hostname"], hostname.as_str());
    assert_eq!(hosts["hosts"][0]["status"], "active");
    assert_eq!(hosts["hosts"][0]["seq"], 1);
    assert_eq!(hosts["hosts"][0]["accountCount"], 1);
    let (_, conns) = relay.admin_get("subs/getUpstreamConns");
    assert_eq!(conns["connections"][0]["hostname"], hostname.as_str());
    let (_, listed) = relay.admin_get("pds/list");
    assert_eq!(listed["hosts"][0]["trusted"], false);
    assert_eq!(listed["hosts"][0]["accountLimit"], 100);
    assert_eq!(listed["hosts"][0]["rateLimits"]["perSecond"], 50);
    let (_, repos) = relay.get_json("/xrpc/com.atproto.sync.listRepos");
    assert_eq!(repos["repos"][0]["did"], alice.did.as_str());
    let (_, latest) = relay.get_json(&format!("/xrpc/com.atproto.sync.getLatestCommit?did={}", alice.did));
    assert_eq!(latest["rev"], rev1.as_str());
    // A known host again: accepted, no quota used.
    assert_eq!(crawl(&relay, &hostname).0, 200);

    // The day's quota (1) is used: a new host is refused publicly, accepted from the admin.
    let second = FakeHost::start();
    let (status, v) = crawl(&relay, &second.hostname());
    assert_eq!((status, v["error"].as_str()), (429, Some("RateLimitExceeded")));
    assert_eq!(relay.admin_post("pds/requestCrawl", json!({ "hostname": second.hostname() })).0, 200);
    relay.wait_until(WAIT, "the admin-added host", || relay.host_status(&second.hostname()) == "active");

    // listHosts pages: two hosts, one per page; bad limits refused.
    let (_, page) = relay.get_json("/xrpc/com.atproto.sync.listHosts?limit=1");
    let first = page["hosts"][0]["hostname"].as_str().unwrap().to_owned();
    let cursor = page["cursor"].as_str().unwrap().replace(':', "%3A");
    let (_, page2) = relay.get_json(&format!("/xrpc/com.atproto.sync.listHosts?limit=1&cursor={cursor}"));
    assert_ne!(page2["hosts"][0]["hostname"].as_str(), Some(first.as_str()));
    assert_eq!(page2["hosts"].as_array().map(Vec::len), Some(1));
    for bad in ["0", "1001", "x"] {
        assert_eq!(
            relay.get_json(&format!("/xrpc/com.atproto.sync.listHosts?limit={bad}")).1["error"],
            "InvalidRequest"
        );
    }
    // CORS preflight.
    let raw = support::http_request_raw(relay.port, "OPTIONS", CRAWL);
    assert!(
        raw.starts_with("HTTP/1.1 204") && raw.contains("Access-Control-Allow-Methods: GET, POST, OPTIONS"),
        "{raw}"
    );

    // Untrusted hosts are rate limited (50 events/s): a burst is delayed, never dropped.
    let mut since = rev1;
    for seq in 2..=151 {
        let (rev, f) = alice.commit(seq, Some(since));
        since = rev;
        host.push(seq, f);
    }
    relay.wait_until(WAIT, "status throttled during the burst", || relay.host_status(&hostname) == "throttled");
    relay.wait_until(WAIT, "the whole burst", || relay.head() == 151);
    assert!(relay.metric("relay_upstream_rate_limited_total", "") > 0, "the burst was not paced");
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0);
    // Public and admin requestCrawl both counted.
    assert_eq!(relay.metric("relay_request_crawl_total", "result=\"added\""), 2);

    // The day's count survives a restart.
    relay.stop();
    let relay = Relay::start_hosts(support::free_port(), &dir.path().join("data"), &[], &plc.url, &args);
    let third = FakeHost::start();
    assert_eq!(crawl(&relay, &third.hostname()).1["error"], "RateLimitExceeded");
}

#[test]
fn admin_controls_hosts_limits_and_subscribers() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let pds = format!("http://{}", host.hostname());
    let mut alice = Account::new("did:plc:adminalice000000000000000", 21);
    let mut bob = Account::new("did:plc:adminbob00000000000000000", 22);
    plc.put(&alice.did, alice.did_doc(&pds));
    plc.put(&bob.did, bob.did_doc(&pds));
    let dir = tempfile::tempdir().unwrap();
    let hostname = host.hostname();
    let relay = Relay::start(
        &dir.path().join("data"),
        &hostname,
        &plc.url,
        &["--admin-password", ADMIN_PASSWORD, "--dev-localhost-port", "1"],
    );

    // Auth and routing errors.
    let (status, _) = support::http_get(relay.port, "/admin/pds/list").unwrap();
    assert_eq!(status, 401);
    let (status, _) = support::http_get_auth(relay.port, "/admin/pds/list", ("admin", "wrong")).unwrap();
    assert_eq!(status, 401);
    assert_eq!(relay.admin_get("pds/nope").0, 404);
    assert_eq!(relay.admin_get("pds/block").0, 400);
    assert_eq!(relay.admin_post("pds/block", json!({})).1["error"], "InvalidRequest");
    assert_eq!(relay.admin_post("pds/block", json!({ "hostname": "unknown.example.com" })).1["error"], "HostNotFound");
    let (status, _) = support::http_post_typed(
        relay.port,
        "/admin/subs/setEnabled",
        "text/plain",
        r#"{"enabled":false}"#,
        ("admin", ADMIN_PASSWORD),
    );
    assert_eq!(status, 415, "a cross-site form post is refused");
    assert_eq!(relay.admin_get("subs/getEnabled").1["enabled"], true);
    let (status, v) = relay.admin_post("pds/changeLimits", json!({ "hostname": hostname, "accountLimit": "x" }));
    assert_eq!((status, v["error"].as_str()), (400, Some("InvalidRequest")));

    // A --host host is trusted.
    let (_, listed) = relay.admin_get("pds/list");
    assert_eq!(listed["hosts"][0]["trusted"], true);
    let (a1, f) = alice.commit(1, None);
    host.push(1, f);
    relay.wait_until(WAIT, "alice", || relay.head() == 1);

    // Subscribers are listed.
    let _sub = support::subscribe(relay.port, Some("0"));
    relay.wait_until(WAIT, "a listed subscriber", || {
        relay.admin_get("consumers/list").1["subscribers"].as_array().is_some_and(|s| s.len() == 1)
    });
    assert_eq!(relay.admin_get("consumers/list").1["subscribers"][0]["cursor"], 0);

    // Account limit 1 (alice has the slot): bob is throttled, his commits not relayed; that is
    // announced with `#account {active: false, status: "throttled"}` (specs/account), and his
    // `#identity` is still relayed.
    let (status, v) = relay.admin_post("pds/changeLimits", json!({ "hostname": hostname, "accountLimit": 1 }));
    assert_eq!((status, v["accountLimit"].as_u64()), (200, Some(1)), "{v}");
    let (b1, f) = bob.commit(2, None);
    host.push(2, f);
    relay.wait_until(WAIT, "bob throttled", || relay.metric("relay_events_dropped_total", "account_throttled") == 1);
    let (_, st) = relay.get_json(&format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", bob.did));
    assert_eq!((st["active"].as_bool(), st["status"].as_str()), (Some(false), Some("throttled")), "{st}");
    host.push(3, bob.identity(3));
    relay.wait_until(WAIT, "bob's #identity relayed", || relay.head() == 3);
    // Raising the limit lets his next commit through, announced as active again; he then counts on
    // the host.
    relay.admin_post("pds/changeLimits", json!({ "hostname": hostname, "accountLimit": 5 }));
    let (_, f) = bob.commit(4, Some(b1));
    host.push(4, f);
    relay.wait_until(WAIT, "bob relayed", || relay.head() == 5);
    let (_, st) = relay.get_json(&format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", bob.did));
    assert_eq!(st["active"], true);
    assert_eq!(
        relay.get_json(&format!("/xrpc/com.atproto.sync.getHostStatus?hostname={hostname}")).1["accountCount"],
        2
    );
    let mut sub = support::subscribe(relay.port, Some("1"));
    let seen: Vec<String> = support::read_until_idle(&mut sub, Duration::from_millis(500))
        .into_iter()
        .map(|s| match s {
            support::Seen::Event(Event::Account(a)) => format!("#account {} {:?} {}", a.did, a.status, a.active),
            support::Seen::Event(e) => format!("{} {}", e.type_name(), e.did().unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    let b = &bob.did;
    assert_eq!(
        seen,
        [
            format!("#account {b} Some(\"throttled\") false"),
            format!("#identity {b}"),
            format!("#account {b} None true"),
            format!("#commit {b}")
        ]
    );

    // Kill: the connection closes and stays closed; a requestCrawl reconnects.
    let (status, v) = relay.admin_post("subs/killUpstream", json!({ "hostname": hostname }));
    assert_eq!((status, v["wasConnected"].as_bool()), (200, Some(true)), "{v}");
    relay.wait_until(WAIT, "no connection", || relay.admin_get("subs/getUpstreamConns").1["connections"] == json!([]));
    let (a2, f) = alice.commit(5, Some(a1));
    host.push(5, f);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.head(), 5, "a killed host is not read");
    assert_eq!(crawl(&relay, &hostname).0, 200);
    relay.wait_until(WAIT, "reconnected after requestCrawl", || relay.head() == 6);

    // Block: banned in listHosts, requestCrawl refused; unblock reconnects.
    let (status, v) = relay.admin_post("pds/block", json!({ "hostname": hostname }));
    assert_eq!((status, v["status"].as_str()), (200, Some("banned")), "{v}");
    relay.wait_until(WAIT, "no connection", || relay.admin_get("subs/getUpstreamConns").1["connections"] == json!([]));
    assert_eq!(crawl(&relay, &hostname).1["error"], "HostBanned");
    let (a3, f) = alice.commit(6, Some(a2));
    host.push(6, f);
    assert_eq!(relay.admin_post("pds/unblock", json!({ "hostname": hostname })).0, 200);
    relay.wait_until(WAIT, "reconnected after unblock", || relay.head() == 7);

    // Domain ban: the domain's hosts are closed and shown banned; lifting it reconnects them.
    let (status, v) = relay.admin_post("subs/banDomain", json!({ "domain": "localhost" }));
    assert_eq!((status, v["changed"].as_bool()), (200, Some(true)));
    assert_eq!(relay.admin_get("subs/listDomainBans").1["domains"], json!(["localhost"]));
    relay.wait_until(WAIT, "no connection", || relay.admin_get("subs/getUpstreamConns").1["connections"] == json!([]));
    assert_eq!(relay.host_status(&hostname), "banned");
    let (_, f) = alice.commit(7, Some(a3));
    host.push(7, f);
    relay.admin_post("subs/unbanDomain", json!({ "domain": "localhost" }));
    relay.wait_until(WAIT, "reconnected after the domain unban", || relay.head() == 8);

    // The per-day quota can be read and changed.
    assert_eq!(relay.admin_get("subs/perDayLimit").1["limit"], 50);
    assert_eq!(relay.admin_post("subs/setPerDayLimit", json!({ "limit": 7 })).1["limit"], 7);
    assert_eq!(relay.admin_get("subs/perDayLimit").1["limit"], 7);
}

#[test]
fn future_cursor_stops_the_host_until_an_operator_resets_it() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    host.mode.future_cursor.store(true, std::sync::atomic::Ordering::Release);
    let mut alice = Account::new("did:plc:futurealice00000000000000", 31);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hostname = host.hostname();
    let args = ["--admin-password", ADMIN_PASSWORD];
    let relay = Relay::start(&data, &hostname, &plc.url, &args);
    let mut since = None;
    for seq in 1..=3 {
        let (rev, f) = alice.commit(seq, since);
        since = Some(rev);
        host.push(seq, f);
    }
    relay.wait_until(WAIT, "three commits", || relay.head() == 3);
    relay.stop();

    // The host's sequence is reset; the relay comes back with cursor 3 and is told FutureCursor.
    host.reset_sequence();
    let relay = Relay::start(&data, &hostname, &plc.url, &args);
    relay.wait_until(WAIT, "FutureCursor", || relay.metric("relay_host_changes_total", "future_cursor") == 1);
    assert_eq!(relay.host_status(&hostname), "idle");
    let (rev, f) = alice.commit(1, since);
    host.push(1, f);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.head(), 3, "no reconnect loop against a reset host");
    assert_eq!(relay.metric("relay_host_changes_total", "future_cursor"), 1);

    // The operator resets the cursor: the relay resumes from the host's new sequence, data kept.
    let (status, v) = relay.admin_post("pds/resetCursor", json!({ "hostname": hostname }));
    assert_eq!(status, 200, "{v}");
    relay.wait_until(WAIT, "the commit after the reset", || relay.head() == 4);
    assert_eq!(host.cursors.lock().unwrap().last().copied().flatten(), Some(0));
    assert_eq!(
        relay.get_json(&format!("/xrpc/com.atproto.sync.getLatestCommit?did={}", alice.did)).1["rev"],
        rev.as_str()
    );
    assert_eq!(relay.host_status(&hostname), "active");
    assert_eq!(relay.get_json("/xrpc/com.atproto.sync.subscribeRepos").0, 426, "only websocket upgrades");
}

#[test]
fn relay_loop_guard_bans_a_relay_named_as_host() {
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    // Relay B, then relay A subscribing to B as if it were a PDS.
    let b = Relay::start_hosts(support::free_port(), &dir.path().join("b"), &[], &plc.url, &[]);
    let b_host = format!("localhost:{}", b.port);
    let a = Relay::start(&dir.path().join("a"), &b_host, &plc.url, &[]);
    a.wait_until(WAIT, "B banned by A", || a.host_status(&b_host) == "banned");
    assert_eq!(a.metric("relay_host_changes_total", "relay_loop"), 1);
    assert_eq!(a.metric("relay_upstream_connected", ""), 0);
}

#[test]
fn pull_hosts_copies_another_relays_host_table() {
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    let local = FakeHost::start();
    // Named hosts need not answer: the source lists them all the same.
    let source = Relay::start_hosts(
        support::free_port(),
        &dir.path().join("source"),
        &["pds-a.example.com", "pds-b.example.com", &local.hostname()],
        &plc.url,
        &["--admin-password", ADMIN_PASSWORD],
    );
    assert_eq!(source.admin_post("pds/block", json!({ "hostname": "pds-b.example.com" })).0, 200);
    let target = dir.path().join("target");
    let pull = |from: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["pull-hosts", "--from", from, "--data-dir"])
            .arg(&target)
            .output()
            .unwrap()
    };
    let from = format!("http://127.0.0.1:{}", source.port);
    let out = pull(&from);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    // pds-a added; pds-b (banned there) and localhost (operator-only) skipped.
    assert!(
        stdout.contains("pulled 3 hosts") && stdout.contains("1 added") && stdout.contains("2 skipped"),
        "{stdout}"
    );
    let again = pull(&from);
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 added, 1 already known"));
    let bad = pull("http://127.0.0.1:1");
    assert!(!bad.status.success());

    // The pulled host is in the host table at start, without --host, and the relay tries it.
    let relay = Relay::start_hosts(support::free_port(), &target, &[], &plc.url, &[]);
    let (_, hosts) = relay.get_json("/xrpc/com.atproto.sync.listHosts");
    assert_eq!(hosts["hosts"].as_array().map(Vec::len), Some(1));
    assert_eq!(hosts["hosts"][0]["hostname"], "pds-a.example.com");
    relay.wait_until(Duration::from_secs(60), "a connection attempt to the pulled host", || {
        relay.metric("relay_upstream_connects_total", "") >= 1
    });
}

#[test]
fn a_silent_host_goes_idle_and_is_resumed() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:idlealice0000000000000000", 41);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let dir = tempfile::tempdir().unwrap();
    let hostname = host.hostname();
    let relay = Relay::start(&dir.path().join("data"), &hostname, &plc.url, &["--idle-timeout-secs", "1"]);
    let (rev, f) = alice.commit(1, None);
    host.push(1, f);
    relay.wait_until(WAIT, "the first commit", || relay.head() == 1);
    relay.wait_until(WAIT, "idle after 1 s of silence", || relay.host_status(&hostname) == "idle");
    // It is reconnected from its cursor, and active again once it sends.
    relay.wait_until(WAIT, "a reconnect from cursor 1", || host.cursors.lock().unwrap().contains(&Some(1)));
    let (_, f) = alice.commit(2, Some(rev));
    host.push(2, f);
    relay.wait_until(WAIT, "the second commit", || relay.head() == 2);
    assert_eq!(relay.host_status(&hostname), "active");
}
