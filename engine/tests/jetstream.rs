//! Jetstream served by the relay: requests checked before the upgrade, the dictionary endpoint, v2
//! frames and cursors (`FutureCursor`, inclusive seqs), v1 `requireHello` with `options_update`, an
//! invalid `options_update` closing the connection, compressed v1 messages, and
//! `listReposByCollection`. The real clients (`@skyware/jetstream`, Python `atproto_jetstream`)
//! are driven against the reference PDS by `scripts/e2e-pds.sh`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::{Account, FakeHost, FakePlc, Relay};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(30);

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn connect(port: u16, path_and_query: &str, protocol: Option<&str>) -> (Ws, Option<String>) {
    let mut req = format!("ws://127.0.0.1:{port}{path_and_query}").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, resp) = tungstenite::connect(req).unwrap();
    let chosen = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned());
    (ws, chosen)
}

/// Messages until `idle` passes with nothing new; text as JSON, binary decompressed with `dict`.
fn messages(ws: &mut Ws, idle: Duration, dict: Option<&[u8]>) -> (Vec<Value>, Option<u16>) {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(idle)).unwrap();
    }
    let mut out = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => out.push(serde_json::from_str(&t).unwrap()),
            Ok(Message::Binary(b)) => {
                let mut d = zstd::bulk::Decompressor::with_dictionary(dict.expect("a dictionary")).unwrap();
                out.push(serde_json::from_slice(&d.decompress(&b, 1 << 24).unwrap()).unwrap());
            }
            Ok(Message::Close(frame)) => return (out, frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => return (out, None),
        }
    }
}

fn get_bytes(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap();
    (status, buf[end + 4..].to_vec())
}

