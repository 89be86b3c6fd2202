//! The lean subscriber fleet: a few threads (`--fleet-threads`), each driving many websocket
//! connections with one `mio` poll (epoll), large reads, and only what a subscriber must look at per
//! frame: the websocket header (server frames are unmasked, so payloads are used in place) and the
//! event's `seq`, `rev`/`time` and `repo` ([`crate::scan`]). No general-purpose websocket stack, no
//! async runtime, no allocation per frame. Each connection keeps the same [`SubStats`] as the
//! tokio-tungstenite subscribers ([`crate::subscriber`]), so results read the same.
//!
//! What it costs per delivered frame is measured by `relay-bench direct` (no relay: the fleet reads
//! the simulated hosts) and reported as `fleet_cpu_us_per_frame`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::subscriber::SubStats;

/// One subscriber connection: `url` is `ws://host:port/path?query`.
pub struct Conn {
    /// Where.
    pub url: String,
    /// Its subscriber's stats (several connections may share them: direct mode).
    pub stats: Arc<SubStats>,
}

struct Live {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` in use.
    len: usize,
    stats: Arc<SubStats>,
    last: Option<i64>,
}

fn handshake(url: &str) -> std::io::Result<std::net::TcpStream> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| std::io::Error::other("ws:// URLs only"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr = authority.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    // Read the response head byte by byte: nothing after it may be consumed here.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 || head.len() > 8192 {
            return Err(std::io::Error::other("handshake: connection closed"));
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(format!("handshake: {}", String::from_utf8_lossy(&head))));
    }
    Ok(s)
}

/// One websocket frame at the front of `buf`: (opcode, payload range, total length), or `None` if
/// incomplete.
fn frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    let (len, mut pos) = match b1 & 0x7f {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    if b1 & 0x80 != 0 {
        pos += 4; // masked (servers do not mask; tolerated)
    }
    let end = pos + usize::try_from(len).ok()?;
    (buf.len() >= end).then_some((b0 & 0x0f, pos..end, end))
}

fn end(c: &Live, error: Option<String>) {
    if let Some(e) = error
        && let Ok(mut err) = c.stats.error.lock()
    {
        err.get_or_insert(e);
    }
    c.stats.ended.store(true, Ordering::Release);
}

/// Reads what is ready on `c`; `false` when the connection is over.
fn read_ready(c: &mut Live, sent: &crate::host::HostStats) -> bool {
    loop {
        if c.len == c.buf.len() {
            let grow = c.buf.len();
            c.buf.resize(grow * 2, 0);
        }
        match c.stream.read(&mut c.buf[c.len..]) {
            Ok(0) => {
                end(c, Some("closed".into()));
                return false;
            }
            Ok(n) => c.len += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                end(c, Some(e.to_string()));
                return false;
            }
        }
        let mut at = 0;
        while let Some((op, range, used)) = frame(&c.buf[at..c.len]) {
            let payload = (at + range.start)..(at + range.end);
            at += used;
            match op {
                0x2 => {
                    let result =
                        crate::subscriber::record_frame(&mut c.last, &c.stats, &c.buf[payload], sent).map(|_| ());
                    if let Err(e) = result {
                        end(c, Some(e));
                        return false;
                    }
                }
                0x8 => {
                    end(c, Some("closed".into()));
                    return false;
                }
                _ => {}
            }
        }
        c.buf.copy_within(at..c.len, 0);
        c.len -= at;
    }
}

/// Runs `conns` on `threads` threads until `stop`. Connections that cannot be made are recorded as
/// ended with the error.
pub fn run(conns: Vec<Conn>, threads: usize, stop: Arc<AtomicBool>, sent: Arc<crate::host::HostStats>) {
    let threads = threads.max(1);
    let mut shares: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        if let Some(s) = shares.get_mut(i % threads) {
            s.push(c);
        }
    }
    for (t, share) in shares.into_iter().enumerate() {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        let _ = std::thread::Builder::new().name(format!("fleet-{t}")).spawn(move || poll_loop(share, &stop, &sent));
    }
}

fn poll_loop(share: Vec<Conn>, stop: &AtomicBool, sent: &crate::host::HostStats) {
    let Ok(mut poll) = Poll::new() else { return };
    let mut live: HashMap<Token, Live> = HashMap::new();
    for (i, c) in share.into_iter().enumerate() {
        match handshake(&c.url).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(TcpStream::from_std(s))
        }) {
            Ok(mut stream) => {
                let token = Token(i);
                if poll.registry().register(&mut stream, token, Interest::READABLE).is_ok() {
                    live.insert(token, Live { stream, buf: vec![0; 256 * 1024], len: 0, stats: c.stats, last: None });
                }
            }
            Err(e) => {
                if let Ok(mut err) = c.stats.error.lock() {
                    err.get_or_insert(format!("connect {}: {e}", c.url));
                }
                c.stats.ended.store(true, Ordering::Release);
            }
        }
    }
    let mut events = Events::with_capacity(1024);
    while !stop.load(Ordering::Acquire) && !live.is_empty() {
        if poll.poll(&mut events, Some(Duration::from_millis(100))).is_err() {
            continue;
        }
        for ev in &events {
            let token = ev.token();
            let keep = live.get_mut(&token).is_some_and(|c| read_ready(c, sent));
            if !keep && let Some(mut c) = live.remove(&token) {
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn frames_are_cut_at_their_length() {
        let mut f = wire::ws::encode_frame(wire::ws::Opcode::Binary, &[7u8; 300]);
        f.extend(wire::ws::encode_frame(wire::ws::Opcode::Close, &[]));
        let (op, range, used) = frame(&f).unwrap();
        assert_eq!((op, range, used), (2, 4..304, 304));
        assert_eq!(frame(&f[used..]).map(|x| x.0), Some(8));
        assert!(frame(&f[..100]).is_none());
    }
}
