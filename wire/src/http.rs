//! HTTP/1.1 request heads (parsed with httparse) and the websocket upgrade handshake (RFC 6455 §4.2),
//! for the relay's API listener. Pure functions over bytes, fuzzed like the other decoders.

/// Largest request head accepted, in bytes: 512 KiB, room for a Jetstream `/subscribe` URL with
/// its 10,000 `wantedDids` (about 45 bytes each for `did:plc`), as Go's servers allow (1 MiB). The
/// head must arrive within the listener's head timeout.
pub const MAX_HEAD_BYTES: usize = 512 * 1024;
/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 64;

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x (the parser's reason).
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// Over [`MAX_HEAD_BYTES`] without being complete.
    #[error("request head too large")]
    TooLarge,
    /// A `Content-Length` that is not a number.
    #[error("bad Content-Length")]
    BadContentLength,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
    /// The query parameters in order, decoded once as `application/x-www-form-urlencoded`
    /// (percent-escapes in either case, `+` as a space, invalid UTF-8 replaced), which is how
    /// `URLSearchParams`, Go's `url.Values` and Python's `urlencode` write them.
    pub params: Vec<(String, String)>,
    /// Headers, names lowercased, values lossily UTF-8.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name` (decoded), if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of query parameter `name` (decoded), in order: for array parameters such as
    /// `wantedCollections=a&wantedCollections=b`.
    pub fn param_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The `Content-Length`, if given.
    ///
    /// # Errors
    /// [`HeadError::BadContentLength`] when it is not a non-negative integer.
    pub fn content_length(&self) -> Result<Option<usize>, HeadError> {
        match self.header("content-length") {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| HeadError::BadContentLength),
        }
    }

    /// For a websocket upgrade request, the `Sec-WebSocket-Accept` value to answer with.
    ///
    /// # Errors
    /// A reason when it is not a valid upgrade: `Upgrade: websocket`, `Connection: upgrade`,
    /// `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` are required.
    pub fn websocket_accept(&self) -> Result<String, &'static str> {
        let upgrade = self.header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        let connection =
            self.header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
        if !upgrade || !connection {
            return Err("a websocket upgrade is required");
        }
        if self.header("sec-websocket-version").map(str::trim) != Some("13") {
            return Err("Sec-WebSocket-Version must be 13");
        }
        match self.header("sec-websocket-key").map(str::trim) {
            Some(key) if !key.is_empty() => Ok(crate::ws::accept_key(key)),
            _ => Err("missing Sec-WebSocket-Key"),
        }
    }
}

/// Parses a request head from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// head and its length in bytes (the body, if any, follows).
///
/// # Errors
/// [`HeadError::Malformed`] or [`HeadError::TooLarge`].
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (target.to_owned(), None),
            };
            let params = query
                .as_deref()
                .map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
                .unwrap_or_default();
            let head = RequestHead {
                method: req.method.unwrap_or("GET").to_owned(),
                path,
                query,
                params,
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests() {
        let raw = b"GET /xrpc/com.atproto.sync.subscribeRepos?cursor=5 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nrest";
        let (head, len) = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(&raw[len..], b"rest");
        assert_eq!((head.path.as_str(), head.param("cursor")), ("/xrpc/com.atproto.sync.subscribeRepos", Some("5")));
        assert_eq!(head.websocket_accept().unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(parse_request_head(&raw[..20]), Ok(None));
        let plain = parse_request_head(b"GET / HTTP/1.1\r\n\r\n").unwrap().unwrap().0;
        assert!(plain.websocket_accept().is_err());
        assert!(matches!(parse_request_head(b"\x00\x01 nonsense\r\n\r\n"), Err(HeadError::Malformed(_))));
        let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(parse_request_head(&long), Err(HeadError::TooLarge));
    }

    #[test]
    fn query_parameters_are_decoded_once() {
        let raw =
            b"GET /x?cursor=did%3Aplc%3Aabc&did=did%3aweb%3Aexample.com%253A8080&q=a+b&w=1&w=2&flag HTTP/1.1\r\n\r\n";
        let head = parse_request_head(raw).unwrap().unwrap().0;
        assert_eq!(head.param("cursor"), Some("did:plc:abc"));
        assert_eq!(head.param("did"), Some("did:web:example.com%3A8080"), "decoded once, not twice");
        assert_eq!(head.param("q"), Some("a b"));
        assert_eq!(head.param_values("w").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(head.param("flag"), Some(""));
        assert_eq!(head.param("missing"), None);
        let bad = parse_request_head(b"GET /x?c=%ff%zz HTTP/1.1\r\n\r\n").unwrap().unwrap().0;
        assert_eq!(bad.param("c"), Some("\u{fffd}%zz"));
    }
}
