//! DAG-CBOR: decoding never panics; decode → encode → decode is stable, and the encoding is one item
//! of exactly its length.
#![no_main]

use ipld_core::ipld::Ipld;
use libfuzzer_sys::fuzz_target;
use wire::cbor;

fuzz_target!(|data: &[u8]| {
    let _ = cbor::item_len(data);
    let Ok(value) = cbor::from_slice::<Ipld>(data) else { return };
    let encoded = cbor::to_vec(&value).expect("a decoded value encodes");
    let again: Ipld = cbor::from_slice(&encoded).expect("an encoded value decodes");
    assert_eq!(again, value);
    assert_eq!(cbor::item_len(&encoded), Ok(encoded.len()));
});
