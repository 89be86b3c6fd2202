use base64::Engine;
use serde_json::{Value, json};

use super::*;
use crate::frame::{AccountEvent, Event, IdentityEvent};
use crate::testkit::{Op, Signer, SigningKey, SimAccount};

/// The interop data-model fixtures: every CBOR fixture converts to exactly its JSON form.
#[test]
fn data_model_fixtures_convert_to_their_json() {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/interop/data-model/data-model-fixtures.json");
    let fixtures: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(fixtures.len(), 3);
    for f in fixtures {
        let cbor = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(f["cbor_base64"].as_str().unwrap().trim_end_matches('='))
            .unwrap();
        assert_eq!(record_json(&cbor).unwrap(), f["json"]);
    }
}

#[test]
fn floats_have_no_json_form() {
    let cbor = crate::cbor::to_vec(&json!({"a": 1.5})).unwrap();
    assert_eq!(record_json(&cbor), Err(JsonError::Unsupported("a float")));
    assert!(matches!(record_json(b"\xff"), Err(JsonError::Cbor(_))));
}

fn account() -> SimAccount {
    SimAccount::new(
        crate::Did::new("did:plc:jetstream000000000000000").unwrap(),
        SigningKey::k256(3),
        1_700_000_000_000_000,
    )
}

#[test]
fn a_commit_becomes_one_event_per_op_in_both_formats() {
    let mut acct = account();
    let p1 = format!("app.bsky.feed.post/{}", acct.next_rkey());
    let p2 = format!("app.bsky.feed.like/{}", acct.next_rkey());
    acct.commit(
        1,
        &[Op::Create { path: p1.clone(), bytes: 100 }, Op::Create { path: p2.clone(), bytes: 50 }],
        &Signer::Own,
    );
    let p3 = format!("app.bsky.graph.follow/{}", acct.next_rkey());
    let ops = [Op::Update { path: p1.clone() }, Op::Delete { path: p2.clone() }, Op::Create { path: p3, bytes: 10 }];
    let mut ev = acct.commit(2, &ops, &Signer::Own);
    ev.seq = 77;
    let converted = convert(&Event::Commit(ev.clone()), 1_800_000_000_123_456);
    assert_eq!(converted.unconvertible, 0);
    let events = converted.events;
    assert_eq!(events.len(), 3);
    assert_eq!(events.iter().map(|e| e.seq().0).collect::<Vec<_>>(), [77 << 8, (77 << 8) + 1, (77 << 8) + 2]);
    assert_eq!((events[2].seq().relay(), events[2].seq().index()), (RelaySeq(77), 2));
    assert_eq!(events[1].collection(), Some("app.bsky.feed.like"));

    let v1: Value = serde_json::from_slice(&events[0].v1_json().unwrap()).unwrap();
    assert_eq!(v1["did"], "did:plc:jetstream000000000000000");
    assert_eq!((v1["kind"].as_str(), v1["time_us"].as_u64()), (Some("commit"), Some(1_800_000_000_123_456)));
    let c = &v1["commit"];
    assert_eq!((c["operation"].as_str(), c["collection"].as_str()), (Some("update"), Some("app.bsky.feed.post")));
    assert_eq!(c["rev"], ev.rev.as_str());
    assert_eq!(c["cid"], ev.ops[0].cid.unwrap().to_string());
    assert!(c["record"].is_object(), "{c}");
    let delete: Value = serde_json::from_slice(&events[1].v1_json().unwrap()).unwrap();
    assert_eq!(delete["commit"]["operation"], "delete");
    assert!(delete["commit"].get("record").is_none() && delete["commit"].get("cid").is_none());

    let v2: Value = serde_json::from_slice(&events[2].v2_json()).unwrap();
    assert_eq!(v2["$type"], "message");
    let p = &v2["payload"];
    assert_eq!(p["$type"], "network.bsky.jetstream.subscribeEvents#commit");
    assert_eq!((p["seq"].as_u64(), p["operation"].as_str()), (Some((77 << 8) + 2), Some("create")));
    assert_eq!(p["time"], "2027-01-15T08:00:00.123456Z");
    assert!(p["record"].is_object() && p["cid"].is_string());
}

