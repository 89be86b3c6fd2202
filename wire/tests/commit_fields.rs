//! Which bytes a commit's signature covers when the commit object carries fields beyond the defined
//! ones, and a commit without `prev`: one fixture of each case, pinning the decision documented in
//! `wire/src/commit.rs` (verify over the defined fields, as `@atproto/repo` and indigo's
//! `atproto/repo` do; `prev` must be present).

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;
use sha2::{Digest, Sha256};
use wire::commit::SignedCommit;
use wire::crypto::{KeyType, PublicKey};

fn key() -> (secp256k1::SecretKey, PublicKey) {
    let secret = secp256k1::SecretKey::from_byte_array(&[7; 32]).unwrap();
    let public = secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, &secret);
    (secret, PublicKey::from_sec1(KeyType::K256, &public.serialize()).unwrap())
}

fn sign(secret: &secp256k1::SecretKey, bytes: &[u8]) -> Vec<u8> {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let sig = secp256k1::SECP256K1.sign_ecdsa(&secp256k1::Message::from_digest(digest), secret);
    sig.serialize_compact().to_vec()
}

/// The five defined unsigned fields of a version-3 commit.
fn defined() -> BTreeMap<String, Ipld> {
    let data = wire::car::cid_for(wire::car::CODEC_DAG_CBOR, b"an mst root");
    BTreeMap::from([
        ("did".to_owned(), Ipld::String("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into())),
        ("version".to_owned(), Ipld::Integer(3)),
        ("data".to_owned(), Ipld::Link(data)),
        ("rev".to_owned(), Ipld::String("3jzfcijpj2z2a".into())),
        ("prev".to_owned(), Ipld::Null),
    ])
}

/// A commit block: `signed_over` encoded and signed, then `sig` added to `object`.
fn block(object: &BTreeMap<String, Ipld>, signed_over: &BTreeMap<String, Ipld>) -> Vec<u8> {
    let (secret, _) = key();
    let sig = sign(&secret, &serde_ipld_dagcbor::to_vec(signed_over).unwrap());
    let mut object = object.clone();
    object.insert("sig".into(), Ipld::Bytes(sig));
    serde_ipld_dagcbor::to_vec(&object).unwrap()
}

#[test]
fn a_commit_of_the_defined_fields_verifies() {
    let (_, public) = key();
    let commit = SignedCommit::decode(&block(&defined(), &defined())).unwrap();
    assert!(commit.verify(&public).is_ok());
}

/// Both references verify over the defined fields whatever else the object holds: a commit with an
/// extra field signed that way is accepted.
#[test]
fn an_extra_field_outside_the_signature_is_accepted_as_the_references_do() {
    let (_, public) = key();
    let mut object = defined();
    object.insert("extra".into(), Ipld::String("a field from a later format".into()));
    let commit = SignedCommit::decode(&block(&object, &defined())).unwrap();
    assert!(commit.verify(&public).is_ok());
}

/// A commit signed over every field including an extra one fails in both references (they strip the
/// unknown key before encoding), so it fails here too: relaying it would hand consumers a commit
/// they drop.
#[test]
fn an_extra_field_inside_the_signature_is_refused_as_the_references_do() {
    let (_, public) = key();
    let mut object = defined();
    object.insert("extra".into(), Ipld::String("a field from a later format".into()));
    let commit = SignedCommit::decode(&block(&object, &object)).unwrap();
    assert!(commit.verify(&public).is_err());
}

/// `specs/repository`: in version 3 `prev` "must exist in the CBOR object".
#[test]
fn a_commit_without_prev_does_not_decode() {
    let mut object = defined();
    object.remove("prev");
    assert!(SignedCommit::decode(&block(&object, &object)).is_err());
}
