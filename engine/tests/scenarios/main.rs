//! The validation scenario suite: fake hosts → relay → subscriber, with accounts that sign real
//! commits over real MSTs (`wire::testkit`). Every input is marked deliver or drop; drops are
//! asserted by reason and deliveries by content and order.

#[path = "../support/mod.rs"]
mod support;

mod accounts;
mod validation;

use std::time::{SystemTime, UNIX_EPOCH};

use support::Seen;
use wire::frame::Event;
use wire::testkit::{Op, SigningKey, SimAccount};
use wire::{Did, car};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Deliver,
    Drop(&'static str),
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

pub(crate) fn account(name: &str, key: SigningKey) -> SimAccount {
    let did = Did::new(format!("did:plc:{name:0<24}")).unwrap();
    SimAccount::new(did, key, now_us() - 3_600_000_000)
}

pub(crate) fn create(acct: &mut SimAccount, bytes: usize) -> Vec<Op> {
    vec![Op::Create { path: format!("app.bsky.feed.post/{}", acct.next_rkey()), bytes }]
}

/// Inputs for one host, with their expectations; seqs are assigned in order from 1.
#[derive(Default)]
pub(crate) struct Script {
    inputs: Vec<(Event, Expect)>,
    raw: Vec<(usize, Vec<u8>)>,
}

impl Script {
    pub(crate) fn seq(&self) -> i64 {
        (self.inputs.len() + self.raw.len()) as i64 + 1
    }

    pub(crate) fn push(&mut self, e: Event, x: Expect) {
        self.inputs.push((e, x));
    }

    /// A frame that is not a valid event, at the current position.
    pub(crate) fn push_raw(&mut self, bytes: Vec<u8>) {
        self.raw.push((self.inputs.len(), bytes));
    }

    pub(crate) fn frames(&self) -> Vec<(u64, Vec<u8>, Expect, Option<Event>)> {
        let mut out = Vec::new();
        let mut raw = self.raw.iter().peekable();
        for (i, (e, x)) in self.inputs.iter().enumerate() {
            while let Some((_, bytes)) = raw.next_if(|(at, _)| *at == i) {
                out.push((0, bytes.clone(), Expect::Drop("frame_too_big"), None));
            }
            out.push((0, e.encode().unwrap(), *x, Some(e.clone())));
        }
        for (_, bytes) in raw {
            out.push((0, bytes.clone(), Expect::Drop("frame_too_big"), None));
        }
        for (i, f) in out.iter_mut().enumerate() {
            f.0 = i as u64 + 1;
        }
        out
    }
}

/// The CID of the last `#commit` or `#sync` of `did` among the frames a subscriber saw.
pub(crate) fn expected_last_commit(seen: &[Seen], did: &Did) -> String {
    seen.iter()
        .rev()
        .find_map(|s| match s {
            Seen::Event(Event::Commit(c)) if &c.repo == did => Some(c.commit.to_string()),
            Seen::Event(Event::Sync(x)) if &x.did == did => {
                Some(car::read_car(&x.blocks).unwrap().roots[0].to_string())
            }
            _ => None,
        })
        .unwrap()
}

/// Removes the block `cid` from a commit's CAR.
pub(crate) fn without_block(ev: &mut wire::frame::CommitEvent, cid: &wire::Cid) {
    let parsed = car::read_car(&ev.blocks).unwrap();
    let kept: Vec<_> = parsed.blocks().filter(|(c, _)| *c != cid).map(|(c, b)| (*c, b)).collect();
    ev.blocks = car::write_car(&ev.commit, &kept).unwrap().into();
}
