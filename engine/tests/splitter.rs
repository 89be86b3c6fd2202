//! `relay splitter`, the fan-out tier: relay → splitter → splitter serve the same frames under the
//! same seqs; consumers move between them with their cursor; a splitter survives kill -9 and fails
//! over between upstreams without a gap or a duplicate; it passes the sync methods, requestCrawl and
//! the relay's admin calls on; an upstream whose sequence goes back stops it until an operator
//! resets the cursor.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::{ADMIN_PASSWORD, Account, FakeHost, FakePlc, Relay, StopOnDrop, subscribe};
use wire::frame::{AccountEvent, Event};

const WAIT: Duration = Duration::from_secs(60);

/// Every frame served from `cursor=0`, by seq (the whole store), read until 1 s of silence.
fn stored(port: u16) -> BTreeMap<i64, Vec<u8>> {
    let mut sub = subscribe(port, Some("0"));
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = sub.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    }
    let mut out = BTreeMap::new();
    while let Ok(m) = sub.read() {
        if let tungstenite::Message::Binary(b) = m
            && let support::Seen::Event(e) = support::decode(&b)
        {
            out.insert(e.seq().unwrap(), b.to_vec());
        }
    }
    out
}

/// A host offering `rounds` rounds of commits of `accounts` accounts, `per_round` ms apart, on a
/// thread; returns how many it offered.
fn produce(host: &FakeHost, mut accounts: Vec<Account>, rounds: usize, pause_ms: u64) -> std::thread::JoinHandle<u64> {
    let push = host.pusher();
    std::thread::spawn(move || {
        let mut seq = 0u64;
        let mut revs: Vec<Option<wire::Tid>> = vec![None; accounts.len()];
        for _ in 0..rounds {
            for (i, a) in accounts.iter_mut().enumerate() {
                seq += 1;
                let (rev, f) = a.commit(seq, revs[i].take());
                revs[i] = Some(rev);
                push(seq, f);
            }
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
        seq
    })
}

fn accounts(plc: &FakePlc, host: &FakeHost, n: usize, seed: u8) -> Vec<Account> {
    (0..n)
        .map(|i| {
            let a = Account::new(&format!("did:plc:split{seed}x{i:0>17}"), seed.wrapping_add(i as u8));
            plc.put(&a.did, a.did_doc(&format!("http://{}", host.hostname())));
            a
        })
        .collect()
}

/// Relay → splitter → splitter: the second splitter from `cursor=0` holds exactly the relay's frames,
/// byte for byte, under the same seqs; Jetstream v2 seqs are the same on both; the sync methods,
/// requestCrawl and the relay's admin calls are passed on; the splitter names itself a relay.
#[test]
fn a_chain_of_splitters_serves_the_relays_frames_byte_for_byte() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let accts = accounts(&plc, &host, 4, 10);
    let dir = tempfile::tempdir().unwrap();
    let relay =
        Relay::start(&dir.path().join("relay"), &host.hostname(), &plc.url, &["--admin-password", ADMIN_PASSWORD]);
    let first = Relay::start_splitter(support::free_port(), &dir.path().join("a"), &[relay.ws_url()], &[]);
    let second = Relay::start_splitter(
        support::free_port(),
        &dir.path().join("b"),
        &[first.ws_url()],
        &["--admin-password", ADMIN_PASSWORD],
    );
    let offered = produce(&host, accts, 20, 20).join().unwrap();
    relay.wait_until(WAIT, "relayed", || relay.head() >= offered as i64);
    second.wait_until(WAIT, "the second splitter caught up", || second.head() >= offered as i64);
    let (r, a, b) = (stored(relay.port), stored(first.port), stored(second.port));
    assert_eq!(r.len(), offered as usize);
    assert!(r == a && a == b, "the same frames under the same seqs: {} {} {}", r.len(), a.len(), b.len());

    // Jetstream v2 seqs derive from the upstream's seq: the same on the relay and the splitter.
    let v2 = "/xrpc/network.bsky.jetstream.subscribeEvents?cursor=0";
    let seqs = |port: u16| {
        let url = format!("ws://127.0.0.1:{port}{v2}");
        let (mut ws, _) = tungstenite::connect(url).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
        }
        let mut out = Vec::new();
        while let Ok(m) = ws.read() {
            if let tungstenite::Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                out.push(v["payload"]["seq"].as_u64().unwrap());
            }
        }
        out
    };
    assert_eq!(seqs(second.port), seqs(relay.port));

    // Passed on: the sync methods (the relay's answers, as they are), a getRepo redirect (returned,
    // not followed), requestCrawl, the relay's admin calls.
    for path in ["/xrpc/com.atproto.sync.listRepos?limit=2", "/xrpc/com.atproto.sync.listHosts"] {
        assert_eq!(second.get(path), relay.get(path), "{path}");
    }
    let (_, repos) = relay.get_json("/xrpc/com.atproto.sync.listRepos");
    let did = repos["repos"][0]["did"].as_str().unwrap().to_owned();
    let path = format!("/xrpc/com.atproto.sync.getRepoStatus?did={did}");
    assert_eq!(second.get(&path), relay.get(&path));
    let raw = support::http_get_raw(second.port, &format!("/xrpc/com.atproto.sync.getRepo?did={did}")).unwrap();
    assert!(raw.starts_with("HTTP/1.1 302") && raw.contains("Location: http://localhost:"), "{raw}");
    let (status, v) = second.post("/xrpc/com.atproto.sync.requestCrawl", r#"{"hostname":"1.2.3.4"}"#);
    assert_eq!((status, v["error"].as_str()), (400, Some("InvalidRequest")), "the relay's answer: {v}");
    assert!(relay.metric("relay_request_crawl_total", "result=\"invalid\"") >= 1, "it reached the relay");
    let (status, hosts) = second.admin_get("pds/list");
    assert_eq!(status, 200, "{hosts}");
    assert_eq!(hosts["hosts"][0]["hostname"], host.hostname(), "the relay's admin call, passed on");
    let (status, up) = second.admin_get("upstream/status");
    assert_eq!((status, up["connected"].as_bool(), up["seq"].as_u64()), (200, Some(true), Some(offered)), "{up}");
    let head = support::http_get_raw(second.port, "/xrpc/_health").unwrap();
    assert!(head.contains("(atproto-relay)"), "a splitter names itself a relay: {head}");
    relay.stop();
    first.stop();
    second.stop();
}

