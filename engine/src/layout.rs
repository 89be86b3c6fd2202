//! Core layout: which CPU runs which role (ingest shards, the sequencer, fanout shards with the API,
//! RocksDB compaction), from CLI flags or chosen automatically for the CPUs this process may use.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, bail};

/// Which role runs where. CPU ids are the kernel's (as in `taskset`/`/proc/cpuinfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// One ingest shard per listed CPU.
    pub ingest: Vec<usize>,
    /// One fanout shard per listed CPU; each also serves the HTTP API (SO_REUSEPORT listeners).
    pub fanout: Vec<usize>,
    /// The sequencer's CPU.
    pub sequencer: usize,
    /// The CPU RocksDB's background threads (flush, compaction) are pinned to.
    pub compaction: usize,
}

/// Parses a CPU list such as `0-3,6` (ranges inclusive, comma-separated, no duplicates).
///
/// # Errors
/// On empty items, reversed ranges, non-numbers or duplicates.
pub fn parse_cpu_list(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (item, item),
        };
        let lo: usize = lo.parse().with_context(|| format!("bad CPU number {lo:?} in {s:?}"))?;
        let hi: usize = hi.parse().with_context(|| format!("bad CPU number {hi:?} in {s:?}"))?;
        if lo > hi {
            bail!("reversed CPU range {item:?} in {s:?}");
        }
        out.extend(lo..=hi);
    }
    let unique: BTreeSet<_> = out.iter().collect();
    if unique.len() != out.len() {
        bail!("CPU list {s:?} names a CPU twice");
    }
    Ok(out)
}

/// The automatic layout for the allowed CPUs (sorted, at least one):
///
/// | CPUs | ingest | sequencer | fanout + API | compaction |
/// |------|--------|-----------|--------------|------------|
/// | 1    | c0     | c0        | c0           | c0         |
/// | 2    | c0     | c0        | c1           | c1         |
/// | 3    | c1     | c0        | c2           | c0         |
/// | n≥4  | c1 … c(k) with k = ⌊(n-2)/2⌋ | c0 | the rest up to c(n-2) | c(n-1) |
pub fn auto(cpus: &[usize]) -> Layout {
    let c = |i: usize| cpus.get(i).copied().unwrap_or(0);
    match cpus.len() {
        0 | 1 => Layout { ingest: vec![c(0)], fanout: vec![c(0)], sequencer: c(0), compaction: c(0) },
        2 => Layout { ingest: vec![c(0)], fanout: vec![c(1)], sequencer: c(0), compaction: c(1) },
        3 => Layout { ingest: vec![c(1)], fanout: vec![c(2)], sequencer: c(0), compaction: c(0) },
        n => {
            let middle: Vec<usize> = (1..n - 1).map(c).collect();
            let k = (middle.len() / 2).max(1);
            let (ingest, fanout) = middle.split_at(k.min(middle.len()));
            Layout { ingest: ingest.to_vec(), fanout: fanout.to_vec(), sequencer: c(0), compaction: c(n - 1) }
        }
    }
}

/// Builds the layout from the flags, filling the ones not given from [`auto`], and checks every CPU
/// is one this process may run on.
///
/// # Errors
/// When a flag does not parse, names a CPU outside `allowed`, or a list is empty.
pub fn resolve(
    allowed: &[usize],
    ingest: Option<&str>,
    fanout: Option<&str>,
    sequencer: Option<usize>,
    compaction: Option<usize>,
) -> anyhow::Result<Layout> {
    if allowed.is_empty() {
        bail!("no CPU is available to this process");
    }
    let mut layout = auto(allowed);
    if let Some(s) = ingest {
        layout.ingest = parse_cpu_list(s).context("--ingest-cores")?;
    }
    if let Some(s) = fanout {
        layout.fanout = parse_cpu_list(s).context("--fanout-cores")?;
    }
    if let Some(c) = sequencer {
        layout.sequencer = c;
    }
    if let Some(c) = compaction {
        layout.compaction = c;
    }
    let all = layout.ingest.iter().chain(&layout.fanout).chain([&layout.sequencer, &layout.compaction]);
    for cpu in all {
        if !allowed.contains(cpu) {
            bail!("CPU {cpu} is not available to this process (allowed: {})", format_list(allowed));
        }
    }
    Ok(layout)
}

