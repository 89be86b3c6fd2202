//! Ingest shards: one per ingest core. Each owns the hosts assigned to it by [`shard_for_host`], keeps
//! one websocket connection per host, validates every frame ([`process::process_frame`]) and sends
//! the results to the sequencer in each account's order.
//!
//! Per host: connect to `wss://{host}/xrpc/com.atproto.sync.subscribeRepos?cursor={cursor}` (plain
//! `ws://` for localhost hosts, see [`Upstream`]), resume where its [`session::HostSession`] says
//! (the resume point the sequencer persists in the `hosts` column family with the events),
//! reconnect with backoff after any error.

mod connection;
pub use connection::ERROR_FRAME_LABELS;
pub mod process;
pub mod session;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{AbortHandle, Abortable};
use glommio::channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender};
use storage::{HostConfig, HostInfo, Store};
use wire::{HostStatus, Hostname, Limits};

use crate::backoff::Backoff;
use crate::hosts::{Connection, HostRegistry, RateLimiter, RateLimits};
use crate::identity::{IdentityConfig, Resolver};
use crate::messages::{HostCommand, ToSequencer};
use crate::metrics::Metrics;
use crate::unix_ms as now_ms;

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Event limits.
    pub limits: Limits,
    /// Relay (and count) Sync 1.1 failures instead of dropping them. Default false.
    pub lenient_sync: bool,
    /// Identity resolution (and the HTTP client used for hosts too).
    pub identity: IdentityConfig,
    /// A host connection with no message for this long is closed and reconnected, and the host's
    /// status becomes `idle` until it sends again. Default 10 min.
    pub idle_timeout: Duration,
    /// Consecutive failed connection attempts after which a host is `offline`. Default 8; valid 1
    /// and up.
    pub offline_after_failures: u32,
    /// How often an `offline` host is still tried. Default 10 min.
    pub offline_retry: Duration,
    /// First reconnect delay. Default 1 s.
    pub backoff_base: Duration,
    /// Longest reconnect delay. Default 60 s.
    pub backoff_max: Duration,
    /// TCP connect plus websocket handshake deadline. Default 10 s.
    pub connect_timeout: Duration,
    /// Startup ramp: a shard with 1,000 or more hosts spreads their first connections over this
    /// window (fewer hosts: a proportionally shorter one), each host at a fixed point of it given by a
    /// hash of its name, so thousands of handshakes never arrive at once. Default 30 s; zero connects
    /// everything at once.
    pub startup_ramp: Duration,
    /// SSRF guard: connect to a host (other than `localhost`) only when every address its name
    /// resolves to is public ([`crate::hosts::is_public_ip`]). Default true.
    pub public_only: bool,
}

impl IngestConfig {
    /// Defaults for everything but identity resolution.
    pub fn new(identity: IdentityConfig) -> Self {
        Self {
            limits: Limits::default(),
            lenient_sync: false,
            identity,
            idle_timeout: Duration::from_secs(600),
            offline_after_failures: 8,
            offline_retry: Duration::from_secs(600),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            startup_ramp: Duration::from_secs(30),
            public_only: true,
        }
    }
}

/// An upstream host and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The host.
    pub host: Hostname,
    /// Over TLS (`wss://`, default port 443) or plain (`ws://`, default port 80).
    pub tls: bool,
}

impl Upstream {
    /// Parses `wss://host[:port]`, `ws://host[:port]` or a bare `host[:port]`. A bare host is reached
    /// over TLS unless it is `localhost` (or a subdomain of it). Plain `ws://` is refused for other
    /// hosts unless `allow_insecure`.
    ///
    /// # Errors
    /// A message when the host is not a hostname or plain websocket is not allowed for it.
    pub fn parse(spec: &str, allow_insecure: bool) -> Result<Self, String> {
        let spec = spec.trim().trim_end_matches('/');
        let (scheme, rest) = match spec.split_once("://") {
            Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
            None => (None, spec),
        };
        let host = Hostname::parse_lenient(rest).map_err(|_| format!("{spec:?} is not a hostname[:port]"))?;
        let tls = match scheme.as_deref() {
            Some("wss" | "https") => true,
            Some("ws" | "http") => false,
            Some(other) => return Err(format!("{spec:?}: unknown scheme {other}")),
            None => !host.is_localhost(),
        };
        if !tls && !host.is_localhost() && !allow_insecure {
            return Err(format!("{spec:?}: plain ws:// is only allowed for localhost (or with --allow-insecure-ws)"));
        }
        Ok(Self { host, tls })
    }
}

