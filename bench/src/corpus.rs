//! Pre-generated traffic: the generator's events made once, on every CPU, and cached on disk, so a
//! run's hosts only stamp and send them and the generator stops bounding the rates it can offer
//! (signing commits and updating MSTs live tops out near 4,000 events/s on one thread).
//!
//! A corpus is the first N events of the live generator's traffic for a seed (same [`Plan`]s, so
//! the same hosts, accounts, kinds and ops), made with `rev`s of the time it was built: increasing
//! per account, and in the past at every later run. What a run measures latency from is the
//! event's `time`, which no signature covers: each frame keeps a fixed-width placeholder (27 bytes,
//! `YYYY-MM-DDTHH:MM:SS.ffffffZ`) whose offset is recorded, and the generator overwrites it with the
//! due time in a copy of the frame (~1 µs) before handing it to its host.
//!
//! **Validity.** A corpus file is named by everything that shapes it (seed, hosts, accounts per
//! host, p256 share, skew, event count) and the [`FORMAT`] version, which is raised whenever the
//! generator's output changes; the header repeats the parameters and is checked on load. The
//! accounts' public keys are stored with it (the fake PLC serves them), so loading needs no key.
//!
//! File layout: a text line `relay-bench corpus v{FORMAT}`, a JSON line (parameters and
//! identities as `[did, host, did:key]`), then per event: host `u32`, host seq `u64`, offset of
//! the `time` placeholder `u32`, key `u64` (0 for `#identity`/`#account`, whose key is their
//! stamped time), frame length `u32` (all little-endian) and the frame.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::json;
use wire::Did;
use wire::crypto::PublicKey;

use crate::generator::{Fleet, GenConfig, Plan, make};

/// Version of the corpus format and of the generator output it holds.
pub const FORMAT: u32 = 1;
/// Length of the `time` placeholder and of every stamp.
const TIME_LEN: usize = 27;

/// One pre-made event.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Host index.
    pub host: u32,
    /// The host's seq inside the frame.
    pub seq: u64,
    /// Offset of the `time` text in `frame`.
    pub time_at: u32,
    /// The (repo, rev) key of commits and syncs; 0 when the key is the stamped time.
    pub key: u64,
    /// The encoded frame, with the placeholder time.
    pub frame: Bytes,
}

/// A corpus in memory.
pub struct Corpus {
    /// Every account's DID, host index and public key.
    pub identities: Vec<(Did, usize, PublicKey)>,
    /// The events, in the order they are sent.
    pub entries: Vec<Entry>,
    /// Where it is cached.
    pub path: PathBuf,
    /// Seconds it took to build (`None`: loaded from the cache).
    pub built_s: Option<f64>,
    /// Seconds it took to load or build.
    pub ready_s: f64,
    /// Bytes of frames.
    pub frame_bytes: u64,
}

impl Corpus {
    /// `entry`'s frame with its `time` set to `at_us`.
    pub fn stamped(entry: &Entry, at_us: u64) -> Bytes {
        let mut frame = entry.frame.to_vec();
        let stamp = crate::scan::datetime(at_us);
        let at = entry.time_at as usize;
        if stamp.len() == TIME_LEN
            && let Some(slot) = frame.get_mut(at..at + TIME_LEN)
        {
            slot.copy_from_slice(stamp.as_bytes());
        }
        Bytes::from(frame)
    }

    /// The JSON summary for a result line.
    pub fn summary(&self) -> serde_json::Value {
        json!({
            "events": self.entries.len(),
            "file": self.path.display().to_string(),
            "frame_bytes": self.frame_bytes,
            "built_s": self.built_s,
            "ready_s": self.ready_s,
            "format": FORMAT,
        })
    }
}

fn params(config: &GenConfig, events: usize) -> serde_json::Value {
    json!({
        "seed": config.seed,
        "hosts": config.hosts,
        "accounts_per_host": config.accounts_per_host,
        "p256_share": config.p256_share,
        "skew": config.skew,
        "events": events,
    })
}

/// The cache file for these parameters under `dir`.
pub fn path_for(dir: &Path, config: &GenConfig, events: usize) -> PathBuf {
    dir.join(format!(
        "corpus-v{FORMAT}-seed{}-h{}-a{}-p256_{}-skew{}-n{events}.bin",
        config.seed, config.hosts, config.accounts_per_host, config.p256_share, config.skew
    ))
}

