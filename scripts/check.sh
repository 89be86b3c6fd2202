#!/usr/bin/env bash
# The static checks CI runs before the tests (scripts/test.sh calls this first): formatting, clippy
# with every warning an error (the crates' no-panic lints, `unwrap_used`, `indexing_slicing`, ...,
# are enforced here, not remembered), and the API docs with warnings denied (broken intra-doc
# links, bare URLs).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo doc (warnings denied)"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --workspace --locked
