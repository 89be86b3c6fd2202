//! Per-frame ingest pipeline: decode, structural and Sync 1.1 checks, identity, host authority,
//! signature, account status. Returns a [`Verdict`]; nothing here writes to the store except the
//! identity cache.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use storage::Store;
use wire::frame::{Event, Frame, decode_frame};
use wire::validate::{CheckedCommit, check_commit, check_sync, check_time};
use wire::{AccountStatus, Did, DropReason, HostSeq, Hostname, Limits};

use crate::identity::{Resolver, Source};
use crate::messages::{AcceptedEvent, CommitRef};
use crate::metrics::Metrics;
use crate::net::{HttpClient, HttpUrl};

/// What to do with one frame from a host.
// Accepting is the common case; boxing it would add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Verdict {
    /// Relay it.
    Accept(AcceptedEvent),
    /// Do not relay it; count the reason. Carries the frame's `seq` when it was readable.
    Drop(DropReason, Option<HostSeq>),
    /// Nothing to relay and nothing wrong: `#info` and error frames (logged by the caller; an error
    /// frame ends the connection: <https://atproto.com/specs/event-stream>, "Streams should be closed
    /// immediately following transmitting or receiving an error frame").
    Info(Frame),
    /// Invalid framing or DAG-CBOR ([`wire::frame::well_formed`]): dropped as `malformed_frame`, and
    /// the connection is dropped too (event-stream spec: "Invalid framing or DAG-CBOR encoding are
    /// hard errors, and the client should drop the entire connection instead of skipping the
    /// frame"). Carries the frame's `seq` when its header and body could be read that far.
    Broken(Option<HostSeq>),
    /// Not decided: a dependency could not be reached. The frame (with this `seq`) must be processed
    /// again later and the host's cursor must not move past it (the host's stream pauses once its
    /// window of frames being decided is full).
    Wait(Outage, HostSeq),
}

/// A dependency outage that keeps a frame from being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The PLC directory could not be reached (timeout, refused connection, DNS that could not
    /// answer, 429, 5xx) for a `did:plc` the relay has no cached identity of. The host waits as long
    /// as the outage lasts: every host depends on the directory alike.
    Directory,
    /// The server of a `did:web` document could not be reached. The frame waits at most
    /// [`super::session::DID_WEB_MAX_WAIT`] of wall time: that server belongs to one account, and one
    /// account must not hold its whole host; after that the event is dropped as `identity_unresolved`.
    DidWeb,
}

impl Outage {
    /// Every outage, for pre-registering the counter's labels.
    pub const ALL: [Outage; 2] = [Outage::Directory, Outage::DidWeb];

    /// The `dependency` label of `relay_upstream_waits_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outage::Directory => "plc_directory",
            Outage::DidWeb => "did_web",
        }
    }

    fn of(did: &Did) -> Self {
        if did.method() == "plc" { Outage::Directory } else { Outage::DidWeb }
    }
}

/// Why a frame was not accepted.
enum Stop {
    /// Dropped for this reason.
    Drop(DropReason),
    /// Undecided: a dependency is unreachable.
    Wait(Outage),
}

impl From<DropReason> for Stop {
    fn from(r: DropReason) -> Self {
        Stop::Drop(r)
    }
}

/// A failed identity resolution of `did`: a drop, or a wait when the directory is unreachable.
fn unresolved(did: &Did, host: &Hostname, e: &crate::identity::ResolveError) -> Stop {
    if e.is_transient() {
        tracing::debug!(%did, host = %host, error = %e, "identity directory unreachable; the host waits");
        Stop::Wait(Outage::of(did))
    } else if matches!(e, crate::identity::ResolveError::NotAllowed(_)) {
        tracing::info!(%did, host = %host, error = %e, "did:web not resolved");
        Stop::Drop(DropReason::DidWebNotAllowed)
    } else {
        tracing::info!(%did, host = %host, error = %e, "identity resolution failed");
        Stop::Drop(DropReason::IdentityUnresolved)
    }
}

/// How long a `getRepoStatus` answer that the account is inactive is trusted before asking again.
const RECHECK_INTERVAL_MS: u64 = 60_000;
/// Most accounts whose last re-check an ingest shard remembers; beyond it the map starts over.
const MAX_STATUS_ENTRIES: usize = 200_000;

