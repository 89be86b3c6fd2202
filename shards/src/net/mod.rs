//! Outbound connections: DNS off the executors ([`dns`]), TCP connect over glommio, TLS with rustls
//! (futures-rustls over glommio streams; webpki roots plus an optional extra CA), and a small
//! HTTP/1.1 `GET` client for identity resolution and `getRepoStatus`.
//!
//! Why not hyper: it needs an executor and I/O adapter layer for glommio, and the relay's only HTTP
//! client use is a `GET` of a small JSON document (`Content-Length`, chunked or close-delimited).

pub mod dns;

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

/// Largest HTTP response head accepted, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// An outbound connection or HTTP error.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// DNS gave no address, or failed.
    #[error("cannot resolve {host}: {error}")]
    Resolve {
        /// The name looked up.
        host: String,
        /// Why: the name does not exist, or the resolver could not answer.
        error: dns::DnsError,
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
    /// The URL is not `http(s)://host[:port]/path`.
    #[error("unsupported URL {0}")]
    Url(String),
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The response is not valid HTTP/1.1 or too large.
    #[error("bad HTTP response: {0}")]
    Http(String),
    /// The operation took longer than its deadline.
    #[error("timed out")]
    Timeout,
    /// The name resolves to an address that is not public (SSRF guard, [`crate::hosts::is_public_ip`]).
    #[error("{host} resolves to {addr}, which is not a public address")]
    NotPublic {
        /// The host.
        host: String,
        /// The address refused.
        addr: std::net::IpAddr,
    },
}

/// `User-Agent` of every outbound request and upstream subscription; the `(atproto-relay)` comment
/// tells hosts (and other relays' loop guards) that this is a relay.
pub const USER_AGENT: &str = concat!("relay/", env!("CARGO_PKG_VERSION"), " (atproto-relay)");

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port, 80 (http) or 443 (https) when absent.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http(s)://host[:port][/path]`.
    ///
    /// # Errors
    /// [`NetError::Url`] for any other scheme or a bad port.
    pub fn parse(url: &str) -> Result<Self, NetError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(NetError::Url(url.to_owned()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| NetError::Url(url.to_owned()))?),
            None => (authority, default_port),
        };
        if host.is_empty() {
            return Err(NetError::Url(url.to_owned()));
        }
        Ok(Self { tls, host: host.to_owned(), port, path: path.to_owned() })
    }

    fn host_header(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Outbound HTTP and TLS settings and the resolver, shared by every shard (cheap to clone).
#[derive(Clone)]
pub struct HttpClient {
    tls: Arc<rustls::ClientConfig>,
    dns: dns::Dns,
    /// What this client's names are looked up for ([`HttpClient::for_purpose`]).
    purpose: dns::Purpose,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client trusting the webpki (Mozilla) roots plus the certificates in `extra_ca_pem`, if any,
    /// resolving names with `dns`.
    ///
    /// # Errors
    /// [`NetError::Tls`] when the PEM holds no certificate or one rustls rejects.
    pub fn new(extra_ca_pem: Option<&[u8]>, dns: dns::Dns) -> Result<Self, NetError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| NetError::Tls(format!("extra CA: {e}")))?;
                roots.add(cert).map_err(|e| NetError::Tls(format!("extra CA: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(NetError::Tls("extra CA file holds no certificate".into()));
            }
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| NetError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self { tls: Arc::new(config), dns, purpose: dns::Purpose::Host })
    }

    /// The same client, its names looked up with `purpose`'s DNS slots (default: hosts).
    pub fn for_purpose(&self, purpose: dns::Purpose) -> Self {
        Self { purpose, ..self.clone() }
    }

    /// Resolves `host:port` (see [`dns::Dns::lookup`]).
    ///
    /// # Errors
    /// [`NetError::Resolve`].
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, NetError> {
        self.dns
            .lookup(host, port, self.purpose)
            .await
            .map_err(|error| NetError::Resolve { host: host.to_owned(), error })
    }

    /// Resolves and connects, trying each address in turn with `timeout` per attempt. With
    /// `public_only` (the SSRF guard), a name with any non-public address
    /// ([`crate::hosts::is_public_ip`]) is refused before any connection: a name cannot point the
    /// relay at its own network.
    ///
    /// # Errors
    /// [`NetError::NotPublic`], [`NetError::Resolve`] or [`NetError::Connect`] (with the last
    /// address's error).
    pub async fn connect_tcp(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
        public_only: bool,
    ) -> Result<TcpStream, NetError> {
        let addrs = self.resolve(host, port).await?;
        if public_only && let Some(bad) = addrs.iter().find(|a| !crate::hosts::is_public_ip(a.ip())) {
            return Err(NetError::NotPublic { host: host.to_owned(), addr: bad.ip() });
        }
        let mut last = std::io::Error::other("no address tried");
        for addr in addrs {
            match TcpStream::connect_timeout(addr, timeout).await {
                Ok(s) => {
                    // Frames are small and latency matters more than packet count.
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = std::io::Error::other(e.to_string()),
            }
        }
        Err(NetError::Connect { host: host.to_owned(), source: last })
    }

    /// Connects to `host:port` and runs a TLS handshake for `host`.
    ///
    /// # Errors
    /// [`NetError`] for DNS, TCP or TLS failures.
    pub async fn connect_tls(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<futures_rustls::client::TlsStream<TcpStream>, NetError> {
        self.connect_tls_with(host, port, timeout, false).await
    }

    /// [`HttpClient::connect_tls`] with the SSRF guard of [`HttpClient::connect_tcp`] when
    /// `public_only`.
    ///
    /// # Errors
    /// [`NetError`] for DNS, address, TCP or TLS failures.
    pub async fn connect_tls_with(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
        public_only: bool,
    ) -> Result<futures_rustls::client::TlsStream<TcpStream>, NetError> {
        let tcp = self.connect_tcp(host, port, timeout, public_only).await?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| NetError::Tls(e.to_string()))?;
        futures_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| NetError::Tls(e.to_string()))
    }

    /// Performs `GET url` and returns the status and body (at most `max_body` bytes), all within
    /// `timeout`.
    ///
    /// # Errors
    /// [`NetError`] for connection, TLS, protocol, size or deadline failures.
    pub async fn get(&self, url: &HttpUrl, max_body: usize, timeout: Duration) -> Result<(u16, Vec<u8>), NetError> {
        self.get_with(url, max_body, timeout, false).await
    }

    /// [`HttpClient::get`] with the SSRF guard of [`HttpClient::connect_tcp`] when `public_only`.
    ///
    /// # Errors
    /// [`NetError`] for address, connection, TLS, protocol, size or deadline failures.
    pub async fn get_with(
        &self,
        url: &HttpUrl,
        max_body: usize,
        timeout: Duration,
        public_only: bool,
    ) -> Result<(u16, Vec<u8>), NetError> {
        let fut = async {
            if url.tls {
                let mut stream = self.connect_tls_with(&url.host, url.port, timeout, public_only).await?;
                request(&mut stream, url, max_body).await
            } else {
                let mut stream = self.connect_tcp(&url.host, url.port, timeout, public_only).await?;
                request(&mut stream, url, max_body).await
            }
        };
        with_timeout(timeout, fut).await.unwrap_or(Err(NetError::Timeout))
    }
}

