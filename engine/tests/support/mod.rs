//! Test support: a fake PLC directory, a fake PDS host serving prepared frames over websocket, an
//! account that signs real commits, a subscriber client, and a handle on a `relay serve` process.
#![allow(dead_code, clippy::type_complexity, clippy::result_large_err, clippy::large_enum_variant)]

mod peers;

#[allow(unused_imports)] // each test crate uses a different subset
pub use peers::{FakeHost, FakePlc, TestCa};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cid::Cid;
use serde::Serialize;
use sha2::Digest;
use wire::frame::{AccountEvent, CommitEvent, Event, IdentityEvent, RepoOp, SyncEvent};
use wire::{Did, Tid};

#[derive(Serialize)]
struct UnsignedCommit<'a> {
    did: &'a str,
    version: u64,
    data: Cid,
    rev: &'a str,
    prev: Option<Cid>,
}

#[derive(Serialize)]
struct SignedCommit<'a> {
    did: &'a str,
    version: u64,
    data: Cid,
    rev: &'a str,
    prev: Option<Cid>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// An account with a k256 key that signs real commits.
pub struct Account {
    pub did: Did,
    pub key: secp256k1::SecretKey,
    clock: u64,
}

const TIME: &str = "2026-11-21T00:00:00.000Z";

impl Account {
    pub fn new(did: &str, seed: u8) -> Self {
        let key = secp256k1::SecretKey::from_slice(&[seed.max(1); 32]).unwrap();
        Self { did: Did::new(did).unwrap(), key, clock: 1_700_000_000_000_000 }
    }

    pub fn did_key(&self) -> String {
        let pk = secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, &self.key);
        wire::crypto::PublicKey::K256(pk).to_did_key()
    }

    /// A DID document (Multikey form) naming `pds` as the account's PDS.
    pub fn did_doc(&self, pds: &str) -> serde_json::Value {
        serde_json::json!({
            "id": self.did.as_str(),
            "alsoKnownAs": ["at://test.example"],
            "verificationMethod": [{
                "id": format!("{}#atproto", self.did), "type": "Multikey", "controller": self.did.as_str(),
                "publicKeyMultibase": self.did_key().trim_start_matches("did:key:"),
            }],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
        })
    }

    pub fn next_rev(&mut self) -> Tid {
        self.clock += 1000;
        Tid::from_u64(self.clock << 10)
    }

    /// A signed `#commit` creating one record of `record_bytes` bytes, signed with `signer`.
    pub fn commit_with(
        &self,
        seq: u64,
        rev: &Tid,
        since: Option<Tid>,
        record_bytes: usize,
        signer: &secp256k1::SecretKey,
    ) -> CommitEvent {
        let record = wire::cbor::to_vec(&serde_json::json!({
            "$type": "app.bsky.feed.post", "text": "x".repeat(record_bytes), "createdAt": TIME,
        }))
        .unwrap();
        let record_cid = wire::car::cid_for(wire::car::CODEC_DAG_CBOR, &record);
        let node = wire::cbor::to_vec(&serde_json::json!({"e": [], "l": null})).unwrap();
        let data = wire::car::cid_for(wire::car::CODEC_DAG_CBOR, &node);
        let (commit_cid, commit_block) = self.sign(rev, data, signer);
        let blocks =
            wire::car::write_car(&commit_cid, &[(commit_cid, &commit_block), (data, &node), (record_cid, &record)])
                .unwrap();
        CommitEvent {
            seq: seq as i64,
            rebase: Some(false),
            too_big: Some(false),
            repo: self.did.clone(),
            commit: commit_cid,
            rev: rev.clone(),
            since,
            blocks: blocks.into(),
            ops: vec![RepoOp {
                action: "create".into(),
                path: format!("app.bsky.feed.post/{}", rev),
                cid: Some(record_cid),
                prev: None,
            }],
            blobs: Some(vec![]),
            prev_data: None,
            time: TIME.into(),
        }
    }

    fn sign(&self, rev: &Tid, data: Cid, signer: &secp256k1::SecretKey) -> (Cid, Vec<u8>) {
        let unsigned = UnsignedCommit { did: self.did.as_str(), version: 3, data, rev: rev.as_str(), prev: None };
        let bytes = wire::cbor::to_vec(&unsigned).unwrap();
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        let sig = secp256k1::SECP256K1.sign_ecdsa(&secp256k1::Message::from_digest(digest), signer);
        let signed = SignedCommit {
            did: self.did.as_str(),
            version: 3,
            data,
            rev: rev.as_str(),
            prev: None,
            sig: sig.serialize_compact().to_vec(),
        };
        let block = wire::cbor::to_vec(&signed).unwrap();
        (wire::car::cid_for(wire::car::CODEC_DAG_CBOR, &block), block)
    }

    /// A valid `#commit` at the next rev.
    pub fn commit(&mut self, seq: u64, since: Option<Tid>) -> (Tid, Vec<u8>) {
        let rev = self.next_rev();
        let ev = self.commit_with(seq, &rev, since, 64, &self.key.clone());
        (rev, Event::Commit(ev).encode().unwrap())
    }

    /// A valid `#sync` declaring the commit at `rev`.
    pub fn sync(&self, seq: u64, rev: &Tid) -> Vec<u8> {
        let node = wire::cbor::to_vec(&serde_json::json!({"e": [], "l": null})).unwrap();
        let data = wire::car::cid_for(wire::car::CODEC_DAG_CBOR, &node);
        let (cid, block) = self.sign(rev, data, &self.key);
        let blocks = wire::car::write_car(&cid, &[(cid, &block)]).unwrap();
        Event::Sync(SyncEvent {
            seq: seq as i64,
            did: self.did.clone(),
            blocks: blocks.into(),
            rev: rev.clone(),
            time: TIME.into(),
        })
        .encode()
        .unwrap()
    }

    pub fn identity(&self, seq: u64) -> Vec<u8> {
        Event::Identity(IdentityEvent {
            seq: seq as i64,
            did: self.did.clone(),
            time: TIME.into(),
            handle: Some("test.example".into()),
        })
        .encode()
        .unwrap()
    }

    pub fn account(&self, seq: u64, active: bool) -> Vec<u8> {
        Event::Account(AccountEvent {
            seq: seq as i64,
            did: self.did.clone(),
            time: TIME.into(),
            active,
            status: (!active).then(|| "deactivated".into()),
        })
        .encode()
        .unwrap()
    }
}