/// What the pipeline needs from its shard.
pub struct Context {
    /// Event limits.
    pub limits: Limits,
    /// Relay (and count) Sync 1.1 proof failures instead of dropping them.
    pub lenient_sync: bool,
    /// Identity resolution.
    pub resolver: Resolver,
    /// The store, for account statuses the shard has not seen yet.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Metrics,
    /// For `getRepoStatus` re-checks.
    pub http: HttpClient,
    /// The SSRF guard for requests to hosts other than localhost (see
    /// [`super::IngestConfig::public_only`]). Default true.
    pub public_only: bool,
    /// When an inactive account was last re-checked with its host (ms), by DID.
    rechecked: RefCell<HashMap<Did, u64>>,
}

impl Context {
    /// A context with an empty status map.
    pub fn new(
        limits: Limits,
        lenient_sync: bool,
        resolver: Resolver,
        store: Arc<Store>,
        metrics: Metrics,
        http: HttpClient,
    ) -> Self {
        Self {
            limits,
            lenient_sync,
            resolver,
            store,
            metrics,
            http,
            public_only: true,
            rechecked: RefCell::new(HashMap::new()),
        }
    }

    /// The account's status as the relay has it (the sequencer's, from the store; a throttled account
    /// counts with its host's status, since the sequencer decides whether it still is throttled) and
    /// when it was last re-checked with its host.
    fn status(&self, did: &Did) -> (AccountStatus, bool, u64) {
        let state = self.store.repo(did).ok().flatten();
        let status =
            state.as_ref().map_or(AccountStatus::Active, |r| if r.taken_down { r.status() } else { r.upstream });
        let taken_down = state.is_some_and(|r| r.taken_down);
        (status, taken_down, self.rechecked.borrow().get(did).copied().unwrap_or(0))
    }

    fn set_rechecked(&self, did: &Did, now_ms: u64) {
        let mut map = self.rechecked.borrow_mut();
        if map.len() >= MAX_STATUS_ENTRIES && !map.contains_key(did) {
            map.clear();
        }
        map.insert(did.clone(), now_ms);
    }
}

/// One frame from `host`: its bytes and the wall clock in milliseconds (per-socket seq order is the
/// session's: [`super::session::HostSession::read`]).
pub struct Input<'a> {
    /// The websocket message.
    pub bytes: &'a [u8],
    /// The host it came from.
    pub host: &'a Hostname,
    /// The host as a shared label.
    pub label: &'a Arc<str>,
    /// Milliseconds since the UNIX epoch.
    pub now_ms: u64,
    /// When the frame was read off the socket.
    pub received: std::time::Instant,
}

/// Decides what to do with one frame.
pub async fn process_frame(input: Input<'_>, ctx: &Context) -> Verdict {
    let Input { bytes, host, label, now_ms, received } = input;
    if bytes.len() > ctx.limits.max_frame_bytes {
        return Verdict::Drop(DropReason::FrameTooBig, None);
    }
    let event = match decode_frame(bytes) {
        Ok(Frame::Message(Event::Info(i))) => return Verdict::Info(Frame::Message(Event::Info(i))),
        Ok(Frame::Message(e)) => e,
        Ok(f @ Frame::Error(_)) => return Verdict::Info(f),
        // "Clients should ignore frames with headers that have unknown `op` or `t` values."
        Err(wire::frame::FrameError::UnknownType(_) | wire::frame::FrameError::UnknownOp(_)) => {
            return Verdict::Drop(DropReason::UnknownType, None);
        }
        Err(_) if !wire::frame::well_formed(bytes) => {
            return Verdict::Broken(wire::frame::peek(bytes).seq.map(HostSeq));
        }
        // Well-framed DAG-CBOR that does not match the lexicon: skipped.
        Err(_) => return Verdict::Drop(DropReason::MalformedFrame, None),
    };
    let Some(seq) = event.seq().and_then(|s| u64::try_from(s).ok()).map(HostSeq) else {
        return Verdict::Drop(DropReason::MalformedFrame, None);
    };
    let accept = |event, commit, confirmed_active| {
        Verdict::Accept(AcceptedEvent {
            host: Arc::clone(label),
            host_seq: seq,
            resume: Default::default(),
            event,
            commit,
            confirmed_active,
            received,
        })
    };
    let mut event = event;
    let mut strip_handle = false;
    let outcome = match &event {
        Event::Commit(_) | Event::Sync(_) => commit_or_sync(&event, host, ctx, now_ms).await,
        Event::Identity(i) => identity(&i.did, &i.time, host, ctx, now_ms, received).await.map(|strip| {
            strip_handle = strip;
            (None, false)
        }),
        Event::Account(a) => account(&a.did, &a.time, host, ctx, now_ms).await.map(|()| (None, false)),
        Event::Info(_) => Err(Stop::Drop(DropReason::UnknownType)),
    };
    match outcome {
        Ok((commit, confirmed)) => {
            match &mut event {
                Event::Commit(c) => repair_deprecated_fields(c, &ctx.metrics),
                Event::Identity(i) => {
                    let handle = i.handle.take();
                    i.handle = if strip_handle { None } else { checked_handle(handle, &ctx.metrics) };
                }
                _ => {}
            }
            accept(event, commit, confirmed)
        }
        Err(Stop::Drop(reason)) => Verdict::Drop(reason, Some(seq)),
        Err(Stop::Wait(outage)) => Verdict::Wait(outage, seq),
    }
}