/// A consumer reads from the relay, then the first splitter, then the second, each time with the
/// last seq it got as its cursor: every event once, in order.
#[test]
fn a_consumer_moves_between_the_relay_and_splitters_with_its_cursor() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let accts = accounts(&plc, &host, 3, 40);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &host.hostname(), &plc.url, &[]);
    let a = Relay::start_splitter(support::free_port(), &dir.path().join("a"), &[relay.ws_url()], &[]);
    let b = Relay::start_splitter(support::free_port(), &dir.path().join("b"), &[a.ws_url()], &[]);
    let offered = produce(&host, accts, 30, 10).join().unwrap() as i64;
    b.wait_until(WAIT, "caught up", || b.head() >= offered);
    let mut got: Vec<i64> = Vec::new();
    let mut cursor = 0i64;
    for (port, take) in [(relay.port, 25), (a.port, 25), (b.port, usize::MAX)] {
        let mut sub = subscribe(port, Some(&cursor.to_string()));
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = sub.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
        }
        let mut n = 0;
        while n < take {
            let Ok(tungstenite::Message::Binary(b)) = sub.read() else { break };
            let support::Seen::Event(e) = support::decode(&b) else { continue };
            got.push(e.seq().unwrap());
            cursor = e.seq().unwrap();
            n += 1;
        }
    }
    assert_eq!(got, (1..=offered).collect::<Vec<_>>(), "no gap, no duplicate");
    relay.stop();
    a.stop();
    b.stop();
}

/// kill -9 of a splitter under load, three times: after each restart it resumes from its store, and
/// in the end it holds exactly the relay's frames; a second splitter's subscriber (of the same relay)
/// saw every seq once while the first one crashed.
#[test]
fn kill_9_of_a_splitter_under_load_loses_nothing() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let accts = accounts(&plc, &host, 4, 70);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &host.hostname(), &plc.url, &[]);
    let port = support::free_port();
    let data = dir.path().join("a");
    let fsync = ["--fsync", "always"];
    let mut a = Relay::start_splitter(port, &data, &[relay.ws_url()], &fsync);
    let other = Relay::start_splitter(support::free_port(), &dir.path().join("b"), &[relay.ws_url()], &[]);
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(Arc::clone(&stop));
    let reader = {
        let (seen, stop, port) = (Arc::clone(&seen), Arc::clone(&stop), other.port);
        std::thread::spawn(move || {
            let mut sub = subscribe(port, None);
            if let tungstenite::stream::MaybeTlsStream::Plain(s) = sub.get_ref() {
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            }
            while !stop.load(Ordering::Acquire) {
                if let Ok(tungstenite::Message::Binary(b)) = sub.read()
                    && let support::Seen::Event(e) = support::decode(&b)
                {
                    seen.lock().unwrap().push(e.seq().unwrap());
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let producer = produce(&host, accts, 150, 20);
    for kill in 0..3 {
        std::thread::sleep(Duration::from_millis(700 + 300 * kill));
        a.kill();
        a = Relay::start_splitter(port, &data, &[relay.ws_url()], &fsync);
    }
    let offered = producer.join().unwrap() as i64;
    relay.wait_until(WAIT, "relayed", || relay.head() >= offered);
    a.wait_until(WAIT, "the splitter caught up", || a.head() >= offered);
    other.wait_until(WAIT, "the other caught up", || other.head() >= offered);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    assert!(stored(a.port) == stored(relay.port), "the same frames under the same seqs after 3 kills");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, (1..=offered).collect::<Vec<_>>(), "the other splitter's subscriber: every seq once");
    relay.stop();
    a.stop();
    other.stop();
}

/// A splitter with two upstreams (a splitter of the relay, then the relay): its first upstream is
/// killed under load; it goes on from the relay with no gap and no duplicate.
#[test]
fn a_splitter_fails_over_to_its_next_upstream() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let accts = accounts(&plc, &host, 4, 100);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), &host.hostname(), &plc.url, &[]);
    let upstream = Relay::start_splitter(support::free_port(), &dir.path().join("up"), &[relay.ws_url()], &[]);
    let c =
        Relay::start_splitter(support::free_port(), &dir.path().join("c"), &[upstream.ws_url(), relay.ws_url()], &[]);
    let producer = produce(&host, accts, 100, 20);
    std::thread::sleep(Duration::from_millis(800));
    upstream.kill();
    let offered = producer.join().unwrap() as i64;
    relay.wait_until(WAIT, "relayed", || relay.head() >= offered);
    c.wait_until(WAIT, "caught up from the relay", || c.head() >= offered);
    assert!(stored(c.port) == stored(relay.port), "no gap, no duplicate across the failover");
    let (_, health) = c.get_json("/xrpc/_health");
    assert_eq!(health["upstream"], relay.ws_url(), "{health}");
    relay.stop();
    c.stop();
}

