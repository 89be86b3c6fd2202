//! Fault injection: the relay is killed with SIGKILL under load, its identity directory is
//! unreachable, its DNS is slow, a host sends garbage or resets its sequence, and subscribers flood
//! it past its limits. In each case it stays up (or comes back), relays what valid hosts send, and
//! loses nothing it served.

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod hostile_hosts;
mod limits;
mod outages;

use std::time::{Duration, Instant};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Reads until `n` event frames arrived or `limit` passed; returns how many arrived.
pub(crate) fn read_until_count(ws: &mut support::Ws, n: usize, limit: Duration) -> usize {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    }
    let start = Instant::now();
    let mut got = 0;
    while got < n && start.elapsed() < limit {
        if let Ok(tungstenite::Message::Binary(_)) = ws.read() {
            got += 1;
        }
    }
    got
}
