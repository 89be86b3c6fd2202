use std::sync::Arc;

use bytes::Bytes;
use wire::frame::{AccountEvent, CommitEvent, Event, IdentityEvent, SyncEvent};
use wire::{Cid, Did, HostSeq, Tid};

use super::*;
use crate::messages::CommitRef;

fn cid(n: u8) -> Cid {
    wire::car::cid_for(wire::car::CODEC_DAG_CBOR, &[n])
}

fn tid(n: u64) -> Tid {
    Tid::from_u64((1_700_000_000_000_000 + n) << 10)
}

fn did() -> Did {
    Did::new("did:plc:acct").unwrap()
}

fn accepted(host: &str, event: Event, commit: Option<CommitRef>) -> AcceptedEvent {
    AcceptedEvent {
        host: Arc::from(host),
        host_seq: HostSeq(1),
        cursor: HostSeq(1),
        event,
        commit,
        confirmed_active: false,
        received: std::time::Instant::now(),
    }
}

fn commit(rev: u64, since: Option<u64>, prev_data: Option<u8>, data: u8) -> AcceptedEvent {
    let ev = CommitEvent {
        seq: 1,
        rebase: Some(false),
        too_big: Some(false),
        repo: did(),
        commit: cid(100 + data),
        rev: tid(rev),
        since: since.map(tid),
        blocks: Bytes::new(),
        ops: vec![],
        blobs: Some(vec![]),
        prev_data: prev_data.map(cid),
        time: "2026-01-01T00:00:00Z".into(),
    };
    accepted("pds.example", Event::Commit(ev), Some(CommitRef { commit: cid(100 + data), data: cid(data) }))
}

fn sync(rev: u64, data: u8) -> AcceptedEvent {
    let ev = SyncEvent { seq: 1, did: did(), blocks: Bytes::new(), rev: tid(rev), time: "2026-01-01T00:00:00Z".into() };
    accepted("pds.example", Event::Sync(ev), Some(CommitRef { commit: cid(100 + data), data: cid(data) }))
}

fn account(active: bool, status: Option<&str>) -> AcceptedEvent {
    let ev = AccountEvent {
        seq: 1,
        did: did(),
        time: "2026-01-01T00:00:00Z".into(),
        active,
        status: status.map(str::to_owned),
    };
    accepted("pds.example", Event::Account(ev), None)
}

/// Applies in order, carrying the state; returns each outcome.
fn run(
    events: Vec<AcceptedEvent>,
    lenient: bool,
    start: Option<RepoState>,
) -> (Vec<Result<Option<DropReason>, DropReason>>, Option<RepoState>) {
    let mut state = start;
    let mut out = Vec::new();
    for mut ev in events {
        match apply(&mut ev, state.as_ref(), lenient) {
            Ok(a) => {
                if a.state.is_some() {
                    state = a.state;
                }
                out.push(Ok(a.violation));
            }
            Err(r) => out.push(Err(r)),
        }
    }
    (out, state)
}

#[test]
fn commits_chain_by_rev_since_and_prev_data() {
    let (out, state) = run(
        vec![
            commit(1, None, None, 1),       // genesis
            commit(2, Some(1), Some(1), 2), // chains
            commit(2, Some(1), Some(1), 2), // same rev again
            commit(1, None, None, 9),       // older rev
            commit(3, Some(1), Some(2), 3), // since is not the stored rev
            commit(3, Some(2), Some(7), 3), // prevData is not the stored data
            commit(3, Some(2), Some(2), 3), // chains
        ],
        false,
        None,
    );
    assert_eq!(
        out,
        vec![
            Ok(None),
            Ok(None),
            Err(DropReason::StaleRev),
            Err(DropReason::StaleRev),
            Err(DropReason::WrongSince),
            Err(DropReason::WrongPrevData),
            Ok(None),
        ]
    );
    let state = state.unwrap();
    assert_eq!((state.rev, state.data), (Some(tid(3)), Some(cid(3))));
}

