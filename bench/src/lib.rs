//! Benchmarks for the relay. Must not be needed by other crates.
//!
//! This library holds the inputs benchmarks share: the frames recorded from the reference PDS, with
//! the identities needed to verify them.

use std::collections::HashMap;
use std::path::PathBuf;

use wire::Did;
use wire::crypto::PublicKey;
use wire::did_doc::AtprotoIdentity;

/// The directory of frames recorded from the reference PDS 0.5.35.
pub fn recorded_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/recorded-pds-0.5.35")
}

/// Every recorded frame, in file order.
///
/// # Panics
/// When the fixtures are missing (benchmarks need them).
pub fn recorded_frames() -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(recorded_dir())
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "cbor"));
    paths.sort();
    assert!(!paths.is_empty(), "no recorded frames under {}", recorded_dir().display());
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The signing key of every recorded account, from `dids.json`.
///
/// # Panics
/// When `dids.json` is missing or malformed.
pub fn recorded_keys() -> HashMap<Did, PublicKey> {
    let text = std::fs::read_to_string(recorded_dir().join("dids.json")).unwrap_or_default();
    let docs: HashMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    assert!(!docs.is_empty(), "no identities in dids.json");
    docs.into_iter()
        .filter_map(|(did, v)| {
            let did = Did::new(did).ok()?;
            let id = AtprotoIdentity::from_json(&did, v["didDoc"].to_string().as_bytes()).ok()?;
            Some((did, id.signing_key))
        })
        .collect()
}
