//! `relay-bench`: a load generator and fanout-latency benchmark for any relay that serves
//! `com.atproto.sync.subscribeRepos`.
//!
//! It simulates a PLC directory ([`plc`]), a fleet of PDS hosts ([`host`]) fed by a generator of
//! signed, Sync 1.1-complete events ([`generator`]), and a fleet of subscribers ([`subscriber`]) that
//! measure end-to-end latency (scheduled send time, carried in each event's `rev` or `time`, to
//! receipt), loss and duplication; [`probe`] samples the relay process and its health endpoint;
//! [`report`] prints and records the results. Nothing here is needed by the relay's crates.

pub mod corpus;
pub mod fleet;
pub mod generator;
pub mod host;
pub mod jetstream_sub;
pub mod jetstream_traffic;
pub mod plc;
pub mod prefill;
pub mod probe;
pub mod report;
pub mod scan;
pub mod subscriber;

/// Microseconds since the UNIX epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The CPUs of a list such as `0-3,6`.
///
/// # Errors
/// A message naming the bad item.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || format!("bad CPU list item {item:?}");
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().map_err(|_| bad())?, b.parse::<usize>().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(item.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() { Err("empty CPU list".into()) } else { Ok(out) }
}

/// Restricts the calling thread (and the threads and processes it creates afterwards) to `cpus`.
///
/// # Errors
/// The OS error when the kernel refuses the mask.
pub fn pin_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|c| **c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists() {
        assert_eq!(super::parse_cpu_list("0-2,5").unwrap(), [0, 1, 2, 5]);
        assert!(super::parse_cpu_list("3-1").is_err() && super::parse_cpu_list("x").is_err());
    }
}