fn account_frame(seq: u64, did: &str) -> Vec<u8> {
    Event::Account(AccountEvent {
        seq: seq as i64,
        did: wire::Did::new(did).unwrap(),
        time: "2026-01-01T00:00:00Z".into(),
        active: true,
        status: None,
    })
    .encode()
    .unwrap()
}

/// An upstream whose sequence goes back (it was reset) stops ingest: `_health` is degraded with the
/// reason, nothing more is kept, until the operator resets the cursor (`POST
/// /admin/upstream/resetCursor`); a cursor below what is kept deletes the frames above it and
/// closes the subscribers, and ingest goes on in the upstream's new sequence. `FutureCursor` from the
/// upstream stops it the same way.
#[test]
fn an_upstream_sequence_reset_stops_ingest_until_the_operator_resets_the_cursor() {
    let did = "did:plc:resetseq00000000000000000";
    let old = FakeHost::start();
    for seq in 1..=5 {
        old.push(seq, account_frame(seq, did));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s");
    let port = support::free_port();
    let args = ["--admin-password", ADMIN_PASSWORD];
    let s = Relay::start_splitter(port, &data, &[format!("ws://{}", old.hostname())], &args);
    s.wait_until(WAIT, "5 kept", || s.head() == 5);
    s.stop();
    // The upstream's sequence was reset: it now sends 1, 2, 3 again, whatever the cursor.
    let reset = FakeHost::start();
    reset.mode.ignore_cursor.store(true, Ordering::Release);
    let new_did = "did:plc:resetseqnew000000000000000";
    for seq in 1..=3 {
        reset.push(seq, account_frame(seq, new_did));
    }
    let s = Relay::start_splitter(port, &data, &[format!("ws://{}", reset.hostname())], &args);
    s.wait_until(WAIT, "degraded", || s.get("/xrpc/_health").0 == 503);
    let (_, health) = s.get_json("/xrpc/_health");
    assert_eq!(health["reason"], "upstream_stopped", "{health}");
    assert!(health["message"].as_str().unwrap().contains("went back from 5 to 1"), "{health}");
    let (_, status) = s.admin_get("upstream/status");
    assert!(status["stopped"].is_string(), "{status}");
    assert_eq!(stored(s.port).len(), 5, "nothing more kept");
    // The operator resets to 0: the old frames go, the new sequence is followed.
    let (code, v) = s.admin_post("upstream/resetCursor", json!({ "cursor": 0 }));
    assert_eq!(code, 200, "{v}");
    s.wait_until(WAIT, "healthy again", || s.get("/xrpc/_health").0 == 200);
    s.wait_until(WAIT, "the new sequence kept", || s.head() == 3);
    let kept = stored(s.port);
    assert_eq!(kept.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(kept[&1], account_frame(1, new_did), "the upstream's new frames, byte for byte");
    s.stop();

    // FutureCursor: an upstream behind what the splitter holds.
    let behind = FakeHost::start();
    behind.mode.future_cursor.store(true, Ordering::Release);
    behind.push(1, account_frame(1, did));
    let s = Relay::start_splitter(port, &data, &[format!("ws://{}", behind.hostname())], &args);
    s.wait_until(WAIT, "degraded", || s.get("/xrpc/_health").0 == 503);
    assert!(s.metric("relay_upstream_error_frames_total", "error=\"FutureCursor\"") >= 1);
    s.stop();
}
