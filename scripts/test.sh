#!/usr/bin/env bash
# The test command (README and .ci/run): installs what is missing, runs the static checks
# (scripts/check.sh: fmt, clippy -D warnings, rustdoc -D warnings), the unit, table and
# integration tests of every crate (some drive the Python peers of scripts/py), each fuzz target
# briefly (FUZZ_SECS, default 10), a short relay-bench run, the operator checks (doctor, promtool,
# the dashboard's metric names, the admin page in Chromium), then the end-to-end scenario against the
# reference PDS and arroba.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_system_deps
raise_memlock
ensure_py
export RELAY_TEST_PYTHON=$PY   # the Python peers some integration tests drive
cd "$ROOT"
"$ROOT/scripts/check.sh"
log "cargo test"
cargo test --locked --workspace 2>&1
log "fuzz targets, ${FUZZ_SECS:-10} s each"
"$ROOT/scripts/fuzz.sh" "${FUZZ_SECS:-10}"
log "relay-bench smoke run"
"$ROOT/scripts/bench-smoke.sh"
log "operator surface: doctor, promtool, dashboard names, admin page in Chromium"
"$ROOT/scripts/operator-checks.sh"
log "end-to-end against the reference PDS"
"$ROOT/scripts/e2e-pds.sh"
