//! End-to-end scenarios of `relay serve`: fake host → relay → subscriber. Every input frame is marked
//! deliver or drop, and drops are asserted by reason, not only deliveries.

mod support;

use std::time::Duration;

use support::{Account, FakeHost, FakePlc, Relay, Seen, read_until_idle, subscribe};
use wire::frame::Event;

/// What a frame from the host must become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Deliver,
    Drop(&'static str),
}

fn type_of(seen: &Seen) -> &'static str {
    match seen {
        Seen::Event(e) => e.type_name(),
        Seen::Error(_) => "error",
    }
}

#[test]
fn validates_sequences_replays_and_survives_restart() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let pds = format!("http://{}", host.hostname());
    let mut alice = Account::new("did:plc:alice0000000000000000000", 1);
    let bob = Account::new("did:plc:bob00000000000000000000000", 2);
    let stranger = Account::new("did:plc:unknown000000000000000000", 3);
    let mallory = Account::new("did:plc:mallory000000000000000000", 4);
    plc.put(&alice.did, alice.did_doc(&pds));
    // Bob's document names another PDS: this host has no authority over him.
    plc.put(&bob.did, bob.did_doc("https://elsewhere.example.com"));

    let mut inputs: Vec<(Vec<u8>, Expect)> = Vec::new();
    inputs.push((alice.identity(1), Expect::Deliver));
    let (rev1, f) = alice.commit(2, None);
    inputs.push((f, Expect::Deliver));
    let (rev2, f) = alice.commit(3, Some(rev1.clone()));
    inputs.push((f, Expect::Deliver));
    // Signed by another key.
    let rev_bad = alice.next_rev();
    let ev = alice.commit_with(4, &rev_bad, Some(rev2.clone()), 64, &mallory.key);
    inputs.push((Event::Commit(ev).encode().unwrap(), Expect::Drop("bad_signature")));
    // Valid signature, but rev1 again: not newer than the stored rev.
    let ev = alice.commit_with(5, &rev1, None, 64, &alice.key);
    inputs.push((Event::Commit(ev).encode().unwrap(), Expect::Drop("stale_rev")));
    let rev_b = alice.next_rev();
    let ev = bob.commit_with(6, &rev_b, None, 64, &bob.key);
    inputs.push((Event::Commit(ev).encode().unwrap(), Expect::Drop("wrong_host")));
    // The event names Bob as repo, the signed commit is Alice's.
    let rev_m = alice.next_rev();
    let mut ev = alice.commit_with(7, &rev_m, None, 64, &alice.key);
    ev.repo = bob.did.clone();
    inputs.push((Event::Commit(ev).encode().unwrap(), Expect::Drop("repo_mismatch")));
    // Well-framed DAG-CBOR that is not a lexicon-shaped #commit: skipped (broken framing ends the
    // connection instead: `broken_framing_and_error_frames_end_the_connection`).
    let mut shapeless = wire::cbor::to_vec(&serde_json::json!({"op": 1, "t": "#commit"})).unwrap();
    shapeless.extend(wire::cbor::to_vec(&serde_json::json!({"seq": 8, "repo": "did:plc:x"})).unwrap());
    inputs.push((shapeless, Expect::Drop("malformed_frame")));
    inputs.push((alice.sync(9, &rev2), Expect::Deliver));
    inputs.push((alice.account(10, true), Expect::Deliver));
    let ev = stranger.commit_with(11, &stranger_rev(), None, 64, &stranger.key);
    inputs.push((Event::Commit(ev).encode().unwrap(), Expect::Drop("identity_unresolved")));
    // A frame whose seq goes backwards on the connection.
    inputs.push((alice.account(4, true), Expect::Drop("seq_not_increasing")));
    let (rev3, f) = alice.commit(13, Some(rev2.clone()));
    inputs.push((f, Expect::Deliver));
    for (i, (frame, _)) in inputs.iter().enumerate() {
        host.push(i as u64 + 1, frame.clone());
    }

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &[]);
    let upstream = inputs.len() as u64;
    relay.wait_until(Duration::from_secs(20), "all frames processed", || {
        relay.metric("relay_events_relayed_total", "") + relay.metric("relay_events_dropped_total", "") >= upstream
    });

    // Drops, by reason: each expected once, nothing else.
    let mut want_drops: Vec<&str> =
        inputs.iter().filter_map(|(_, e)| if let Expect::Drop(r) = e { Some(*r) } else { None }).collect();
    want_drops.sort_unstable();
    for reason in &want_drops {
        assert_eq!(relay.metric("relay_events_dropped_total", &format!("reason=\"{reason}\"")), 1, "{reason}");
    }
    assert_eq!(relay.metric("relay_events_dropped_total", ""), want_drops.len() as u64);

    // Deliveries, in order, with relay seqs 1..n.
    let want: Vec<&Vec<u8>> = inputs.iter().filter(|(_, e)| *e == Expect::Deliver).map(|(f, _)| f).collect();
    let mut sub = subscribe(relay.port, Some("0"));
    let got = read_until_idle(&mut sub, Duration::from_millis(500));
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (i, (seen, frame)) in got.iter().zip(&want).enumerate() {
        let Seen::Event(mut original) = support::decode(frame) else { panic!() };
        original.set_seq(i as i64 + 1);
        let Seen::Event(e) = seen else { panic!("{seen:?}") };
        assert_eq!(e, &original, "delivery {i} is the host's event with the relay seq");
    }
    assert_eq!(
        got.iter().map(type_of).collect::<Vec<_>>(),
        ["#identity", "#commit", "#commit", "#sync", "#account", "#commit"]
    );

    // Replay from a middle cursor, a future cursor, a bad cursor.
    let mut sub = subscribe(relay.port, Some("3"));
    let tail: Vec<i64> = read_until_idle(&mut sub, Duration::from_millis(500)).iter().filter_map(Seen::seq).collect();
    assert_eq!(tail, vec![4, 5, 6]);
    let mut sub = subscribe(relay.port, Some("999"));
    let seen = read_until_idle(&mut sub, Duration::from_millis(500));
    assert!(matches!(seen.as_slice(), [Seen::Error(e)] if e == "FutureCursor"), "{seen:?}");
    let (status, body) = relay.get("/xrpc/com.atproto.sync.subscribeRepos?cursor=abc");
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"], "InvalidRequest");
    let (status, body) = relay.get("/xrpc/_health");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["seq"], 6);
    assert_eq!(relay.get("/xrpc/com.atproto.sync.requestCrawl").0, 400, "requestCrawl is POST only");
    assert_eq!(relay.get("/xrpc/com.atproto.sync.getBlob").0, 501);

    // Live: a subscriber without cursor gets only new events, once.
    let mut live = subscribe(relay.port, None);
    let (rev4, f) = alice.commit(14, Some(rev3.clone()));
    host.push(14, f);
    let seen = read_until_idle(&mut live, Duration::from_millis(700));
    assert_eq!(seen.iter().filter_map(Seen::seq).collect::<Vec<_>>(), vec![7]);

    // Key rotation: the cached key no longer verifies, so the document is fetched again once and the
    // commit signed with the new key is relayed.
    let mut rotated = Account::new(alice.did.as_str(), 9);
    for _ in 0..10 {
        rotated.next_rev();
    }
    plc.put(&rotated.did, rotated.did_doc(&pds));
    let (rev5, f) = rotated.commit(15, Some(rev4));
    host.push(15, f);
    let seen = read_until_idle(&mut live, Duration::from_millis(700));
    assert_eq!(seen.iter().filter_map(Seen::seq).collect::<Vec<_>>(), vec![8], "signed with the rotated key");
    // Fetches: alice's first use, the rotation, bob's first use, and the badly signed frame's re-fetch
    // unless it was decided together with alice's first frames (frames of a host are decided at
    // once) and so shared their fresh fetch (`joined`).
    let resolved = relay.metric("relay_identity_lookups_total", "result=\"resolved\"");
    assert!((3..=4).contains(&resolved), "{resolved} identity fetches");

    // Restart: the host is resumed after its last processed seq, the relay seq continues.
    relay.stop();
    let (_, f) = rotated.commit(16, Some(rev5));
    host.push(16, f);
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &[]);
    relay.wait_until(Duration::from_secs(20), "post-restart event", || {
        relay.metric("relay_events_relayed_total", "") >= 1
    });
    let cursors = host.cursors.lock().unwrap().clone();
    assert_eq!(cursors, vec![None, Some(15)], "first connection live, then resumed after seq 15");
    let mut sub = subscribe(relay.port, Some("0"));
    let seqs: Vec<i64> = read_until_idle(&mut sub, Duration::from_millis(500)).iter().filter_map(Seen::seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "no gap, no repeat across the restart");
    relay.stop();
}

