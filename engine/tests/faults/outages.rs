//! Dependencies failing: the PLC directory unreachable or NXDOMAIN, DNS slow, an identity slow to
//! resolve. Hosts pause (or only the affected accounts wait) and nothing is lost.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{self, Account, FakeHost, FakePlc, Relay, Seen, StopOnDrop, read_until_idle, subscribe};
use crate::{WAIT, read_until_count};
use wire::frame::Event;

/// The PLC directory is unreachable (connection refused) for the first 20 s while hosts send: the
/// host waits, nothing is dropped, and once the directory answers every event is relayed, each
/// account's in its order (accounts of a host are decided at once, so they may interleave
/// differently than the host sent them).
#[test]
fn a_plc_outage_pauses_hosts_and_loses_nothing() {
    let plc_port = support::free_port();
    let plc_url = format!("http://127.0.0.1:{plc_port}");
    let host = FakeHost::start();
    let mut accounts: Vec<Account> =
        (0..4).map(|i| Account::new(&format!("did:plc:outage{i:0>19}"), 120 + i as u8)).collect();
    let mut seq = 0;
    let mut offered = Vec::new();
    let mut last: Vec<Option<wire::Tid>> = vec![None; accounts.len()];
    for _ in 0..5 {
        for (i, a) in accounts.iter_mut().enumerate() {
            seq += 1;
            let (rev, f) = a.commit(seq, last[i].take());
            host.push(seq, f);
            offered.push((a.did.to_string(), rev.clone()));
            last[i] = Some(rev);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc_url, &[]);
    relay.wait_until(WAIT, "the host waiting", || {
        relay.metric("relay_upstream_waits_total", "dependency=\"plc_directory\"") >= 1
    });
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(relay.metric("relay_events_relayed_total", ""), 0);
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0, "nothing dropped while the directory is out");
    let plc = FakePlc::start_on(plc_port);
    for a in &accounts {
        plc.put(&a.did, a.did_doc(&format!("http://{}", host.hostname())));
    }
    relay.wait_until(WAIT, "every event relayed", || relay.metric("relay_events_relayed_total", "") >= 20);
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0);
    let mut sub = subscribe(relay.port, Some("0"));
    let got: Vec<(String, String)> = read_until_idle(&mut sub, Duration::from_millis(500))
        .into_iter()
        .map(|s| match s {
            Seen::Event(Event::Commit(c)) => (c.repo.to_string(), c.rev.to_string()),
            other => panic!("{other:?}"),
        })
        .collect();
    let want: Vec<(String, String)> = offered.iter().map(|(d, r)| (d.clone(), r.to_string())).collect();
    let by_account = |events: &[(String, String)]| {
        let mut map: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
        for (did, rev) in events {
            map.entry(did.clone()).or_default().push(rev.clone());
        }
        map
    };
    assert_eq!(got.len(), want.len(), "all 20, each once");
    assert_eq!(by_account(&got), by_account(&want), "every account's commits, in its order: no loss, no chain break");
    relay.stop();
}

/// Held by the tests that run [`slow_dns`]: one port 53 for all of them.
static PORT_53: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A DNS server on 127.0.0.77:53 answering names under `slow.test` with 127.0.0.1 after `delay`,
/// names under `flaky.test` NXDOMAIN for `flaky_for` from when it has the port and 127.0.0.1 after,
/// and every other name NXDOMAIN at once. Returns its stop flag, the number of slow queries
/// received, the most slow queries it had in flight at once, and when `flaky.test` starts to
/// resolve.
#[allow(clippy::type_complexity)]
fn slow_dns(
    delay: Duration,
    flaky_for: Duration,
) -> (Arc<AtomicBool>, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicUsize>, Instant) {
    // A previous test's server may still hold the port while its last slow answers finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    let socket = loop {
        match UdpSocket::bind("127.0.0.77:53") {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("binding 127.0.0.77:53 (root needed): {e}"),
        }
    };
    // From when the port is ours: a previous test's server may have held it for seconds.
    let flaky_until = Instant::now() + flaky_for;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let slow_queries: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let counted = Arc::clone(&slow_queries);
    let most_at_once: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let in_flight: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let most = Arc::clone(&most_at_once);
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stopped.load(Ordering::Acquire) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
            let query = buf[..n].to_vec();
            let reply_socket = socket.try_clone().unwrap();
            let counted = Arc::clone(&counted);
            let (in_flight, most) = (Arc::clone(&in_flight), Arc::clone(&most));
            std::thread::spawn(move || {
                // The question: labels from byte 12, then QTYPE and QCLASS.
                let mut at = 12;
                let mut labels = Vec::new();
                while at < query.len() && query[at] != 0 {
                    let len = query[at] as usize;
                    labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len]).to_ascii_lowercase());
                    at += 1 + len;
                }
                let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
                let question_end = at + 5;
                let under = |zone: &str| labels.len() >= 2 && labels[labels.len() - 2..] == [zone, "test"];
                let flaky_up = under("flaky") && Instant::now() >= flaky_until;
                let slow = under("slow") || flaky_up;
                let mut reply = query[..question_end].to_vec();
                reply[2] = 0x81; // response, recursion desired
                if flaky_up {
                    reply[3] = 0x80;
                    if qtype == 1 {
                        reply[7] = 1;
                        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
                    }
                } else if slow {
                    counted.fetch_add(1, Ordering::AcqRel);
                    let now = in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                    most.fetch_max(now, Ordering::AcqRel);
                    std::thread::sleep(delay);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    reply[3] = 0x80; // recursion available, NOERROR
                    if qtype == 1 {
                        reply[7] = 1; // one answer
                        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
                    }
                } else {
                    reply[3] = 0x83; // NXDOMAIN
                }
                reply[6] = 0;
                if qtype != 1 || !slow {
                    reply[7] = 0;
                }
                let _ = reply_socket.send_to(&reply, from);
            });
        }
    });
    (stop, slow_queries, most_at_once, flaky_until)
}

