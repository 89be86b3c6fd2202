//! MST over arbitrary blocks: the input is split into blocks (first one is the root); loading,
//! reading, inserting and removing never panic.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use wire::car::{CODEC_DAG_CBOR, cid_for};
use wire::mst::Mst;

fuzz_target!(|data: &[u8]| {
    let blocks: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    let mut map: HashMap<cid::Cid, Vec<u8>> = HashMap::new();
    for b in &blocks {
        map.insert(cid_for(CODEC_DAG_CBOR, b), b.to_vec());
    }
    let Some(first) = blocks.first() else { return };
    let root = cid_for(CODEC_DAG_CBOR, first);
    let Ok(mut mst) = Mst::load(root, &map) else { return };
    let key = b"app.bsky.feed.post/3jzfcijpj2z2a";
    let _ = mst.get(key, &map);
    let _ = mst.insert(key, root, &map);
    let _ = mst.remove(key, &map);
    let _ = mst.root_cid(None);
});