impl Layout {
    /// Every CPU that runs an executor (ingest, sequencer or fanout), sorted.
    pub fn executor_cpus(&self) -> Vec<usize> {
        let set: BTreeSet<usize> = self.ingest.iter().chain(&self.fanout).copied().chain([self.sequencer]).collect();
        set.into_iter().collect()
    }

    /// The roles on `cpu`, e.g. `["ingest[0]", "sequencer"]`.
    pub fn roles(&self, cpu: usize) -> Vec<String> {
        let mut roles = Vec::new();
        if let Some(i) = self.ingest.iter().position(|&c| c == cpu) {
            roles.push(format!("ingest[{i}]"));
        }
        if self.sequencer == cpu {
            roles.push("sequencer".into());
        }
        if let Some(i) = self.fanout.iter().position(|&c| c == cpu) {
            roles.push(format!("fanout[{i}]+api"));
        }
        if self.compaction == cpu {
            roles.push("compaction".into());
        }
        roles
    }

    /// A one-line summary for logs and benchmark records, e.g. `ingest=0 sequencer=0 fanout=1 compaction=1`.
    pub fn summary(&self) -> String {
        format!(
            "ingest={} sequencer={} fanout={} compaction={}",
            format_list(&self.ingest),
            self.sequencer,
            format_list(&self.fanout),
            self.compaction
        )
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus: BTreeSet<usize> = self.executor_cpus().into_iter().collect();
        cpus.insert(self.compaction);
        for cpu in cpus {
            writeln!(f, "cpu {cpu}: {}", self.roles(cpu).join(" "))?;
        }
        Ok(())
    }
}

fn format_list(cpus: &[usize]) -> String {
    cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// The CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is a valid empty set, and sched_getaffinity writes at
    // most `size_of::<cpu_set_t>()` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Pins the calling thread to `cpu`.
///
/// # Errors
/// When the kernel refuses (CPU offline or outside the cgroup's set).
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: as in `allowed_cpus`; CPU_SET only writes inside the set for cpu < CPU_SETSIZE, checked.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("5").unwrap(), vec![5]);
        for bad in ["", "a", "3-1", "1,1", "0-2,2", "1,"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn automatic_layouts() {
        let l1 = auto(&[0]);
        assert_eq!((l1.ingest.clone(), l1.fanout.clone(), l1.sequencer, l1.compaction), (vec![0], vec![0], 0, 0));
        let l2 = auto(&[0, 1]);
        assert_eq!((l2.ingest.clone(), l2.fanout.clone(), l2.sequencer, l2.compaction), (vec![0], vec![1], 0, 1));
        let l4 = auto(&[0, 1, 2, 3]);
        assert_eq!((l4.ingest.clone(), l4.fanout.clone(), l4.sequencer, l4.compaction), (vec![1], vec![2], 0, 3));
        let l8 = auto(&(0..8).collect::<Vec<_>>());
        assert_eq!((l8.ingest.clone(), l8.fanout.clone()), (vec![1, 2, 3], vec![4, 5, 6]));
        assert_eq!(l8.compaction, 7);
        for n in 1..=64 {
            let cpus: Vec<usize> = (0..n).collect();
            let l = auto(&cpus);
            assert!(!l.ingest.is_empty() && !l.fanout.is_empty(), "{n} cpus");
            assert_eq!(resolve(&cpus, None, None, None, None).unwrap(), l);
        }
    }

    #[test]
    fn explicit_layouts_are_checked() {
        let allowed = [0, 1];
        let l = resolve(&allowed, Some("0-1"), Some("1"), Some(1), Some(0)).unwrap();
        assert_eq!(l.ingest, vec![0, 1]);
        assert_eq!(l.executor_cpus(), vec![0, 1]);
        assert!(resolve(&allowed, Some("0-2"), None, None, None).unwrap_err().to_string().contains("CPU 2"));
        assert!(resolve(&allowed, None, None, Some(7), None).is_err());
        assert!(resolve(&allowed, Some("x"), None, None, None).is_err());
        assert!(resolve(&[], None, None, None, None).is_err());
        let shown = l.to_string();
        assert!(
            shown.contains("cpu 0: ingest[0] compaction") && shown.contains("cpu 1: ingest[1] sequencer fanout[0]+api"),
            "{shown}"
        );
    }
}
