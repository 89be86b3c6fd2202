//! Test support: a fake PLC directory, a fake PDS host serving prepared frames over websocket, an
//! account that signs real commits, a subscriber client, and a handle on a `relay serve` process.
#![allow(dead_code, clippy::type_complexity, clippy::result_large_err, clippy::large_enum_variant)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cid::Cid;
use serde::Serialize;
use sha2::Digest;
use wire::frame::{AccountEvent, CommitEvent, Event, IdentityEvent, RepoOp, SyncEvent};
use wire::{Did, Tid};

/// A fake PLC directory: `GET /{did}` answers the stored document or 404.
pub struct FakePlc {
    pub url: String,
    docs: Arc<Mutex<HashMap<String, String>>>,
}

impl FakePlc {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let docs: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let served = Arc::clone(&docs);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let docs = Arc::clone(&served);
                std::thread::spawn(move || serve_plc(stream, &docs));
            }
        });
        Self { url, docs }
    }

    pub fn put(&self, did: &Did, doc: serde_json::Value) {
        self.docs.lock().unwrap().insert(did.to_string(), doc.to_string());
    }
}

fn serve_plc(mut stream: TcpStream, docs: &Mutex<HashMap<String, String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
    let doc = docs.lock().unwrap().get(&path).cloned();
    let resp = match doc {
        Some(body) => {
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        }
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_owned(),
    };
    let _ = stream.write_all(resp.as_bytes());
}

/// A fake PDS: serves `subscribeRepos` frames from a shared list to every connection, starting after
/// the connection's `cursor`, and new frames as they are appended.
pub struct FakeHost {
    pub port: u16,
    frames: Arc<Mutex<Vec<(u64, Vec<u8>)>>>,
    /// The `cursor` query parameter of each connection, in order (`None` when absent).
    pub cursors: Arc<Mutex<Vec<Option<u64>>>>,
    /// What `com.atproto.sync.getRepoStatus` answers, by DID: (active, status).
    pub repo_status: Arc<Mutex<HashMap<String, (bool, Option<String>)>>>,
    /// What `getLatestCommit`/`getBlocks` answer, by DID: (commit CID, rev, commit block).
    pub latest: Arc<Mutex<HashMap<String, (String, String, Vec<u8>)>>>,
    /// When each websocket connection was accepted.
    pub connected_at: Arc<Mutex<Vec<Instant>>>,
}

impl FakeHost {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frames: Arc<Mutex<Vec<(u64, Vec<u8>)>>> = Arc::default();
        let cursors: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
        let repo_status: Arc<Mutex<HashMap<String, (bool, Option<String>)>>> = Arc::default();
        let latest: Arc<Mutex<HashMap<String, (String, String, Vec<u8>)>>> = Arc::default();
        let connected_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (f, c, r, l) = (Arc::clone(&frames), Arc::clone(&cursors), Arc::clone(&repo_status), Arc::clone(&latest));
        let at = Arc::clone(&connected_at);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, c, r, l) = (Arc::clone(&f), Arc::clone(&c), Arc::clone(&r), Arc::clone(&l));
                let at = Arc::clone(&at);
                std::thread::spawn(move || {
                    let mut head = [0u8; 512];
                    let n = stream.peek(&mut head).unwrap_or(0);
                    let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or("").to_owned();
                    if line.contains("/xrpc/com.atproto.sync.getRepoStatus") {
                        serve_repo_status(stream, &line, &r);
                    } else if line.contains("/xrpc/com.atproto.sync.getLatestCommit")
                        || line.contains("/xrpc/com.atproto.sync.getBlocks")
                    {
                        serve_latest(stream, &line, &l);
                    } else {
                        serve_host(stream, &f, &c, &at);
                    }
                });
            }
        });
        Self { port, frames, cursors, repo_status, latest, connected_at }
    }

    pub fn hostname(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Appends a frame with its upstream seq (the seq inside the frame may differ on purpose).
    pub fn push(&self, seq: u64, frame: Vec<u8>) {
        self.frames.lock().unwrap().push((seq, frame));
    }
}

