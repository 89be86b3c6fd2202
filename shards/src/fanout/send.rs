//! Vectored sends of shared frames: a live subscriber's frames are `Bytes` shared by every
//! subscriber of the shard; gathering them into one buffer per subscriber (the old way) cost a
//! memcpy of every delivered byte (9.5% of the relay's CPU with 300 subscribers × 1,000 events/s,
//! bench/README.md). Here one `sendmsg` (non-blocking, up to 1,024 frames) hands the kernel the
//! frames in place; only what the socket does not take at once is copied, once, and written by the
//! executor's asynchronous path, which waits for room (and times out a stalled subscriber).

use std::os::fd::RawFd;

use bytes::Bytes;
use futures_lite::io::WriteHalf;
use glommio::net::TcpStream;

use super::queue::Queue;
use super::subscriber::{End, write};
use crate::metrics::Metrics;

/// `IOV_MAX` on Linux.
const MAX_IOVECS: usize = 1024;

/// Sends what the socket takes now of `parts`, in order, without blocking: `sendmsg` with
/// `MSG_DONTWAIT | MSG_NOSIGNAL` per group of up to 1,024 parts. Returns the bytes sent (0 when the
/// socket has no room).
///
/// # Errors
/// The socket's error (not `WouldBlock`, which is `Ok` with what was sent).
fn send_now(fd: RawFd, parts: &[Bytes]) -> std::io::Result<usize> {
    let mut sent = 0;
    for group in parts.chunks(MAX_IOVECS) {
        let iov: Vec<libc::iovec> =
            group.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() }).collect();
        let want: usize = group.iter().map(Bytes::len).sum();
        // SAFETY: a zeroed msghdr is valid (no name, no control data); iov points at `iov`, whose
        // entries point into `group`'s buffers, all alive and unmodified for the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = iov.len();
            libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(sent),
                std::io::ErrorKind::Interrupted => Ok(sent),
                _ => Err(e),
            };
        }
        let n = n as usize;
        sent += n;
        if n < want {
            return Ok(sent);
        }
    }
    Ok(sent)
}

/// Writes `parts` in order: what the socket takes at once straight from the shared buffers, the rest
/// copied once and written asynchronously (see [`write`]: a write that makes no progress for the
/// stall timeout ends the subscriber).
pub(super) async fn write_parts<S>(
    wr: &mut WriteHalf<TcpStream>,
    fd: RawFd,
    parts: &[Bytes],
    queue: &Queue<S>,
    metrics: &Metrics,
) -> Result<(), End> {
    let total: usize = parts.iter().map(Bytes::len).sum();
    if total == 0 {
        return Ok(());
    }
    let sent = match send_now(fd, parts) {
        Ok(n) => n,
        Err(_) if queue.is_closed() => return Err(End::ClientClosed),
        Err(_) => return Err(End::WriteError),
    };
    metrics.subscriber_bytes.inc_by(sent as u64);
    if sent == total {
        return Ok(());
    }
    let mut rest = Vec::with_capacity(total - sent);
    let mut skip = sent;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        rest.extend_from_slice(p.get(skip..).unwrap_or_default());
        skip = 0;
    }
    write(wr, &rest, queue, metrics).await
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use super::*;

    /// 16 MiB in 4,096 shared parts to a client that starts reading only after 300 ms: the first
    /// `sendmsg` fills the socket buffers and stops part-way through a part; the rest goes through
    /// the copying path. The client receives every byte, in order.
    #[test]
    fn a_full_socket_gets_the_rest_in_order() {
        let parts: Vec<Bytes> = (0..4096u32)
            .map(|i| Bytes::from((0..4096u32).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect::<Vec<u8>>()))
            .collect();
        let expected: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let reader = std::thread::spawn(move || {
            let mut stream = loop {
                match std::net::TcpStream::connect(addr) {
                    Ok(s) => break s,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            };
            std::thread::sleep(std::time::Duration::from_millis(300));
            let mut got = Vec::new();
            stream.read_to_end(&mut got).unwrap();
            got
        });
        let sent_at_once = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let listener = glommio::net::TcpListener::bind(addr).unwrap();
                let stream = listener.accept().await.unwrap();
                let fd = stream.as_raw_fd();
                let first = send_now(fd, &parts[..1]).unwrap();
                let (_rd, mut wr) = futures_lite::io::split(stream);
                let queue: Queue = Queue::new(4);
                let metrics = Metrics::default();
                write_parts(&mut wr, fd, &parts[1..], &queue, &metrics).await.map_err(|_| ()).unwrap();
                futures_lite::AsyncWriteExt::close(&mut wr).await.unwrap();
                (first, metrics.subscriber_bytes.get())
            })
            .unwrap()
            .join()
            .unwrap();
        let got = reader.join().unwrap();
        assert_eq!(sent_at_once.0, 4096);
        assert_eq!(sent_at_once.1 as usize, expected.len() - 4096);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes out of order");
    }
}