/// A [`slow_dns`] server (port 53 held for the test) and a resolv.conf naming it, in a temporary
/// directory that also holds the relay's data.
struct SlowDns {
    /// Slow queries received so far.
    slow_queries: Arc<std::sync::atomic::AtomicUsize>,
    /// Most slow queries in flight at once.
    most_at_once: Arc<std::sync::atomic::AtomicUsize>,
    /// Until when names under `flaky.test` are NXDOMAIN.
    flaky_until: Instant,
    dir: tempfile::TempDir,
    _stop: StopOnDrop,
    _port: std::sync::MutexGuard<'static, ()>,
}

impl SlowDns {
    /// Starts the server; `None` (the test `test` is skipped, with a note) when not root.
    fn start(test: &str, delay: Duration) -> Option<Self> {
        Self::start_flaky(test, delay, Duration::ZERO)
    }

    /// [`SlowDns::start`], with names under `flaky.test` NXDOMAIN for `flaky_for` from when the
    /// server starts ([`SlowDns::flaky_until`]).
    fn start_flaky(test: &str, delay: Duration, flaky_for: Duration) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: {test} needs root (unshare, port 53)");
            return None;
        }
        let port = PORT_53.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (stop, slow_queries, most_at_once, flaky_until) = slow_dns(delay, flaky_for);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.77\noptions timeout:30 attempts:1\n")
            .unwrap();
        Some(Self { slow_queries, most_at_once, flaky_until, dir, _stop: StopOnDrop(stop), _port: port })
    }

    /// A relay on one core, in a mount namespace whose /etc/resolv.conf names this server.
    fn start_relay(&self, hosts: &[&str], plc: &str) -> Relay {
        let resolv = self.dir.path().join("resolv.conf");
        let script = format!("mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"", resolv.display());
        let wrapper = ["unshare", "-m", "sh", "-c", script.as_str()];
        let one_core =
            ["--ingest-cores", "0", "--sequencer-core", "0", "--fanout-cores", "0", "--compaction-core", "0"];
        Relay::start_wrapped(&wrapper, support::free_port(), &self.dir.path().join("data"), hosts, plc, &one_core)
    }
}

