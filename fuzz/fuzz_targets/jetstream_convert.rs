//! Jetstream conversion: any frame that decodes converts to Jetstream events without panicking, and
//! every event's v1 and v2 messages are JSON objects with the fields the clients read; any bytes
//! given as a record either convert to JSON or are refused with an error; any subscriber message
//! either applies to a filter or is refused, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::frame::{Frame, decode_frame};
use wire::jetstream::{Filter, apply_options_update, convert, record_json};

fuzz_target!(|data: &[u8]| {
    let _ = record_json(data);
    let mut filter = Filter::default();
    let _ = apply_options_update(&mut filter, data);
    let Ok(Frame::Message(event)) = decode_frame(data) else { return };
    for e in convert(&event, 1_700_000_000_000_000).events {
        if let Some(v1) = e.v1_json() {
            let v: serde_json::Value = serde_json::from_slice(&v1).expect("v1 is JSON");
            assert!(v["did"].is_string() && v["time_us"].is_u64() && v["kind"].is_string());
        }
        let v2: serde_json::Value = serde_json::from_slice(&e.v2_json()).expect("v2 is JSON");
        assert_eq!(v2["$type"], "message");
        assert!(v2["payload"]["seq"].is_u64());
    }
});
