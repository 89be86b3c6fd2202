//! Account events: `#identity` handles and tombstones, operator takedowns and their reversal, and
//! a missed reactivation recovered with `getRepoStatus`.

use std::time::Duration;

use crate::support::{self, FakeHost, FakePlc, Relay, Seen, read_until_idle, subscribe};
use crate::{account, create};
use wire::frame::Event;
use wire::testkit::{Signer, SigningKey};

/// `#identity`: a handle that is not handle syntax is not relayed (the frame would fail the lexicon's
/// `format: "handle"`), a valid one is; an `#identity` of a DID that no longer resolves (tombstoned),
/// from the account's host, is relayed without a handle so downstream caches purge it; one from
/// another host is not.
#[test]
fn identity_events_keep_only_valid_handles_and_tombstones_are_relayed() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let other = FakeHost::start();
    let mut alice = account("ident", SigningKey::k256(31));
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let ops = create(&mut alice, 100);
    host.push(1, Event::Commit(alice.commit(1, &ops, &Signer::Own)).encode().unwrap());
    let with = |seq: i64, handle: &str| {
        let mut ev = alice.identity(seq);
        ev.handle = Some(handle.to_owned());
        Event::Identity(ev).encode().unwrap()
    };
    host.push(2, with(2, "alice.test"));
    host.push(3, with(3, "not a handle!"));
    host.push(4, with(4, "handle.invalid"));
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_hosts(
        support::free_port(),
        &dir.path().join("data"),
        &[&host.hostname(), &other.hostname()],
        &plc.url,
        &[],
    );
    relay.wait_until(Duration::from_secs(20), "four relayed", || relay.metric("relay_events_relayed_total", "") >= 4);
    assert_eq!(relay.metric("relay_lexicon_tolerated_total", "field=\"handle\""), 1);
    // The DID is tombstoned: the account's host announces it; another host cannot.
    plc.remove(&alice.did);
    other.push(1, Event::Identity(alice.identity(1)).encode().unwrap());
    host.push(5, with(5, "alice.test"));
    relay.wait_until(Duration::from_secs(20), "the tombstoned #identity relayed", || {
        relay.metric("relay_events_relayed_total", "") >= 5
    });
    relay.wait_until(Duration::from_secs(20), "the other host's #identity dropped", || {
        relay.metric("relay_events_dropped_total", "reason=\"identity_unresolved\"") == 1
    });
    let mut sub = subscribe(relay.port, Some("1"));
    let handles: Vec<Option<String>> = read_until_idle(&mut sub, Duration::from_millis(500))
        .into_iter()
        .filter_map(|s| match s {
            Seen::Event(Event::Identity(i)) => Some(i.handle),
            _ => None,
        })
        .collect();
    assert_eq!(handles, [Some("alice.test".into()), None, Some("handle.invalid".into()), None]);
    relay.stop();
}

