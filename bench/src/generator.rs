//! The event generator: accounts spread over hosts with a skewed (Zipf) share of the traffic, each a
//! simulated repo (`wire::testkit`: real keys, real MST, Sync 1.1 proofs). Events are made ahead of
//! their due time on a dedicated thread and handed to the hosts, which send them on time; the due
//! time is carried in the event (`rev` of commits and syncs, `time` of identity and account events),
//! so any subscriber can measure latency without a side channel.
//!
//! Mix: 93% `#commit` (1 op, or 2-4 ops one time in ten; creates 75%, updates 12%, deletes 13%;
//! records ~150 B-20 KB), 3% `#identity`, 2% `#account`, 2% `#sync`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;
use wire::Did;
use wire::frame::Event;
use wire::testkit::{Op, Signer, SigningKey, SimAccount};

use crate::host::Due;
use crate::now_us;

/// Generator settings.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Simulated hosts.
    pub hosts: usize,
    /// Accounts per host (the largest hosts get the most traffic, not more accounts).
    pub accounts_per_host: usize,
    /// Share of accounts with p256 keys, 0.0-1.0 (default 0.1; the rest k256).
    pub p256_share: f64,
    /// Zipf exponent of the per-host traffic share (default 1.0; 0 = uniform).
    pub skew: f64,
    /// How far ahead of their due time events are made. Default 300 ms.
    pub lead: Duration,
    /// RNG seed.
    pub seed: u64,
}

/// Counters of the generator.
#[derive(Debug, Default)]
pub struct GenStats {
    /// Events made.
    pub generated: AtomicU64,
    /// Events made after their due time (the generator could not keep up).
    pub late: AtomicU64,
    /// A corpus ran out before the run ended.
    pub exhausted: AtomicBool,
}

/// A simulated account and the record paths it holds.
pub(crate) struct Account {
    sim: SimAccount,
    paths: Vec<String>,
}

/// The simulated accounts and the per-host routing.
pub struct Fleet {
    accounts: Vec<Vec<Account>>,
    cumulative: Vec<f64>,
    host_seq: Vec<u64>,
    rng: fastrand::Rng,
}

/// A hash of (repo, rev or time), the identity of a generated event for loss checks.
pub fn event_key(repo: &str, rev_or_time: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    repo.hash(&mut h);
    rev_or_time.hash(&mut h);
    h.finish()
}

