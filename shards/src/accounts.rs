//! Per-account rules the sequencer applies before assigning a `seq`, as a pure function of the
//! event and the account's stored state (tested without sockets or a store).
//!
//! - `#commit`: the account must be active and not taken down, and `rev` strictly newer than the
//!   stored `rev` (an older or equal rev is invalid: dropped as `stale_rev`). `since` and `prevData`
//!   are compared with the stored state, and a commit that does not continue it is a
//!   [`Discontinuity`]: relayed as-is, and the stored state follows it. Proposal 0006
//!   (bluesky-social/proposals `0006-sync-iteration/README.md`, "Staying Synchronized"): "Relays do
//!   not perform the re-synchronization process. They should drop invalid commit messages (not
//!   pass-through). They should keep track of discontinuous commits [...] Otherwise they should pass
//!   through discontinuous commits as-is (and update their 'last commit' state)." A first-seen account
//!   is accepted as genesis. Quirks the lexicon allows are accepted and reported as [`Tolerated`]:
//!   `since: null` when `prevData` proves continuity with the stored data CID (arroba sends it on
//!   every commit; the relayed commit gets the stored rev as `since`), and a commit without
//!   `prevData` (a host that is not Sync 1.1 yet) whose `since` chains.
//! - `#sync`: same status rules; its `rev` may restate the stored one but not go back; it resets the
//!   stored commit.
//! - `#account`: records the host's status; the relayed event carries the combined status (a local
//!   takedown wins).
//! - `#identity`: relayed for every account, active or not, so migrations work; the account's host
//!   becomes the sending host (ingest checked that the DID document names it).

use wire::frame::{AccountEvent, Event};
use wire::{AccountStatus, Did, DropReason};

use crate::messages::AcceptedEvent;
use storage::RepoState;

/// The outcome of [`apply`] for an event that is sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The account's new state, when the event changes it.
    pub state: Option<RepoState>,
    /// The commit does not continue the chain the relay stored; it is relayed anyway and counted
    /// (`relay_sync_discontinuities_total{reason}`).
    pub discontinuity: Option<Discontinuity>,
    /// A quirk real hosts send that the lexicon allows, accepted (counted by the caller in
    /// `relay_sync_tolerated_total{reason}`).
    pub tolerated: Option<Tolerated>,
}

/// How a valid `#commit` breaks the chain the relay stored for its account. Not a reason to drop it
/// (proposal 0006, "Staying Synchronized": relays "pass through discontinuous commits as-is"); the
/// consumer resynchronizes (<https://atproto.com/specs/sync>: "the consuming service [...] should
/// fetch the full repository"). Typical causes: the relay was down longer than the host's backfill
/// window, the host's outbox overflowed, or the relay dropped one of the account's commits (an
/// unresolvable identity, a throttled or inactive account). indigo's relay logs and counts the same
/// cases and relays the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discontinuity {
    /// `prevData` is set and is not the data CID of the account's last relayed commit.
    PrevData,
    /// `since` is set and is not the `rev` of the account's last relayed commit (`prevData`, when
    /// given, matched).
    Since,
    /// Neither `since` nor `prevData` ties the commit to the stored state (both absent on an account
    /// the relay has a commit of).
    Unchained,
}

impl Discontinuity {
    /// Every value, for pre-registering counters.
    pub const ALL: [Discontinuity; 3] = [Discontinuity::PrevData, Discontinuity::Since, Discontinuity::Unchained];

    /// The `reason` label of `relay_sync_discontinuities_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Discontinuity::PrevData => "prev_data",
            Discontinuity::Since => "since",
            Discontinuity::Unchained => "unchained",
        }
    }
}

/// A `#commit` that departs from what the relay expects in a way the lexicon allows, and that is
/// accepted because its continuity with the stored state is still shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerated {
    /// `since` is null on a commit that is not the account's first, and `prevData` equals the stored
    /// data CID (the lexicon makes `since` nullable; arroba sends null on every commit). The relayed
    /// commit carries the stored rev as `since`: the rev of the last commit the relay emitted for the
    /// account, which is what the lexicon defines it as.
    SinceNull,
    /// `prevData` is absent (a host that is not Sync 1.1 yet) and `since` is the stored `rev`: the
    /// chain holds, but the ops cannot be checked by inversion.
    NoPrevData,
}

impl Tolerated {
    /// Every value, for pre-registering counters.
    pub const ALL: [Tolerated; 2] = [Tolerated::SinceNull, Tolerated::NoPrevData];

    /// The `reason` label of `relay_sync_tolerated_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tolerated::SinceNull => "since_null",
            Tolerated::NoPrevData => "no_prev_data",
        }
    }
}