impl HttpClient {
    /// Sends `method url` with `headers` (name, value; `Host`, `User-Agent`, `Content-Length` and
    /// `Connection` are the client's own) and `body`, and returns the response (a body of at most
    /// `max_body` bytes), all within `timeout`. Redirects are returned, not followed. For a
    /// splitter passing requests on to its upstream (operator-configured: no SSRF guard).
    ///
    /// # Errors
    /// [`NetError`] for connection, TLS, protocol, size or deadline failures.
    pub async fn forward(
        &self,
        method: &str,
        url: &HttpUrl,
        headers: &[(String, String)],
        body: &[u8],
        max_body: usize,
        timeout: Duration,
    ) -> Result<Response, NetError> {
        let mut req = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n",
            url.path,
            url.host_header()
        );
        for (name, value) in headers {
            let n = name.to_ascii_lowercase();
            if ["host", "user-agent", "content-length", "connection", "transfer-encoding"].contains(&n.as_str())
                || value.contains(['\r', '\n'])
            {
                continue;
            }
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let fut = async {
            let mut out = req.into_bytes();
            out.extend_from_slice(body);
            if url.tls {
                let mut stream = self.connect_tls_with(&url.host, url.port, timeout, false).await?;
                stream.write_all(&out).await?;
                stream.flush().await?;
                read_response_headers(&mut stream, max_body).await
            } else {
                let mut stream = self.connect_tcp(&url.host, url.port, timeout, false).await?;
                stream.write_all(&out).await?;
                stream.flush().await?;
                read_response_headers(&mut stream, max_body).await
            }
        };
        with_timeout(timeout, fut).await.unwrap_or(Err(NetError::Timeout))
    }
}