fn stranger_rev() -> wire::Tid {
    wire::Tid::from_u64(1_700_000_000_000_000 << 10)
}

/// The subscriber rules: a slow subscriber whose live queue overflows goes back to reading from the
/// store and gets every event, in order, with no gap and no duplicate; a stalled one (reads nothing)
/// is closed after the stall timeout; the others, and `/xrpc/_health`, are unaffected.
#[test]
fn slow_subscribers_fall_back_to_the_store_and_stalled_ones_are_closed() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:slowalice0000000000000000", 5);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let dir = tempfile::tempdir().unwrap();
    let args = ["--subscriber-queue", "1024", "--subscriber-stall-timeout", "2s"];
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &args);
    let events = 4000u64;

    // The slow subscriber reads one frame every 2 ms (500 events/s), well below the relay's rate.
    let mut slow = subscribe(relay.port, None);
    let mut healthy = subscribe(relay.port, None);
    let stalled = subscribe(relay.port, None);
    let slow_reader = std::thread::spawn(move || {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = slow.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        }
        let mut seen = Vec::new();
        while (seen.len() as u64) < events {
            match slow.read() {
                Ok(tungstenite::Message::Binary(b)) => seen.push(support::decode(&b)),
                Ok(tungstenite::Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    });
    let reader = std::thread::spawn(move || read_until_idle(&mut healthy, Duration::from_secs(3)));
    // /xrpc/_health is polled throughout the burst; every poll must answer 200.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_on_drop = support::StopOnDrop(std::sync::Arc::clone(&stop));
    let health = {
        let (port, stop) = (relay.port, std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                statuses.push(support::http_get(port, "/xrpc/_health").map_or(0, |r| r.0));
                std::thread::sleep(Duration::from_millis(20));
            }
            statuses
        })
    };
    // ~32 MB of events: more than the slow subscriber's queue and loopback socket buffers hold.
    let mut since = None;
    for seq in 1..=events {
        let rev = alice.next_rev();
        let ev = alice.commit_with(seq, &rev, since.replace(rev.clone()), 8 * 1024, &alice.key.clone());
        host.push(seq, Event::Commit(ev).encode().unwrap());
    }
    relay.wait_until(Duration::from_secs(60), "all relayed", || {
        relay.metric("relay_events_relayed_total", "") >= events
    });
    let healthy_seen = reader.join().unwrap();
    assert_eq!(healthy_seen.len() as u64, events, "the healthy subscriber got everything");
    let slow_seen = slow_reader.join().unwrap();
    let seqs: Vec<i64> = slow_seen.iter().filter_map(Seen::seq).collect();
    assert_eq!(seqs, (1..=events as i64).collect::<Vec<_>>(), "the slow subscriber got everything, in order");
    assert!(relay.metric("relay_subscriber_fallbacks_total", "") >= 1, "it went back to the store");
    relay.wait_until(Duration::from_secs(20), "the stalled subscriber closed", || {
        relay.metric("relay_subscribers_closed_total", "consumer_too_slow") == 1
    });
    stop.store(true, std::sync::atomic::Ordering::Release);
    let statuses = health.join().unwrap();
    assert!(statuses.len() > 5 && statuses.iter().all(|s| *s == 200), "health during the burst: {statuses:?}");
    drop(stalled);
    relay.stop();
}