impl Fleet {
    /// Makes the accounts; `did_for(host, i)` names them.
    pub fn new(config: &GenConfig) -> Self {
        let mut rng = fastrand::Rng::with_seed(config.seed);
        let start = now_us();
        let accounts = (0..config.hosts)
            .map(|h| {
                (0..config.accounts_per_host)
                    .map(|i| {
                        let key = if rng.f64() < config.p256_share {
                            SigningKey::p256()
                        } else {
                            SigningKey::k256(config.seed ^ ((h as u64) << 20) ^ i as u64)
                        };
                        Account { sim: SimAccount::new(did_for(h, i), key, start), paths: Vec::new() }
                    })
                    .collect()
            })
            .collect();
        let weights: Vec<f64> = (0..config.hosts).map(|h| 1.0 / ((h + 1) as f64).powf(config.skew)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cumulative = weights.iter().map(|w| {
            acc += w / total;
            acc
        });
        Self { accounts, cumulative: cumulative.collect(), host_seq: vec![0; config.hosts], rng }
    }

    /// Every account's DID, host and public key.
    pub fn identities(&self) -> Vec<(Did, usize, wire::crypto::PublicKey)> {
        self.accounts
            .iter()
            .enumerate()
            .flat_map(|(h, accts)| accts.iter().map(move |a| (a.sim.did.clone(), h, a.sim.key.public())))
            .collect()
    }

    fn pick_host(&mut self) -> usize {
        let r = self.rng.f64();
        self.cumulative.partition_point(|c| *c < r).min(self.cumulative.len().saturating_sub(1))
    }

    fn record_size(&mut self) -> usize {
        let r = self.rng.f64();
        if r < 0.70 {
            self.rng.usize(150..600)
        } else if r < 0.95 {
            self.rng.usize(600..3000)
        } else {
            self.rng.usize(3000..20_000)
        }
    }

    /// Draws what the next event will be (host, account, kind, ops) from the fleet's RNG and gives
    /// it the host's next seq; `make` then makes it from the account's state.
    pub fn plan(&mut self) -> Plan {
        let host = self.pick_host();
        let n = self.accounts[host].len();
        let account = self.rng.usize(0..n.max(1));
        self.host_seq[host] += 1;
        let seq = self.host_seq[host];
        let kind = self.rng.f64();
        let n_ops = if self.rng.u8(0..10) == 0 { self.rng.usize(2..=4) } else { 1 };
        let sizes: Vec<usize> = (0..n_ops).map(|_| self.record_size()).collect();
        let choices: Vec<f64> = (0..n_ops).map(|_| self.rng.f64()).collect();
        let picks: Vec<usize> = (0..n_ops).map(|_| self.rng.usize(0..usize::MAX)).collect();
        let collections: Vec<&'static str> =
            (0..n_ops).map(|_| COLLECTIONS[self.rng.usize(0..COLLECTIONS.len())]).collect();
        Plan { host, account, seq, kind, sizes, choices, picks, collections }
    }

    /// Makes the next event, due at `at_us`, on a weighted-random host; returns the host, the frame
    /// and the event's (repo, rev/time) key.
    pub fn next_event(&mut self, at_us: u64) -> (usize, Due, u64) {
        let plan = self.plan();
        let (event, key) = make(&mut self.accounts[plan.host][plan.account], &plan, at_us);
        let frame = Bytes::from(event.encode().unwrap_or_default());
        (plan.host, Due { at_us, seq: plan.seq, frame }, key)
    }

    /// The accounts, each with its host index, for makers that split them between threads.
    pub(crate) fn accounts_mut(&mut self) -> impl Iterator<Item = (usize, usize, &mut Account)> {
        self.accounts.iter_mut().enumerate().flat_map(|(h, a)| a.iter_mut().enumerate().map(move |(i, a)| (h, i, a)))
    }
}

/// The collections records are written to.
const COLLECTIONS: [&str; 4] =
    ["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow", "app.bsky.feed.repost"];

/// One event's random choices, drawn by [`Fleet::plan`] in a fixed order so a seed gives the same
/// traffic whether events are made live or ahead into a corpus.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Host index.
    pub host: usize,
    /// Account index within the host.
    pub account: usize,
    /// The host's seq for the event.
    pub seq: u64,
    kind: f64,
    sizes: Vec<usize>,
    choices: Vec<f64>,
    picks: Vec<usize>,
    collections: Vec<&'static str>,
}

/// Makes the event `plan` describes from `acct`'s state, due at `at_us` (its `rev` clock is moved
/// there; every event's `time` is `at_us`, with microseconds). Returns the event and its
/// (repo, rev) key, or (did, time) for `#identity` and `#account`.
pub(crate) fn make(acct: &mut Account, plan: &Plan, at_us: u64) -> (Event, u64) {
    let seq = plan.seq;
    let time = crate::scan::datetime(at_us);
    acct.sim.set_clock(at_us.saturating_sub(1));
    if plan.kind < 0.03 && acct.sim.rev().is_some() {
        let mut e = acct.sim.identity(seq as i64);
        e.time = time;
        let key = event_key(e.did.as_str(), &e.time);
        (Event::Identity(e), key)
    } else if plan.kind < 0.05 && acct.sim.rev().is_some() {
        let mut e = acct.sim.account(seq as i64, true, None);
        e.time = time;
        let key = event_key(e.did.as_str(), &e.time);
        (Event::Account(e), key)
    } else if plan.kind < 0.07 && acct.sim.rev().is_some() {
        let mut e = acct.sim.sync(seq as i64);
        e.time = time;
        let key = event_key(e.did.as_str(), e.rev.as_str());
        (Event::Sync(e), key)
    } else {
        // Indices of `acct.paths` this commit touches; picking the k-th path not yet touched and
        // removing deleted ones by index keeps a commit's cost independent of the repo's size (a
        // scan of every path per op made a 16-minute run generator-bound).
        let mut used: Vec<usize> = Vec::with_capacity(plan.sizes.len());
        let mut deleted: Vec<usize> = Vec::new();
        let mut ops = Vec::with_capacity(plan.sizes.len());
        for j in 0..plan.sizes.len() {
            let available = acct.paths.len() - used.len();
            if available == 0 || plan.choices[j] < 0.75 {
                let path = format!("{}/{}", plan.collections[j], acct.sim.next_rkey());
                acct.paths.push(path.clone());
                used.push(acct.paths.len() - 1);
                ops.push(Op::Create { path, bytes: plan.sizes[j] });
            } else {
                let mut p = plan.picks[j] % available;
                let mut taken = used.clone();
                taken.sort_unstable();
                for t in taken {
                    if t <= p {
                        p += 1;
                    }
                }
                used.push(p);
                let path = acct.paths[p].clone();
                if plan.choices[j] < 0.87 {
                    ops.push(Op::Update { path });
                } else {
                    deleted.push(p);
                    ops.push(Op::Delete { path });
                }
            }
        }
        let mut e = acct.sim.commit(seq as i64, &ops, &Signer::Own);
        e.time = time;
        // Forget deleted paths, highest index first so the others stay put.
        deleted.sort_unstable_by(|a, b| b.cmp(a));
        for p in deleted {
            acct.paths.swap_remove(p);
        }
        let key = event_key(e.repo.as_str(), e.rev.as_str());
        (Event::Commit(e), key)
    }
}