#[test]
fn null_since_and_missing_prev_data_are_tolerated_only_when_the_chain_is_shown() {
    let tolerated = |events: Vec<AcceptedEvent>| {
        let mut state = None;
        let mut out = Vec::new();
        for mut ev in events {
            match apply(&mut ev, state.as_ref(), false) {
                Ok(a) => {
                    state = a.state.or(state);
                    out.push(Ok(a.tolerated));
                }
                Err(r) => out.push(Err(r)),
            }
        }
        out
    };
    assert_eq!(
        tolerated(vec![
            commit(1, None, None, 1),       // genesis (arroba's first commit)
            commit(2, None, Some(1), 2),    // since null, prevData continues: arroba's every commit
            commit(3, None, Some(7), 3),    // since null, prevData broken: a discontinuity
            commit(3, None, None, 3),       // since null and no prevData: nothing ties it to the state
            commit(3, Some(2), None, 3),    // no prevData (not Sync 1.1), since chains
            commit(4, Some(3), Some(3), 4), // the normal case
        ]),
        vec![
            Ok(None),
            Ok(Some(Tolerated::SinceNull)),
            Err(DropReason::WrongPrevData),
            Err(DropReason::WrongSince),
            Ok(Some(Tolerated::NoPrevData)),
            Ok(None),
        ]
    );
}

#[test]
fn a_tolerated_null_since_is_relayed_as_the_stored_rev() {
    let mut ev = commit(2, None, Some(1), 2);
    let prior = apply(&mut commit(1, None, None, 1), None, false).unwrap().state;
    let applied = apply(&mut ev, prior.as_ref(), false).unwrap();
    assert_eq!(applied.tolerated, Some(Tolerated::SinceNull));
    let Event::Commit(c) = &ev.event else { panic!() };
    assert_eq!(c.since, Some(tid(1)), "the rev of the last commit the relay emitted");
    let mut genesis = commit(1, None, None, 1);
    apply(&mut genesis, None, false).unwrap();
    let Event::Commit(c) = &genesis.event else { panic!() };
    assert_eq!(c.since, None, "a first commit keeps its null since");
}

#[test]
fn lenient_sync_relays_and_reports_violations() {
    let (out, state) =
        run(vec![commit(1, None, None, 1), commit(2, Some(9), Some(1), 2), commit(3, Some(2), Some(8), 3)], true, None);
    assert_eq!(out, vec![Ok(None), Ok(Some(DropReason::WrongSince)), Ok(Some(DropReason::WrongPrevData))]);
    assert_eq!(state.unwrap().rev, Some(tid(3)));
    // Rev order is not a Sync 1.1 rule: it is enforced even when lenient.
    let (out, _) = run(vec![commit(5, None, None, 1), commit(4, Some(5), Some(1), 2)], true, None);
    assert_eq!(out[1], Err(DropReason::StaleRev));
}

#[test]
fn sync_restates_or_resets_but_never_goes_back() {
    let (out, state) = run(
        vec![commit(5, None, None, 1), sync(5, 1), sync(4, 4), sync(6, 6), commit(7, Some(6), Some(6), 7)],
        false,
        None,
    );
    assert_eq!(out, vec![Ok(None), Ok(None), Err(DropReason::StaleRev), Ok(None), Ok(None)]);
    assert_eq!(state.unwrap().data, Some(cid(7)));
}

#[test]
fn inactive_accounts_are_not_relayed_until_active_again() {
    let (out, state) = run(
        vec![
            commit(1, None, None, 1),
            account(false, Some("deactivated")),
            commit(2, Some(1), Some(1), 2),
            sync(2, 2),
            account(true, None),
            commit(2, Some(1), Some(1), 2),
        ],
        false,
        None,
    );
    assert_eq!(
        out,
        vec![
            Ok(None),
            Ok(None),
            Err(DropReason::InactiveAccount),
            Err(DropReason::InactiveAccount),
            Ok(None),
            Ok(None)
        ]
    );
    assert!(state.unwrap().upstream.is_active());

    // The host confirmed the account active (getRepoStatus) although the relay had it inactive.
    let (_, inactive) = run(vec![commit(1, None, None, 1), account(false, Some("suspended"))], false, None);
    let mut ev = commit(2, Some(1), Some(1), 2);
    ev.confirmed_active = true;
    let applied = apply(&mut ev, inactive.as_ref(), false).unwrap();
    assert_eq!(applied.state.unwrap().upstream, AccountStatus::Active);
}

