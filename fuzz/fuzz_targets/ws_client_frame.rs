//! Websocket frames from subscribers: parsing never panics, never claims more bytes than given, and a
//! parsed frame re-masked and re-framed parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ws::decode_client_frame;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((frame, used))) = decode_client_frame(data) else { return };
    assert!(used <= data.len());
    // Re-mask with a zero mask: the same frame.
    let mut again = vec![data[0], 0x80];
    let len = frame.payload.len();
    if len < 126 {
        again[1] |= len as u8;
    } else {
        again[1] |= 126;
        again.extend_from_slice(&(len as u16).to_be_bytes());
    }
    again.extend_from_slice(&[0, 0, 0, 0]);
    again.extend_from_slice(&frame.payload);
    let (reparsed, _) = decode_client_frame(&again).expect("valid").expect("complete");
    assert_eq!(reparsed, frame);
});