/// Writes the deprecated fields the lexicon still requires (`rebase`, `tooBig`, `blobs`) that the host
/// left out, with their neutral values (`false`, `false`, `[]`), and counts each in
/// `relay_lexicon_tolerated_total{field}`: some hosts omit them, and a consumer that validates
/// messages against the lexicon (`@atproto/sync`) would skip a commit relayed without them.
pub fn repair_deprecated_fields(c: &mut wire::frame::CommitEvent, metrics: &Metrics) {
    if c.too_big.is_none() {
        c.too_big = Some(false);
        Metrics::inc(&metrics.lexicon_tolerated, "field", "tooBig");
    }
    if c.rebase.is_none() {
        c.rebase = Some(false);
        Metrics::inc(&metrics.lexicon_tolerated, "field", "rebase");
    }
    if c.blobs.is_none() {
        c.blobs = Some(Vec::new());
        Metrics::inc(&metrics.lexicon_tolerated, "field", "blobs");
    }
}

/// Checks a `#commit` or `#sync`; returns the commit it declares and whether the host just confirmed
/// an account the relay had inactive.
async fn commit_or_sync(
    event: &Event,
    host: &Hostname,
    ctx: &Context,
    now_ms: u64,
) -> Result<(Option<CommitRef>, bool), Stop> {
    let now_us = now_ms.saturating_mul(1000);
    let checked: CheckedCommit = match event {
        Event::Commit(c) => check_commit(c, &ctx.limits, now_us)?,
        Event::Sync(s) => check_sync(s, &ctx.limits, now_us)?,
        _ => return Err(Stop::Drop(DropReason::UnknownType)),
    };
    let did = &checked.signed.commit.did;
    if let Err(reason) = checked.proof {
        if !ctx.lenient_sync {
            return Err(Stop::Drop(reason));
        }
        tracing::warn!(%did, host = %host, %reason, "relaying a Sync 1.1 violation (lenient)");
        Metrics::inc(&ctx.metrics.sync_violations, "reason", reason.as_str());
    }
    let (mut identity, mut source) = ctx.resolver.lookup(did, now_ms).await.map_err(|e| unresolved(did, host, &e))?;
    // Host authority, then the signature. A cached identity that fails either is fetched again once
    // (the account may have migrated or rotated its key) before the event is dropped.
    loop {
        let verdict = if !has_authority(&identity, host) {
            Some(DropReason::WrongHost)
        } else if checked.signed.verify(&identity.signing_key).is_err() {
            Some(DropReason::BadSignature)
        } else {
            None
        };
        match (verdict, source) {
            (None, _) => break,
            (Some(reason), Source::Fetched) => return Err(Stop::Drop(reason)),
            (Some(_), Source::Cached) => {
                identity = ctx.resolver.refresh(did, now_ms).await.map_err(|e| unresolved(did, host, &e))?;
                source = Source::Fetched;
            }
        }
    }
    let confirmed = confirm_active(did, host, ctx, now_ms).await?;
    Ok((Some(CommitRef { commit: checked.cid, data: checked.signed.commit.data }), confirmed))
}

fn has_authority(identity: &storage::IdentityRecord, host: &Hostname) -> bool {
    identity.pds_endpoint.as_deref().and_then(wire::did_doc::endpoint_host).as_ref() == Some(host)
}

/// For an account the relay has as inactive, asks its host (`com.atproto.sync.getRepoStatus`)
/// whether it is active again, at most once per [`RECHECK_INTERVAL_MS`]: a missed `#account` must not
/// leave an account stuck inactive (indigo #1161). `Ok(true)` when the host says active.
async fn confirm_active(did: &Did, host: &Hostname, ctx: &Context, now_ms: u64) -> Result<bool, DropReason> {
    let (status, taken_down, checked_ms) = ctx.status(did);
    if status.is_active() {
        return Ok(false);
    }
    if taken_down {
        return Err(DropReason::TakenDown);
    }
    if now_ms.saturating_sub(checked_ms) < RECHECK_INTERVAL_MS {
        return Err(DropReason::InactiveAccount);
    }
    ctx.set_rechecked(did, now_ms);
    let upstream = repo_status(did, host, ctx).await;
    tracing::info!(%did, host = %host, relay_status = %status, host_status = ?upstream, "re-checked inactive account");
    match upstream {
        Some(s) if s.is_active() => Ok(true),
        _ => Err(DropReason::InactiveAccount),
    }
}

