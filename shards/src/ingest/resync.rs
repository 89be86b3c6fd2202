//! Resynchronizing an account whose chain broke: fetch its current commit from its host
//! (`com.atproto.sync.getLatestCommit`, then the commit block with `com.atproto.sync.getBlocks`),
//! check it like any `#sync` (CAR, commit object, identity, host authority, signature), and hand it to
//! the sequencer as a `#sync` that resets the account's stored state (Sync 1.1's remedy for a
//! desynchronized account, done by the relay itself).

use std::sync::Arc;
use std::time::Duration;

use wire::frame::{Event, SyncEvent};
use wire::{Cid, HostSeq, Hostname, Tid};

use super::process::{self, Context};
use crate::messages::{AcceptedEvent, ResyncRequest};
use crate::net::HttpUrl;

/// Deadline of each request to the host.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted from the host, in bytes (a commit block is a few hundred).
const MAX_BODY: usize = 64 * 1024;

/// Fetches and checks the current commit of `req.did` from its host (`tls`: over https).
///
/// # Errors
/// A message when the host cannot be asked, answers badly, or the commit does not check out.
pub async fn fetch_sync(ctx: &Context, req: &ResyncRequest, tls: bool, now_ms: u64) -> Result<AcceptedEvent, String> {
    let host = Hostname::new(req.host.to_string()).map_err(|e| e.to_string())?;
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://{host}/xrpc");
    let guard = ctx.public_only && !host.is_localhost();
    let did = form_urlencoded::Serializer::new(String::new()).append_pair("did", req.did.as_str()).finish();
    let url = HttpUrl::parse(&format!("{base}/com.atproto.sync.getLatestCommit?{did}")).map_err(|e| e.to_string())?;
    let (status, body) = ctx.http.get_with(&url, MAX_BODY, TIMEOUT, guard).await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("getLatestCommit answered HTTP {status}"));
    }
    let latest: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let field = |name: &str| latest.get(name).and_then(|v| v.as_str());
    let cid = field("cid").and_then(|c| Cid::try_from(c).ok()).ok_or("getLatestCommit: no cid")?;
    let rev = field("rev").and_then(|r| Tid::new(r).ok()).ok_or("getLatestCommit: no rev")?;
    let url =
        HttpUrl::parse(&format!("{base}/com.atproto.sync.getBlocks?{did}&cids={cid}")).map_err(|e| e.to_string())?;
    let (status, body) = ctx.http.get_with(&url, MAX_BODY, TIMEOUT, guard).await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("getBlocks answered HTTP {status}"));
    }
    let car = wire::car::read_car(&body).map_err(|e| e.to_string())?;
    let block = car.get(&cid).ok_or("getBlocks: the commit block is missing")?;
    let blocks = wire::car::write_car(&cid, &[(cid, block)]).map_err(|e| e.to_string())?;
    let event = Event::Sync(SyncEvent {
        seq: 0,
        did: req.did.clone(),
        blocks: blocks.into(),
        rev,
        time: wire::syntax::datetime_from_unix_us(now_ms.saturating_mul(1000)),
    });
    let (commit, confirmed_active) =
        process::check_fetched_sync(&event, &host, ctx, now_ms).await.map_err(|r| format!("the commit failed: {r}"))?;
    Ok(AcceptedEvent {
        host: Arc::clone(&req.host),
        host_seq: HostSeq(0),
        cursor: HostSeq(0),
        event,
        commit,
        confirmed_active,
        received: std::time::Instant::now(),
    })
}