/// A host sends events of `did:web` accounts whose names take 5 s to resolve. The lookups run off
/// the executors, beside (not ahead of) the sequencer's commits: another host's events keep flowing
/// within a second on the same core. The slow host's accounts are resolved at once, not one after
/// another (its frames are decided concurrently): the DNS server sees several of their names in
/// flight together. Needs root (a mount namespace with its own resolv.conf).
#[test]
fn slow_dns_does_not_stall_other_hosts_commits() {
    let Some(dns) = SlowDns::start("slow_dns_does_not_stall_other_hosts_commits", Duration::from_secs(5)) else {
        return;
    };
    let plc = FakePlc::start();
    let slow_host = FakeHost::start();
    let fast_host = FakeHost::start();
    for i in 0..10u8 {
        let did = format!("did:web:a{i}.slow.test");
        let mut a = Account::new(&did, 140 + i);
        let (_, f) = a.commit(u64::from(i) + 1, None);
        slow_host.push(u64::from(i) + 1, f);
    }
    let mut bob = Account::new("did:plc:fastbob000000000000000000", 160);
    plc.put(&bob.did, bob.did_doc(&format!("http://{}", fast_host.hostname())));
    let hosts = [slow_host.hostname(), fast_host.hostname()];
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let relay = dns.start_relay(&refs, &plc.url);
    // The slow host's first lookup is under way.
    relay.wait_until(WAIT, "a slow DNS query", || dns.slow_queries.load(Ordering::Acquire) >= 1);
    let mut live = subscribe(relay.port, None);
    let mut since = None;
    let mut worst = Duration::ZERO;
    for seq in 1..=20u64 {
        let (rev, f) = bob.commit(seq, since.take());
        since = Some(rev);
        let pushed = Instant::now();
        fast_host.push(seq, f);
        let got = read_until_count(&mut live, 1, Duration::from_secs(10));
        assert_eq!(got, 1, "commit {seq} of the fast host relayed");
        worst = worst.max(pushed.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each slow lookup takes 5 s; the fast host's commits waited at most a fraction of that.
    assert!(worst < Duration::from_secs(2), "a fast host's commit waited {worst:?} behind slow DNS");
    // Ten accounts of one host, each name answered after 5 s: decided one frame at a time, the
    // server would never see two of them at once.
    let at_once = dns.most_at_once.load(Ordering::Acquire);
    assert!(at_once >= 2, "the slow host's names were resolved one at a time ({at_once} at most)");
    relay.stop();
}

/// One account of a host has a `did:web` whose name takes 20 s to resolve (then its frame is
/// dropped: the name points at loopback, which the SSRF guard refuses). The host's other account,
/// read after it, is not held behind it: its commits are relayed while that frame is still
/// undecided, and the host's cursor stays below the undecided frame, so a crash or reconnect now
/// would read it again. Needs root (a mount namespace with its own resolv.conf).
#[test]
fn a_slow_identity_does_not_hold_its_hosts_other_accounts() {
    let Some(dns) = SlowDns::start("a_slow_identity_does_not_hold_its_hosts_other_accounts", Duration::from_secs(20))
    else {
        return;
    };
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut slow = Account::new("did:web:held.slow.test", 150);
    let (_, f) = slow.commit(1, None);
    host.push(1, f);
    let mut carol = Account::new("did:plc:carolbehindaslowone0000000", 151);
    plc.put(&carol.did, carol.did_doc(&format!("http://{}", host.hostname())));
    let mut since = None;
    for seq in 2..=6u64 {
        let (rev, f) = carol.commit(seq, since.take());
        since = Some(rev);
        host.push(seq, f);
    }
    let hostname = host.hostname();
    let relay = dns.start_relay(&[&hostname], &plc.url);
    let mut sub = subscribe(relay.port, Some("0"));
    // Well under the 20 s the slow account's frame stays undecided.
    let got = read_until_count(&mut sub, 5, Duration::from_secs(12));
    assert_eq!(got, 5, "carol's commits relayed past the undecided frame");
    assert!(dns.slow_queries.load(Ordering::Acquire) >= 1, "the slow account's name was looked up");
    assert_eq!(
        relay.metric("relay_events_dropped_total", ""),
        0,
        "the slow account's frame is still undecided (not dropped) while carol's went through"
    );
    let (status, body) = relay.get("/xrpc/com.atproto.sync.listHosts");
    assert_eq!(status, 200, "{body}");
    let hosts: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seq = hosts["hosts"][0]["seq"].as_u64().unwrap_or(0);
    assert_eq!(seq, 0, "the host's cursor stays below its undecided frame 1: {body}");
    relay.stop();
}

/// #19: the PLC directory's own hostname answers NXDOMAIN for 20 s (a DNS incident) while a host
/// sends events of accounts the relay has never resolved. That is an outage of the directory, not
/// an answer about the accounts: the frames wait, nothing is dropped, and once the name resolves
/// every event is relayed. Needs root (a mount namespace with its own resolv.conf).
#[test]
fn nxdomain_for_the_plc_directory_pauses_and_loses_nothing() {
    let test = "nxdomain_for_the_plc_directory_pauses_and_loses_nothing";
    let Some(dns) = SlowDns::start_flaky(test, Duration::ZERO, Duration::from_secs(20)) else {
        return;
    };
    let until = dns.flaky_until;
    let plc = FakePlc::start();
    let plc_port = plc.url.rsplit(':').next().unwrap().to_owned();
    let host = FakeHost::start();
    let mut accounts: Vec<Account> =
        (0..3).map(|i| Account::new(&format!("did:plc:nxdomain{i:0>17}"), 230 + i as u8)).collect();
    let mut seq = 0;
    let mut revs: Vec<Option<wire::Tid>> = vec![None; accounts.len()];
    for _ in 0..4 {
        for (i, a) in accounts.iter_mut().enumerate() {
            seq += 1;
            let (rev, f) = a.commit(seq, revs[i].take());
            revs[i] = Some(rev);
            host.push(seq, f);
        }
    }
    for a in &accounts {
        plc.put(&a.did, a.did_doc(&format!("http://{}", host.hostname())));
    }
    let relay = dns.start_relay(&[&host.hostname()], &format!("http://plc.flaky.test:{plc_port}"));
    relay.wait_until(WAIT, "the host waiting for the directory", || {
        relay.metric("relay_upstream_waits_total", "dependency=\"plc_directory\"") >= 1
    });
    while Instant::now() < until {
        assert_eq!(relay.metric("relay_events_dropped_total", ""), 0, "nothing dropped while the name is NXDOMAIN");
        std::thread::sleep(Duration::from_millis(500));
    }
    relay.wait_until(Duration::from_secs(60), "every event relayed", || relay.head() >= seq as i64);
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0);
    relay.stop();
}
