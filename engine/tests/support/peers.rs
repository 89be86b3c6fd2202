//! Fake network peers for the relay's tests: a PLC directory, PDS hosts (plain and TLS) serving
//! `subscribeRepos` and a few `com.atproto.sync.*` queries, and a test CA.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wire::Did;

/// A fake PLC directory: `GET /{did}` answers the stored document or 404. Also serves any other path
/// put with [`FakePlc::put_path`] (e.g. `.well-known/did.json` for a `did:web`).
pub struct FakePlc {
    pub url: String,
    docs: Arc<Mutex<HashMap<String, String>>>,
    /// Requests answered so far.
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakePlc {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// A directory on `port` (0: any free port).
    pub fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let docs: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let requests: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (served, counted) = (Arc::clone(&docs), Arc::clone(&requests));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let docs = Arc::clone(&served);
                counted.fetch_add(1, Ordering::AcqRel);
                std::thread::spawn(move || serve_plc(stream, &docs));
            }
        });
        Self { url, docs, requests }
    }

    pub fn put(&self, did: &Did, doc: serde_json::Value) {
        self.docs.lock().unwrap().insert(did.to_string(), doc.to_string());
    }

    /// Answers 404 for `did` from now on (a tombstoned or unknown DID).
    pub fn remove(&self, did: &Did) {
        self.docs.lock().unwrap().remove(did.as_str());
    }

    /// Serves `body` at `/{path}`.
    pub fn put_path(&self, path: &str, body: serde_json::Value) {
        self.docs.lock().unwrap().insert(path.trim_start_matches('/').to_owned(), body.to_string());
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
    /// Requests for `com.atproto.sync.getLatestCommit` or `getBlocks` (answered `501`: a host
    /// without them). Re-synchronizing an account is the consumer's job, not the relay's.
    pub sync_requests: Arc<AtomicUsize>,
    /// When each websocket connection was accepted.
    pub connected_at: Arc<Mutex<Vec<Instant>>>,
    /// How the host behaves.
    pub mode: Arc<HostMode>,
}

/// Switches for a [`FakeHost`].
#[derive(Debug, Default)]
pub struct HostMode {
    /// Answer a `cursor` above the last pushed seq with a `FutureCursor` error frame (as a PDS whose
    /// sequence was reset does), instead of waiting.
    pub future_cursor: AtomicBool,
    /// Say `Server: … (atproto-relay)` in the websocket handshake.
    pub relay_header: AtomicBool,
    /// Do not answer `describeServer` (not a PDS).
    pub no_describe: AtomicBool,
    /// Ignore the `cursor` of new connections and send every frame from the first (a host that
    /// replays what the relay already has).
    pub ignore_cursor: AtomicBool,
}

impl FakeHost {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frames: Arc<Mutex<Vec<(u64, Vec<u8>)>>> = Arc::default();
        let cursors: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
        let repo_status: Arc<Mutex<HashMap<String, (bool, Option<String>)>>> = Arc::default();
        let latest: Arc<AtomicUsize> = Arc::default();
        let connected_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let mode: Arc<HostMode> = Arc::default();
        let (f, c, r, l) = (Arc::clone(&frames), Arc::clone(&cursors), Arc::clone(&repo_status), Arc::clone(&latest));
        let (at, m) = (Arc::clone(&connected_at), Arc::clone(&mode));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, c, r, l) = (Arc::clone(&f), Arc::clone(&c), Arc::clone(&r), Arc::clone(&l));
                let (at, m) = (Arc::clone(&at), Arc::clone(&m));
                std::thread::spawn(move || {
                    let mut head = [0u8; 512];
                    let n = stream.peek(&mut head).unwrap_or(0);
                    let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or("").to_owned();
                    if line.contains("/xrpc/com.atproto.sync.getRepoStatus") {
                        serve_repo_status(stream, &line, &r);
                    } else if line.contains("/xrpc/com.atproto.sync.getLatestCommit")
                        || line.contains("/xrpc/com.atproto.sync.getBlocks")
                    {
                        serve_not_implemented(stream, &l);
                    } else if line.contains("/xrpc/com.atproto.server.describeServer") {
                        serve_describe(stream, &m);
                    } else {
                        serve_host(stream, &f, &c, &at, &m);
                    }
                });
            }
        });
        Self { port, frames, cursors, repo_status, sync_requests: latest, connected_at, mode }
    }

    pub fn hostname(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Appends a frame with its upstream seq (the seq inside the frame may differ on purpose).
    pub fn push(&self, seq: u64, frame: Vec<u8>) {
        self.frames.lock().unwrap().push((seq, frame));
    }

    /// A function that appends frames like [`FakeHost::push`], for another thread.
    pub fn pusher(&self) -> impl Fn(u64, Vec<u8>) + Send + 'static {
        let frames = Arc::clone(&self.frames);
        move |seq, frame| frames.lock().unwrap().push((seq, frame))
    }

    /// Forgets every frame, as a PDS whose sequence was reset (connections opened later see only
    /// frames pushed after this).
    pub fn reset_sequence(&self) {
        self.frames.lock().unwrap().clear();
    }
}

