//! Subscribers flooding the relay past its limits, and the process out of file descriptors: the
//! relay refuses, backs off and recovers.

use std::net::TcpStream;
use std::time::Duration;

use crate::WAIT;
use crate::support::{self, FakePlc, Relay, subscribe};

/// Subscribers and connections past `--max-subscribers` and `--max-connections-per-ip` are refused
/// with an XRPC error; the relay stays healthy and admits new ones once others leave.
#[test]
fn a_subscriber_flood_past_the_limits_is_refused() {
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--max-subscribers", "3", "--max-connections-per-ip", "6"];
    let relay = Relay::start_hosts(support::free_port(), &dir.path().join("data"), &[], &plc.url, &args);
    let subs: Vec<support::Ws> = (0..3).map(|_| subscribe(relay.port, None)).collect();
    let refused = tungstenite::connect(format!("ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos", relay.port));
    match refused {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("a fourth subscriber: {other:?}"),
    }
    // Three connections left for this address: hold them open, then the next is refused.
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", relay.port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let resp = support::http_get_raw(relay.port, "/xrpc/_health").unwrap();
    assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
    assert!(resp.contains("RateLimitExceeded"), "{resp}");
    drop(held);
    drop(subs);
    relay.wait_until(WAIT, "slots released", || relay.get("/xrpc/_health").0 == 200);
    relay.wait_until(WAIT, "a subscriber admitted again", || {
        tungstenite::connect(format!("ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos", relay.port)).is_ok()
    });
    relay.stop();
}

/// Out of file descriptors (`EMFILE`): the listener backs off instead of spinning, counts the
/// failures, and serves again once descriptors are free.
#[test]
fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let plc = FakePlc::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--max-connections-per-ip", "0", "--max-subscribers", "0"];
    let wrapper = ["prlimit", "--nofile=256:256", "--"];
    let relay = Relay::start_wrapped(&wrapper, support::free_port(), &dir.path().join("data"), &[], &plc.url, &args);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], relay.port).into();
    let flood: Vec<TcpStream> =
        (0..300).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()).collect();
    assert!(flood.len() > 200, "only {} connections", flood.len());
    std::thread::sleep(Duration::from_secs(3));
    drop(flood);
    relay.wait_until(WAIT, "serving again", || relay.get("/xrpc/_health").0 == 200);
    let failed = relay.metric("relay_accept_errors_total", "kind=\"out_of_fds\"");
    assert!(failed >= 1, "the descriptors ran out");
    // Backing off up to 1 s between attempts: a handful of failures, not one per 10 ms.
    assert!(failed <= 25, "{failed} failed accepts while out of descriptors");
    let log = std::fs::read_to_string(&relay.log).unwrap();
    let logged = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!((1..=3).contains(&logged), "{logged} log lines for the failed accepts");
    relay.stop();
}
