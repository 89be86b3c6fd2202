//! `relay`: an AT Protocol relay on io_uring, one glommio executor per core. See the README.

use std::process::ExitCode;

use clap::Parser;

/// A panic anywhere is fatal: the message is logged and the process aborts (exit by SIGABRT), so
/// its supervisor restarts it. A panicking executor thread would otherwise die alone, taking its
/// listener and subscribers with it while the process stays up, deaf ("alive but deaf").
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(thread = name, "panic: {info}; aborting");
        default(info);
        eprintln!("relay: fatal: panic in thread {name}: {info}; aborting so the supervisor restarts the relay");
        std::process::abort();
    }));
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    install_panic_hook();
    let cli = engine::Cli::parse();
    match engine::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    use std::time::Duration;

    /// A panic on any thread (here a thread named like an executor) aborts the whole process with the
    /// panic message, instead of leaving it alive without that thread.
    #[test]
    fn a_panic_on_any_thread_aborts_the_process() {
        if std::env::var_os("RELAY_PANIC_HOOK_CHILD").is_some() {
            super::install_panic_hook();
            let _ = std::thread::Builder::new()
                .name("relay-cpu1".into())
                .spawn(|| panic!("boom in a handler"))
                .map(|t| t.join());
            // Reached only if the panic did not end the process.
            std::thread::sleep(Duration::from_secs(2));
            std::process::exit(0);
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::a_panic_on_any_thread_aborts_the_process", "--nocapture", "--test-threads=1"])
            .env("RELAY_PANIC_HOOK_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "status {:?}; stderr: {stderr}", out.status);
        assert!(stderr.contains("boom in a handler") && stderr.contains("relay-cpu1"), "{stderr}");
    }
}
