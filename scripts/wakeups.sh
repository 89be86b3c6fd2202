#!/usr/bin/env bash
# Wake-ups and syscalls of the relay under a relay-bench load, per thread: `perf stat` counts, for
# SECS seconds in the middle of the run, each thread's CPU time (task-clock), context switches
# (about one per park of a glommio executor) and its io_uring_enter, membarrier, fdatasync,
# recvfrom, write and futex calls; then the run's relay CPU-us per event.
#
#   scripts/wakeups.sh BIN SECS [relay-bench run options...]
#   scripts/wakeups.sh target/release/relay 10 --hosts 10 --accounts-per-host 50 --subscribers 1 --rate 1000
#
# BIN is the relay binary to spawn (alternate two of them to compare). Needs the release build
# (cargo build --release -p engine -p bench) and perf (Debian: linux-perf) with syscall
# tracepoints (root, or kernel.perf_event_paranoid <= 1 and tracefs readable).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BIN=${1:?usage: wakeups.sh BIN SECS [relay-bench run options...]}
SECS=${2:?usage: wakeups.sh BIN SECS [relay-bench run options...]}
shift 2
command -v perf >/dev/null || { log "perf is missing (apt-get install linux-perf)"; exit 1; }
raise_memlock
cd "$ROOT"
[ -x target/release/relay-bench ] || { log "build first: cargo build --release -p engine -p bench"; exit 1; }
WORK=$(mktemp -d /tmp/relay-wakeups.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
start_bench_relay --spawn "$BIN" --duration $((SECS + 10)) "$@"
sleep 5
EVENTS=task-clock,context-switches
for call in io_uring_enter membarrier fdatasync recvfrom write futex; do EVENTS+=",syscalls:sys_enter_$call"; done
perf stat --per-thread -e "$EVENTS" -p "$PID" -- sleep "$SECS" 2>"$WORK/perf.txt" >/dev/null
wait $BENCH || true
# thread-pid, count, event: the threads that did anything.
awk '$2 ~ /^[0-9.,]+$/ && $2 != "0" { ev = ($3 == "msec") ? "task-clock (ms)" : $3; printf "%-28s %14s %s\n", $1, $2, ev }' "$WORK/perf.txt" | sort
tail -n 1 "$WORK/bench.out" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print("accepted %.0f/s, relay CPU %.1f%%, %.0f CPU-us per event, lost %d" % (
    d["accepted_per_s"], d["relay_cpu_pct_avg"], d["relay_cpu_pct_avg"] * 1e4 / d["accepted_per_s"], d["lost_by_seq"]))'