fn setup(accounts: &mut [&mut Account]) -> (FakePlc, FakeHost, tempfile::TempDir, Relay) {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    for a in accounts.iter() {
        plc.put(&a.did, a.did_doc(&format!("http://{}", host.hostname())));
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
    (plc, host, dir, relay)
}

#[test]
fn requests_are_checked_before_the_upgrade_and_the_dictionary_is_served() {
    let (_plc, _host, _dir, relay) = setup(&mut []);
    let p = relay.port;
    let err = |path: &str| {
        let (status, body) = relay.get_json(path);
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
            body["message"].as_str().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(err("/subscribe").0, 426, "a plain GET is told to upgrade");
    assert_eq!(err("/subscribe?wantedCollections=app.bsky.fe*").0, 400);
    assert_eq!(err("/subscribe?wantedDids=alice").1, "InvalidRequest");
    assert_eq!(err("/xrpc/network.bsky.jetstream.subscribeEvents?kinds=posts").1, "InvalidRequest");
    assert_eq!(
        err("/xrpc/network.bsky.jetstream.subscribeEvents?kinds=identity&collections=app.bsky.feed.post").1,
        "InvalidRequest"
    );
    let (status, body) = get_bytes(p, "/xrpc/network.bsky.jetstream.getZstdDictionary");
    assert_eq!(status, 200);
    assert_eq!(body[..4], [0x37, 0xa4, 0x30, 0xec], "a zstd dictionary (RFC 8878 §5 magic)");
    let id = u32::from_le_bytes(body[4..8].try_into().unwrap());
    let (status, error, message) = err("/xrpc/network.bsky.jetstream.subscribeEvents?zstdDictionary=1");
    assert_eq!((status, error.as_str()), (400, "UnknownZstdDictionary"));
    assert!(message.contains(&id.to_string()), "names the current dictionary: {message}");
    assert_eq!(get_bytes(p, &format!("/xrpc/network.bsky.jetstream.getZstdDictionary?id={id}")).0, 200);
    // The lexicons' errors (network.bsky.jetstream.getZstdDictionary: DictionaryNotFound), and v1's
    // names refused on v2.
    assert_eq!(err("/xrpc/network.bsky.jetstream.getZstdDictionary?id=7").1, "DictionaryNotFound");
    assert_eq!(err("/xrpc/network.bsky.jetstream.getZstdDictionary?id=x").1, "InvalidRequest");
    for v1 in ["wantedCollections=app.bsky.feed.post", "wantedDids=did:plc:a", "compress=true", "requireHello=true"] {
        let (status, error, message) = err(&format!("/xrpc/network.bsky.jetstream.subscribeEvents?{v1}"));
        assert_eq!((status, error.as_str()), (400, "InvalidRequest"), "{v1}");
        assert!(message.contains("v1"), "{message}");
    }
    assert_eq!(err("/xrpc/com.atproto.sync.listReposByCollection").1, "InvalidRequest");
    assert_eq!(err("/xrpc/com.atproto.sync.listReposByCollection?collection=app.bsky.feed.post&limit=2001").0, 400);
}

#[test]
fn v2_cursors_v1_hello_options_and_compression() {
    let mut alice = Account::new("did:plc:jetalice0000000000000000", 31);
    let mut bob = Account::new("did:plc:jetbob00000000000000000000", 32);
    let (_plc, host, _dir, relay) = setup(&mut [&mut alice, &mut bob]);
    let p = relay.port;
    let (mut sa, mut sb) = (None, None);
    for seq in 1..=10u64 {
        let (acct, since) = if seq % 2 == 0 { (&mut alice, &mut sa) } else { (&mut bob, &mut sb) };
        let (rev, f) = acct.commit(seq, since.take());
        *since = Some(rev);
        host.push(seq, f);
    }
    // Accounts of a host are decided at once: the identity event goes after the commits are in, so
    // the relay seqs below are the commits' 1..=10.
    relay.wait_until(WAIT, "10 relayed", || relay.head() == 10);
    host.push(11, alice.identity(11));
    relay.wait_until(WAIT, "11 relayed", || relay.head() == 11);

    // v2 from seq 0 with kinds=commit: the ten commits, seqs relay seq × 256, the subprotocol chosen.
    let path = "/xrpc/network.bsky.jetstream.subscribeEvents?kinds=commit&cursor=0";
    let (mut ws, chosen) = connect(p, path, Some("xrpc.v1.json"));
    assert_eq!(chosen.as_deref(), Some("xrpc.v1.json"));
    let (got, _) = messages(&mut ws, Duration::from_secs(2), None);
    let seqs: Vec<u64> = got.iter().map(|m| m["payload"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=10).map(|s| s << 8).collect::<Vec<_>>());
    assert!(
        got.iter().all(
            |m| m["$type"] == "message" && m["payload"]["$type"] == "network.bsky.jetstream.subscribeEvents#commit"
        )
    );
    assert_eq!(got[0]["payload"]["record"]["$type"], "app.bsky.feed.post");
    // Inclusive seq cursor; a future one gets #info FutureCursor, then the live tail.
    let (mut ws, _) = connect(p, &format!("/xrpc/network.bsky.jetstream.subscribeEvents?cursor={}", 9 << 8), None);
    let (got, _) = messages(&mut ws, Duration::from_secs(2), None);
    let seqs: Vec<Option<u64>> = got.iter().map(|m| m["payload"]["seq"].as_u64()).collect();
    assert_eq!(seqs, [Some(9 << 8), Some(10 << 8), Some(11 << 8)], "{got:?}");
    let (mut ws, _) = connect(p, "/xrpc/network.bsky.jetstream.subscribeEvents?cursor=99999999", None);
    let (got, _) = messages(&mut ws, Duration::from_secs(1), None);
    assert_eq!(got[0]["payload"]["$type"], "network.bsky.jetstream.subscribeEvents#info");
    assert_eq!(got[0]["payload"]["name"], "FutureCursor");

    // v1 requireHello: nothing until the options_update, then its filter, replayed from the cursor.
    let (mut hello, _) = connect(p, "/subscribe?requireHello=true&cursor=1", None);
    let (early, _) = messages(&mut hello, Duration::from_millis(800), None);
    assert!(early.is_empty(), "nothing before the hello: {early:?}");
    let update = serde_json::json!({"type": "options_update", "payload": {"wantedDids": [bob.did.as_str()]}});
    hello.send(Message::Text(update.to_string().into())).unwrap();
    let (got, _) = messages(&mut hello, Duration::from_secs(2), None);
    assert_eq!(got.len(), 5, "bob's five commits: {got:?}");
    assert!(got.iter().all(|m| m["did"] == bob.did.as_str() && m["kind"] == "commit"));
    let times: Vec<u64> = got.iter().map(|m| m["time_us"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "time_us increases: {times:?}");

    // An invalid options_update closes the connection with 1008.
    let (mut bad, _) = connect(p, "/subscribe", None);
    bad.send(Message::Text(r#"{"type":"options_update","payload":{"wantedDids":["nope"]}}"#.into())).unwrap();
    let (_, code) = messages(&mut bad, Duration::from_secs(5), None);
    assert_eq!(code, Some(1008));
    relay.wait_until(WAIT, "counted", || relay.metric("relay_subscribers_closed_total", "reason=\"bad_message\"") == 1);

    // v1 compressed, live: binary zstd frames that decompress with the served dictionary.
    let (_, dict) = get_bytes(p, "/xrpc/network.bsky.jetstream.getZstdDictionary");
    let (mut z, _) = connect(p, "/subscribe?compress=true&wantedCollections=app.bsky.feed.*", None);
    std::thread::sleep(Duration::from_millis(500));
    let (rev, f) = alice.commit(12, sa.take());
    host.push(12, f);
    let (got, _) = messages(&mut z, Duration::from_secs(2), Some(&dict));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0]["kind"].as_str(), got[0]["commit"]["rev"].as_str()), (Some("commit"), Some(rev.as_str())));
    assert!(relay.metric("relay_jetstream_encoded_total", "encoding=\"v1_zstd\"") >= 1);

    // listReposByCollection: both accounts posted.
    let (status, body) =
        relay.get_json("/xrpc/com.atproto.sync.listReposByCollection?collection=app.bsky.feed.post&limit=1");
    assert_eq!(status, 200);
    let first = body["repos"][0]["did"].as_str().unwrap().to_owned();
    let cursor = body["cursor"].as_str().unwrap();
    let (_, next) = relay.get_json(&format!(
        "/xrpc/com.atproto.sync.listReposByCollection?collection=app.bsky.feed.post&cursor={}",
        cursor.replace(':', "%3A")
    ));
    let second = next["repos"][0]["did"].as_str().unwrap().to_owned();
    let mut both = [first, second];
    both.sort();
    let mut want = [alice.did.to_string(), bob.did.to_string()];
    want.sort();
    assert_eq!(both, want);
    assert!(next.get("cursor").is_none() || next["repos"].as_array().unwrap().len() == 1);
}