/// A connection to a host: plain TCP or TLS over TCP.
pub enum MaybeTls {
    /// `ws://`, `http://`.
    Plain(TcpStream),
    /// `wss://`, `https://`.
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_close(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    url: &HttpUrl,
    max_body: usize,
) -> Result<(u16, Vec<u8>), NetError> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header(),
    );
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    read_response(stream, max_body).await
}

/// Runs `fut` for at most `dur`; `None` when the deadline passed first.
pub fn with_timeout<F: Future>(dur: Duration, fut: F) -> impl Future<Output = Option<F::Output>> {
    with_optional_timeout(Some(dur), || fut)
}

/// [`with_timeout`] when `dur` is `Some`, else the future to its end (always `Some`). The future is
/// made by `make` inside the race, so it is laid out once, in place: a caller that needs a deadline
/// only sometimes does not hold two copies of a large future (awaiting it with and without a
/// timeout), nor a moved-in copy beside the running one. Not an `async fn` for the same reason.
pub fn with_optional_timeout<F: Future>(
    dur: Option<Duration>,
    make: impl FnOnce() -> F,
) -> impl Future<Output = Option<F::Output>> {
    futures_lite::future::or(async move { Some(make().await) }, async move {
        match dur {
            Some(dur) => glommio::timer::sleep(dur).await,
            None => std::future::pending().await,
        }
        None
    })
}

async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, max_body: usize) -> Result<(u16, Vec<u8>), NetError> {
    read_response_headers(stream, max_body).await.map(|r| (r.status, r.body))
}

/// An HTTP response: status, the headers a proxy passes on, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Content-Type`, `Location`, `Cache-Control`, `Retry-After` and the `RateLimit-*` headers,
    /// as received (name lowercase).
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// Response headers a proxy passes on to its client.
const PASSED_HEADERS: [&str; 4] = ["content-type", "location", "cache-control", "retry-after"];

async fn read_response_headers<S: AsyncRead + Unpin>(stream: &mut S, max_body: usize) -> Result<Response, NetError> {
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 8192];
    let (status, head_len, content_length, chunked) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(NetError::Http("connection closed before the response head".into()));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf).map_err(|e| NetError::Http(e.to_string()))? {
            httparse::Status::Complete(len) => {
                let status = resp.code.unwrap_or(0);
                let mut cl = None;
                let mut chunked = false;
                for h in resp.headers.iter() {
                    let name = h.name.to_ascii_lowercase();
                    if PASSED_HEADERS.contains(&name.as_str()) || name.starts_with("ratelimit-") {
                        kept.push((name, String::from_utf8_lossy(h.value).into_owned()));
                    }
                    if h.name.eq_ignore_ascii_case("content-length") {
                        cl = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = String::from_utf8_lossy(h.value).to_ascii_lowercase().contains("chunked");
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
                return Err(NetError::Http(format!("body of {cl} bytes exceeds {max_body}")));
            }
            if body.len() >= cl {
                body.truncate(cl);
                return Ok(Response { status, headers: kept, body });
            }
        } else if chunked && let Some(decoded) = decode_chunked(&body)? {
            return Ok(Response { status, headers: kept, body: decoded });
        }
        if body.len() > max_body + 64 * 1024 {
            return Err(NetError::Http(format!("body exceeds {max_body} bytes")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            if content_length.is_none() && !chunked {
                return Ok(Response { status, headers: kept, body });
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
        let Some(line_end) = buf.get(pos..).and_then(|b| b.windows(2).position(|w| w == b"\r\n")) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(buf.get(pos..pos + line_end).unwrap_or_default())
            .map_err(|_| NetError::Http("bad chunk size".into()))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| NetError::Http("bad chunk size".into()))?;
        pos += line_end + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        let end = pos.checked_add(size).ok_or_else(|| NetError::Http("chunk size overflows".into()))?;
        let Some(data) = buf.get(pos..end) else { return Ok(None) };
        out.extend_from_slice(data);
        pos = end + 2;
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
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("localhost", 2582, "/did:plc:abc"));
        assert_eq!(HttpUrl::parse("http://plc.example").unwrap().path, "/");
        let u = HttpUrl::parse("https://plc.directory").unwrap();
        assert_eq!((u.tls, u.port, u.host_header().as_str()), (true, 443, "plc.directory"));
        assert!(HttpUrl::parse("ftp://x").is_err());
        assert!(HttpUrl::parse("http://:80/").is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(decode_chunked(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap().unwrap(), b"Wikipedia");
        assert_eq!(decode_chunked(b"4\r\nWi").unwrap(), None);
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"ffffffffffffffff\r\nab").is_err());
    }
}
