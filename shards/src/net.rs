//! Outbound connections: DNS off the executor, TCP connect over glommio, and a small HTTP/1.1 `GET`
//! client for identity resolution.
//!
//! Why not hyper: it needs an executor and I/O adapter layer for glommio, and the relay's only HTTP
//! client use is a `GET` of a DID document (a JSON body with `Content-Length` or chunked encoding).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

/// Largest HTTP response head accepted, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// An outbound connection or HTTP error.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// DNS gave no address, or failed.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The name looked up.
        host: String,
        /// Why.
        reason: String,
    },
    /// Every resolved address refused or timed out.
    #[error("cannot connect to {host}: {source}")]
    Connect {
        /// The host.
        host: String,
        /// The last error.
        source: std::io::Error,
    },
    /// A socket error after connecting.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The URL is not `http://host[:port]/path`.
    #[error("unsupported URL {0} (only http:// is supported)")]
    Url(String),
    /// The response is not valid HTTP/1.1 or too large.
    #[error("bad HTTP response: {0}")]
    Http(String),
    /// The operation took longer than its deadline.
    #[error("timed out")]
    Timeout,
}

/// Resolves `host:port` on glommio's blocking thread pool, so `getaddrinfo` never blocks an executor.
///
/// # Errors
/// [`NetError::Resolve`] when no address is found.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, NetError> {
    let name = host.to_owned();
    let addrs = glommio::executor()
        .spawn_blocking(move || {
            (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>)
        })
        .await
        .map_err(|e| NetError::Resolve {
            host: host.to_owned(),
            reason: e.to_string(),
        })?;
    if addrs.is_empty() {
        return Err(NetError::Resolve {
            host: host.to_owned(),
            reason: "no addresses".into(),
        });
    }
    Ok(addrs)
}

/// Resolves and connects, trying each address in turn with `timeout` per attempt.
///
/// # Errors
/// [`NetError::Resolve`] or [`NetError::Connect`] (with the last address's error).
pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, NetError> {
    let mut last = std::io::Error::other("no address tried");
    for addr in resolve(host, port).await? {
        match TcpStream::connect_timeout(addr, timeout).await {
            Ok(s) => {
                // Frames are small and latency matters more than packet count.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = std::io::Error::other(e.to_string()),
        }
    }
    Err(NetError::Connect {
        host: host.to_owned(),
        source: last,
    })
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address.
    pub host: String,
    /// Port, 80 when absent.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]`.
    ///
    /// # Errors
    /// [`NetError::Url`] for any other scheme or a bad port.
    pub fn parse(url: &str) -> Result<Self, NetError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| NetError::Url(url.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| NetError::Url(url.to_owned()))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(NetError::Url(url.to_owned()));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// Performs `GET url` and returns the status and body (at most `max_body` bytes), all within
/// `timeout`.
///
/// # Errors
/// [`NetError`] for connection, protocol, size or deadline failures.
pub async fn http_get(
    url: &HttpUrl,
    max_body: usize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), NetError> {
    let fut = async {
        let mut stream = connect(&url.host, url.port, timeout).await?;
        let host_header = if url.port == 80 {
            url.host.clone()
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\nUser-Agent: relay/{}\r\nConnection: close\r\n\r\n",
            url.path,
            env!("CARGO_PKG_VERSION")
        );
        stream.write_all(req.as_bytes()).await?;
        read_response(&mut stream, max_body).await
    };
    with_timeout(timeout, fut)
        .await
        .unwrap_or(Err(NetError::Timeout))
}

/// Runs `fut` for at most `dur`; `None` when the deadline passed first.
pub async fn with_timeout<T>(
    dur: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(dur).await;
        None
    })
    .await
}

async fn read_response(
    stream: &mut TcpStream,
    max_body: usize,
) -> Result<(u16, Vec<u8>), NetError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 8192];
    let (status, head_len, content_length, chunked) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(NetError::Http(
                "connection closed before the response head".into(),
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp
            .parse(&buf)
            .map_err(|e| NetError::Http(e.to_string()))?
        {
            httparse::Status::Complete(len) => {
                let status = resp.code.unwrap_or(0);
                let mut cl = None;
                let mut chunked = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        cl = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = String::from_utf8_lossy(h.value)
                            .to_ascii_lowercase()
                            .contains("chunked");
                    }
                }
                break (status, len, cl, chunked);
            }
            httparse::Status::Partial if buf.len() > MAX_HEAD_BYTES => {
                return Err(NetError::Http("response head too large".into()));
            }
            httparse::Status::Partial => {}
        }
    };
    let mut body = buf.split_off(head_len);
    // Read until the framing says the body is complete, or EOF for close-delimited bodies.
    loop {
        if let Some(cl) = content_length {
            if cl > max_body {
                return Err(NetError::Http(format!(
                    "body of {cl} bytes exceeds {max_body}"
                )));
            }
            if body.len() >= cl {
                body.truncate(cl);
                return Ok((status, body));
            }
        } else if chunked && let Some(decoded) = decode_chunked(&body)? {
            return Ok((status, decoded));
        }
        if body.len() > max_body + 64 * 1024 {
            return Err(NetError::Http(format!("body exceeds {max_body} bytes")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            if content_length.is_none() && !chunked {
                return Ok((status, body));
            }
            return Err(NetError::Http("connection closed inside the body".into()));
        }
        body.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// Decodes a complete chunked body; `Ok(None)` when more bytes are needed.
fn decode_chunked(buf: &[u8]) -> Result<Option<Vec<u8>>, NetError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = buf
            .get(pos..)
            .and_then(|b| b.windows(2).position(|w| w == b"\r\n"))
        else {
            return Ok(None);
        };
        let line = std::str::from_utf8(buf.get(pos..pos + line_end).unwrap_or_default())
            .map_err(|_| NetError::Http("bad chunk size".into()))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| NetError::Http("bad chunk size".into()))?;
        pos += line_end + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        let Some(data) = buf.get(pos..pos + size) else {
            return Ok(None);
        };
        out.extend_from_slice(data);
        pos += size + 2;
        if pos > buf.len() {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://localhost:2582/did:plc:abc").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("localhost", 2582, "/did:plc:abc")
        );
        assert_eq!(HttpUrl::parse("http://plc.example").unwrap().path, "/");
        assert!(HttpUrl::parse("https://plc.directory").is_err());
        assert!(HttpUrl::parse("http://:80/").is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            decode_chunked(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n")
                .unwrap()
                .unwrap(),
            b"Wikipedia"
        );
        assert_eq!(decode_chunked(b"4\r\nWi").unwrap(), None);
        assert!(decode_chunked(b"zz\r\n").is_err());
    }
}
