//! Event-stream frames: decoding never panics, and decode → encode → decode gives the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::frame::{Frame, decode_frame};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode_frame(data) else { return };
    let encoded = match &frame {
        Frame::Message(e) => e.encode(),
        Frame::Error(e) => e.encode(),
    };
    let encoded = encoded.expect("a decoded frame encodes");
    assert_eq!(decode_frame(&encoded).expect("an encoded frame decodes"), frame);
});