/// What happened on a host's connection, for its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEvent {
    /// The websocket handshake succeeded.
    Connected,
    /// The connection delivered its first frame.
    Delivered,
    /// No frame for the idle timeout.
    Idle,
    /// A connection attempt failed.
    Failed,
    /// The host's events are being held back by its rate limit.
    Throttled,
}

/// A throttled host is `active` again once its events have passed without waiting for this long.
pub const THROTTLE_CLEAR: Duration = Duration::from_secs(10);

/// The host's next status after `event` at `now_ms` (a pure state machine): a first frame makes it
/// `active`, silence `idle`, `offline_after` consecutive failures `offline`, events held back by its
/// rate limit `throttled` (until frames pass freely again: `Delivered`); reaching an offline host
/// again makes it `active`. `banned` (kept in the host's settings, not here) is left alone.
pub fn next_host_info(prev: HostInfo, event: HostEvent, now_ms: u64, offline_after: u32) -> HostInfo {
    if prev.status == HostStatus::Banned {
        return prev;
    }
    match event {
        HostEvent::Connected => HostInfo {
            status: if prev.status == HostStatus::Offline { HostStatus::Active } else { prev.status },
            last_connected_ms: now_ms,
            failures: 0,
        },
        HostEvent::Delivered => HostInfo { status: HostStatus::Active, ..prev },
        HostEvent::Idle => HostInfo { status: HostStatus::Idle, ..prev },
        HostEvent::Throttled => HostInfo { status: HostStatus::Throttled, ..prev },
        HostEvent::Failed => {
            let failures = prev.failures.saturating_add(1);
            let status = if failures >= offline_after.max(1) { HostStatus::Offline } else { prev.status };
            HostInfo { status, failures, ..prev }
        }
    }
}

/// The ramp window for a shard of `hosts` hosts: the full `ramp` from 1,000 hosts on, proportionally
/// less below (one host connects at once).
pub fn startup_window(ramp: Duration, hosts: usize) -> Duration {
    ramp.mul_f64((hosts.saturating_sub(1) as f64 / 1000.0).min(1.0))
}

/// Where in the startup `window` `host` connects: a fixed point given by a stable hash of its name
/// (the same on every restart, so hosts do not all reconnect at once after one either).
pub fn ramp_delay(host: &Hostname, window: Duration) -> Duration {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in host.as_str().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    window.mul_f64((h % 10_000) as f64 / 10_000.0)
}

