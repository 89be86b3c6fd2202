//! Commit validation: every rejection by its reason beside valid traffic, `--lenient-sync`, and
//! discontinuous commits the spec says to relay.

use std::time::Duration;

use crate::support::{self, FakeHost, FakePlc, Relay, Seen, read_until_idle, subscribe};
use crate::{Expect, Script, account, create, expected_last_commit, now_us, without_block};
use wire::frame::Event;
use wire::testkit::{Op, Signer, SigningKey};

#[test]
fn every_rejection_has_its_reason_and_valid_traffic_flows() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let other_host = FakeHost::start();
    let pds = format!("http://{}", host.hostname());
    let mut alice = account("alice", SigningKey::k256(1));
    let mut carol = account("carol", SigningKey::p256());
    let mut erin = account("erin", SigningKey::k256(5));
    let mut frank = account("frank", SigningKey::k256(6));
    let bob = account("bob", SigningKey::k256(2));
    let mut future = account("future", SigningKey::k256(7));
    future.set_clock(now_us() + 600_000_000);
    for a in [&alice, &carol, &erin, &frank, &future] {
        plc.put(&a.did, a.did_doc(&pds));
    }
    plc.put(&bob.did, bob.did_doc("https://elsewhere.example.com"));
    let mallory = SigningKey::k256(66);

    let mut s = Script::default();
    use Expect::{Deliver, Drop};
    // Valid traffic: genesis and chained commits of a k256 and a p256 account, updates and deletes.
    let ops = create(&mut alice, 200);
    s.push(Event::Commit(alice.commit(s.seq(), &ops, &Signer::Own)), Deliver);
    let first = format!("app.bsky.feed.post/{}", alice.next_rkey());
    let ops = vec![Op::Create { path: first.clone(), bytes: 100 }];
    s.push(Event::Commit(alice.commit(s.seq(), &ops, &Signer::Own)), Deliver);
    let ops = create(&mut carol, 300);
    s.push(Event::Commit(carol.commit(s.seq(), &ops, &Signer::Own)), Deliver);
    let ops = vec![Op::Update { path: first.clone() }];
    s.push(Event::Commit(alice.commit(s.seq(), &ops, &Signer::Own)), Deliver);
    let ops = create(&mut alice, 50);
    let stale = Event::Commit(alice.commit(s.seq(), &ops, &Signer::Own));
    s.push(stale.clone(), Deliver);

    // Signatures: another key, a high-S signature, a k256 signature for a p256 account.
    let mut fork = alice.clone();
    let ops = create(&mut fork, 50);
    s.push(Event::Commit(fork.commit(s.seq(), &ops, &Signer::Other(&mallory))), Drop("bad_signature"));
    let mut fork = alice.clone();
    let ops = create(&mut fork, 50);
    s.push(Event::Commit(fork.commit(s.seq(), &ops, &Signer::OwnHighS)), Drop("bad_signature"));
    let mut fork = carol.clone();
    let ops = create(&mut fork, 50);
    s.push(Event::Commit(fork.commit(s.seq(), &ops, &Signer::Other(&mallory))), Drop("bad_signature"));

    // Structure: op CID not in the tree, missing MST block, commit CID ≠ CAR root, repo ≠ commit DID.
    let mut fork = alice.clone();
    let ops = create(&mut fork, 50);
    let mut ev = fork.commit(s.seq(), &ops, &Signer::Own);
    ev.ops[0].cid = Some(ev.commit);
    s.push(Event::Commit(ev), Drop("op_cid_mismatch"));
    let mut fork = alice.clone();
    let ops = create(&mut fork, 50);
    let mut ev = fork.commit(s.seq(), &ops, &Signer::Own);
    let data = fork.data();
    without_block(&mut ev, &data);
    s.push(Event::Commit(ev), Drop("missing_mst_block"));
    let mut fork = alice.clone();
    let ops = create(&mut fork, 50);
    let mut ev = fork.commit(s.seq(), &ops, &Signer::Own);
    ev.commit = ev.ops[0].cid.unwrap();
    s.push(Event::Commit(ev), Drop("commit_not_in_car"));
    let mut fork = alice.clone();
    let ops = create(&mut fork, 50);
    let mut ev = fork.commit(s.seq(), &ops, &Signer::Own);
    ev.repo = carol.did.clone();
    s.push(Event::Commit(ev), Drop("repo_mismatch"));

    // Records and paths: a created record missing from `blocks`, an op path that is not
    // `<NSID>/<rkey>` (specs/repository). (A commit that breaks the account's chain is relayed:
    // `discontinuous_commits_are_relayed_and_the_account_follows_them`.)
    let mut fork = alice.clone();
    let ops = create(&mut fork, 50);
    let mut ev = fork.commit(s.seq(), &ops, &Signer::Own);
    let record = ev.ops[0].cid.unwrap();
    without_block(&mut ev, &record);
    s.push(Event::Commit(ev), Drop("missing_record_block"));
    let list = wire::cbor::to_vec(&serde_json::json!([1, 2, 3])).unwrap();
    let big = wire::cbor::to_vec(&serde_json::json!({"$type": "x.y.z", "text": "x".repeat(1_000_001)})).unwrap();
    for (i, block) in [list, big, vec![0xa1, 0x61, 0x61, 0xf9, 0x3c, 0x00]].into_iter().enumerate() {
        // A list, a map over 1,000,000 bytes, a map holding a half-precision float (not DAG-CBOR).
        let mut fork = alice.clone();
        let ops = vec![Op::CreateBlock { path: format!("app.bsky.feed.post/bad{i}"), block }];
        s.push(Event::Commit(fork.commit(s.seq(), &ops, &Signer::Own)), Drop("bad_record"));
    }
    for bad in ["app.bsky.feed.post/a/b", "app.bsky.feed.post/..", "notansid/3jzfcijpj2z2a"] {
        let mut fork = alice.clone();
        let ops = vec![Op::Create { path: bad.into(), bytes: 50 }];
        s.push(Event::Commit(fork.commit(s.seq(), &ops, &Signer::Own)), Drop("bad_path"));
    }
    let Event::Commit(mut old) = stale else { unreachable!() };
    old.seq = s.seq();
    s.push(Event::Commit(old), Drop("stale_rev"));

    // Limits: future rev, too many ops, blocks over 2 MB, a frame over 5 MB.
    let ops = create(&mut future, 50);
    s.push(Event::Commit(future.commit(s.seq(), &ops, &Signer::Own)), Drop("future_rev"));
    let mut fork = alice.clone();
    let ops: Vec<Op> = (0..201).flat_map(|_| create(&mut fork, 10)).collect();
    s.push(Event::Commit(fork.commit(s.seq(), &ops, &Signer::Own)), Drop("too_many_ops"));
    let mut fork = alice.clone();
    let ops = create(&mut fork, 2_100_000);
    s.push(Event::Commit(fork.commit(s.seq(), &ops, &Signer::Own)), Drop("blocks_too_big"));
    let mut fork = alice.clone();
    let ops = create(&mut fork, 5_100_000);
    let huge = Event::Commit(fork.commit(0, &ops, &Signer::Own)).encode().unwrap();
    s.push_raw(huge);

    // Authority: an account whose document names another PDS.
    let mut b = bob.clone();
    let ops = create(&mut b, 50);
    s.push(Event::Commit(b.commit(s.seq(), &ops, &Signer::Own)), Drop("wrong_host"));

    // Status: a deactivated account's commits are dropped until it is active again.
    let ops = create(&mut erin, 50);
    s.push(Event::Commit(erin.commit(s.seq(), &ops, &Signer::Own)), Deliver);
    s.push(Event::Account(erin.account(s.seq(), false, Some("deactivated"))), Deliver);
    let mut fork = erin.clone();
    let ops = create(&mut fork, 50);
    s.push(Event::Commit(fork.commit(s.seq(), &ops, &Signer::Own)), Drop("inactive_account"));
    s.push(Event::Account(erin.account(s.seq(), true, None)), Deliver);
    let ops = create(&mut erin, 50);
    s.push(Event::Commit(erin.commit(s.seq(), &ops, &Signer::Own)), Deliver);

    // #sync resets the account's state; commits continue from it.
    s.push(Event::Sync(alice.sync(s.seq())), Deliver);
    let ops = vec![Op::Delete { path: first }];
    s.push(Event::Commit(alice.commit(s.seq(), &ops, &Signer::Own)), Deliver);

    // Frank starts on this host.
    let ops = create(&mut frank, 50);
    s.push(Event::Commit(frank.commit(s.seq(), &ops, &Signer::Own)), Deliver);
    s.push(Event::Identity(frank.identity(s.seq())), Deliver);

    let frames = s.frames();
    for (seq, bytes, _, _) in &frames {
        host.push(*seq, bytes.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let relay =
        Relay::start_hosts(port, &dir.path().join("data"), &[&host.hostname(), &other_host.hostname()], &plc.url, &[]);
    let n = frames.len() as u64;
    relay.wait_until(Duration::from_secs(60), "every frame processed", || {
        relay.metric("relay_upstream_frames_total", "") >= n
            && relay.metric("relay_events_relayed_total", "") + relay.metric("relay_events_dropped_total", "") >= n
    });

    // Migration: Frank moves to the other host; his events from there are relayed, and the old host
    // no longer has authority over him.
    plc.put(&frank.did, frank.did_doc(&format!("http://{}", other_host.hostname())));
    let mut migrated = Vec::new();
    migrated.push((Event::Identity(frank.identity(1)), Deliver));
    let ops = create(&mut frank, 50);
    migrated.push((Event::Commit(frank.commit(2, &ops, &Signer::Own)), Deliver));
    for (i, (e, _)) in migrated.iter().enumerate() {
        other_host.push(i as u64 + 1, e.encode().unwrap());
    }
    let mut stray = frank.clone();
    let ops = create(&mut stray, 50);
    let late = Event::Commit(stray.commit(n as i64 + 1, &ops, &Signer::Own));
    relay.wait_until(Duration::from_secs(30), "migration relayed", || {
        relay.metric("relay_upstream_frames_total", "") >= n + 2
            && relay.metric("relay_events_relayed_total", "") + relay.metric("relay_events_dropped_total", "") >= n + 2
    });
    host.push(n + 1, late.encode().unwrap());
    // Nor can it speak for him in #account (his document resolves and names the other host).
    host.push(n + 2, Event::Account(frank.account(n as i64 + 2, false, Some("deleted"))).encode().unwrap());
    relay.wait_until(Duration::from_secs(30), "stray commit and #account processed", || {
        relay.metric("relay_events_dropped_total", "reason=\"wrong_host\"") >= 3
    });

    // Drops, by reason.
    let mut want: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (_, _, x, _) in &frames {
        if let Drop(r) = x {
            *want.entry(r).or_default() += 1;
        }
    }
    *want.entry("wrong_host").or_default() += 2; // the stray commit and #account from Frank's old host
    for (reason, count) in &want {
        assert_eq!(relay.metric("relay_events_dropped_total", &format!("reason=\"{reason}\"")), *count, "{reason}");
    }
    assert_eq!(relay.metric("relay_events_dropped_total", ""), want.values().sum::<u64>(), "no other drops");

    // Deliveries: relay seqs 1..n, and each account's events in its order, byte-for-byte the host's
    // events with the relay's seq (accounts of one host are decided at once, so different
    // accounts' events may interleave differently than the host sent them).
    let mut expected: Vec<Event> = frames.iter().filter(|f| f.2 == Deliver).filter_map(|f| f.3.clone()).collect();
    expected.extend(migrated.into_iter().map(|(e, _)| e));
    let mut sub = subscribe(relay.port, Some("0"));
    let got = read_until_idle(&mut sub, Duration::from_millis(700));
    assert_eq!(got.len(), expected.len(), "{:?}", got.iter().map(|g| g.seq()).collect::<Vec<_>>());
    let mut by_account: std::collections::HashMap<String, std::collections::VecDeque<Event>> = Default::default();
    for e in expected {
        by_account.entry(e.did().map(ToString::to_string).unwrap_or_default()).or_default().push_back(e);
    }
    for (i, seen) in got.iter().enumerate() {
        let Seen::Event(e) = seen else { panic!("{seen:?}") };
        assert_eq!(e.seq(), Some(i as i64 + 1), "delivery {i} has relay seq {}", i + 1);
        let account = e.did().map(ToString::to_string).unwrap_or_default();
        let mut want =
            by_account.get_mut(&account).and_then(|q| q.pop_front()).expect("an expected event of the account");
        want.set_seq(i as i64 + 1);
        assert_eq!(e, &want, "delivery {i}: the next event of {account}");
    }
    // The sync XRPC surface agrees with what was relayed.
    let json = |path: &str| {
        let (status, body) = relay.get(path);
        (status, serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default())
    };
    let mut listed = Vec::new();
    let mut path = "/xrpc/com.atproto.sync.listRepos?limit=2".to_owned();
    loop {
        let (status, page) = json(&path);
        assert_eq!(status, 200, "{page}");
        for r in page["repos"].as_array().unwrap() {
            listed.push(r["did"].as_str().unwrap().to_owned());
            assert!(r["head"].is_string() && r["rev"].is_string() && r["active"] == true, "{r}");
        }
        match page["cursor"].as_str() {
            Some(c) => path = format!("/xrpc/com.atproto.sync.listRepos?limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut want_listed: Vec<String> = [&alice, &carol, &erin, &frank].iter().map(|a| a.did.to_string()).collect();
    want_listed.sort();
    assert_eq!(listed, want_listed, "accounts with relayed commits, in DID order");
    assert_eq!(json("/xrpc/com.atproto.sync.listRepos?limit=0").0, 400);
    let (status, st) = json(&format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", alice.did));
    assert_eq!(
        (status, st["active"].as_bool(), st["rev"].as_str()),
        (200, Some(true), alice.rev().map(|r| r.as_str()))
    );
    let (status, err) = json(&format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", bob.did));
    assert_eq!((status, err["error"].as_str()), (400, Some("RepoNotFound")));
    assert_eq!(json("/xrpc/com.atproto.sync.getRepoStatus?did=nope").1["error"], "InvalidRequest");
    let last_alice = expected_last_commit(&got, &alice.did);
    let (status, latest) = json(&format!("/xrpc/com.atproto.sync.getLatestCommit?did={}", alice.did));
    assert_eq!(
        (status, latest["cid"].as_str(), latest["rev"].as_str()),
        (200, Some(last_alice.as_str()), alice.rev().map(|r| r.as_str()))
    );
    let (status, listed_hosts) = json("/xrpc/com.atproto.sync.listHosts");
    assert_eq!(status, 200);
    let mut want_hosts = vec![
        serde_json::json!({"hostname": host.hostname(), "status": "active", "seq": n + 2, "accountCount": 3}),
        serde_json::json!({"hostname": other_host.hostname(), "status": "active", "seq": 2, "accountCount": 1}),
    ];
    want_hosts.sort_by_key(|h| h["hostname"].as_str().unwrap().to_owned());
    assert_eq!(listed_hosts["hosts"], serde_json::Value::Array(want_hosts.clone()));
    let (status, one) = json(&format!("/xrpc/com.atproto.sync.getHostStatus?hostname={}", other_host.hostname()));
    assert_eq!((status, &one), (200, &want_hosts.iter().find(|h| h["seq"] == 2).unwrap().clone()));
    assert_eq!(json("/xrpc/com.atproto.sync.getHostStatus?hostname=nowhere.example").1["error"], "HostNotFound");
    assert_eq!(json("/xrpc/com.atproto.sync.getHostStatus?hostname=-bad-").1["error"], "InvalidRequest");
    assert_eq!(json("/xrpc/com.atproto.sync.listHosts?limit=1").1["hosts"].as_array().unwrap().len(), 1);
    let raw = support::http_get_raw(relay.port, &format!("/xrpc/com.atproto.sync.getRepo?did={}", alice.did)).unwrap();
    assert!(raw.starts_with("HTTP/1.1 302"), "{raw}");
    let location = format!("Location: http://{}/xrpc/com.atproto.sync.getRepo?did={}", host.hostname(), alice.did);
    assert!(raw.contains(&location), "{raw}");
    relay.stop();

    // Host account counts: alice, carol and erin on the first host; frank moved to the other one.
    let store = storage::Store::open(&dir.path().join("data"), &storage::StoreOptions::default()).unwrap();
    let count = |h: &FakeHost| store.host(&h.hostname()).unwrap().map(|s| s.account_count);
    assert_eq!((count(&host), count(&other_host)), (Some(3), Some(1)));
}

#[test]
fn lenient_sync_relays_and_counts_violations() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = account("lenient", SigningKey::k256(9));
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let ops = create(&mut alice, 100);
    host.push(1, Event::Commit(alice.commit(1, &ops, &Signer::Own)).encode().unwrap());
    let mut ev = alice.commit(2, &create(&mut alice.clone(), 100), &Signer::Own);
    ev.ops[0].cid = Some(ev.commit);
    host.push(2, Event::Commit(ev).encode().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &["--lenient-sync"]);
    relay.wait_until(Duration::from_secs(20), "both relayed", || relay.metric("relay_events_relayed_total", "") >= 2);
    assert_eq!(relay.metric("relay_sync_violations_total", "reason=\"op_cid_mismatch\""), 1);
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0);
    relay.stop();
}

/// A real gap (proposal 0006, "Staying Synchronized"): the host's stream skips one commit of an
/// account, so its next commit names a `since` and `prevData` the relay never stored. It is valid and
/// is relayed as-is with its records, the account's state follows it (`getLatestCommit`), the
/// discontinuity is counted, and the relay asks the host nothing (re-synchronizing is the consumer's
/// job; this host has no `getLatestCommit`/`getBlocks` at all). Commits chain to it afterwards.
#[test]
fn discontinuous_commits_are_relayed_and_the_account_follows_them() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = account("gap", SigningKey::k256(21));
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let ops = create(&mut alice, 100);
    host.push(1, Event::Commit(alice.commit(1, &ops, &Signer::Own)).encode().unwrap());
    // Commit 2 never reaches the relay (a host outbox overflow, a relay outage past the backfill).
    let ops = create(&mut alice, 100);
    let _lost = alice.commit(2, &ops, &Signer::Own);
    let path = format!("app.bsky.feed.post/{}", alice.next_rkey());
    let after_gap = alice.commit(3, &[Op::Create { path: path.clone(), bytes: 120 }], &Signer::Own);
    let (gap_cid, gap_rev) = (after_gap.commit, after_gap.rev.clone());
    host.push(3, Event::Commit(after_gap.clone()).encode().unwrap());
    let ops = create(&mut alice, 100);
    host.push(4, Event::Commit(alice.commit(4, &ops, &Signer::Own)).encode().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
    relay.wait_until(Duration::from_secs(20), "three commits relayed", || {
        relay.metric("relay_events_relayed_total", "") >= 3
    });
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0);
    assert_eq!(relay.metric("relay_sync_discontinuities_total", "reason=\"prev_data\""), 1);
    assert_eq!(relay.metric("relay_sync_discontinuities_total", ""), 1, "the commit after it chains");
    assert_eq!(host.sync_requests.load(std::sync::atomic::Ordering::Acquire), 0, "no resync asked of the host");
    let mut sub = subscribe(relay.port, Some("0"));
    let seen = read_until_idle(&mut sub, Duration::from_millis(500));
    let commits: Vec<_> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Event(Event::Commit(c)) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(commits.len(), 3);
    let relayed = commits[1];
    assert_eq!((relayed.commit, &relayed.rev), (gap_cid, &gap_rev));
    assert_eq!((&relayed.since, relayed.prev_data), (&after_gap.since, after_gap.prev_data), "as-is");
    assert_eq!(relayed.blocks, after_gap.blocks, "with its records");
    assert_eq!(relayed.ops[0].path, path);
    assert_eq!(commits[2].since.as_ref(), Some(&gap_rev));
    // The account's state follows the stream.
    let (_, body) = relay.get(&format!("/xrpc/com.atproto.sync.getLatestCommit?did={}", alice.did));
    let latest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(latest["cid"], commits[2].commit.to_string());
    relay.stop();
    // Counted per host (the admin page's host table shows it).
    let store = storage::Store::open(&dir.path().join("data"), &storage::StoreOptions::default()).unwrap();
    assert_eq!(store.host(&host.hostname()).unwrap().map(|h| h.discontinuities), Some(1));
}
