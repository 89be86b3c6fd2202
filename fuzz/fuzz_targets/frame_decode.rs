//! Event-stream frames: decoding never panics (nor does `peek_did`), decode → encode → decode gives
//! the same frame, and on the relay's own encoding `peek_did` (no decode) agrees with the decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::frame::{Frame, decode_frame, peek_did};

fuzz_target!(|data: &[u8]| {
    let _ = peek_did(data);
    let Ok(frame) = decode_frame(data) else { return };
    let encoded = match &frame {
        Frame::Message(e) => e.encode(),
        Frame::Error(e) => e.encode(),
    };
    let encoded = encoded.expect("a decoded frame encodes");
    assert_eq!(decode_frame(&encoded).expect("an encoded frame decodes"), frame);
    if let Frame::Message(e) = &frame {
        assert_eq!(peek_did(&encoded), e.did().map(|d| d.as_str()), "peek_did agrees with the decoder");
    }
});