#[test]
fn operator_takedown_and_its_reversal() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = account("takedown", SigningKey::k256(11));
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let ops = create(&mut alice, 100);
    host.push(1, Event::Commit(alice.commit(1, &ops, &Signer::Own)).encode().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &["--admin-password", "s3cret"]);
    relay
        .wait_until(Duration::from_secs(20), "genesis relayed", || relay.metric("relay_events_relayed_total", "") >= 1);

    let body = format!("{{\"did\":\"{}\"}}", alice.did);
    let port = relay.port;
    assert_eq!(support::http_post(port, "/admin/repo/takeDown", &body, None).unwrap().0, 401);
    assert_eq!(support::http_post(port, "/admin/repo/takeDown", &body, Some(("admin", "wrong"))).unwrap().0, 401);
    let bad =
        support::http_post(port, "/admin/repo/takeDown", "{\"did\":\"nope\"}", Some(("admin", "s3cret"))).unwrap();
    assert_eq!(bad.0, 400, "{bad:?}");
    let ok = support::http_post(port, "/admin/repo/takeDown", &body, Some(("admin", "s3cret"))).unwrap();
    assert_eq!(ok.0, 200, "{ok:?}");
    relay.wait_until(Duration::from_secs(10), "takedown relayed", || {
        relay.metric("relay_events_relayed_total", "") >= 2
    });
    let (status, body) = relay.get(&format!("/xrpc/com.atproto.sync.getLatestCommit?did={}", alice.did));
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"], "RepoTakendown");
    let (_, body) = relay.get(&format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", alice.did));
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((st["active"].as_bool(), st["status"].as_str()), (Some(false), Some("takendown")));

    // The host keeps sending: dropped while taken down.
    let ops = create(&mut alice, 100);
    host.push(2, Event::Commit(alice.commit(2, &ops, &Signer::Own)).encode().unwrap());
    relay.wait_until(Duration::from_secs(10), "commit dropped", || {
        relay.metric("relay_events_dropped_total", "reason=\"taken_down\"") == 1
    });
    let ok = support::http_post(port, "/admin/repo/reverseTakedown", &body, Some(("admin", "s3cret"))).unwrap();
    assert_eq!(ok.0, 200, "{ok:?}");
    relay.wait_until(Duration::from_secs(10), "reversal relayed", || {
        relay.metric("relay_events_relayed_total", "") >= 3
    });
    // The relay never stored the commit it dropped, so the host's next commit names a `since` and
    // `prevData` the relay does not have: a discontinuity, relayed as-is (proposal 0006), after
    // which commits chain again.
    let ops = create(&mut alice, 100);
    host.push(3, Event::Commit(alice.commit(3, &ops, &Signer::Own)).encode().unwrap());
    relay.wait_until(Duration::from_secs(10), "the discontinuous commit relayed", || {
        relay.metric("relay_events_relayed_total", "") >= 4
    });
    assert_eq!(relay.metric("relay_sync_discontinuities_total", "reason=\"prev_data\""), 1);
    let ops = create(&mut alice, 100);
    host.push(4, Event::Commit(alice.commit(4, &ops, &Signer::Own)).encode().unwrap());
    relay.wait_until(Duration::from_secs(10), "the next commit relayed", || {
        relay.metric("relay_events_relayed_total", "") >= 5
    });
    assert_eq!(relay.metric("relay_sync_discontinuities_total", ""), 1, "it chains to the discontinuous one");
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 1);

    let mut sub = subscribe(relay.port, Some("0"));
    let seen = read_until_idle(&mut sub, Duration::from_millis(500));
    let accounts: Vec<(bool, Option<String>)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Event(Event::Account(a)) => Some((a.active, a.status.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(accounts, vec![(false, Some("takendown".into())), (true, None)]);
    let kinds: Vec<&str> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Event(e) => Some(e.type_name()),
            Seen::Error(_) => None,
        })
        .collect();
    // The takedown left a tombstone: the genesis commit before it is no longer replayed (a reversal
    // does not bring it back); the takedown event itself and everything after it is.
    assert_eq!(kinds, ["#account", "#account", "#commit", "#commit"], "takedown, reversal, discontinuous, chained");
    assert_eq!(seen.first().and_then(Seen::seq), Some(2));
    assert_eq!(relay.metric("relay_replay_hidden_total", ""), 1);
    assert_eq!(support::http_post(port, "/admin/nothing", &body, Some(("admin", "s3cret"))).unwrap().0, 404);
    relay.stop();

    // Without a password the admin API does not exist.
    let relay = Relay::start(&dir.path().join("data2"), &host.hostname(), &plc.url, &[]);
    assert_eq!(support::http_post(relay.port, "/admin/repo/takeDown", &body, Some(("admin", ""))).unwrap().0, 404);
    relay.stop();
}

/// indigo #1161: an account the relay has as inactive (it missed the `#account` that reactivated it)
/// is re-checked with its host's `getRepoStatus` before its commits are dropped.
#[test]
fn missed_reactivation_is_recovered_with_get_repo_status() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut erin = account("stuck", SigningKey::k256(12));
    plc.put(&erin.did, erin.did_doc(&format!("http://{}", host.hostname())));
    let ops = create(&mut erin, 100);
    host.push(1, Event::Commit(erin.commit(1, &ops, &Signer::Own)).encode().unwrap());
    host.push(2, Event::Account(erin.account(2, false, Some("deactivated"))).encode().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &[]);
    relay.wait_until(Duration::from_secs(20), "deactivation relayed", || {
        relay.metric("relay_events_relayed_total", "") >= 2
    });
    relay.stop();

    // The host reactivated the account while the relay was down, and its #account was lost.
    host.repo_status.lock().unwrap().insert(erin.did.to_string(), (true, None));
    let ops = create(&mut erin, 100);
    host.push(4, Event::Commit(erin.commit(4, &ops, &Signer::Own)).encode().unwrap());
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &[]);
    relay.wait_until(Duration::from_secs(20), "commit relayed", || relay.metric("relay_events_relayed_total", "") >= 1);
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0);

    // Still inactive per the host: dropped.
    host.repo_status.lock().unwrap().insert(erin.did.to_string(), (false, Some("suspended".into())));
    host.push(5, Event::Account(erin.account(5, false, Some("suspended"))).encode().unwrap());
    let ops = create(&mut erin, 100);
    host.push(6, Event::Commit(erin.commit(6, &ops, &Signer::Own)).encode().unwrap());
    relay.wait_until(Duration::from_secs(20), "commit dropped", || {
        relay.metric("relay_events_dropped_total", "reason=\"inactive_account\"") == 1
    });
    relay.stop();
}
