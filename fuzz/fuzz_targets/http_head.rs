//! HTTP request heads and the websocket upgrade: parsing never panics, never claims more bytes than
//! given, and every accessor works on what it returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::http::parse_request_head;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, len))) = parse_request_head(data) else { return };
    assert!(len <= data.len());
    let _ = head.content_length();
    let _ = (head.param("cursor"), head.param_values("did").count());
    assert!(head.params.len() <= data.len());
    if let Ok(accept) = head.websocket_accept() {
        assert_eq!(accept.len(), 28, "base64 of a sha-1");
    }
});