/// The ingest shard (0-based, below `shards`) that owns `host`: a stable hash of the hostname, so a
/// host always lands on the same shard for a given shard count.
pub fn shard_for_host(host: &Hostname, shards: usize) -> usize {
    // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.as_str().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// A host's subscription task, as its shard tracks it.
struct HostHandle {
    /// Whether its websocket is open now.
    connected: Cell<bool>,
    /// The host's session: resume point, frames of the connection, rate limits, backoff and status
    /// (kept across restarts of the task, so a reconnect after a kill neither replays what is still
    /// queued for the sequencer nor refills the rate limits).
    session: Rc<RefCell<session::HostSession<process::Verdict>>>,
    /// Set when the connection must end after the frames read before an error frame or broken
    /// framing are settled: the `relay_upstream_disconnects_total` reason.
    closing: Cell<Option<&'static str>>,
    /// The host's `did:web` frames decided at once ([`DID_WEB_SLOTS`]).
    did_web_slots: glommio::sync::Semaphore,
    /// Cancels the task.
    abort: AbortHandle,
    /// When the task was started.
    started: Instant,
    /// The task returned by itself (`FutureCursor`, relay-loop ban, sequencer gone).
    finished: Cell<bool>,
}

impl HostHandle {
    fn alive(&self) -> bool {
        !self.abort.is_aborted() && !self.finished.get()
    }
}

/// Most of one host's `did:web` frames decided at once (their identity fetches in flight).
pub const DID_WEB_SLOTS: u64 = 4;

/// A `Connect` for a known host whose task is alive (in backoff or its offline wait) restarts it at
/// most this often, so `requestCrawl` (unauthenticated) cannot make the relay hammer a host.
const CONNECT_RESTART_INTERVAL: Duration = Duration::from_secs(60);

struct Shard {
    config: IngestConfig,
    store: Arc<Store>,
    metrics: Metrics,
    registry: Arc<HostRegistry>,
    index: usize,
    ctx: process::Context,
    to_sequencer: ConnectedSender<ToSequencer>,
    hosts: RefCell<HashMap<String, Rc<HostHandle>>>,
}

/// Runs ingest shard `index` (of `shards`) on the current executor until the sequencer goes away.
///
/// At start it subscribes to every host of the store's host table that it owns
/// ([`shard_for_host`]) and that is not banned (directly or by domain), spread over the startup ramp.
/// Then it follows the sequencer's commands: hosts added, killed, banned, reloaded or reset
/// ([`HostCommand`]).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: IngestConfig,
    index: usize,
    shards: usize,
    to_sequencer: SharedSender<ToSequencer>,
    commands: SharedReceiver<HostCommand>,
    store: Arc<Store>,
    registry: Arc<HostRegistry>,
    metrics: Metrics,
) {
    let resolver = Resolver::new(config.identity.clone(), Arc::clone(&store), metrics.clone());
    let mut ctx = process::Context::new(
        config.limits,
        config.lenient_sync,
        resolver,
        Arc::clone(&store),
        metrics.clone(),
        config.identity.http.clone(),
    );
    ctx.public_only = config.public_only;
    let owned: Vec<(Hostname, HostConfig)> = match store.host_configs() {
        Ok(all) => all
            .into_iter()
            .filter_map(|(h, c)| Hostname::parse_lenient(&h).ok().map(|h| (h, c)))
            .filter(|(h, c)| shard_for_host(h, shards) == index && !c.banned && registry.domain_ban(h).is_none())
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the host table; starting with no hosts");
            Vec::new()
        }
    };
    let shard = Rc::new(Shard {
        config,
        store,
        metrics,
        registry,
        index,
        ctx,
        to_sequencer: to_sequencer.connect().await,
        hosts: RefCell::new(HashMap::new()),
    });
    let window = startup_window(shard.config.startup_ramp, owned.len());
    tracing::info!(shard = index, hosts = owned.len(), window_s = window.as_secs(), "ingest shard starting");
    for (host, config) in owned {
        let delay = ramp_delay(&host, window);
        start_host(&shard, host, config, None, delay);
    }
    let rx = commands.connect().await;
    while let Some(cmd) = rx.recv().await {
        host_command(&shard, cmd);
    }
    for handle in shard.hosts.borrow_mut().drain() {
        handle.1.abort.abort();
    }
}

