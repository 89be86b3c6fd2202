//! `relay doctor`: checks a machine before the relay runs on it, and says how to fix what is wrong.
//! Each check prints `OK`, `WARN` or `FAIL` with what it found; the exit status is non-zero when any
//! check fails. `kernel-notes.md` explains each one at length; the two say the same things.
//!
//! | check | FAIL when | WARN when |
//! |---|---|---|
//! | io_uring | `kernel.io_uring_disabled` is 2, or an executor cannot be made (seccomp, old kernel, locked memory) | `io_uring_disabled` is 1 (root or the `io_uring_group` only) |
//! | locked memory | `RLIMIT_MEMLOCK`'s hard limit is below what the core layout needs | its soft limit is (the relay raises it) |
//! | file descriptors | `RLIMIT_NOFILE`'s hard limit is below 1,024 + the known hosts + `--max-subscribers` | — |
//! | CPUs | the core layout does not resolve on the CPUs this process may use | a single CPU (every role shares it) |
//! | data directory | it cannot be created or written, or has less than `--min-free-disk` free | less than 10 GiB free, or it is on tmpfs |
//! | clock | — | the kernel says the clock is not synchronized (revs are checked against it: ±5 min) |

use std::path::{Path, PathBuf};

use crate::layout;

/// Flags of `relay doctor` (the same names and variables as `relay serve`, so one environment file
/// serves both).
#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Directory of the RocksDB store.
    #[arg(long, default_value = "./data", value_name = "DIR", env = "RELAY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// CPUs running ingest shards (default: automatic layout).
    #[arg(long, value_name = "CPUS", env = "RELAY_INGEST_CORES")]
    pub ingest_cores: Option<String>,
    /// CPUs running fanout shards and the API (default: automatic layout).
    #[arg(long, value_name = "CPUS", env = "RELAY_FANOUT_CORES")]
    pub fanout_cores: Option<String>,
    /// CPU running the sequencer (default: automatic layout).
    #[arg(long, value_name = "CPU", env = "RELAY_SEQUENCER_CORE")]
    pub sequencer_core: Option<usize>,
    /// CPU of RocksDB's background threads (default: automatic layout).
    #[arg(long, value_name = "CPU", env = "RELAY_COMPACTION_CORE")]
    pub compaction_core: Option<usize>,
    /// Most subscribers the relay will serve (see `relay serve --help`).
    #[arg(long, default_value_t = 10_000, value_name = "N", env = "RELAY_MAX_SUBSCRIBERS")]
    pub max_subscribers: usize,
    /// Free space the data directory must keep (see `relay serve --help`).
    #[arg(long, default_value = "1GiB", value_name = "BYTES", value_parser = crate::cli::parse_bytes,
          env = "RELAY_MIN_FREE_DISK")]
    pub min_free_disk: u64,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but not as it should in production.
    Warn,
    /// The relay will not run (well) like this.
    Fail,
}

/// One check's result: what was found, and the fix when it is not fine.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The verdict.
    pub level: Level,
    /// What was checked.
    pub check: &'static str,
    /// What was found.
    pub detail: String,
    /// How to fix it (for `Warn` and `Fail`).
    pub fix: Option<String>,
}

fn finding(level: Level, check: &'static str, detail: String, fix: Option<&str>) -> Finding {
    Finding { level, check, detail, fix: fix.map(str::to_owned) }
}

/// Locked memory each executor needs: glommio's I/O buffer plus its rings.
const LOCKED_PER_EXECUTOR: u64 = 2 << 20;

fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct passed.
    unsafe { libc::getrlimit(resource, &mut lim) };
    (lim.rlim_cur, lim.rlim_max)
}

fn show(bytes: u64) -> String {
    if bytes == libc::RLIM_INFINITY { "unlimited".into() } else { bytesize::ByteSize(bytes).to_string() }
}

fn io_uring(executors: usize) -> Finding {
    let disabled =
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().and_then(|s| s.trim().parse::<u8>().ok());
    if disabled == Some(2) {
        return finding(
            Level::Fail,
            "io_uring",
            "kernel.io_uring_disabled = 2: io_uring is off".into(),
            Some("sysctl -w kernel.io_uring_disabled=0 (and in /etc/sysctl.d/ to keep it)"),
        );
    }
    let made = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .map(|ex| ex.run(async { 1 + 1 }));
    match made {
        Ok(2) if disabled == Some(1) => finding(
            Level::Warn,
            "io_uring",
            "works here, but kernel.io_uring_disabled = 1 limits it to root and kernel.io_uring_group".into(),
            Some("run the relay as root or in io_uring_group, or sysctl -w kernel.io_uring_disabled=0"),
        ),
        Ok(_) => finding(Level::Ok, "io_uring", format!("an executor starts ({executors} will run)"), None),
        Err(e) => finding(
            Level::Fail,
            "io_uring",
            format!("cannot start an executor: {e}"),
            Some(
                "Linux 5.8+ with io_uring allowed (no seccomp filter denying io_uring_setup), and enough locked memory",
            ),
        ),
    }
}

fn memlock(executors: usize) -> Finding {
    let need = executors as u64 * LOCKED_PER_EXECUTOR;
    let (soft, hard) = rlimit(libc::RLIMIT_MEMLOCK);
    let detail = format!("RLIMIT_MEMLOCK soft {} hard {}; the layout needs {}", show(soft), show(hard), show(need));
    if hard < need {
        finding(Level::Fail, "locked memory", detail, Some("LimitMEMLOCK=infinity (systemd) or ulimit -l unlimited"))
    } else if soft < need {
        finding(Level::Warn, "locked memory", detail + " (the relay raises the soft limit itself)", None)
    } else {
        finding(Level::Ok, "locked memory", detail, None)
    }
}

