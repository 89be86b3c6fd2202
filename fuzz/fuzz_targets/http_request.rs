//! Whole HTTP requests (method, path, query, headers, body) through the relay's real routers — XRPC,
//! `/metrics` and the admin API, with and without valid credentials — over a real store: no input
//! may panic, and every answer must be a well-formed HTTP/1.1 response (a status line, a
//! `Content-Length` equal to the body, and for errors an XRPC error JSON `{"error", "message"}`).
//!
//! Outbound requests are kept out (this is a fuzzer, not a crawler): the public `requestCrawl` quota
//! is 0 before every input, so no new host is probed, and the admin `pds/requestCrawl` is driven
//! without credentials.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arbitrary::Arbitrary;
use base64::Engine;
use engine::http::Request;
use engine::xrpc::{Ctx, Routed};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use libfuzzer_sys::fuzz_target;

const PASSWORD: &str = "fuzz-admin";

const PATHS: &[&str] = &[
    "/xrpc/_health",
    "/metrics",
    "/xrpc/com.atproto.sync.subscribeRepos",
    "/xrpc/com.atproto.sync.listRepos",
    "/xrpc/com.atproto.sync.listHosts",
    "/xrpc/com.atproto.sync.getHostStatus",
    "/xrpc/com.atproto.sync.getRepoStatus",
    "/xrpc/com.atproto.sync.getLatestCommit",
    "/xrpc/com.atproto.sync.getRepo",
    "/xrpc/com.atproto.sync.requestCrawl",
    "/xrpc/com.atproto.sync.getBlob",
    "/xrpc/com.atproto.sync.listReposByCollection",
    "/xrpc/network.bsky.jetstream.subscribeEvents",
    "/xrpc/network.bsky.jetstream.getZstdDictionary",
    "/subscribe",
    "/admin/repo/takeDown",
    "/admin/repo/reverseTakedown",
    "/admin/subs/getUpstreamConns",
    "/admin/subs/killUpstream",
    "/admin/subs/getEnabled",
    "/admin/subs/setEnabled",
    "/admin/subs/perDayLimit",
    "/admin/subs/setPerDayLimit",
    "/admin/subs/listDomainBans",
    "/admin/subs/banDomain",
    "/admin/subs/unbanDomain",
    "/admin/pds/list",
    "/admin/pds/requestCrawl",
    "/admin/pds/changeLimits",
    "/admin/pds/block",
    "/admin/pds/unblock",
    "/admin/pds/resetCursor",
    "/admin/consumers/list",
    "/admin/consumers/kill",
];

const NAMES: &[&str] = &[
    "did",
    "cursor",
    "limit",
    "hostname",
    "since",
    "domain",
    "enabled",
    "ban",
    "accountLimit",
    "trusted",
    "id",
    "collection",
    "wantedCollections",
    "wantedDids",
    "maxMessageSizeBytes",
    "compress",
    "requireHello",
    "kinds",
    "dids",
    "collections",
    "zstdDictionary",
];

#[derive(Arbitrary, Debug)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Null,
    Did(u8),
    Host(u8),
}