/// A running `relay serve`.
pub struct Relay {
    child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Relay {
    pub fn start(data_dir: &Path, host: &str, plc: &str, extra: &[&str]) -> Self {
        Self::start_on(free_port(), data_dir, host, plc, extra)
    }

    pub fn start_on(port: u16, data_dir: &Path, host: &str, plc: &str, extra: &[&str]) -> Self {
        Self::start_hosts(port, data_dir, &[host], plc, extra)
    }

    pub fn start_hosts(port: u16, data_dir: &Path, hosts: &[&str], plc: &str, extra: &[&str]) -> Self {
        Self::start_wrapped(&[], port, data_dir, hosts, plc, extra)
    }

    /// [`Relay::start_hosts`] run by `wrapper` (a command and its arguments, which must end by
    /// running the relay's command line appended to it, e.g. `unshare -m sh -c '… exec "$0" "$@"'`).
    /// `--fsync never` unless `extra` names `--fsync`.
    pub fn start_wrapped(
        wrapper: &[&str],
        port: u16,
        data_dir: &Path,
        hosts: &[&str],
        plc: &str,
        extra: &[&str],
    ) -> Self {
        let log = data_dir.with_extension(format!("{port}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let host_args: Vec<&str> = hosts.iter().flat_map(|h| ["--host", *h]).collect();
        let listen = format!("127.0.0.1:{port}");
        let fsync: &[&str] = if extra.contains(&"--fsync") { &[] } else { &["--fsync", "never"] };
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_relay"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_relay")),
        };
        let child = command
            .args(["serve", "--plc-url", plc, "--listen", &listen])
            .args(fsync)
            .args(&host_args)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RELAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let relay = Self { child, port, data_dir: data_dir.to_owned(), log };
        // Up: healthy, or degraded (503) when it starts paused, e.g. on a full disk.
        relay.wait_until(Duration::from_secs(20), "up", || matches!(relay.get("/xrpc/_health").0, 200 | 503));
        relay
    }

    /// `relay splitter` on `port` following `upstreams` (URLs), with its store in `data_dir`;
    /// `--fsync never` unless `extra` names `--fsync`.
    pub fn start_splitter(port: u16, data_dir: &Path, upstreams: &[String], extra: &[&str]) -> Self {
        let log = data_dir.with_extension(format!("{port}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let listen = format!("127.0.0.1:{port}");
        let fsync: &[&str] = if extra.contains(&"--fsync") { &[] } else { &["--fsync", "never"] };
        let ups: Vec<&str> = upstreams.iter().flat_map(|u| ["--upstream", u.as_str()]).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["splitter", "--listen", &listen])
            .args(fsync)
            .args(&ups)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RELAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let splitter = Self { child, port, data_dir: data_dir.to_owned(), log };
        splitter.wait_until(Duration::from_secs(20), "up", || matches!(splitter.get("/xrpc/_health").0, 200 | 503));
        splitter
    }

    /// The `ws://` URL of this relay (for a splitter's `--upstream`).
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The relay's threads as (name, allowed CPU list), from `/proc`.
    pub fn threads(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let cpus =
                status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("").trim().to_owned();
            out.push((comm.trim().to_owned(), cpus));
        }
        out
    }