#[test]
fn takedown_wins_over_the_host() {
    let start = RepoState { taken_down: true, ..RepoState::new("pds.example") };
    let (out, _) = run(vec![commit(1, None, None, 1), sync(1, 1)], false, Some(start.clone()));
    assert_eq!(out, vec![Err(DropReason::TakenDown), Err(DropReason::TakenDown)]);
    let mut ev = account(true, None);
    apply(&mut ev, Some(&start), false).unwrap();
    let Event::Account(a) = ev.event else { panic!() };
    assert_eq!((a.active, a.status.as_deref()), (false, Some("takendown")));
}

#[test]
fn identity_is_relayed_for_any_account_and_migration_moves_the_host() {
    let inactive = RepoState { upstream: AccountStatus::Deactivated, ..RepoState::new("old.example") };
    let mut ev = accepted(
        "new.example",
        Event::Identity(IdentityEvent { seq: 1, did: did(), time: "2026-01-01T00:00:00Z".into(), handle: None }),
        None,
    );
    let moved = apply(&mut ev, Some(&inactive), false).unwrap().state.unwrap();
    assert_eq!((moved.host.as_str(), moved.upstream), ("new.example", AccountStatus::Deactivated));
    let mut ev = account(true, None);
    ev.host = Arc::from("new.example");
    let state = apply(&mut ev, Some(&inactive), false).unwrap().state.unwrap();
    assert_eq!((state.host.as_str(), state.upstream), ("new.example", AccountStatus::Active));
}

#[test]
fn takedown_emits_the_combined_status() {
    let suspended = RepoState { upstream: AccountStatus::Suspended, ..RepoState::new("h") };
    let (state, ev) = takedown(&did(), Some(&suspended), true, "t".into());
    assert!(state.taken_down);
    let Event::Account(a) = ev else { panic!() };
    assert_eq!((a.active, a.status.as_deref()), (false, Some("takendown")));
    let (state, ev) = takedown(&did(), Some(&state), false, "t".into());
    assert!(!state.taken_down);
    let Event::Account(a) = ev else { panic!() };
    assert_eq!((a.active, a.status.as_deref()), (false, Some("suspended")));
    let (_, ev) = takedown(&did(), None, false, "t".into());
    let Event::Account(a) = ev else { panic!() };
    assert_eq!((a.active, a.status), (true, None));
}

#[test]
fn host_account_counts_follow_creation_deletion_and_migration() {
    let a = RepoState::new("a.example");
    assert_eq!(count_changes(None, &a), vec![("a.example".to_owned(), 1)]);
    assert_eq!(count_changes(Some(&a), &a), vec![]);
    let deleted = RepoState { upstream: AccountStatus::Deleted, ..a.clone() };
    assert_eq!(count_changes(Some(&a), &deleted), vec![("a.example".to_owned(), -1)]);
    assert_eq!(count_changes(Some(&deleted), &a), vec![("a.example".to_owned(), 1)]);
    let moved = RepoState::new("b.example");
    assert_eq!(count_changes(Some(&a), &moved), vec![("a.example".to_owned(), -1), ("b.example".to_owned(), 1)]);
    let deactivated = RepoState { upstream: AccountStatus::Deactivated, ..a.clone() };
    assert_eq!(count_changes(Some(&a), &deactivated), vec![], "deactivated accounts keep their slot");
    // An operator takedown of an account the relay never saw has no host.
    assert_eq!(count_changes(None, &RepoState { taken_down: true, ..RepoState::new("") }), vec![]);
}

#[test]
fn throttled_accounts_do_not_count() {
    let throttled = RepoState { throttled: true, ..RepoState::new("h") };
    assert_eq!(count_changes(None, &throttled), vec![]);
    let released = RepoState { throttled: false, ..throttled.clone() };
    assert_eq!(count_changes(Some(&throttled), &released), vec![("h".to_owned(), 1)]);
    assert_eq!(throttled.status(), AccountStatus::Throttled);
}