fn host_command(shard: &Rc<Shard>, cmd: HostCommand) {
    tracing::info!(shard = shard.index, ?cmd, "host command");
    let config = match shard.store.host_config(cmd.host().as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(host = %cmd.host(), error = %e, "cannot read host settings");
            return;
        }
    };
    let existing = shard.hosts.borrow().get(cmd.host().as_str()).cloned();
    match cmd {
        HostCommand::Connect(host) => {
            let Some(config) = config.filter(|c| !c.banned && shard.registry.domain_ban(&host).is_none()) else {
                return;
            };
            if let Some(h) = &existing
                && h.alive()
                && (h.connected.get() || h.started.elapsed() < CONNECT_RESTART_INTERVAL)
            {
                return;
            }
            let carried = existing.map(|h| {
                h.abort.abort();
                Rc::clone(&h.session)
            });
            start_host(shard, host, config, carried, Duration::ZERO);
        }
        HostCommand::Disconnect(_) => {
            // The handle stays (aborted), keeping the cursor for a later `Connect`.
            if let Some(h) = existing {
                h.abort.abort();
            }
        }
        HostCommand::Reload(_) => {
            if let (Some(h), Some(config)) = (existing, config) {
                *h.session.borrow_mut().limiter_mut() = RateLimiter::new(RateLimits::for_host(&config), Instant::now());
            }
        }
        HostCommand::ResetCursor { host, cursor } => {
            let carried = existing.map(|h| {
                h.abort.abort();
                // Kept for a later `Connect` when the host is banned now. What was handed over above
                // the old cursor is of no account after a reset: the host's frames after the new
                // cursor are all read again.
                h.session.borrow_mut().reset(cursor);
                Rc::clone(&h.session)
            });
            // The reset goes to the sequencer on this shard's queue, after every event the old
            // connection already sent, and the host reconnects only once it is queued: no event of
            // the old connection can move the cursor past the reset, none of the new one precede it.
            let shard = Rc::clone(shard);
            glommio::spawn_local(async move {
                let reset = ToSequencer::CursorReset { host: Arc::from(host.as_str()), cursor };
                if shard.to_sequencer.send(reset).await.is_err() {
                    return;
                }
                shard.metrics.ingest_queue_depth.inc();
                if let Some(config) = config.filter(|c| !c.banned && shard.registry.domain_ban(&host).is_none()) {
                    start_host(&shard, host, config, carried, Duration::ZERO);
                }
            })
            .detach();
        }
    }
}

/// The session of a host not run yet on this shard: its resume point and status from the store.
///
/// # Errors
/// The store's, when the host's entries cannot be read.
fn new_session(
    shard: &Shard,
    host: &Hostname,
    config: &HostConfig,
) -> Result<session::HostSession<process::Verdict>, storage::StoreError> {
    let resume = shard.store.host(host.as_str())?.map(|s| s.resume);
    let info = match shard.store.host_info(host.as_str())? {
        Some(info) => info,
        None => {
            // A new host: its record exists from its first attempt on.
            let info = HostInfo { status: HostStatus::Active, last_connected_ms: 0, failures: 0 };
            let _ = shard.store.put_host_info(host.as_str(), &info);
            info
        }
    };
    let mut seed = std::collections::hash_map::DefaultHasher::new();
    host.hash(&mut seed);
    let backoff = Backoff::new(shard.config.backoff_base, shard.config.backoff_max, seed.finish());
    let limiter = RateLimiter::new(RateLimits::for_host(config), Instant::now());
    Ok(session::HostSession::new(resume, limiter, backoff, info, shard.config.offline_after_failures))
}

/// Spawns `host`'s subscription task after `delay`, with the previous task's session when there was
/// one (else a new one from the store).
fn start_host(
    shard: &Rc<Shard>,
    host: Hostname,
    config: HostConfig,
    session: Option<Rc<RefCell<session::HostSession<process::Verdict>>>>,
    delay: Duration,
) {
    let session = match session {
        Some(s) => s,
        None => match new_session(shard, &host, &config) {
            Ok(s) => Rc::new(RefCell::new(s)),
            Err(e) => {
                tracing::error!(host = %host, error = %e, "cannot read the host's state; not connecting");
                return;
            }
        },
    };
    let (abort, registration) = AbortHandle::new_pair();
    let handle = Rc::new(HostHandle {
        connected: Cell::new(false),
        session,
        closing: Cell::new(None),
        did_web_slots: glommio::sync::Semaphore::new(DID_WEB_SLOTS),
        abort,
        started: Instant::now(),
        finished: Cell::new(false),
    });
    if let Some(previous) = shard.hosts.borrow_mut().insert(host.to_string(), Rc::clone(&handle)) {
        // One task per host: a task started meanwhile (e.g. by a `Connect` racing a reset) stops.
        previous.abort.abort();
    }
    let upstream = Upstream { host, tls: config.tls };
    let task_shard = Rc::clone(shard);
    let task = async move {
        glommio::timer::sleep(delay).await;
        run_host(task_shard, upstream, Rc::clone(&handle)).await;
        handle.finished.set(true);
    };
    glommio::spawn_local(Abortable::new(task, registration)).detach();
}

