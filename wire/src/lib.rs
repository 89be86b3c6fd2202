//! AT Protocol wire formats for the relay: everything that can be decided from bytes alone.
//!
//! This crate owns the atproto syntax types ([`syntax`]), event-stream frames ([`frame`]), DAG-CBOR
//! helpers ([`cbor`]), CAR slices ([`car`]), commit objects ([`commit`]), keys and signatures
//! ([`crypto`]), DID documents ([`did_doc`]), the MST and Sync 1.1 checks ([`mst`], [`validate`]),
//! drop reasons, HTTP request heads and the websocket handshake ([`http`]), and server-side websocket
//! framing ([`ws`]).
//!
//! It must not do I/O, read the clock (callers pass `now`), log, or panic on input: the lints below
//! forbid `unwrap`, `expect`, indexing and `panic!` outside tests.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod account;
pub mod car;
pub mod cbor;
pub mod commit;
pub mod crypto;
pub mod did_doc;
pub mod frame;
pub mod host;
pub mod http;
pub mod jetstream;
pub mod mst;
pub mod syntax;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod validate;
pub mod ws;

pub use account::AccountStatus;
pub use cid::Cid;
pub use host::HostStatus;
pub use syntax::{Did, HostSeq, Hostname, Nsid, RelaySeq, Tid};
pub use validate::{DropReason, Limits};