    /// `GET path` → (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).unwrap_or((0, String::new()))
    }

    /// Sum of the samples of metric `name` whose line contains `filter`.
    pub fn metric(&self, name: &str, filter: &str) -> u64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    pub fn wait_until(&self, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > limit {
                panic!(
                    "timed out waiting for {what}; relay log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and wait (a crash: nothing is flushed or closed).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; asserts a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "relay exit status {status}; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST path` with a JSON body and optional Basic credentials → (status, body).
pub fn http_post(port: u16, path: &str, body: &str, basic: Option<(&str, &str)>) -> std::io::Result<(u16, String)> {
    use base64::Engine;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = basic
        .map(|(u, p)| {
            format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
        })
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// `POST path` with `content_type` and Basic credentials → (status, body).
pub fn http_post_typed(port: u16, path: &str, content_type: &str, body: &str, basic: (&str, &str)) -> (u16, String) {
    use base64::Engine;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", basic.0, basic.1));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// `METHOD path` without a body → the whole response text (head and body).
pub fn http_request_raw(port: u16, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nOrigin: http://example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

/// `GET path` → the whole response text (head and body).
pub fn http_get_raw(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp)
}

pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// A decoded frame as a subscriber sees it.
#[derive(Debug, Clone)]
pub enum Seen {
    Event(Event),
    Error(String),
}

impl Seen {
    pub fn seq(&self) -> Option<i64> {
        match self {
            Seen::Event(e) => e.seq(),
            Seen::Error(_) => None,
        }
    }
}

pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// Connects a subscriber; `cursor` as the query string value.
pub fn subscribe(port: u16, cursor: Option<&str>) -> Ws {
    let url = match cursor {
        Some(c) => format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
        None => format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"),
    };
    let (ws, _) = tungstenite::connect(url).unwrap();
    ws
}

/// Reads frames until `idle` passes with nothing new, or the stream closes.
pub fn read_until_idle(ws: &mut Ws, idle: Duration) -> Vec<Seen> {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(idle)).unwrap();
    }
    let mut out = Vec::new();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Binary(b)) => out.push(decode(&b)),
            Ok(tungstenite::Message::Close(_)) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    out
}

pub fn decode(bytes: &[u8]) -> Seen {
    match wire::frame::decode_frame(bytes).unwrap() {
        wire::frame::Frame::Message(e) => Seen::Event(e),
        wire::frame::Frame::Error(e) => Seen::Error(e.error),
    }
}

/// A flag that stops background helpers when dropped.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The admin password the host tests start relays with.
pub const ADMIN_PASSWORD: &str = "test-admin-pw";

/// `GET path` with Basic credentials → (status, body).
pub fn http_get_auth(port: u16, path: &str, basic: (&str, &str)) -> std::io::Result<(u16, String)> {
    use base64::Engine;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", basic.0, basic.1));
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn json_of(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

impl Relay {
    /// `GET path` → (status, JSON body or null).
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path);
        (status, json_of(&body))
    }

    /// `POST path` without credentials → (status, JSON body or null).
    pub fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_post(self.port, path, body, None).unwrap();
        (status, json_of(&body))
    }

    /// `GET /admin/{path}` as admin → (status, JSON body).
    pub fn admin_get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_get_auth(self.port, &format!("/admin/{path}"), ("admin", ADMIN_PASSWORD)).unwrap();
        (status, json_of(&body))
    }

    /// `POST /admin/{path}` as admin → (status, JSON body).
    pub fn admin_post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (status, body) =
            http_post(self.port, &format!("/admin/{path}"), &body.to_string(), Some(("admin", ADMIN_PASSWORD)))
                .unwrap();
        (status, json_of(&body))
    }

    /// `getHostStatus` of `host`'s `status` field.
    pub fn host_status(&self, host: &str) -> String {
        let (_, v) = self.get_json(&format!("/xrpc/com.atproto.sync.getHostStatus?hostname={host}"));
        v["status"].as_str().unwrap_or("").to_owned()
    }

    /// The relay's last seq, from `/xrpc/_health`.
    pub fn head(&self) -> i64 {
        self.get_json("/xrpc/_health").1["seq"].as_i64().unwrap_or(-1)
    }
}
