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
        resume: Default::default(),
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

/// Applies in order, carrying the state; returns each outcome (the discontinuity of a relayed
/// event, or why it was dropped).
fn run(
    events: Vec<AcceptedEvent>,
    start: Option<RepoState>,
) -> (Vec<Result<Option<Discontinuity>, DropReason>>, Option<RepoState>) {
    let mut state = start;
    let mut out = Vec::new();
    for mut ev in events {
        match apply(&mut ev, state.as_ref()) {
            Ok(a) => {
                if a.state.is_some() {
                    state = a.state;
                }
                out.push(Ok(a.discontinuity));
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
            commit(3, Some(2), Some(2), 3), // chains
        ],
        None,
    );
    assert_eq!(out, vec![Ok(None), Ok(None), Err(DropReason::StaleRev), Err(DropReason::StaleRev), Ok(None)]);
    let state = state.unwrap();
    assert_eq!((state.rev, state.data), (Some(tid(3)), Some(cid(3))));
}

/// Proposal 0006, "Staying Synchronized": relays "pass through discontinuous commits as-is (and update
/// their 'last commit' state)". A valid commit whose `since` or `prevData` does not continue the stored
/// state is relayed, counted by how it breaks the chain, and the next commit chains to it.
#[test]
fn discontinuous_commits_are_relayed_and_the_state_follows_them() {
    let (out, state) = run(
        vec![
            commit(1, None, None, 1),       // genesis
            commit(3, Some(2), Some(2), 3), // a commit (rev 2) never reached the relay: both point past it
            commit(4, Some(3), Some(3), 4), // chains to the discontinuous commit
            commit(5, Some(9), Some(4), 5), // since wrong, prevData continues: still relayed, counted
            commit(6, Some(5), Some(7), 6), // since right, prevData wrong
            commit(7, None, None, 7),       // neither since nor prevData
            commit(8, Some(7), Some(7), 8), // chains again
        ],
        None,
    );
    assert_eq!(
        out,
        vec![
            Ok(None),
            Ok(Some(Discontinuity::PrevData)),
            Ok(None),
            Ok(Some(Discontinuity::Since)),
            Ok(Some(Discontinuity::PrevData)),
            Ok(Some(Discontinuity::Unchained)),
            Ok(None),
        ]
    );
    let state = state.unwrap();
    assert_eq!((state.rev, state.commit, state.data), (Some(tid(8)), Some(cid(108)), Some(cid(8))));
    // A discontinuous commit is relayed as-is: its `since` is not rewritten.
    let (_, prior) = run(vec![commit(1, None, None, 1)], None);
    let mut ev = commit(3, Some(2), Some(2), 3);
    apply(&mut ev, prior.as_ref()).unwrap();
    let Event::Commit(c) = &ev.event else { panic!() };
    assert_eq!(c.since, Some(tid(2)));
}

#[test]
fn null_since_and_missing_prev_data_are_tolerated_only_when_the_chain_is_shown() {
    let tolerated = |events: Vec<AcceptedEvent>| {
        let mut state = None;
        let mut out = Vec::new();
        for mut ev in events {
            match apply(&mut ev, state.as_ref()) {
                Ok(a) => {
                    state = a.state.or(state);
                    out.push(Ok((a.tolerated, a.discontinuity)));
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
            commit(4, None, None, 4),       // since null and no prevData: nothing ties it to the state
            commit(5, Some(4), None, 5),    // no prevData (not Sync 1.1), since chains
            commit(6, Some(5), Some(5), 6), // the normal case
        ]),
        vec![
            Ok((None, None)),
            Ok((Some(Tolerated::SinceNull), None)),
            Ok((None, Some(Discontinuity::PrevData))),
            Ok((None, Some(Discontinuity::Unchained))),
            Ok((Some(Tolerated::NoPrevData), None)),
            Ok((None, None)),
        ]
    );
}

#[test]
fn a_tolerated_null_since_is_relayed_as_the_stored_rev() {
    let mut ev = commit(2, None, Some(1), 2);
    let prior = apply(&mut commit(1, None, None, 1), None).unwrap().state;
    let applied = apply(&mut ev, prior.as_ref()).unwrap();
    assert_eq!(applied.tolerated, Some(Tolerated::SinceNull));
    let Event::Commit(c) = &ev.event else { panic!() };
    assert_eq!(c.since, Some(tid(1)), "the rev of the last commit the relay emitted");
    let mut genesis = commit(1, None, None, 1);
    apply(&mut genesis, None).unwrap();
    let Event::Commit(c) = &genesis.event else { panic!() };
    assert_eq!(c.since, None, "a first commit keeps its null since");
}

#[test]
fn sync_restates_or_resets_but_never_goes_back() {
    let (out, state) =
        run(vec![commit(5, None, None, 1), sync(5, 1), sync(4, 4), sync(6, 6), commit(7, Some(6), Some(6), 7)], None);
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
    let (_, inactive) = run(vec![commit(1, None, None, 1), account(false, Some("suspended"))], None);
    let mut ev = commit(2, Some(1), Some(1), 2);
    ev.confirmed_active = true;
    let applied = apply(&mut ev, inactive.as_ref()).unwrap();
    assert_eq!(applied.state.unwrap().upstream, AccountStatus::Active);
}

#[test]
fn takedown_wins_over_the_host() {
    let start = RepoState { taken_down: true, ..RepoState::new("pds.example") };
    let (out, _) = run(vec![commit(1, None, None, 1), sync(1, 1)], Some(start.clone()));
    assert_eq!(out, vec![Err(DropReason::TakenDown), Err(DropReason::TakenDown)]);
    let mut ev = account(true, None);
    apply(&mut ev, Some(&start)).unwrap();
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
    let moved = apply(&mut ev, Some(&inactive)).unwrap().state.unwrap();
    assert_eq!((moved.host.as_str(), moved.upstream), ("new.example", AccountStatus::Deactivated));
    let mut ev = account(true, None);
    ev.host = Arc::from("new.example");
    let state = apply(&mut ev, Some(&inactive)).unwrap().state.unwrap();
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