/// Marks a host connected while alive (registry, gauge, handle); undone on drop, also when the task
/// is aborted.
struct Connected<'a> {
    shard: &'a Shard,
    host: &'a Hostname,
    handle: &'a HostHandle,
    id: u64,
}

impl<'a> Connected<'a> {
    fn new(shard: &'a Shard, host: &'a Hostname, handle: &'a HostHandle, tls: bool) -> Self {
        shard.metrics.upstream_connected.inc();
        handle.connected.set(true);
        let id = shard.registry.connected(host, Connection { shard: shard.index, since_ms: now_ms(), tls, id: 0 });
        Self { shard, host, handle, id }
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.shard.metrics.upstream_connected.dec();
        self.handle.connected.set(false);
        self.shard.registry.disconnected(self.host, self.id);
    }
}

async fn run_host(shard: Rc<Shard>, upstream: Upstream, handle: Rc<HostHandle>) {
    let host = upstream.host.clone();
    let label: Arc<str> = Arc::from(host.as_str());
    let record = |event: HostEvent| {
        let before = handle.session.borrow().info();
        if let Some(next) = handle.session.borrow_mut().record(event, now_ms()) {
            if next.status != before.status {
                tracing::info!(host = %host, from = %before.status, to = %next.status, "host status");
            }
            // A lost write only leaves a stale status until the next change.
            let _ = shard.store.put_host_info(host.as_str(), &next);
        }
    };
    loop {
        // Bans are checked before every attempt, so a ban whose command was lost still holds.
        let banned = shard.store.host_config(host.as_str()).ok().flatten().is_some_and(|c| c.banned);
        if banned || shard.registry.domain_ban(&host).is_some() {
            tracing::info!(host = %host, "host is banned; not reconnecting");
            return;
        }
        let cursor = handle.session.borrow().cursor();
        let progressed = match connection::connect(&shard, &upstream, cursor).await {
            Ok(ws) => {
                Metrics::inc(&shard.metrics.upstream_connects, "result", "ok");
                tracing::info!(host = %host, cursor = ?cursor.map(|c| c.0), "connected to host");
                record(HostEvent::Connected);
                let outcome = {
                    let _connected = Connected::new(&shard, &host, &handle, upstream.tls);
                    connection::read_frames(&shard, &host, &label, ws, &handle, &mut |e| record(e)).await
                };
                match outcome {
                    connection::ReadOutcome::SequencerGone => return,
                    connection::ReadOutcome::FutureCursor => {
                        Metrics::inc(&shard.metrics.upstream_disconnects, "reason", "future_cursor");
                        Metrics::inc(&shard.metrics.host_changes, "change", "future_cursor");
                        tracing::error!(
                            host = %host,
                            cursor = ?handle.session.borrow().cursor().map(|c| c.0),
                            "host says our cursor is in its future (its sequence was reset); not reconnecting \
                             until an operator resets the cursor (POST /admin/pds/resetCursor)"
                        );
                        record(HostEvent::Idle);
                        return;
                    }
                    connection::ReadOutcome::Closed { progressed, reason } => {
                        Metrics::inc(&shard.metrics.upstream_disconnects, "reason", reason);
                        progressed
                    }
                }
            }
            Err(connection::ConnectError::Relay(server)) => {
                Metrics::inc(&shard.metrics.host_changes, "change", "relay_loop");
                tracing::error!(host = %host, %server, "host is a relay (Server header); banning it to avoid a relay loop");
                let banned =
                    shard.store.update_host_config(host.as_str(), |c| c.map(|c| HostConfig { banned: true, ..c }));
                if let Err(e) = banned {
                    tracing::error!(host = %host, error = %e, "cannot record the ban");
                }
                shard.hosts.borrow_mut().remove(host.as_str());
                return;
            }
            Err(connection::ConnectError::Failed(e)) => {
                Metrics::inc(&shard.metrics.upstream_connects, "result", "error");
                tracing::warn!(host = %host, error = %e, "cannot connect to host");
                record(HostEvent::Failed);
                false
            }
        };
        let delay = handle.session.borrow_mut().next_delay(progressed, shard.config.offline_retry);
        tracing::debug!(host = %host, delay_ms = delay.as_millis() as u64, "reconnecting later");
        glommio::timer::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_ramp_spreads_hosts_deterministically() {
        let ramp = Duration::from_secs(30);
        assert_eq!(startup_window(ramp, 1), Duration::ZERO);
        assert_eq!(startup_window(ramp, 5000), ramp);
        assert!(startup_window(ramp, 501) == Duration::from_secs(15));
        let window = startup_window(ramp, 5000);
        let delays: Vec<Duration> =
            (0..5000).map(|i| ramp_delay(&Hostname::new(format!("pds{i}.example.com")).unwrap(), window)).collect();
        assert!(delays.iter().all(|d| *d < window));
        // Spread: every tenth of the window gets between 5% and 15% of the hosts.
        for tenth in 0..10 {
            let lo = window.mul_f64(tenth as f64 / 10.0);
            let hi = window.mul_f64((tenth + 1) as f64 / 10.0);
            let n = delays.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!((250..=750).contains(&n), "tenth {tenth}: {n} hosts");
        }
        let h = Hostname::new("pds.example.com").unwrap();
        assert_eq!(ramp_delay(&h, window), ramp_delay(&h, window));
    }

    #[test]
    fn host_status_follows_connections() {
        let mut info = HostInfo { status: HostStatus::Active, last_connected_ms: 0, failures: 0 };
        for i in 1..=3 {
            info = next_host_info(info, HostEvent::Failed, 10, 3);
            assert_eq!(info.failures, i);
        }
        assert_eq!(info.status, HostStatus::Offline);
        info = next_host_info(info, HostEvent::Connected, 20, 3);
        assert_eq!((info.status, info.failures, info.last_connected_ms), (HostStatus::Active, 0, 20));
        info = next_host_info(info, HostEvent::Idle, 30, 3);
        assert_eq!(info.status, HostStatus::Idle);
        assert_eq!(next_host_info(info, HostEvent::Connected, 40, 3).status, HostStatus::Idle, "idle until it sends");
        assert_eq!(next_host_info(info, HostEvent::Delivered, 40, 3).status, HostStatus::Active);
        let banned = HostInfo { status: HostStatus::Banned, ..info };
        assert_eq!(next_host_info(banned, HostEvent::Delivered, 50, 3), banned);
        let throttled = next_host_info(info, HostEvent::Throttled, 60, 3);
        assert_eq!(throttled.status, HostStatus::Throttled);
        assert_eq!(next_host_info(throttled, HostEvent::Delivered, 70, 3).status, HostStatus::Active);
    }

    #[test]
    fn upstream_specs() {
        let u = |s| Upstream::parse(s, false);
        assert_eq!(
            u("pds.example.com").unwrap(),
            Upstream { host: Hostname::new("pds.example.com").unwrap(), tls: true }
        );
        assert!(!u("localhost:2583").unwrap().tls);
        assert!(u("wss://localhost:8443").unwrap().tls);
        assert!(!u("ws://localhost:2583/").unwrap().tls);
        assert!(u("ws://pds.example.com").is_err());
        assert!(!Upstream::parse("ws://pds.example.com", true).unwrap().tls);
        assert!(u("ftp://x.com").is_err() && u("1.2.3.4").is_err());
    }
}
