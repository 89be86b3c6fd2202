//! The store as a window: retention and the cursor edges (`OutdatedCursor`, the last seq, a future
//! cursor), takedowns and deletions leaving replay, catch-up subscribers answered while they replay,
//! and a full disk that pauses the relay instead of crashing it.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{Account, FakeHost, FakePlc, Relay, Seen, read_until_idle, subscribe};
use wire::RelaySeq;
use wire::frame::Event;

const WAIT: Duration = Duration::from_secs(30);

fn kinds(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| match s {
            Seen::Event(Event::Info(i)) => format!("#info {}", i.name),
            Seen::Event(e) => e.type_name().to_owned(),
            Seen::Error(e) => format!("error {e}"),
        })
        .collect()
}

/// Events older than `--retention` are deleted; a cursor older than the oldest stored event gets
/// `#info OutdatedCursor` first, then everything from the oldest on; a cursor at the last seq gets
/// nothing but live events; a future cursor gets `FutureCursor`; `_health` and `/metrics` show the
/// window.
#[test]
fn retention_and_the_cursor_edges() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:retention0000000000000000", 91);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &["--retention", "3s"]);
    let mut since = None;
    let mut push = |seq: u64| {
        let (rev, f) = alice.commit(seq, since.take());
        since = Some(rev);
        host.push(seq, f);
    };
    for seq in 1..=10 {
        push(seq);
    }
    relay.wait_until(WAIT, "10 relayed", || relay.head() == 10);
    // A second later, five more: a newer second in the time index.
    std::thread::sleep(Duration::from_millis(1100));
    for seq in 11..=15 {
        push(seq);
    }
    relay.wait_until(WAIT, "15 relayed", || relay.head() == 15);
    assert_eq!(relay.get_json("/xrpc/_health").1["oldestSeq"], 1);
    relay.wait_until(WAIT, "the first ten deleted", || relay.get_json("/xrpc/_health").1["oldestSeq"] == 11);
    relay.wait_until(WAIT, "the deletion counted", || {
        relay.metric("relay_retention_trimmed_total", "reason=\"age\"") >= 10
    });
    relay.wait_until(WAIT, "the gauge", || relay.metric("relay_events_oldest_seq", "") == 11);

    let mut sub = subscribe(relay.port, Some("0"));
    let seen = read_until_idle(&mut sub, Duration::from_millis(500));
    assert_eq!(kinds(&seen)[0], "#info OutdatedCursor", "{:?}", kinds(&seen));
    assert_eq!(seen.iter().filter_map(Seen::seq).collect::<Vec<_>>(), (11..=15).collect::<Vec<_>>());
    let mut sub = subscribe(relay.port, Some("12"));
    let seen = read_until_idle(&mut sub, Duration::from_millis(500));
    assert_eq!(seen.iter().filter_map(Seen::seq).collect::<Vec<_>>(), [13, 14, 15], "inside the window: no #info");
    assert!(!kinds(&seen).iter().any(|k| k.starts_with("#info")));
    // At the last seq: nothing replayed, then live.
    let mut at_head = subscribe(relay.port, Some("15"));
    assert!(read_until_idle(&mut at_head, Duration::from_millis(300)).is_empty());
    push(16);
    let seen = read_until_idle(&mut at_head, Duration::from_millis(700));
    assert_eq!(seen.iter().filter_map(Seen::seq).collect::<Vec<_>>(), [16]);
    let mut future = subscribe(relay.port, Some("17"));
    assert_eq!(kinds(&read_until_idle(&mut future, Duration::from_millis(500))), ["error FutureCursor"]);
    // Jetstream v2 (its published lexicon): a seq cursor below the retention floor is refused before
    // the upgrade with CursorTooOld naming the floor; cursor=0 (everything) and one inside the window
    // are served.
    let v2 = "/xrpc/network.bsky.jetstream.subscribeEvents";
    let (status, v) = relay.get_json(&format!("{v2}?cursor={}", 5 << 8));
    assert_eq!((status, v["error"].as_str()), (400, Some("CursorTooOld")), "{v}");
    assert!(v["message"].as_str().unwrap().contains(&(11u64 << 8).to_string()), "{v}");
    for cursor in [0, 12 << 8] {
        let (status, v) = relay.get_json(&format!("{v2}?cursor={cursor}"));
        assert_eq!(status, 426, "no upgrade asked, but the cursor passed: {v}");
    }
    relay.stop();
}