/// The decoded value of query parameter `name` in a request line (`GET /path?… HTTP/1.1`), as a real
/// server reads it.
fn query_param(line: &str, name: &str) -> String {
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn serve_not_implemented(mut stream: TcpStream, requests: &AtomicUsize) {
    requests.fetch_add(1, Ordering::AcqRel);
    let mut buf = [0u8; 2048];
    let _ = stream.read(&mut buf);
    let body = br#"{"error":"MethodNotImplemented"}"#;
    let _ = write!(
        stream,
        "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(body);
}

fn serve_repo_status(mut stream: TcpStream, line: &str, statuses: &Mutex<HashMap<String, (bool, Option<String>)>>) {
    let mut buf = [0u8; 2048];
    let _ = stream.read(&mut buf);
    let did = query_param(line, "did");
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
                    let mode = HostMode::default();
                    serve_host(rustls::StreamOwned::new(conn, stream), &f, &c, &Mutex::new(Vec::new()), &mode);
                });
            }
        });
        Self {
            port,
            frames,
            cursors,
            repo_status: Arc::default(),
            sync_requests: Arc::default(),
            connected_at: Arc::default(),
            mode: Arc::default(),
        }
    }
}

fn serve_describe(mut stream: TcpStream, mode: &HostMode) {
    let mut buf = [0u8; 2048];
    let _ = stream.read(&mut buf);
    let resp = if mode.no_describe.load(Ordering::Acquire) {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    } else {
        let body = r#"{"did":"did:web:localhost","availableUserDomains":[".test"]}"#;
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = stream.write_all(resp.as_bytes());
}

fn serve_host<S: Read + Write>(
    stream: S,
    frames: &Mutex<Vec<(u64, Vec<u8>)>>,
    cursors: &Mutex<Vec<Option<u64>>>,
    connected_at: &Mutex<Vec<Instant>>,
    mode: &HostMode,
) {
    let mut cursor = None;
    let callback = |req: &tungstenite::handshake::server::Request,
                    mut resp: tungstenite::handshake::server::Response| {
        cursor = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("cursor=")))
            .and_then(|c| c.parse::<u64>().ok());
        if mode.relay_header.load(Ordering::Acquire) {
            resp.headers_mut().insert("server", "fake-relay/1.0 (atproto-relay)".parse().unwrap());
        }
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
        return;
    };
    cursors.lock().unwrap().push(cursor);
    connected_at.lock().unwrap().push(Instant::now());
    if mode.ignore_cursor.load(Ordering::Acquire) {
        cursor = None;
    }
    let head = frames.lock().unwrap().iter().map(|(s, _)| *s).max().unwrap_or(0);
    if mode.future_cursor.load(Ordering::Acquire) && cursor.is_some_and(|c| c > head) {
        let err = wire::frame::ErrorBody { error: "FutureCursor".into(), message: Some("cursor in the future".into()) };
        let _ = ws.send(tungstenite::Message::Binary(err.encode().unwrap().into()));
        let _ = ws.close(None);
        let _ = ws.flush();
        return;
    }
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
