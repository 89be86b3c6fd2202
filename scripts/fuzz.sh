#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) for SECS seconds each: the wire decoders never
# panic and decode → encode → decode round trips hold; whole HTTP requests through the relay's real
# XRPC and admin routers (http_request) never panic and always get a well-formed answer.
#
#   scripts/fuzz.sh [SECS] [TARGET...]     default: 10 s each, every target
#
# Builds with `--sanitizer none` so the stable toolchain suffices. Corpora start from the recorded
# reference-PDS frames and the interop fixtures; crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SECS=${1:-10}
shift || true
TARGETS=("$@")
command -v cargo-fuzz >/dev/null || { log "installing cargo-fuzz"; cargo install cargo-fuzz --locked --quiet; }
raise_memlock   # http_request runs glommio executors (io_uring)
cd "$ROOT"
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)
for t in frame_decode commit_verify jetstream_convert; do
  mkdir -p "fuzz/corpus/$t"
  cp -n "$SHARED"/fixtures/recorded-pds-0.5.35/*.cbor "fuzz/corpus/$t/" 2>/dev/null || true
done
mkdir -p fuzz/corpus/car_read fuzz/corpus/dagcbor_decode
python3 - "$SHARED/fixtures" <<'PY'
import base64, json, os, sys
fx = sys.argv[1]
for i, f in enumerate(json.load(open(f"{fx}/interop/data-model/data-model-fixtures.json"))):
    data = base64.b64decode(f["cbor_base64"] + "==")
    open(f"fuzz/corpus/dagcbor_decode/fixture-{i}", "wb").write(data)
PY
# RocksDB is not what is fuzzed and is not instrumented either way: link the archive the workspace's
# build (cargo test, same librocksdb-sys version, same compiler) already made instead of compiling
# RocksDB's C++ a second time (librocksdb-sys's ROCKSDB_LIB_DIR/ROCKSDB_STATIC). Without that build,
# cargo fuzz compiles it as usual.
rocksdb_a=$(ls -t "$ROOT"/target/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n 1 || true)
if [ -n "$rocksdb_a" ]; then
  export ROCKSDB_LIB_DIR=$(dirname "$rocksdb_a") ROCKSDB_STATIC=1
  log "linking the workspace's RocksDB build: $ROCKSDB_LIB_DIR"
fi
if ! cargo fuzz build --sanitizer none >"$ROOT/target/fuzz-build.log" 2>&1; then
  grep -E '^(error|warning: unused)' -A12 "$ROOT/target/fuzz-build.log" | head -n 80 >&2
  log "FAIL: the fuzz targets do not build (target/fuzz-build.log)"
  exit 1
fi
for t in "${TARGETS[@]}"; do
  log "fuzzing $t for ${SECS}s"
  cargo fuzz run --sanitizer none "$t" -- -max_total_time="$SECS" -print_final_stats=1 2>&1 \
    | grep -E 'stat::number_of_executed_units|Done|ERROR|panicked' || true
  # libFuzzer exits non-zero on a crash; re-check so the script fails loudly.
  if ls "fuzz/artifacts/$t"/crash-* >/dev/null 2>&1; then
    log "FAIL: $t found a crash: $(ls fuzz/artifacts/$t/crash-*)"
    exit 1
  fi
done
log "fuzzing passed"
