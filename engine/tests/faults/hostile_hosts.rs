//! Hosts that send garbage, broken framing or error frames, or reset their sequence: the
//! unusable frames are dropped and counted, and nothing valid is lost or relayed twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::WAIT;
use crate::support::{ADMIN_PASSWORD, Account, FakeHost, FakePlc, Relay, Seen, read_until_idle, subscribe};
use serde_json::json;

/// A host that sends frames the relay cannot use but that are well framed (an unknown type or op, a
/// body that is not lexicon-shaped, a frame over 5 MB) between valid events: each is dropped and
/// counted, the valid events are relayed, and the connection is kept (specs/event-stream: "Clients
/// should ignore frames with headers that have unknown `op` or `t` values").
#[test]
fn a_host_sending_unusable_frames_is_counted_and_its_valid_events_flow() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:garbage00000000000000000", 170);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let cbor = |v: serde_json::Value| wire::cbor::to_vec(&v).unwrap();
    let mut since = None;
    let mut seq = 0;
    let mut garbage = 0;
    for i in 0..30 {
        seq += 1;
        let (rev, f) = alice.commit(seq, since.take());
        since = Some(rev);
        host.push(seq, f);
        seq += 1;
        let junk: Vec<u8> = match i % 4 {
            0 => [cbor(json!({"op": 1, "t": "#future"})), cbor(json!({"seq": seq}))].concat(),
            1 => [cbor(json!({"op": 2, "t": "#commit"})), cbor(json!({"seq": seq}))].concat(),
            2 => [cbor(json!({"op": 1, "t": "#account"})), cbor(json!({"seq": seq, "did": 5}))].concat(),
            _ => vec![0xff; 6_000_000],
        };
        host.push(seq, junk);
        garbage += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
    relay.wait_until(WAIT, "all 30 valid events", || relay.metric("relay_events_relayed_total", "") >= 30);
    relay.wait_until(WAIT, "all garbage counted", || relay.metric("relay_events_dropped_total", "") >= garbage);
    assert_eq!(relay.metric("relay_events_dropped_total", ""), garbage);
    assert_eq!(relay.metric("relay_upstream_connects_total", "result=\"ok\""), 1, "never reconnected");
    assert_eq!(relay.get("/xrpc/_health").0, 200);
    relay.stop();
}

/// specs/event-stream: "Invalid framing or DAG-CBOR encoding are hard errors, and the client should
/// drop the entire connection instead of skipping the frame", and "Streams should be closed
/// immediately following transmitting or receiving an error frame". A broken frame and an error
/// frame each end the connection; it is counted and retried with backoff, and the host's cursor stays
/// below the broken frame (nothing after it is taken from a stream that broke).
#[test]
fn broken_framing_and_error_frames_end_the_connection() {
    let plc = FakePlc::start();
    for (name, bad, reason) in [
        ("truncated", Account::new("did:plc:x", 1).account(2, true)[..20].to_vec(), "malformed_frame"),
        ("empty", Vec::new(), "malformed_frame"),
        ("random", (0u8..200).map(|i| i.wrapping_mul(97) ^ 0x5a).collect(), "malformed_frame"),
        (
            "error frame",
            wire::frame::ErrorBody { error: "InternalServerError".into(), message: Some("oops".into()) }
                .encode()
                .unwrap(),
            "error_frame",
        ),
    ] {
        let host = FakeHost::start();
        let mut alice = Account::new("did:plc:brokenframe00000000000000", 171);
        plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
        let (rev, f) = alice.commit(1, None);
        host.push(1, f);
        host.push(2, bad);
        let (_, f) = alice.commit(3, Some(rev));
        host.push(3, f);
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
        relay.wait_until(WAIT, "two connections", || {
            relay.metric("relay_upstream_connects_total", "result=\"ok\"") >= 2
        });
        assert_eq!(relay.metric("relay_events_relayed_total", ""), 1, "{name}: only the commit before it");
        assert!(relay.metric("relay_upstream_disconnects_total", &format!("reason=\"{reason}\"")) >= 1, "{name}");
        if reason == "error_frame" {
            assert!(relay.metric("relay_upstream_error_frames_total", "error=\"other\"") >= 1);
        } else {
            assert!(relay.metric("relay_events_dropped_total", "reason=\"malformed_frame\"") >= 1);
        }
        let at = host.connected_at.lock().unwrap().clone();
        assert!(at[1] - at[0] >= Duration::from_millis(450), "{name}: reconnected after a backoff (0.5-1 s)");
        assert_eq!(host.cursors.lock().unwrap()[1], Some(1), "{name}: resumed below the broken frame");
        relay.stop();
    }
}

/// A host that resets its sequence and sends low seqs again (without `FutureCursor`): nothing is
/// relayed twice and its cursor does not move back, until an operator resets the cursor; then the
/// host's new events flow.
#[test]
fn a_host_that_resets_its_sequence_is_not_relayed_twice() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:seqreset0000000000000000", 180);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let mut since = None;
    for seq in 1..=5 {
        let (rev, f) = alice.commit(seq, since.take());
        since = Some(rev);
        host.push(seq, f);
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--admin-password", ADMIN_PASSWORD];
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &args);
    relay.wait_until(WAIT, "5 relayed", || relay.metric("relay_events_relayed_total", "") >= 5);
    relay.stop();
    // The host loses its sequence and starts again from 1 with new commits; it ignores our cursor.
    host.reset_sequence();
    host.mode.ignore_cursor.store(true, Ordering::Release);
    for seq in 1..=3 {
        let (rev, f) = alice.commit(seq, since.take());
        since = Some(rev);
        host.push(seq, f);
    }
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &args);
    relay.wait_until(WAIT, "the low seqs dropped", || {
        relay.metric("relay_events_dropped_total", "reason=\"seq_not_increasing\"") >= 3
    });
    assert_eq!(relay.metric("relay_events_relayed_total", ""), 0);
    let status = || relay.get_json(&format!("/xrpc/com.atproto.sync.getHostStatus?hostname={}", host.hostname())).1;
    assert_eq!(status()["seq"], 5, "the cursor did not move back");
    // The operator resets the cursor: the host's new events are relayed, each once.
    let (code, v) = relay.admin_post("pds/resetCursor", json!({ "hostname": host.hostname(), "cursor": 0 }));
    assert_eq!(code, 200, "{v}");
    relay.wait_until(WAIT, "the new events", || relay.metric("relay_events_relayed_total", "") >= 3);
    relay.wait_until(WAIT, "the cursor at the new sequence", || status()["seq"] == 3);
    let mut sub = subscribe(relay.port, Some("0"));
    let seqs: Vec<i64> = read_until_idle(&mut sub, Duration::from_millis(500)).iter().filter_map(Seen::seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "5 + 3 events, none twice");
    relay.stop();
}
