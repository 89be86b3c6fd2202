//! The `relay` binary's library: the CLI, the core layout and executors, the listeners, XRPC
//! handlers, the admin API, metrics and shutdown. It holds no relay policy: validation, sequencing and
//! fanout live in `shards`. It is a library so the request fuzz target (`fuzz/`) can drive the real
//! routers; `src/main.rs` only installs logging and the panic policy and calls [`run`].

#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod cli;
pub mod doctor;
pub mod http;
pub mod layout;
pub mod limits;
pub mod metrics;
pub mod pull_hosts;
pub mod runtime;
pub mod splitter;
mod store_threads;
pub mod xrpc;

pub use cli::{Cli, Command, Fsync, HostPolicyArgs, ServeArgs};

/// Runs a parsed command line.
///
/// # Errors
/// Whatever stopped the command (printed by `main` with `{:#}`).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => runtime::serve(*args),
        Command::PullHosts(args) => pull_hosts::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Splitter(args) => splitter::run(*args),
    }
}
