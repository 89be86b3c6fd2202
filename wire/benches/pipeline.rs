//! What the relay spends per event, step by step, without I/O: frame decode, CAR + CID checks (with
//! the Sync 1.1 proof), signature verification (k256 and p256), and re-encoding with a relay seq into
//! a websocket frame. Inputs: the `#commit` frames recorded from the reference PDS, and for p256 a
//! simulated account (`wire::testkit`).
//!
//! Run: `cargo bench -p wire --features testkit --bench pipeline`

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::crypto::PublicKey;
use wire::did_doc::AtprotoIdentity;
use wire::frame::{CommitEvent, Event, Frame, decode_frame};
use wire::testkit::{Op, Signer, SigningKey, SimAccount};
use wire::validate::check_commit;
use wire::ws::{Opcode, encode_frame};
use wire::{Did, Limits};

fn recorded() -> (Vec<Vec<u8>>, HashMap<Did, PublicKey>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/recorded-pds-0.5.35");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "cbor"));
    paths.sort();
    let frames = paths
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .filter(|f| matches!(decode_frame(f), Ok(Frame::Message(Event::Commit(c))) if !c.ops.is_empty()))
        .collect();
    let docs: HashMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dids.json")).unwrap()).unwrap();
    let keys = docs
        .into_iter()
        .map(|(did, v)| {
            let did = Did::new(did).unwrap();
            let id = AtprotoIdentity::from_json(&did, v["didDoc"].to_string().as_bytes()).unwrap();
            (did, id.signing_key)
        })
        .collect();
    (frames, keys)
}

fn commits(frames: &[Vec<u8>]) -> Vec<CommitEvent> {
    frames
        .iter()
        .map(|f| match decode_frame(f) {
            Ok(Frame::Message(Event::Commit(c))) => c,
            _ => unreachable!(),
        })
        .collect()
}

fn steps(c: &mut Criterion) {
    let (frames, keys) = recorded();
    let limits = Limits::default();
    let now = u64::MAX / 2;
    let decoded = commits(&frames);
    let mut g = c.benchmark_group("per_commit");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    let mut next = || {
        i = (i + 1) % frames.len();
        i
    };
    g.bench_function("decode", |b| b.iter(|| decode_frame(&frames[next()]).is_ok()));
    g.bench_function("check_car_cids_commit_and_sync11_proof", |b| {
        b.iter(|| check_commit(&decoded[next()], &limits, now).is_ok())
    });
    let checked: Vec<_> =
        decoded.iter().map(|c| (c.repo.clone(), check_commit(c, &limits, now).unwrap().signed)).collect();
    g.bench_function("verify_signature_k256", |b| {
        b.iter(|| {
            let (did, s) = &checked[next()];
            s.verify(&keys[did]).is_ok()
        })
    });
    let key = SigningKey::p256();
    let public = key.public();
    let mut acct = SimAccount::new(Did::new("did:plc:benchp256").unwrap(), key, 1_700_000_000_000_000);
    let p256: Vec<_> = (0..16)
        .map(|s| {
            let path = format!("app.bsky.feed.post/{}", acct.next_rkey());
            let ev = acct.commit(s, &[Op::Create { path, bytes: 400 }], &Signer::Own);
            check_commit(&ev, &limits, now).unwrap().signed
        })
        .collect();
    let mut j = 0;
    g.bench_function("verify_signature_p256", |b| {
        b.iter(|| {
            j = (j + 1) % p256.len();
            p256[j].verify(&public).is_ok()
        })
    });
    // The recorded repositories hold a handful of records; an account of a few thousand records
    // (deeper tree, more nodes to load, re-encode and hash per proof) is closer to the field.
    let grown = grown_repo_commits(4_000, 64);
    let mut k = 0;
    g.bench_function("check_car_cids_commit_and_sync11_proof_4000_records", |b| {
        b.iter(|| {
            k = (k + 1) % grown.len();
            check_commit(&grown[k], &limits, now).is_ok_and(|c| c.proof.is_ok())
        })
    });
    g.bench_function("reencode_with_seq_as_ws_frame", |b| {
        b.iter(|| {
            let mut e = Event::Commit(decoded[next()].clone());
            e.set_seq(123_456_789);
            encode_frame(Opcode::Binary, &e.encode().unwrap()).len()
        })
    });
    g.bench_function("all_steps_k256", |b| {
        b.iter(|| {
            let f = &frames[next()];
            let Ok(Frame::Message(mut e)) = decode_frame(f) else { return 0 };
            let Event::Commit(c) = &e else { return 0 };
            let Ok(checked) = check_commit(c, &limits, now) else { return 0 };
            if checked.proof.is_err() || checked.signed.verify(&keys[&c.repo]).is_err() {
                return 0;
            }
            e.set_seq(123_456_789);
            encode_frame(Opcode::Binary, &e.encode().unwrap()).len()
        })
    });
    g.finish();
}

/// `samples` one-op commits (creates, updates and deletes in turn) of an account first grown to
/// `records` records.
fn grown_repo_commits(records: usize, samples: usize) -> Vec<CommitEvent> {
    let mut acct = SimAccount::new(Did::new("did:plc:benchgrown").unwrap(), SigningKey::k256(7), 1_700_000_000_000_000);
    let mut paths = Vec::new();
    let mut seq = 0;
    while paths.len() < records {
        let ops: Vec<Op> = (0..50)
            .map(|_| {
                let path = format!("app.bsky.feed.like/{}", acct.next_rkey());
                paths.push(path.clone());
                Op::Create { path, bytes: 200 }
            })
            .collect();
        seq += 1;
        acct.commit(seq, &ops, &Signer::Own);
    }
    (0..samples)
        .map(|i| {
            seq += 1;
            let op = match i % 3 {
                0 => {
                    let path = format!("app.bsky.feed.post/{}", acct.next_rkey());
                    paths.push(path.clone());
                    Op::Create { path, bytes: 400 }
                }
                1 => Op::Update { path: paths[(i * 7919) % paths.len()].clone() },
                _ => Op::Delete { path: paths.swap_remove((i * 104_729) % paths.len()) },
            };
            acct.commit(seq, &[op], &Signer::Own)
        })
        .collect()
}

criterion_group!(benches, steps);
criterion_main!(benches);
