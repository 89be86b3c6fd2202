//! What an operator relies on: configuration by environment, a clean SIGTERM shutdown (the batch in
//! flight finished, subscribers closed with a close frame, exit 0 within seconds), and `relay
//! doctor`. (Metrics through promtool, the dashboard and the admin page in Chromium:
//! `scripts/operator-checks.sh`.)

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Account, FakeHost, FakePlc, Relay, Seen, read_until_idle, subscribe};

const WAIT: Duration = Duration::from_secs(20);

/// Every `serve` flag can come from `RELAY_<FLAG>`: here the listen address, the subscriber limit,
/// the retention and a host list, with no flag on the command line but the binary's subcommand.
#[test]
fn serve_is_configured_by_environment_variables() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("serve")
        .env("RELAY_PLC_URL", &plc.url)
        .env("RELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RELAY_DATA_DIR", dir.path().join("data"))
        .env("RELAY_HOSTS", format!("{},localhost:1", host.hostname()))
        .env("RELAY_MAX_SUBSCRIBERS", "1")
        .env("RELAY_RETENTION", "90m")
        .env("RELAY_FSYNC", "never")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while support::http_get(port, "/xrpc/_health").map_or(0, |r| r.0) != 200 {
        assert!(started.elapsed() < WAIT, "the relay did not come up on RELAY_LISTEN");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, hosts) = support::http_get(port, "/xrpc/com.atproto.sync.listHosts").unwrap();
    let v: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    assert_eq!(v["hosts"].as_array().unwrap().len(), 2, "RELAY_HOSTS is a comma-separated list: {v}");
    let _first = subscribe(port, None);
    let second = tungstenite::connect(format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"));
    assert!(matches!(second, Err(tungstenite::Error::Http(r)) if r.status() == 503), "RELAY_MAX_SUBSCRIBERS=1");
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM while a host streams and a subscriber reads: the relay exits 0 within seconds, the
/// subscriber gets a close frame (1001, going away), and after a restart nothing is missing: the
/// stored seqs are exactly 1..n and every event the host offered is relayed once.
#[test]
fn sigterm_finishes_the_batch_and_closes_subscribers() {
    let plc = FakePlc::start();
    let host = FakeHost::start();
    let mut alice = Account::new("did:plc:shutdown00000000000000000", 101);
    plc.put(&alice.did, alice.did_doc(&format!("http://{}", host.hostname())));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = Relay::start(&data, &host.hostname(), &plc.url, &["--fsync", "always"]);
    let push = host.pusher();
    let total = 600u64;
    let producer = std::thread::spawn(move || {
        let mut since = None;
        for seq in 1..=total {
            let (rev, f) = alice.commit(seq, since.take());
            since = Some(rev);
            push(seq, f);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut sub = subscribe(relay.port, None);
    relay.wait_until(WAIT, "events flowing", || relay.head() >= 100);
    let pid = relay.pid() as i32;
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut close = None;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = sub.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    loop {
        match sub.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                close = frame;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    relay.stop();
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let code = close.map(|c| u16::from(c.code));
    assert_eq!(code, Some(1001), "the subscriber got a going-away close frame");
    producer.join().unwrap();

    let relay = Relay::start(&data, &host.hostname(), &plc.url, &[]);
    relay.wait_until(WAIT, "every event relayed", || relay.head() == total as i64);
    let mut sub = subscribe(relay.port, Some("0"));
    let seqs: Vec<i64> = read_until_idle(&mut sub, Duration::from_millis(700)).iter().filter_map(Seen::seq).collect();
    assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>(), "nothing lost or repeated across the shutdown");
    eprintln!("SIGTERM to exit: {took:?}");
    relay.stop();
}

/// `relay doctor` runs every check and prints each with its verdict; on a machine that can run the
/// relay (CI) it exits 0, and a check that cannot pass makes it fail.
#[test]
fn doctor_checks_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_relay")).args(["doctor", "--data-dir"]).arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for check in ["io_uring", "locked memory", "file descriptors", "CPUs", "data directory", "clock"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(check) && (l.starts_with("OK") || l.starts_with("WARN") || l.starts_with("FAIL"))),
            "{check} missing:\n{stdout}"
        );
    }
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // More free space than any disk has: the data directory check fails, and so does the doctor.
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["doctor", "--min-free-disk", "1000PB", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("FAIL") && l.contains("data directory"))
    );
}