/// Loads the corpus of `events` events for `config` from `dir`, or builds it on `threads` threads
/// and writes it there.
///
/// # Errors
/// I/O errors, a cache file whose header does not match, or events the generator could not encode.
pub fn load_or_build(dir: &Path, config: &GenConfig, events: usize, threads: usize) -> anyhow::Result<Corpus> {
    let path = path_for(dir, config, events);
    let t0 = Instant::now();
    if path.exists() {
        match load(&path, config, events) {
            Ok(mut c) => {
                c.ready_s = t0.elapsed().as_secs_f64();
                eprintln!(
                    "relay-bench: loaded {} events from {} in {:.1} s",
                    c.entries.len(),
                    path.display(),
                    c.ready_s
                );
                return Ok(c);
            }
            Err(e) => eprintln!("relay-bench: rebuilding {} ({e:#})", path.display()),
        }
    }
    eprintln!("relay-bench: building a corpus of {events} events on {threads} threads");
    let mut c = build(config, events, threads)?;
    c.path = path.clone();
    c.built_s = Some(t0.elapsed().as_secs_f64());
    c.ready_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "relay-bench: built {events} events in {:.1} s ({:.0} events/s), {} MB of frames",
        c.ready_s,
        events as f64 / c.ready_s.max(1e-9),
        c.frame_bytes / 1_000_000
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    save(&c, config, events).with_context(|| format!("writing {}", path.display()))?;
    Ok(c)
}

