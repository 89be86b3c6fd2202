//! Table tests over `../shared/fixtures/interop` (atproto-interop-tests, CC0): syntax lists, signature
//! fixtures (incl. high-S and DER rejects), did:key vectors, and DAG-CBOR data-model fixtures.

use std::path::PathBuf;

use base64::Engine;
use wire::crypto::{KeyType, PublicKey};
use wire::{Did, Nsid, Tid};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/interop")
}

/// Non-empty, non-comment lines of a syntax list.
fn lines(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("syntax").join(name)).expect(name);
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

fn check<T, E>(kind: &str, parse: impl Fn(&str) -> Result<T, E>) {
    let valid = lines(&format!("{kind}_syntax_valid.txt"));
    let invalid = lines(&format!("{kind}_syntax_invalid.txt"));
    assert!(!valid.is_empty() && !invalid.is_empty());
    for s in &valid {
        assert!(parse(s).is_ok(), "{kind} should be valid: {s:?}");
    }
    for s in &invalid {
        assert!(parse(s).is_err(), "{kind} should be invalid: {s:?}");
    }
}

#[test]
fn did_syntax() {
    check("did", |s| Did::new(s));
}

#[test]
fn tid_syntax() {
    check("tid", |s| Tid::new(s));
}

#[test]
fn nsid_syntax() {
    check("nsid", |s| Nsid::new(s));
}

#[test]
fn handle_syntax() {
    check("handle", |s| wire::syntax::Handle::new(s));
}

#[test]
fn record_key_syntax() {
    check("recordkey", |s| wire::syntax::RecordKey::new(s));
}

/// Op paths are `<NSID>/<record key>`: every valid NSID with every valid record key forms one, and
/// an invalid NSID or record key, a missing or second `/`, never does.
#[test]
fn repo_path_syntax() {
    let nsids = lines("nsid_syntax_valid.txt");
    let rkeys = lines("recordkey_syntax_valid.txt");
    for (n, r) in nsids.iter().zip(rkeys.iter().cycle()) {
        assert!(wire::syntax::check_repo_path(&format!("{n}/{r}")).is_ok(), "{n}/{r}");
    }
    for r in lines("recordkey_syntax_invalid.txt") {
        // A record key with a `/` in it makes a path with three segments: invalid either way.
        assert!(wire::syntax::check_repo_path(&format!("app.bsky.feed.post/{r}")).is_err(), "rkey {r:?}");
    }
    for n in lines("nsid_syntax_invalid.txt") {
        assert!(wire::syntax::check_repo_path(&format!("{n}/3jzfcijpj2z2a")).is_err(), "nsid {n:?}");
    }
    for bad in ["app.bsky.feed.post", "app.bsky.feed.post/", "/3jzfcijpj2z2a", "app.bsky.feed.post/a/b", ""] {
        assert!(wire::syntax::check_repo_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn datetime_syntax() {
    check("datetime", wire::syntax::check_datetime);
}

#[test]
fn every_valid_handle_is_a_hostname() {
    for h in lines("handle_syntax_valid.txt") {
        assert!(wire::Hostname::parse_lenient(&h).is_ok(), "{h}");
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SigFixture {
    comment: String,
    message_base64: String,
    algorithm: String,
    did_doc_suite: String,
    public_key_did: String,
    public_key_multibase: String,
    signature_base64: String,
    valid_signature: bool,
    tags: Vec<String>,
}

#[test]
fn signature_fixtures() {
    let text = std::fs::read_to_string(fixtures().join("crypto/signature-fixtures.json")).unwrap();
    let fixtures: Vec<SigFixture> = serde_json::from_str(&text).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let (mut high_s, mut der) = (0, 0);
    for f in &fixtures {
        let msg = b64.decode(&f.message_base64).unwrap();
        let sig = b64.decode(&f.signature_base64).unwrap();
        let from_did = PublicKey::from_did_key(&f.public_key_did).unwrap();
        let kind = match f.did_doc_suite.as_str() {
            "EcdsaSecp256k1VerificationKey2019" => KeyType::K256,
            "EcdsaSecp256r1VerificationKey2019" => KeyType::P256,
            s => panic!("suite {s}"),
        };
        let legacy = PublicKey::from_legacy_multibase(kind, &f.public_key_multibase).unwrap();
        assert_eq!(from_did, legacy, "{}", f.comment);
        assert_eq!(kind == KeyType::K256, f.algorithm == "ES256K");
        let got = from_did.verify(&msg, &sig);
        assert_eq!(got.is_ok(), f.valid_signature, "{}: {got:?}", f.comment);
        high_s += usize::from(f.tags.iter().any(|t| t == "high-s"));
        der += usize::from(f.tags.iter().any(|t| t == "der-encoded"));
    }
    assert!(high_s >= 2 && der >= 2, "fixtures cover high-S ({high_s}) and DER ({der}) rejects");
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DidKeyVector {
    public_did_key: String,
}

#[test]
fn did_key_vectors() {
    for (file, kind) in [("w3c_didkey_K256.json", KeyType::K256), ("w3c_didkey_P256.json", KeyType::P256)] {
        let text = std::fs::read_to_string(fixtures().join("crypto").join(file)).unwrap();
        let vectors: Vec<DidKeyVector> = serde_json::from_str(&text).unwrap();
        assert!(!vectors.is_empty());
        for v in vectors {
            let key = PublicKey::from_did_key(&v.public_did_key).unwrap();
            assert_eq!(key.key_type(), kind);
            assert_eq!(key.to_did_key(), v.public_did_key);
        }
    }
}

#[derive(serde::Deserialize)]
struct DataModelFixture {
    json: serde_json::Value,
    cbor_base64: String,
    cid: String,
}

/// DAG-CBOR canonical encoding: decoding each fixture's CBOR and encoding it again gives the same
/// bytes, and those bytes hash to the fixture's CID.
#[test]
fn data_model_fixtures() {
    let text = std::fs::read_to_string(fixtures().join("data-model/data-model-fixtures.json")).unwrap();
    let fixtures: Vec<DataModelFixture> = serde_json::from_str(&text).unwrap();
    assert!(!fixtures.is_empty());
    for f in fixtures {
        let cbor = base64::engine::general_purpose::STANDARD_NO_PAD.decode(&f.cbor_base64).unwrap();
        let value: ipld_core::ipld::Ipld = wire::cbor::from_slice(&cbor).unwrap();
        assert_eq!(wire::cbor::to_vec(&value).unwrap(), cbor, "{}", f.json);
        let cid = wire::car::cid_for(wire::car::CODEC_DAG_CBOR, &cbor);
        assert_eq!(cid.to_string(), f.cid);
        assert_eq!(wire::cbor::item_len(&cbor).unwrap(), cbor.len());
    }
}