fn status_gate(state: &RepoState, confirmed_active: bool) -> Result<(), DropReason> {
    if state.taken_down {
        return Err(DropReason::TakenDown);
    }
    if !state.upstream.is_active() && !confirmed_active {
        return Err(DropReason::InactiveAccount);
    }
    Ok(())
}

/// Applies the account rules to `ev` given the stored state `prior`; may rewrite an `#account`
/// event's status, and a tolerated `#commit`'s null `since`.
///
/// # Errors
/// The [`DropReason`] when the event must not be relayed (`stale_rev`, `inactive_account`,
/// `taken_down`).
pub fn apply(ev: &mut AcceptedEvent, prior: Option<&RepoState>) -> Result<Applied, DropReason> {
    let host = ev.host.to_string();
    let mut state = prior.cloned().unwrap_or_else(|| RepoState::new(host.clone()));
    let mut discontinuity = None;
    let mut tolerated = None;
    match &mut ev.event {
        Event::Commit(c) => {
            status_gate(&state, ev.confirmed_active)?;
            if let Some(stored) = &state.rev {
                if &c.rev <= stored {
                    return Err(DropReason::StaleRev);
                }
                let data_continues = match (c.prev_data, state.data) {
                    (Some(prev_data), Some(data)) => Some(prev_data == data),
                    _ => None,
                };
                match (c.since.as_ref(), data_continues) {
                    (_, Some(false)) => discontinuity = Some(Discontinuity::PrevData),
                    (Some(since), _) if since != stored => discontinuity = Some(Discontinuity::Since),
                    (None, Some(true)) => {
                        // `since` is "the rev of the last emitted commit from this repo": in the
                        // relay's stream that is the stored rev, which `prevData` just proved
                        // continuous. Written in, so consumers checking the chain see no break.
                        c.since = Some(stored.clone());
                        tolerated = Some(Tolerated::SinceNull);
                    }
                    (None, None) => discontinuity = Some(Discontinuity::Unchained),
                    (Some(_), None) if c.prev_data.is_none() => tolerated = Some(Tolerated::NoPrevData),
                    (Some(_), _) => {}
                }
            }
            state.rev = Some(c.rev.clone());
        }
        Event::Sync(s) => {
            status_gate(&state, ev.confirmed_active)?;
            if state.rev.as_ref().is_some_and(|stored| &s.rev < stored) {
                return Err(DropReason::StaleRev);
            }
            state.rev = Some(s.rev.clone());
        }
        Event::Account(a) => {
            state.upstream = AccountStatus::from_fields(a.active, a.status.as_deref());
            if state.taken_down {
                a.active = false;
                a.status = Some("takendown".into());
            }
        }
        // The document named this host (checked by ingest): the account lives here now.
        Event::Identity(_) => {}
        Event::Info(_) => return Err(DropReason::UnknownType),
    }
    if ev.confirmed_active {
        state.upstream = AccountStatus::Active;
    }
    if let Some(commit) = ev.commit {
        state.commit = Some(commit.commit);
        state.data = Some(commit.data);
    }
    // The account lives where its latest accepted event came from (migration moves it).
    state.host = host;
    Ok(Applied { state: Some(state), discontinuity, tolerated })
}

/// How a change of an account's state moves host account counts: `(host, delta)` pairs. An account
/// counts on its host while the relay has state for it and it is neither deleted nor throttled;
/// migration moves it.
pub fn count_changes(prior: Option<&RepoState>, new: &RepoState) -> Vec<(String, i64)> {
    let counted = |s: &RepoState| s.upstream != AccountStatus::Deleted && !s.host.is_empty() && !s.throttled;
    let mut out = Vec::new();
    if let Some(p) = prior.filter(|p| counted(p))
        && (!counted(new) || p.host != new.host)
    {
        out.push((p.host.clone(), -1));
    }
    if counted(new) && prior.is_none_or(|p| !counted(p) || p.host != new.host) {
        out.push((new.host.clone(), 1));
    }
    out
}

/// Applies an operator's takedown (or its reversal) to `prior` and returns the account's new state and
/// the `#account` event to relay (`seq` 0 until sequenced; `time` as given).
pub fn takedown(did: &Did, prior: Option<&RepoState>, taken_down: bool, time: String) -> (RepoState, Event) {
    let mut state = prior.cloned().unwrap_or_else(|| RepoState::new(""));
    state.taken_down = taken_down;
    let status = state.status();
    let event = Event::Account(AccountEvent {
        seq: 0,
        did: did.clone(),
        time,
        active: status.is_active(),
        status: status.as_lexicon().map(str::to_owned),
    });
    (state, event)
}

#[cfg(test)]
mod tests;
