//! Every frame recorded from the reference PDS 0.5.35 (`../shared/fixtures/recorded-pds-0.5.35`):
//! decodes, its CAR blocks hash to their CIDs, commit signatures verify with the keys in `dids.json`
//! (legacy DID-document format), and re-encoding gives back the exact bytes.

use std::collections::HashMap;
use std::path::PathBuf;

use wire::did_doc::AtprotoIdentity;
use wire::frame::{Event, Frame, decode_frame};
use wire::validate::{Limits, check_commit, check_sync};
use wire::{Did, DropReason};

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/recorded-pds-0.5.35")
}

fn frames() -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cbor"))
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), std::fs::read(dir().join(&n)).unwrap())).collect()
}

fn identities() -> HashMap<Did, AtprotoIdentity> {
    let text = std::fs::read_to_string(dir().join("dids.json")).unwrap();
    let docs: HashMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    docs.into_iter()
        .map(|(did, v)| {
            let did = Did::new(did).unwrap();
            let doc = v["didDoc"].to_string();
            let id = AtprotoIdentity::from_json(&did, doc.as_bytes()).unwrap();
            // The legacy-format key in the document equals the did:key in the PLC data.
            assert_eq!(id.signing_key.to_did_key(), v["signingKey"].as_str().unwrap());
            assert_eq!(id.pds_host().unwrap().as_str(), "localhost:2583");
            (did, id)
        })
        .collect()
}

#[test]
fn all_recorded_frames() {
    let ids = identities();
    let limits = Limits::default();
    let mut seen = HashMap::<&'static str, usize>::new();
    let mut last_seq = 0;
    let mut proofs = 0;
    for (name, bytes) in frames() {
        let Frame::Message(event) = decode_frame(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")) else {
            panic!("{name}: error frame")
        };
        *seen.entry(event.type_name()).or_default() += 1;
        let seq = event.seq().unwrap();
        assert!(seq > last_seq, "{name}: seq increases (gaps allowed)");
        last_seq = seq;
        assert_eq!(event.encode().unwrap(), bytes, "{name}: re-encode is byte-identical");

        let signed = match &event {
            Event::Commit(c) => Some(check_commit(c, &limits, now_us()).unwrap_or_else(|r| panic!("{name}: {r}"))),
            Event::Sync(s) => Some(check_sync(s, &limits, now_us()).unwrap_or_else(|r| panic!("{name}: {r}"))),
            _ => None,
        };
        if let Some(checked) = signed {
            // Sync 1.1: every op matches the signed tree and inverting the ops gives prevData.
            assert_eq!(checked.proof, Ok(()), "{name}: Sync 1.1 proof");
            if let Event::Commit(c) = &event {
                proofs += usize::from(c.prev_data.is_some() && !c.ops.is_empty());
            }
            let signed = checked.signed;
            let key = &ids[event.did().unwrap()].signing_key;
            signed.verify(key).unwrap_or_else(|e| panic!("{name}: {e}"));
            let other = ids.iter().find(|(d, _)| *d != event.did().unwrap()).unwrap().1;
            assert!(signed.verify(&other.signing_key).is_err(), "{name}: another key must not verify");
        }
    }
    assert!(proofs >= 10, "{proofs} commits with ops were inverted to their prevData");
    for t in ["#commit", "#sync", "#identity", "#account"] {
        assert!(seen.get(t).copied().unwrap_or(0) > 0, "fixtures contain {t}");
    }
}

#[test]
fn tampering_is_detected() {
    let (_, bytes) = frames().into_iter().find(|(n, _)| n == "00013.cbor").unwrap();
    let Frame::Message(Event::Commit(commit)) = decode_frame(&bytes).unwrap() else { panic!() };
    let limits = Limits::default();

    let mut c = commit.clone();
    c.repo = Did::new("did:plc:ol2hycpynzbnbkmnmq6qytth").unwrap();
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap_err(), DropReason::RepoMismatch);

    let mut c = commit.clone();
    c.rev = wire::Tid::new("3n2senxsdxc22").unwrap();
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap_err(), DropReason::RevMismatch);

    let mut c = commit.clone();
    c.commit = c.ops[0].cid.unwrap();
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap_err(), DropReason::CommitNotInCar);

    let mut c = commit.clone();
    let mut blocks = c.blocks.to_vec();
    let last = blocks.len() - 1;
    blocks[last] ^= 0x55;
    c.blocks = blocks.into();
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap_err(), DropReason::BadCar);

    let mut c = commit.clone();
    c.ops = vec![c.ops[0].clone(); 201];
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap_err(), DropReason::TooManyOps);

    let small = Limits { max_blocks_bytes: 10, ..limits };
    assert_eq!(check_commit(&commit, &small, now_us()).unwrap_err(), DropReason::BlocksTooBig);

    let mut c = commit.clone();
    c.ops[0].action = "upsert".into();
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap_err(), DropReason::BadOp);

    // Sync 1.1: an op whose CID is not what the signed tree holds.
    let mut c = commit.clone();
    c.ops[0].cid = Some(c.commit);
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap().proof, Err(DropReason::OpCidMismatch));
    // prevData that inverting the ops does not give.
    let mut c = commit.clone();
    c.prev_data = Some(c.commit);
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap().proof, Err(DropReason::InversionMismatch));
    // A rev more than 5 minutes ahead of the clock; a bad time; deprecated flags.
    let rev_us = commit.rev.timestamp_us();
    assert_eq!(check_commit(&commit, &limits, rev_us - 301_000_000).unwrap_err(), DropReason::FutureRev);
    assert!(check_commit(&commit, &limits, rev_us - 299_000_000).is_ok());
    let mut c = commit.clone();
    c.time = "yesterday".into();
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap_err(), DropReason::BadTime);
    let mut c = commit;
    c.too_big = Some(true);
    assert_eq!(check_commit(&c, &limits, now_us()).unwrap_err(), DropReason::DeprecatedFlag);
}