#[test]
fn one_core_layout_relays_and_pins_rocksdb_threads() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:onecore0000000000000000000", 6);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let (rev1, f) = alice.commit(1, None);
    host.push(1, f);
    let (_, f) = alice.commit(2, Some(rev1));
    host.push(2, f);
    let dir = tempfile::tempdir().unwrap();
    let layout = ["--ingest-cores", "0", "--fanout-cores", "0", "--sequencer-core", "0", "--compaction-core", "0"];
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &layout);
    relay.wait_until(Duration::from_secs(20), "relayed", || relay.metric("relay_events_relayed_total", "") >= 2);
    let mut sub = subscribe(relay.port, Some("0"));
    let seqs: Vec<i64> = read_until_idle(&mut sub, Duration::from_millis(500)).iter().filter_map(Seen::seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    let threads = relay.threads();
    let rocks: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("rocksdb:")).collect();
    assert!(!rocks.is_empty(), "{threads:?}");
    assert!(rocks.iter().all(|(_, cpus)| cpus == "0"), "RocksDB threads pinned to the compaction core: {threads:?}");
    assert!(threads.iter().filter(|(n, _)| n.starts_with("relay-cpu")).all(|(_, cpus)| cpus == "0"), "{threads:?}");
    relay.stop();
}

#[test]
fn tls_upstream_with_a_test_ca() {
    let ca = support::TestCa::new();
    let plc = FakePlc::start();
    let host = FakeHost::start_tls(&ca);
    let mut alice = Account::new("did:plc:tlsalice000000000000000000", 8);
    // The DID document names the host by its https URL; authority compares host and port.
    plc.put(&alice.did, alice.did_doc(&format!("https://{}", host.hostname())));
    let (rev1, f) = alice.commit(1, None);
    host.push(1, f);
    let (_, f) = alice.commit(2, Some(rev1));
    host.push(2, f);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let upstream = format!("wss://{}", host.hostname());

    // Without the test CA the handshake fails: nothing is relayed.
    let relay = Relay::start(&dir.path().join("untrusted"), &upstream, &plc.url, &[]);
    relay.wait_until(Duration::from_secs(20), "a failed connect", || {
        relay.metric("relay_upstream_connects_total", "result=\"error\"") >= 1
    });
    assert_eq!(relay.metric("relay_events_relayed_total", ""), 0);
    relay.stop();

    let relay = Relay::start(&dir.path().join("data"), &upstream, &plc.url, &["--tls-ca", ca_file.to_str().unwrap()]);
    relay.wait_until(Duration::from_secs(20), "relayed over TLS", || {
        relay.metric("relay_events_relayed_total", "") >= 2
    });
    let mut sub = subscribe(relay.port, Some("0"));
    let seqs: Vec<i64> = read_until_idle(&mut sub, Duration::from_millis(500)).iter().filter_map(Seen::seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    relay.stop();
}

/// Hundreds of hosts at start: the startup ramp spreads the connections over its window (each host
/// at a hashed point of it) and `/xrpc/_health` answers throughout.
#[test]
fn startup_ramp_spreads_hundreds_of_hosts_and_health_stays_responsive() {
    let plc = FakePlc::start();
    let hosts: Vec<FakeHost> = (0..300).map(|_| FakeHost::start()).collect();
    let names: Vec<String> = hosts.iter().map(FakeHost::hostname).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    // 300 hosts on one shard: a 10 s ramp becomes a window of 10 × 299/1000 ≈ 3 s.
    let layout = ["--ingest-cores", "0", "--startup-ramp-secs", "10"];
    let started = std::time::Instant::now();
    let relay = Relay::start_hosts(support::free_port(), &dir.path().join("data"), &name_refs, &plc.url, &layout);
    let mut health = Vec::new();
    let connected = |hosts: &[FakeHost]| hosts.iter().filter(|h| !h.connected_at.lock().unwrap().is_empty()).count();
    while connected(&hosts) < hosts.len() {
        assert!(started.elapsed() < Duration::from_secs(30), "only {} hosts connected", connected(&hosts));
        let t = std::time::Instant::now();
        let (status, _) = relay.get("/xrpc/_health");
        health.push((status, t.elapsed()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let times: Vec<Duration> = hosts.iter().map(|h| h.connected_at.lock().unwrap()[0] - started).collect();
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    assert!(last - first > Duration::from_secs(2), "connections spread over {:?}", last - first);
    // No burst: no 100 ms slice holds more than a sixth of the hosts.
    let most_in_slice = (0..40)
        .map(|i| {
            let lo = first + Duration::from_millis(100 * i);
            times.iter().filter(|t| **t >= lo && **t < lo + Duration::from_millis(100)).count()
        })
        .max()
        .unwrap();
    assert!(most_in_slice <= 50, "{most_in_slice} hosts connected within one 100 ms slice");
    assert!(health.len() > 10 && health.iter().all(|(s, _)| *s == 200), "health during the ramp: {health:?}");
    relay.stop();
}

/// A host that cannot be reached becomes `offline` after the configured number of failures.
#[test]
fn unreachable_host_goes_offline() {
    let plc = FakePlc::start();
    let closed = support::free_port(); // nothing listens there
    let dir = tempfile::tempdir().unwrap();
    let host = format!("localhost:{closed}");
    let relay = Relay::start(&dir.path().join("data"), &host, &plc.url, &["--offline-after-failures", "2"]);
    relay.wait_until(Duration::from_secs(30), "host offline", || {
        let (_, body) = relay.get(&format!("/xrpc/com.atproto.sync.getHostStatus?hostname={host}"));
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["status"] == "offline"
    });
    assert!(relay.metric("relay_upstream_connects_total", "result=\"error\"") >= 2);
    relay.stop();
}