/// A host's `#account` with status `deleted` (like an operator's takedown) hides the account's earlier
/// events from replay at once; the `#account` event itself and other accounts' events stay.
#[test]
fn a_deletion_leaves_replay() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:scrubalice000000000000000", 92);
    let mut bob = Account::new("did:plc:scrubbob00000000000000000", 93);
    for a in [&alice, &bob] {
        plc.put(&a.did, a.did_doc(&format!("http://{}", host.hostname())));
    }
    let (ra, f) = alice.commit(1, None);
    host.push(1, f);
    let (_, f) = bob.commit(2, None);
    host.push(2, f);
    let (_, f) = alice.commit(3, Some(ra));
    host.push(3, f);
    let deleted = wire::frame::AccountEvent {
        seq: 4,
        did: alice.did.clone(),
        time: "2026-11-27T00:00:00.000Z".into(),
        active: false,
        status: Some("deleted".into()),
    };
    host.push(4, Event::Account(deleted).encode().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
    relay.wait_until(WAIT, "4 relayed", || relay.head() == 4);
    let mut sub = subscribe(relay.port, Some("0"));
    let seen = read_until_idle(&mut sub, Duration::from_millis(500));
    // Accounts of a host are decided at once, so bob's commit and alice's events may take the relay
    // seqs in either order; what stays is bob's commit and alice's `#account`.
    let mut got: Vec<(String, bool)> = seen
        .iter()
        .map(|s| match s {
            Seen::Event(e) => (e.did().unwrap().to_string(), matches!(e, Event::Account(_))),
            other => panic!("{other:?}"),
        })
        .collect();
    got.sort();
    let mut want = vec![(bob.did.to_string(), false), (alice.did.to_string(), true)];
    want.sort();
    assert_eq!(got, want, "alice's commits are gone");
    assert_eq!(relay.metric("relay_replay_hidden_total", ""), 2);
    relay.stop();
    // The tombstone survives a restart.
    let relay = Relay::start(&dir.path().join("data"), &host.hostname(), &plc.url, &[]);
    let mut sub = subscribe(relay.port, Some("0"));
    assert_eq!(read_until_idle(&mut sub, Duration::from_millis(500)).len(), 2);
    relay.stop();
}

/// Writes `n` events (a real signed commit of ~1 KB, re-sequenced) straight into a new store, so
/// replay can be tested on a big store without validating 100,000 events first.
fn fill_store(data: &Path, n: u64) {
    let mut acct = Account::new("did:plc:bigstore00000000000000000", 94);
    let rev = acct.next_rev();
    let mut ev = acct.commit_with(1, &rev, None, 1000, &acct.key.clone());
    let store =
        storage::Store::open(data, &storage::StoreOptions { sync_writes: false, ..Default::default() }).unwrap();
    for start in (1..=n).step_by(10_000) {
        let mut batch = storage::CommitBatch::default();
        for seq in start..(start + 10_000).min(n + 1) {
            ev.seq = seq as i64;
            batch.events.push((RelaySeq(seq), Bytes::from(Event::Commit(ev.clone()).encode().unwrap())));
        }
        store.commit(&batch).unwrap();
    }
}