/// The host's answer to `getRepoStatus` for `did`, `None` when it cannot be had.
async fn repo_status(did: &Did, host: &Hostname, ctx: &Context) -> Option<AccountStatus> {
    let scheme = if host.is_localhost() { "http" } else { "https" };
    let query = form_urlencoded::Serializer::new(String::new()).append_pair("did", did.as_str()).finish();
    let url = HttpUrl::parse(&format!("{scheme}://{host}/xrpc/com.atproto.sync.getRepoStatus?{query}")).ok()?;
    let guard = ctx.public_only && !host.is_localhost();
    let (status, body) = ctx.http.get_with(&url, 64 * 1024, Duration::from_secs(10), guard).await.ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(AccountStatus::from_fields(v.get("active")?.as_bool()?, v.get("status").and_then(|s| s.as_str())))
}

/// `#identity`: the document or handle changed; resolve afresh (the old entry stays as an expired
/// fallback until the new one is fetched) and require that it names this host. A DID that no longer
/// resolves for good (a tombstoned `did:plc`, a `did:web` whose document is gone) is relayed too when
/// the relay has the account on this host, so downstream caches purge it (indigo's relay relays every
/// `#identity`, dropping only its handle when the account's checks fail). `Ok(true)`: relay it
/// without its handle.
async fn identity(
    did: &Did,
    time: &str,
    host: &Hostname,
    ctx: &Context,
    now_ms: u64,
    received: std::time::Instant,
) -> Result<bool, Stop> {
    check_time(time)?;
    ctx.resolver.expire(did);
    ctx.resolver.forget_failure(did);
    // A fetch that started after the event was read, so it sees the document the event announces.
    match ctx.resolver.refresh_after(did, now_ms, Some(received)).await {
        Ok(identity) if has_authority(&identity, host) => Ok(false),
        Ok(_) => Err(Stop::Drop(DropReason::WrongHost)),
        Err(e) if !e.is_transient() && ctx.store.repo(did).ok().flatten().is_some_and(|r| r.host == host.as_str()) => {
            tracing::info!(%did, host = %host, error = %e, "relaying #identity of a DID that no longer resolves");
            Ok(true)
        }
        Err(e) => Err(unresolved(did, host, &e)),
    }
}

/// The `handle` of an `#identity` the relay emits: the host's, when it is handle syntax (the lexicon
/// field has `format: "handle"`, so a frame the relay emits never fails the lexicon); otherwise none,
/// counted in `relay_lexicon_tolerated_total{field="handle"}`. <https://atproto.com/specs/sync>,
/// `#identity` events: relays "may replace the handle with the result of their own resolution; or
/// always remove the handle field; or always pass it through unaltered".
fn checked_handle(handle: Option<String>, metrics: &Metrics) -> Option<String> {
    let handle = handle?;
    if wire::syntax::Handle::new(handle.as_str()).is_ok() {
        Some(handle)
    } else {
        Metrics::inc(&metrics.lexicon_tolerated, "field", "handle");
        None
    }
}

/// `#account`: the host must have authority over the account by its DID document. Only when no
/// document can be had (e.g. a deleted account's tombstoned DID) does the relay fall back to the
/// host it last saw the account on.
async fn account(did: &Did, time: &str, host: &Hostname, ctx: &Context, now_ms: u64) -> Result<(), Stop> {
    check_time(time)?;
    let lives_here = || ctx.store.repo(did).ok().flatten().is_some_and(|r| r.host == host.as_str());
    match ctx.resolver.lookup(did, now_ms).await {
        Ok((id, _)) if has_authority(&id, host) => Ok(()),
        Ok((_, Source::Cached)) => match ctx.resolver.refresh(did, now_ms).await {
            Ok(id) if has_authority(&id, host) => Ok(()),
            Ok(_) => Err(Stop::Drop(DropReason::WrongHost)),
            Err(_) if lives_here() => Ok(()),
            Err(e) if e.is_transient() => Err(unresolved(did, host, &e)),
            Err(_) => Err(Stop::Drop(DropReason::WrongHost)),
        },
        Ok((_, Source::Fetched)) => Err(Stop::Drop(DropReason::WrongHost)),
        Err(_) if lives_here() => Ok(()),
        Err(e) => Err(unresolved(did, host, &e)),
    }
}