fn nofile(data_dir: &Path, max_subscribers: usize) -> Finding {
    let hosts = storage::Store::open(data_dir, &storage::StoreOptions::default())
        .ok()
        .and_then(|s| s.host_configs().ok())
        .map_or(0, |h| h.len());
    let need = 1024 + hosts as u64 + max_subscribers as u64;
    let (soft, hard) = rlimit(libc::RLIMIT_NOFILE);
    let detail = format!(
        "RLIMIT_NOFILE soft {soft} hard {hard}; {hosts} known hosts + {max_subscribers} subscribers + 1024 = {need}"
    );
    if hard < need {
        finding(Level::Fail, "file descriptors", detail, Some("LimitNOFILE=1048576 (systemd) or ulimit -n"))
    } else {
        finding(Level::Ok, "file descriptors", detail, None)
    }
}

fn cpus(args: &DoctorArgs) -> (Finding, usize) {
    let allowed = layout::allowed_cpus();
    match layout::resolve(
        &allowed,
        args.ingest_cores.as_deref(),
        args.fanout_cores.as_deref(),
        args.sequencer_core,
        args.compaction_core,
    ) {
        Ok(l) => {
            let executors = l.executor_cpus().len();
            let detail = format!("{} CPUs allowed; layout {}", allowed.len(), l.summary());
            if allowed.len() < 2 {
                (
                    finding(
                        Level::Warn,
                        "CPUs",
                        detail,
                        Some("give the relay 2 CPUs or more: on one, every role shares it"),
                    ),
                    executors,
                )
            } else {
                (finding(Level::Ok, "CPUs", detail, None), executors)
            }
        }
        Err(e) => (
            finding(
                Level::Fail,
                "CPUs",
                format!("{e:#}"),
                Some("fix --ingest-cores/--fanout-cores/… or the CPU affinity"),
            ),
            1,
        ),
    }
}

fn data_dir(dir: &Path, min_free: u64) -> Finding {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return finding(
            Level::Fail,
            "data directory",
            format!("cannot create {}: {e}", dir.display()),
            Some("create it, owned by the relay's user"),
        );
    }
    let probe = dir.join(".relay-doctor");
    if let Err(e) = std::fs::write(&probe, b"x") {
        return finding(
            Level::Fail,
            "data directory",
            format!("cannot write in {}: {e}", dir.display()),
            Some("make it writable by the relay's user"),
        );
    }
    let _ = std::fs::remove_file(&probe);
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return finding(Level::Fail, "data directory", "the path holds a NUL byte".into(), None);
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is NUL-terminated; statfs fills `st` when it returns 0.
    if unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return finding(Level::Fail, "data directory", format!("statfs: {}", std::io::Error::last_os_error()), None);
    }
    // SAFETY: statfs returned 0.
    let st = unsafe { st.assume_init() };
    let free = st.f_bavail.saturating_mul(st.f_bsize.unsigned_abs());
    let tmpfs = st.f_type == libc::TMPFS_MAGIC;
    // What the relay's store holds, as `du` counts it, and how much of it is write-ahead log.
    let held = match storage::dir_usage(dir) {
        Ok(u) => format!(", holds {} ({} write-ahead log)", show(u.total_bytes), show(u.wal_bytes)),
        Err(e) => format!(", cannot measure what it holds: {e}"),
    };
    let detail = format!(
        "{}: {} free{held}{}",
        dir.display(),
        show(free),
        if tmpfs { ", on tmpfs (lost at reboot)" } else { "" }
    );
    if free < min_free {
        finding(
            Level::Fail,
            "data directory",
            detail,
            Some("free space, or lower --min-free-disk (below it the relay pauses)"),
        )
    } else if free < 10 << 30 || tmpfs {
        finding(
            Level::Warn,
            "data directory",
            detail,
            Some("a persistent filesystem with room for the retention window (see README: disk per hour)"),
        )
    } else {
        finding(Level::Ok, "data directory", detail, None)
    }
}

fn clock() -> Finding {
    // SAFETY: an all-zero timex with modes 0 only reads the kernel's clock state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid timex; modes 0 changes nothing.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        finding(
            Level::Warn,
            "clock",
            "the kernel says the clock is not synchronized".into(),
            Some("run an NTP client (systemd-timesyncd, chrony): revs more than 5 min ahead of the clock are dropped"),
        )
    } else {
        finding(Level::Ok, "clock", format!("synchronized (estimated error {} µs)", tx.esterror), None)
    }
}

/// Runs every check.
pub fn check(args: &DoctorArgs) -> Vec<Finding> {
    let (cpu, executors) = cpus(args);
    vec![
        io_uring(executors),
        memlock(executors),
        nofile(&args.data_dir, args.max_subscribers),
        cpu,
        data_dir(&args.data_dir, args.min_free_disk),
        clock(),
    ]
}

/// Runs `relay doctor`: prints each finding; fails when any check fails.
///
/// # Errors
/// When a check fails (after printing them all).
pub fn run(args: &DoctorArgs) -> anyhow::Result<()> {
    let findings = check(args);
    for f in &findings {
        let level = match f.level {
            Level::Ok => "OK  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{level} {:<17} {}", f.check, f.detail);
        if let (Some(fix), true) = (&f.fix, f.level != Level::Ok) {
            println!("     {:<17} fix: {fix}", "");
        }
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}