/// The DID of account `i` of host `h`.
pub fn did_for(h: usize, i: usize) -> Did {
    Did::new(format!("did:plc:bench{h:05}x{i:05}")).unwrap_or_else(|_| unreachable!())
}

/// How a generator thread paces its events: the hosts they go to, the rate (events/s, read before
/// each event so a ramp can change it), the first due time, how far ahead of its due time an event
/// is made, when to stop, what it counts, and (when given) the key of every event it sends.
pub struct Pacing {
    /// One sender per host, by host index.
    pub hosts: Vec<UnboundedSender<Due>>,
    /// Events per second.
    pub rate: Arc<AtomicU64>,
    /// Due time of the first event, µs since the epoch.
    pub start_us: u64,
    /// How far ahead of its due time an event is made.
    pub lead: Duration,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
    /// Counters.
    pub stats: Arc<GenStats>,
    /// Collects the key of every event sent, when given.
    pub keys: Option<Arc<Mutex<HashSet<u64>>>>,
}

impl Pacing {
    /// Calls `next(due)` for each due time until `stop`, and hands what it makes (host, frame, key)
    /// to that host; `None` means the source ran out (`stats.exhausted`).
    fn drive(self, mut next: impl FnMut(u64) -> Option<(usize, Due, u64)>) {
        let mut at = self.start_us as f64;
        let lead_us = self.lead.as_micros() as u64;
        while !self.stop.load(Ordering::Acquire) {
            let r = self.rate.load(Ordering::Acquire);
            if r == 0 {
                // `--rate 0`: no traffic at all (an idle relay's CPU), until a ramp sets a rate.
                std::thread::sleep(Duration::from_millis(100));
                at = now_us() as f64;
                continue;
            }
            at += 1_000_000.0 / r as f64;
            let due = at as u64;
            let now = now_us();
            if due > now + lead_us {
                std::thread::sleep(Duration::from_micros(due - now - lead_us));
            }
            let Some((host, item, key)) = next(due) else {
                self.stats.exhausted.store(true, Ordering::Release);
                return;
            };
            if now_us() > due {
                self.stats.late.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.generated.fetch_add(1, Ordering::Relaxed);
            if let Some(keys) = &self.keys
                && let Ok(mut k) = keys.lock()
            {
                k.insert(key);
            }
            let Some(host) = self.hosts.get(host) else { return };
            if host.send(item).is_err() {
                return;
            }
        }
    }
}

/// Runs the generator on the calling thread until `pacing.stop`, making each event live.
pub fn run(mut fleet: Fleet, pacing: Pacing) {
    pacing.drive(|due| Some(fleet.next_event(due)));
}

/// Like [`run`], from a pre-made corpus: each event's `time` is stamped with its due time and the
/// frame handed to its host. Stops at `stop` or when the corpus runs out (`stats.exhausted`).
pub fn run_corpus(corpus: Arc<crate::corpus::Corpus>, pacing: Pacing) {
    let mut entries = corpus.entries.iter();
    pacing.drive(|due| {
        let entry = entries.next()?;
        let frame = crate::corpus::Corpus::stamped(entry, due);
        let key = if entry.key != 0 {
            entry.key
        } else {
            crate::scan::scan(&frame).and_then(|s| Some(event_key(s.repo?, s.time?))).unwrap_or(0)
        };
        Some((entry.host as usize, Due { at_us: due, seq: entry.seq, frame }, key))
    });
}