fn serve_latest(mut stream: TcpStream, line: &str, latest: &Mutex<HashMap<String, (String, String, Vec<u8>)>>) {
    let mut buf = [0u8; 2048];
    let _ = stream.read(&mut buf);
    let did = line.split("did=").nth(1).and_then(|r| r.split([' ', '&']).next()).unwrap_or("").to_owned();
    let found = latest.lock().unwrap().get(&did).cloned();
    let (ctype, body) = match found {
        None => ("application/json", br#"{"error":"RepoNotFound"}"#.to_vec()),
        Some((cid, rev, _)) if line.contains("getLatestCommit") => {
            ("application/json", serde_json::json!({"cid": cid, "rev": rev}).to_string().into_bytes())
        }
        Some((cid, _, block)) => {
            let cid: wire::Cid = cid.parse().unwrap();
            ("application/vnd.ipld.car", wire::car::write_car(&cid, &[(cid, &block)]).unwrap())
        }
    };
    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n", body.len());
    let _ = stream.write_all(&body);
}

fn serve_repo_status(mut stream: TcpStream, line: &str, statuses: &Mutex<HashMap<String, (bool, Option<String>)>>) {
    let mut buf = [0u8; 2048];
    let _ = stream.read(&mut buf);
    let did = line.split("did=").nth(1).and_then(|r| r.split([' ', '&']).next()).unwrap_or("").to_owned();
    let body = match statuses.lock().unwrap().get(&did) {
        Some((active, status)) => serde_json::json!({"did": did, "active": active, "status": status}).to_string(),
        None => serde_json::json!({"error": "RepoNotFound"}).to_string(),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// A TLS test CA and a server certificate for `localhost` signed by it.
pub struct TestCa {
    /// The CA certificate (PEM), for `--tls-ca`.
    pub ca_pem: String,
    /// The server's rustls configuration.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "relay test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
        let server =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
        Self { ca_pem: ca.pem(), server: Arc::new(server) }
    }
}

impl FakeHost {
    /// A host serving `subscribeRepos` over TLS (`wss://localhost:PORT`) with `ca`'s certificate.
    pub fn start_tls(ca: &TestCa) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frames: Arc<Mutex<Vec<(u64, Vec<u8>)>>> = Arc::default();
        let cursors: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
        let (f, c, config) = (Arc::clone(&frames), Arc::clone(&cursors), Arc::clone(&ca.server));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, c, config) = (Arc::clone(&f), Arc::clone(&c), Arc::clone(&config));
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    serve_host(rustls::StreamOwned::new(conn, stream), &f, &c, &Mutex::new(Vec::new()));
                });
            }
        });
        Self {
            port,
            frames,
            cursors,
            repo_status: Arc::default(),
            latest: Arc::default(),
            connected_at: Arc::default(),
        }
    }
}

fn serve_host<S: Read + Write>(
    stream: S,
    frames: &Mutex<Vec<(u64, Vec<u8>)>>,
    cursors: &Mutex<Vec<Option<u64>>>,
    connected_at: &Mutex<Vec<Instant>>,
) {
    let mut cursor = None;
    let callback = |req: &tungstenite::handshake::server::Request, resp| {
        cursor = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("cursor=")))
            .and_then(|c| c.parse::<u64>().ok());
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
        return;
    };
    cursors.lock().unwrap().push(cursor);
    connected_at.lock().unwrap().push(Instant::now());
    let mut next = 0usize;
    loop {
        let pending: Vec<(u64, Vec<u8>)> = frames.lock().unwrap().get(next..).unwrap_or_default().to_vec();
        for (seq, frame) in pending {
            next += 1;
            if cursor.is_some_and(|c| seq <= c) {
                continue;
            }
            if ws.send(tungstenite::Message::Binary(frame.into())).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

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
        let log = data_dir.with_extension(format!("{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let host_args: Vec<&str> = hosts.iter().flat_map(|h| ["--host", *h]).collect();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["serve", "--plc-url", plc, "--listen", &listen, "--fsync", "never"])
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
        relay.wait_until(Duration::from_secs(20), "healthy", || relay.get("/xrpc/_health").0 == 200);
        relay
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