impl Value {
    fn json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => s.clone().into(),
            Value::Int(n) => (*n).into(),
            Value::Bool(b) => (*b).into(),
            Value::Null => serde_json::Value::Null,
            Value::Did(n) => format!("did:plc:fuzz{:0>20}", n % 8).into(),
            Value::Host(n) => format!("pds{}.fuzz.example", n % 4).into(),
        }
    }

    fn text(&self) -> String {
        match self.json() {
            serde_json::Value::String(s) => s,
            v => v.to_string(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    None,
    Raw(Vec<u8>),
    Fields(Vec<(u8, Value)>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    other_method: String,
    path: u8,
    path_suffix: Option<String>,
    params: Vec<(u8, Value)>,
    raw_query: Option<String>,
    headers: Vec<(String, String)>,
    json_type: bool,
    auth: u8,
    body: Body,
}

impl Input {
    fn bytes(&self) -> Vec<u8> {
        let method = match self.method % 6 {
            0 | 1 => "GET",
            2 | 3 => "POST",
            4 => "OPTIONS",
            _ => self.other_method.as_str(),
        };
        let mut path = PATHS[usize::from(self.path) % PATHS.len()].to_owned();
        if let Some(s) = &self.path_suffix {
            path.push_str(s);
        }
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.params {
            query.append_pair(NAMES[usize::from(*name) % NAMES.len()], &value.text());
        }
        let mut query = query.finish();
        if let Some(raw) = &self.raw_query {
            query.push('&');
            query.push_str(raw);
        }
        let body = match &self.body {
            Body::None => Vec::new(),
            Body::Raw(b) => b.clone(),
            Body::Fields(fields) => {
                let map: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(n, v)| (NAMES[usize::from(*n) % NAMES.len()].to_owned(), v.json()))
                    .collect();
                serde_json::Value::Object(map).to_string().into_bytes()
            }
        };
        let mut out = format!("{method} {path}?{query} HTTP/1.1\r\nHost: fuzz\r\n").into_bytes();
        // Admin requestCrawl would probe the named host over the network: never authorized here.
        let admin_crawl = path.starts_with("/admin/pds/requestCrawl");
        match self.auth % 4 {
            0 | 1 if !admin_crawl => {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
                out.extend_from_slice(format!("Authorization: Basic {token}\r\n").as_bytes());
            }
            2 => out.extend_from_slice(b"Authorization: Basic YWRtaW46d3Jvbmc=\r\n"),
            _ => {}
        }
        if self.json_type {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(&body);
        out
    }
}

struct Harness {
    executor: LocalExecutor,
    ctx: Rc<Ctx>,
    _dir: tempfile::TempDir,
}

/// The sequencer's end of the admin queue: drained on a thread of its own, as in the relay.
fn drain(rx: glommio::channels::shared_channel::SharedReceiver<shards::messages::ToSequencer>) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .name("fuzz-sequencer")
        .spawn(move || async move {
            let rx = rx.connect().await;
            while rx.recv().await.is_some() {}
        })
        .expect("an executor for the drain");
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(storage::Store::open(dir.path(), &storage::StoreOptions::default()).expect("a store"));
    // Some state for the handlers to find: hosts and accounts.
    let names: Vec<String> = (0..4).map(|n| format!("pds{n}.fuzz.example")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = storage::HostConfig { tls: true, trusted: false, banned: false, account_limit: 10, added_ms: 0 };
    store.update_host_configs(&refs, |_, _| Some(config)).expect("hosts");
    let mut batch = storage::CommitBatch::default();
    for n in 0..8 {
        let did = wire::Did::new(format!("did:plc:fuzz{n:0>20}")).expect("a DID");
        let cid = wire::car::cid_for(wire::car::CODEC_DAG_CBOR, &[n]);
        let state = storage::RepoState {
            rev: Some(wire::Tid::from_u64(1 << 20 | u64::from(n))),
            commit: Some(cid),
            data: Some(cid),
            ..storage::RepoState::new(names[usize::from(n) % 4].clone())
        };
        batch.repos.push((did, state));
    }
    store.commit(&batch).expect("accounts");
    let (tx, rx) = glommio::channels::shared_channel::new_bounded(1024);
    drain(rx);
    let executor = LocalExecutorBuilder::new(Placement::Unbound).io_memory(1 << 20).make().expect("an executor");
    let ctx = executor.run(async move {
        let metrics = shards::Metrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let fanout = shards::fanout::FanoutShard::new(
            shards::fanout::FanoutConfig::default(),
            Arc::clone(&store),
            metrics.clone(),
            Arc::new(AtomicU64::new(0)),
            Arc::default(),
        )
        .expect("a fanout shard");
        let policy = shards::hosts::HostPolicy { new_hosts_per_day: 0, ..Default::default() };
        let hosts = Arc::new(shards::hosts::HostRegistry::new(Arc::clone(&store), policy).expect("a registry"));
        let fanout_tq = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::NotImportant,
            "fanout",
        );
        Rc::new(Ctx {
            fanout,
            fanout_tq,
            registry: Arc::new(registry),
            admin: Some(engine::admin::Admin::new(PASSWORD.into())),
            hosts,
            to_sequencer: Some(tx.connect().await),
            splitter: None,
            http: shards::net::HttpClient::new(None, shards::net::dns::Dns::default()).expect("a client"),
            crawl: engine::xrpc::request_crawl::CrawlConfig::default(),
            metrics,
            limits: engine::limits::ConnectionLimits::new(0, 0),
            health: Arc::default(),
            engine_metrics: engine::metrics::EngineMetrics::default(),
            request_memory: Rc::new(glommio::sync::Semaphore::new(engine::http::REQUEST_MEMORY_BYTES as u64)),
        })
    });
    Harness { executor, ctx, _dir: dir }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// Checks that `bytes` is one complete, well-formed HTTP/1.1 response.
fn check_response(bytes: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("not a complete HTTP response: {other:?}"),
    };
    let status = resp.code.expect("a status code");
    assert!((100..600).contains(&status), "status {status}");
    let length: usize = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .expect("a Content-Length");
    let body = &bytes[head_len..];
    assert_eq!(body.len(), length, "Content-Length matches the body");
    if status >= 400 {
        let v: serde_json::Value = serde_json::from_slice(body).expect("an XRPC error body is JSON");
        assert!(v["error"].is_string() && v["message"].is_string(), "an XRPC error: {v}");
    }
}

fuzz_target!(|input: Input| {
    let bytes = input.bytes();
    let Ok(Some((head, len))) = wire::http::parse_request_head(&bytes) else { return };
    let request = Request { head, body: bytes[len..].to_vec() };
    HARNESS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let h = cell.get_or_insert_with(harness);
        let ctx = Rc::clone(&h.ctx);
        // The quota and the switch as a public relay has them, whatever an earlier input set.
        ctx.hosts.set_new_hosts_per_day(0);
        let _ = ctx.hosts.set_crawl_enabled(true);
        let routed = h.executor.run(async move { engine::xrpc::route(&request, &ctx).await });
        match routed {
            Routed::Respond(resp) => check_response(&resp.encode()),
            Routed::Upgrade { accept_key, .. } => assert_eq!(accept_key.len(), 28),
        }
    });
});