/// #22: the data directory is the retention window. With `--retention 2s` and `--max-wal-size
/// 4MiB`, a host sends ~3 MB/s for 24 s (~70 MB written): the whole data directory (`du`: SST files
/// of every column family, write-ahead log, RocksDB's own files) grows in the first seconds and then
/// stays flat: its growth over the last third is under half its growth over the first. (Before, the
/// small column families pinned every write-ahead log file: the directory held about everything
/// ever written.) `relay_data_dir_bytes` is `du` within 5%.
#[test]
fn the_data_directory_stays_within_the_retention_window() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:diskwindow000000000000000", 95);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--retention", "2s", "--max-wal-size", "4MiB"];
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &args);
    let push = host.pusher();
    let producer = std::thread::spawn(move || {
        let key = alice.key;
        let mut since = None;
        let started = Instant::now();
        let mut seq = 0u64;
        while started.elapsed() < Duration::from_secs(24) {
            for _ in 0..40 {
                seq += 1;
                let rev = alice.next_rev();
                let ev = alice.commit_with(seq, &rev, since.take(), 8_000, &key);
                since = Some(rev);
                push(seq, Event::Commit(ev).encode().unwrap());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seq
    });
    let mut samples = Vec::new();
    for _ in 0..25 {
        samples.push(storage::dir_usage(&data).unwrap().total_bytes);
        std::thread::sleep(Duration::from_secs(1));
    }
    let offered = producer.join().unwrap();
    relay.wait_until(Duration::from_secs(60), "every commit relayed", || relay.head() >= offered as i64);
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!("data directory, MB each second: {:?}", samples.iter().map(|b| mb(*b).round()).collect::<Vec<_>>());
    let first = samples[8].saturating_sub(samples[0]);
    let last = samples[24].saturating_sub(samples[16]);
    assert!(
        last * 2 < first.max(1),
        "growth {:.1} MB over the last third, {:.1} MB over the first",
        mb(last),
        mb(first)
    );
    // The metric is what `du` sees (measured every second: compare once both have settled).
    std::thread::sleep(Duration::from_secs(3));
    let du = storage::dir_usage(&data).unwrap().total_bytes as f64;
    let metric = relay.metric("relay_data_dir_bytes", "") as f64;
    assert!((metric - du).abs() <= du * 0.05, "relay_data_dir_bytes {metric} vs du {du}");
    assert!(relay.metric("relay_wal_bytes", "") <= 12 << 20, "the write-ahead log stays near its bound");
    relay.stop();
}

/// A websocket client of `subscribeRepos?cursor=0` from local address `from` (127.0.0.x) with a 4 KiB
/// receive buffer, that reads 512 bytes of the replay every 2 s until `stop`.
fn trickle_reader(
    port: u16,
    from: std::net::Ipv4Addr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    std::thread::spawn(move || {
        // SAFETY: a new socket, configured and connected with plain libc calls on valid pointers to
        // local values; ownership moves to the TcpStream, which closes it.
        let stream = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let size: libc::c_int = 4096;
            let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), sz);
            let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let local = sockaddr(from, 0);
            assert_eq!(libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len), 0);
            let remote = sockaddr(std::net::Ipv4Addr::LOCALHOST, port);
            assert_eq!(libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len), 0);
            std::net::TcpStream::from_raw_fd(fd)
        };
        let mut stream = stream;
        write!(
            stream,
            "GET /xrpc/com.atproto.sync.subscribeRepos?cursor=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 512];
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            if stream.read(&mut buf).unwrap_or(0) == 0 {
                return;
            }
            for _ in 0..20 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

/// Frames a normal `cursor=0` consumer reads in `window`.
fn replay_rate(port: u16, window: Duration) -> u64 {
    let mut ws = subscribe(port, Some("0"));
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    }
    let started = Instant::now();
    let mut frames = 0;
    while started.elapsed() < window {
        match ws.read() {
            Ok(tungstenite::Message::Binary(_)) => frames += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    frames
}

/// #19: 64 subscribers from 8 addresses replay from `cursor=0` reading 512 bytes every 2 s (under
/// the per-address limit, hostile or just slow): a normal consumer's replay beside them is at most 2×
/// slower than alone. Before, each held a 4 MiB chunk of the shard's replay memory for as long as it
/// took to read it, and the others waited: the consumer's replay went to 0 frames.
#[test]
fn slow_readers_do_not_stop_other_replays() {
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill_store(&data, 150_000);
    // 128 MiB of replay memory: 64 readers holding 4 MiB chunks would take all of it twice over.
    let relay = Relay::start_hosts(support::free_port(), &data, &[], &plc.url, &["--replay-memory", "128MiB"]);
    let window = Duration::from_secs(4);
    let alone = replay_rate(relay.port, window);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..64u8)
        .map(|i| {
            trickle_reader(relay.port, std::net::Ipv4Addr::new(127, 0, 0, 2 + i % 8), std::sync::Arc::clone(&stop))
        })
        .collect();
    relay.wait_until(Duration::from_secs(20), "the slow readers connected", || {
        relay.metric("relay_subscribers", "") >= 64
    });
    std::thread::sleep(Duration::from_secs(2));
    let beside = replay_rate(relay.port, window);
    stop.store(true, std::sync::atomic::Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
    eprintln!("replay in {window:?}: {alone} frames alone, {beside} beside 64 slow readers");
    assert!(alone > 10_000, "the consumer alone read only {alone} frames");
    assert!(beside * 2 >= alone, "{beside} frames beside the slow readers, {alone} alone");
    relay.stop();
}

/// A client that pings every 2 s while it replays a store of 120,000 events slowly (100 µs of work
/// per event) gets every pong within 5 s: pongs go out between replay chunks.
#[test]
fn pings_are_answered_during_a_long_replay() {
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let n = 120_000u64;
    fill_store(&data, n);
    let relay = Relay::start_hosts(support::free_port(), &data, &[], &plc.url, &[]);
    let mut ws = subscribe(relay.port, Some("0"));
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let started = Instant::now();
    let mut pings: Vec<(u64, Instant)> = Vec::new();
    let mut pong_delays = Vec::new();
    let mut got = 0u64;
    let mut last_ping = Instant::now();
    while got < n {
        if last_ping.elapsed() >= Duration::from_secs(2) {
            let id = pings.len() as u64;
            ws.send(tungstenite::Message::Ping(id.to_be_bytes().to_vec().into())).unwrap();
            pings.push((id, Instant::now()));
            last_ping = Instant::now();
        }
        match ws.read().unwrap() {
            tungstenite::Message::Binary(_) => {
                got += 1;
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(100) {}
            }
            tungstenite::Message::Pong(p) => {
                let id = u64::from_be_bytes(p.as_ref().try_into().unwrap());
                pong_delays.push(pings[id as usize].1.elapsed());
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    // A ping sent just before the last frame: its pong follows the frames.
    while pong_delays.len() < pings.len() {
        if let tungstenite::Message::Pong(p) = ws.read().unwrap() {
            let id = u64::from_be_bytes(p.as_ref().try_into().unwrap());
            pong_delays.push(pings[id as usize].1.elapsed());
        }
    }
    assert!(pings.len() >= 3, "the replay took {elapsed:?}: too short to ping during it");
    let worst = pong_delays.iter().max().unwrap();
    assert!(*worst < Duration::from_secs(5), "a pong took {worst:?}");
    eprintln!("replayed {n} events in {elapsed:?}; {} pings, slowest pong {worst:?}", pings.len());
    relay.stop();
}

/// Python's `websockets` (under the `atproto` SDK) pings every 20 s and closes the connection when
/// no pong comes within 20 s. A default-configured client doing 0.6 ms of work per event finishes a
/// replay of 110,000 events that takes longer than 60 s, without being cut off. Needs the venv of
/// `scripts/py/requirements.txt` (`RELAY_TEST_PYTHON`, set by `scripts/test.sh`).
#[test]
fn a_default_python_websockets_client_finishes_a_replay_over_60_seconds() {
    let Some(python) = std::env::var_os("RELAY_TEST_PYTHON") else {
        eprintln!("SKIPPED: set RELAY_TEST_PYTHON to the venv python of scripts/py/requirements.txt");
        return;
    };
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let n = 110_000u64;
    fill_store(&data, n);
    let relay = Relay::start_hosts(support::free_port(), &data, &[], &plc.url, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/py/slow_replay.py");
    let url = format!("ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos?cursor=0", relay.port);
    let out =
        std::process::Command::new(python).arg(script).args([url.as_str(), &n.to_string(), "0.0006"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("REPLAY ")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim_start_matches("REPLAY ")).unwrap();
    assert_eq!(v["frames"], n, "{v}");
    assert!(v["seconds"].as_f64().unwrap() > 60.0, "the replay must outlast the 20 s + 20 s keepalive: {v}");
    eprintln!("{line}");
    relay.stop();
}

/// A disk that fills up: the relay stops taking events (the host waits, nothing is dropped), says
/// so in `_health` (503 degraded) and `/metrics`, and resumes by itself once space is freed. Needs
/// root (a small tmpfs).
#[test]
fn a_full_disk_pauses_the_relay_and_it_resumes() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: a_full_disk_pauses_the_relay_and_it_resumes needs root (mount tmpfs)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=160m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:diskfull00000000000000000", 95);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let args = ["--min-free-disk", "40MiB"];
    let relay = Relay::start(&mnt.join("data"), &host.hostname(), &plc.url, &args);
    let free = || {
        let st = nix_statvfs(&mnt);
        st.0 * st.1
    };
    let mut since = None;
    let mut push = |seq: u64| {
        let rev = alice.next_rev();
        let ev = alice.commit_with(seq, &rev, since.replace(rev.clone()), 1024, &alice.key.clone());
        host.push(seq, Event::Commit(ev).encode().unwrap());
    };
    for seq in 1..=50 {
        push(seq);
    }
    relay.wait_until(WAIT, "50 relayed", || relay.head() == 50);
    // Something else fills the disk to 30 MiB free, below --min-free-disk: the next batch waits.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; (free() - (30 << 20)) as usize]).unwrap();
    for seq in 51..=100 {
        push(seq);
    }
    let pushed = 100u64;
    relay.wait_until(WAIT, "the relay pauses", || relay.get("/xrpc/_health").0 == 503);
    let (_, health) = relay.get_json("/xrpc/_health");
    assert_eq!((health["status"].as_str(), health["reason"].as_str()), (Some("degraded"), Some("disk_full")));
    assert_eq!(relay.metric("relay_disk_paused", ""), 1);
    let relayed = relay.metric("relay_events_relayed_total", "");
    assert!(relayed < pushed, "paused before the end: {relayed} of {pushed}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(relay.metric("relay_events_relayed_total", ""), relayed, "nothing taken while paused");
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0, "nothing dropped");
    // Replay keeps working meanwhile.
    let mut sub = subscribe(relay.port, Some("0"));
    assert_eq!(read_until_idle(&mut sub, Duration::from_millis(700)).len() as u64, relayed);
    // A restart on the still-full disk: the relay comes up paused, not crash-looping.
    relay.stop();
    let relay = Relay::start(&mnt.join("data"), &host.hostname(), &plc.url, &args);
    relay.wait_until(WAIT, "paused again after the restart", || relay.get("/xrpc/_health").0 == 503);
    // (Closing the store freed its write-ahead log, so a few more events may have fit before it.)
    assert!(relay.head() as u64 >= relayed && (relay.head() as u64) < pushed);
    std::fs::remove_file(&filler).unwrap();
    relay.wait_until(WAIT, "resumed and caught up", || relay.head() == pushed as i64);
    assert_eq!(relay.get("/xrpc/_health").0, 200);
    assert_eq!(relay.metric("relay_disk_paused", ""), 0);
    assert_eq!(relay.metric("relay_events_dropped_total", ""), 0);
    relay.stop();
}

/// (free blocks, block size) of the filesystem holding `path`.
fn nix_statvfs(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is NUL-terminated; statvfs fills `st` when it returns 0.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0);
    // SAFETY: statvfs returned 0.
    let st = unsafe { st.assume_init() };
    (st.f_bavail, st.f_frsize)
}
