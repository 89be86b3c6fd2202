//! The relay's per-event CPU work on the recorded reference-PDS frames: what ingest and the
//! sequencer do for one `#commit`, step by step and in total (no I/O, no identity lookup).
//!
//! Run: `cargo bench -p bench --bench pipeline`

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::Limits;
use wire::frame::{Event, Frame, decode_frame};
use wire::validate::check_commit;
use wire::ws::{Opcode, encode_frame};

fn commits() -> Vec<Vec<u8>> {
    bench::recorded_frames()
        .into_iter()
        .filter(|f| matches!(decode_frame(f), Ok(Frame::Message(Event::Commit(c))) if !c.ops.is_empty()))
        .collect()
}

fn pipeline(c: &mut Criterion) {
    let frames = commits();
    let keys = bench::recorded_keys();
    let limits = Limits::default();
    let bytes: usize = frames.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("commit");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("decode", |b| b.iter(|| frames.iter().map(|f| decode_frame(f).is_ok() as usize).sum::<usize>()));
    let decoded: Vec<_> = frames
        .iter()
        .map(|f| match decode_frame(f) {
            Ok(Frame::Message(Event::Commit(c))) => c,
            _ => unreachable!(),
        })
        .collect();
    g.bench_function("check_car_commit_and_sync11_proof", |b| {
        b.iter(|| decoded.iter().map(|c| check_commit(c, &limits, u64::MAX / 2).is_ok() as usize).sum::<usize>())
    });
    let checked: Vec<_> =
        decoded.iter().map(|c| (c.repo.clone(), check_commit(c, &limits, u64::MAX / 2).map(|r| r.signed))).collect();
    g.bench_function("verify_signature_k256", |b| {
        b.iter(|| {
            checked
                .iter()
                .map(|(did, s)| s.as_ref().map_or(0, |s| s.verify(&keys[did]).is_ok() as usize))
                .sum::<usize>()
        })
    });
    g.bench_function("reencode_with_seq", |b| {
        b.iter(|| {
            decoded
                .iter()
                .map(|c| {
                    let mut e = Event::Commit(c.clone());
                    e.set_seq(123_456_789);
                    encode_frame(Opcode::Binary, &e.encode().unwrap_or_default()).len()
                })
                .sum::<usize>()
        })
    });
    g.bench_function("all_steps", |b| {
        b.iter(|| {
            frames
                .iter()
                .map(|f| {
                    let Ok(Frame::Message(mut e)) = decode_frame(f) else {
                        return 0;
                    };
                    let Event::Commit(c) = &e else { return 0 };
                    let Ok(checked) = check_commit(c, &limits, u64::MAX / 2) else {
                        return 0;
                    };
                    if checked.proof.is_err() || checked.signed.verify(&keys[&c.repo]).is_err() {
                        return 0;
                    }
                    e.set_seq(123_456_789);
                    encode_frame(Opcode::Binary, &e.encode().unwrap_or_default()).len()
                })
                .sum::<usize>()
        })
    });
    g.finish();
    eprintln!("{} recorded #commit frames with ops, {bytes} bytes in all", frames.len());
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
