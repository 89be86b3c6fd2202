# Shared helpers for the scripts (sourced, not run).
# ROOT: the project; SHARED: ../shared beside it (peers and fixtures).
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
SHARED=${SHARED:-$(cd "$ROOT/../shared" && pwd)}
PEERS=$SHARED/peers/peers.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# clang/libclang for RocksDB's bindgen, curl for health checks. Installs only what is missing.
ensure_system_deps() {
  local missing=()
  command -v clang >/dev/null || missing+=(clang)
  # clang-sys loads libclang.so (the -dev symlink); libclang-cpp or libclang.so.1 alone is not enough.
  ls /usr/lib/llvm-*/lib/libclang.so /usr/lib/llvm-*/lib/libclang-[0-9]*.so >/dev/null 2>&1 || missing+=(libclang-dev)
  command -v curl >/dev/null || missing+=(curl)
  command -v g++ >/dev/null || missing+=(g++)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# io_uring registers locked memory: glommio needs RLIMIT_MEMLOCK >= 512 KiB per executor, the relay
# asks for 1 MiB; raise the soft limit as far as allowed (kernel-notes.md).
raise_memlock() {
  ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
  log "ulimit -l = $(ulimit -l)"
}

ensure_peers() { "$PEERS" install >/dev/null; }

# A venv in target/py with the Python peers of scripts/py/requirements.txt (reinstalled when it changes).
ensure_py() {
  PY=$ROOT/target/py/bin/python
  if ! cmp -s "$ROOT/scripts/py/requirements.txt" "$ROOT/target/py/.installed" 2>/dev/null; then
    log "installing the Python peers (scripts/py/requirements.txt)"
    python3 -m venv "$ROOT/target/py"
    "$ROOT/target/py/bin/pip" install -q --disable-pip-version-check -r "$ROOT/scripts/py/requirements.txt"
    cp "$ROOT/scripts/py/requirements.txt" "$ROOT/target/py/.installed"
  fi
}

# target/node: the npm clients of scripts/node/package.json (@skyware/jetstream and /firehose, ws,
# playwright-core), reinstalled when it changes. Scripts that import them are copied there to run.
ensure_node_clients() {
  if ! cmp -s "$ROOT/scripts/node/package.json" "$ROOT/target/node/.installed" 2>/dev/null; then
    log "installing the npm clients (scripts/node/package.json)"
    mkdir -p "$ROOT/target/node"
    cp "$ROOT/scripts/node/package.json" "$ROOT/target/node/package.json"
    (cd "$ROOT/target/node" && npm install --silent --no-audit --no-fund --no-package-lock >/dev/null)
    cp "$ROOT/scripts/node/package.json" "$ROOT/target/node/.installed"
  fi
}

build_relay() {
  (cd "$ROOT" && cargo build --locked -p engine --bin relay)
  RELAY_BIN=$ROOT/target/debug/relay
}

# wait_http URL SECS: until URL answers 200.
wait_http() {
  for _ in $(seq 1 $(( $2 * 10 ))); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# metric NAME [LABELS-REGEX] BASE: sum of the matching samples of /metrics.
metric() {
  local name=$1 base=$3 labels=${2:-}
  curl -fsS "$base/metrics" | awk -v n="$name" -v l="$labels" '
    $1 ~ "^"n"({|$)" && (l == "" || $1 ~ l) { s += $2 } END { printf "%d\n", s }'
}

# Starts `target/release/relay-bench run "$@"` in the background, its output in $WORK/bench.out and
# $WORK/bench.err, and waits until the relay it spawned has every host connected (at most 300 s).
# Sets BENCH (the bench's pid) and PID (the relay's); exits when the bench fails before that.
start_bench_relay() {
  target/release/relay-bench run "$@" >"$WORK/bench.out" 2>"$WORK/bench.err" &
  BENCH=$!
  PID=
  for _ in $(seq 1 600); do
    PID=$(sed -nE 's/.*started relay pid ([0-9]+).*/\1/p' "$WORK/bench.err" | head -n 1)
    grep -q "all hosts connected" "$WORK/bench.err" && [ -n "$PID" ] && return 0
    kill -0 $BENCH 2>/dev/null || { cat "$WORK/bench.err" >&2; exit 1; }
    sleep 0.5
  done
  log "relay-bench did not start a relay with every host connected"
  exit 1
}