#[test]
fn identity_account_and_sync_events() {
    let did = crate::Did::new("did:plc:jetstream000000000000000").unwrap();
    let identity = Event::Identity(IdentityEvent {
        seq: 9,
        did: did.clone(),
        time: "2026-01-01T00:00:00.000Z".into(),
        handle: Some("a.test".into()),
    });
    let e = &convert(&identity, 5).events[0];
    let v1: Value = serde_json::from_slice(&e.v1_json().unwrap()).unwrap();
    assert_eq!(
        v1["identity"],
        json!({"did": did.as_str(), "seq": 9, "time": "2026-01-01T00:00:00.000Z", "handle": "a.test"})
    );
    let account_ev = Event::Account(AccountEvent {
        seq: 10,
        did: did.clone(),
        time: "2026-01-01T00:00:00.000Z".into(),
        active: false,
        status: Some("deactivated".into()),
    });
    let e = &convert(&account_ev, 5).events[0];
    assert_eq!(e.kind(), Kind::Account);
    let v2: Value = serde_json::from_slice(&e.v2_json()).unwrap();
    assert_eq!(v2["payload"]["account"]["status"], "deactivated");
    assert_eq!(v2["payload"]["seq"], 10 << 8);
    let mut acct = account();
    let path = format!("app.bsky.feed.post/{}", acct.next_rkey());
    acct.commit(1, &[Op::Create { path, bytes: 10 }], &Signer::Own);
    let sync = Event::Sync(acct.sync(11));
    let e = &convert(&sync, 5).events[0];
    assert!(e.v1_json().is_none(), "v1 carries no #sync");
    let v2: Value = serde_json::from_slice(&e.v2_json()).unwrap();
    assert!(v2["payload"]["sync"]["blocks"]["$bytes"].is_string());
    assert_eq!(Kind::parse("sync"), Some(Kind::Sync));
    assert_eq!(Kind::parse("nope"), None);
}

#[test]
fn time_us_and_its_inverse() {
    // Second 100 starts at seq 10, second 103 at seq 50.
    let t = |seq| time_us(100, 10, seq);
    assert_eq!((t(10), t(11), t(49)), (100_000_000, 100_000_001, 100_000_039));
    assert_eq!(seq_for_time_us(100_000_001, Some((100, 10)), Some(50)), Some(11));
    // A time past the second's events lands on the next second's first event.
    assert_eq!(seq_for_time_us(100_000_900, Some((100, 10)), Some(50)), Some(50));
    // A second with no entry: the next indexed second's first seq.
    assert_eq!(seq_for_time_us(101_000_000, Some((100, 10)), Some(50)), Some(50));
    assert_eq!(seq_for_time_us(101_000_000, Some((100, 10)), None), None);
    assert_eq!(time_us(5, 0, 5_000_000), 5_999_999, "offsets saturate within the second");
}

#[test]
fn jetstream_seqs_order_as_relay_seqs_then_op_indexes() {
    let at = |r, i| JetSeq::new(RelaySeq(r), i);
    assert_eq!(at(77, 2).0, (77 << 8) + 2);
    assert!(at(5, 255) < at(6, 0) && at(6, 0) < at(6, 1));
    assert_eq!(JetSeq::before(RelaySeq(6)), at(5, 255));
    assert_eq!(JetSeq::end_of(RelaySeq(6)), at(6, 255));
    assert_eq!(JetSeq::before(RelaySeq(0)), JetSeq(0));
    assert_eq!(JetSeq(0).prev(), JetSeq(0));
    assert_eq!(at(6, 0).prev(), at(5, 255));
}

proptest::proptest! {
    /// `before` and `end_of` bracket every op of a relay seq, and `relay`/`index` invert `new`.
    #[test]
    fn a_relay_seqs_ops_lie_between_before_and_end_of(relay in 1u64..(1 << 56), index: u8) {
        let s = JetSeq::new(RelaySeq(relay), index);
        proptest::prop_assert_eq!((s.relay(), s.index()), (RelaySeq(relay), index));
        proptest::prop_assert!(JetSeq::before(RelaySeq(relay)) < s && s <= JetSeq::end_of(RelaySeq(relay)));
        proptest::prop_assert_eq!(JetSeq::end_of(RelaySeq(relay - 1)), JetSeq::before(RelaySeq(relay)));
    }
}