/// Makes the first `events` events of the generator's traffic for `config` on `threads` threads
/// (accounts split between them; each account's events made in order).
///
/// # Errors
/// An event that cannot be encoded, or one without its `time` placeholder.
pub fn build(config: &GenConfig, events: usize, threads: usize) -> anyhow::Result<Corpus> {
    let mut fleet = Fleet::new(config);
    let identities = fleet.identities();
    let plans: Vec<Plan> = (0..events).map(|_| fleet.plan()).collect();
    let threads = threads.max(1);
    let mut parts: Vec<HashMap<(usize, usize), &mut crate::generator::Account>> =
        (0..threads).map(|_| HashMap::new()).collect();
    for (h, i, a) in fleet.accounts_mut() {
        parts[(h + i) % threads].insert((h, i), a);
    }
    let base_us = crate::now_us();
    let plans = &plans;
    let made: Vec<anyhow::Result<Vec<(usize, Entry)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|mut part| {
                scope.spawn(move || -> anyhow::Result<Vec<(usize, Entry)>> {
                    let mut out = Vec::new();
                    for (idx, plan) in plans.iter().enumerate() {
                        let Some(acct) = part.get_mut(&(plan.host, plan.account)) else { continue };
                        let at_us = base_us + idx as u64;
                        let (event, key) = make(acct, plan, at_us);
                        let keyed_by_time =
                            matches!(event, wire::frame::Event::Identity(_) | wire::frame::Event::Account(_));
                        let frame = event.encode().context("encoding a generated event")?;
                        let placeholder = crate::scan::datetime(at_us);
                        let mut needle = vec![0x78, TIME_LEN as u8];
                        needle.extend_from_slice(placeholder.as_bytes());
                        let Some(pos) = frame.windows(needle.len()).position(|w| w == needle.as_slice()) else {
                            bail!("event {idx} has no time placeholder");
                        };
                        out.push((
                            idx,
                            Entry {
                                host: plan.host as u32,
                                seq: plan.seq,
                                time_at: (pos + 2) as u32,
                                key: if keyed_by_time { 0 } else { key },
                                frame: Bytes::from(frame),
                            },
                        ));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a corpus thread panicked"))))
            .collect()
    });
    let mut slots: Vec<Option<Entry>> = vec![None; events];
    for part in made {
        for (idx, e) in part? {
            slots[idx] = Some(e);
        }
    }
    let entries: Vec<Entry> = slots.into_iter().collect::<Option<_>>().context("an event was not made")?;
    let frame_bytes = entries.iter().map(|e| e.frame.len() as u64).sum();
    Ok(Corpus { identities, entries, path: PathBuf::new(), built_s: None, ready_s: 0.0, frame_bytes })
}

fn save(c: &Corpus, config: &GenConfig, events: usize) -> anyhow::Result<()> {
    let tmp = c.path.with_extension("tmp");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut header = params(config, events);
    header["identities"] =
        c.identities.iter().map(|(did, h, key)| json!([did.as_str(), h, key.to_did_key()])).collect();
    writeln!(w, "relay-bench corpus v{FORMAT}")?;
    writeln!(w, "{header}")?;
    for e in &c.entries {
        w.write_all(&e.host.to_le_bytes())?;
        w.write_all(&e.seq.to_le_bytes())?;
        w.write_all(&e.time_at.to_le_bytes())?;
        w.write_all(&e.key.to_le_bytes())?;
        w.write_all(&(e.frame.len() as u32).to_le_bytes())?;
        w.write_all(&e.frame)?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &c.path)?;
    Ok(())
}

fn load(path: &Path, config: &GenConfig, events: usize) -> anyhow::Result<Corpus> {
    let data = Bytes::from(std::fs::read(path)?);
    let line = |from: usize| -> anyhow::Result<(usize, &[u8])> {
        let rest = data.get(from..).context("truncated header")?;
        let n = rest.iter().position(|b| *b == b'\n').context("truncated header")?;
        Ok((from + n + 1, &rest[..n]))
    };
    let (pos, magic) = line(0)?;
    if magic != format!("relay-bench corpus v{FORMAT}").as_bytes() {
        bail!("another format: {}", String::from_utf8_lossy(magic));
    }
    let (mut pos, header) = line(pos)?;
    let header: serde_json::Value = serde_json::from_slice(header).context("header JSON")?;
    let mut want = params(config, events);
    want["identities"] = header["identities"].clone();
    if header != want {
        bail!("made with other parameters: {header}");
    }
    let mut identities = Vec::new();
    for item in header["identities"].as_array().context("identities")? {
        let did = Did::new(item[0].as_str().context("did")?.to_owned()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let host = item[1].as_u64().context("host")? as usize;
        let key = PublicKey::from_did_key(item[2].as_str().context("key")?).map_err(|e| anyhow::anyhow!("{e}"))?;
        identities.push((did, host, key));
    }
    let mut entries = Vec::with_capacity(events);
    let mut frame_bytes = 0;
    while pos < data.len() {
        let field = |at: usize, n: usize| data.get(at..at + n).context("truncated event");
        let u32_at = |at: usize| -> anyhow::Result<u32> { Ok(u32::from_le_bytes(field(at, 4)?.try_into()?)) };
        let u64_at = |at: usize| -> anyhow::Result<u64> { Ok(u64::from_le_bytes(field(at, 8)?.try_into()?)) };
        let (host, seq, time_at, key, len) =
            (u32_at(pos)?, u64_at(pos + 4)?, u32_at(pos + 12)?, u64_at(pos + 16)?, u32_at(pos + 24)? as usize);
        let start = pos + 28;
        field(start, len)?;
        entries.push(Entry { host, seq, time_at, key, frame: data.slice(start..start + len) });
        frame_bytes += len as u64;
        pos = start + len;
    }
    if entries.len() != events {
        bail!("holds {} events, not {events}", entries.len());
    }
    Ok(Corpus { identities, entries, path: path.to_owned(), built_s: None, ready_s: 0.0, frame_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GenConfig {
        GenConfig {
            hosts: 3,
            accounts_per_host: 4,
            p256_share: 0.25,
            skew: 1.0,
            lead: std::time::Duration::from_millis(300),
            seed: 7,
        }
    }

    /// Built on several threads, saved and loaded: the same events, each a valid frame whose stamped
    /// `time` reads back as the stamp, with per-host seqs increasing and per-account revs increasing.
    #[test]
    fn builds_saves_loads_and_stamps() {
        let dir = std::env::temp_dir().join(format!("relay-bench-corpus-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let built = load_or_build(&dir, &config(), 400, 3).unwrap();
        assert!(built.built_s.is_some());
        let loaded = load_or_build(&dir, &config(), 400, 3).unwrap();
        assert!(loaded.built_s.is_none());
        assert_eq!(loaded.entries.len(), 400);
        assert_eq!(loaded.identities.len(), 12);
        let mut host_seq = [0u64; 3];
        let mut revs: HashMap<String, String> = HashMap::new();
        for (a, b) in built.entries.iter().zip(&loaded.entries) {
            assert_eq!((a.host, a.seq, a.time_at, a.key, &a.frame), (b.host, b.seq, b.time_at, b.key, &b.frame));
            assert!(b.seq > host_seq[b.host as usize]);
            host_seq[b.host as usize] = b.seq;
            let at = 1_780_000_000_123_456;
            let frame = Corpus::stamped(b, at);
            let s = crate::scan::scan(&frame).unwrap();
            assert_eq!(crate::scan::due_us(&s), Some(at));
            assert!(wire::frame::decode_frame(&frame).is_ok());
            if let (Some(repo), Some(rev)) = (s.repo, s.rev) {
                if let Some(prev) = revs.get(repo) {
                    assert!(rev > prev.as_str(), "{repo}: {rev} after {prev}");
                }
                assert_eq!(b.key, crate::generator::event_key(repo, rev));
                revs.insert(repo.to_owned(), rev.to_owned());
            } else {
                assert_eq!(b.key, 0);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
