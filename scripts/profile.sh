#!/usr/bin/env bash
# A CPU profile of the relay under a relay-bench load: perf samples the spawned relay (DWARF call
# graphs) for the middle of the run, and inferno turns them into a flame graph SVG.
#
#   scripts/profile.sh NAME SECS [relay-bench run options...]
#   scripts/profile.sh fanout-300 30 --hosts 10 --accounts-per-host 20 --subscribers 300 --rate 1000
#
# Writes bench/results/flame-NAME.svg and bench/results/flame-NAME.folded (collapsed stacks, for
# diffing: inferno-diff-folded A B | inferno-flamegraph). Needs the release build
# (cargo build --release -p engine -p bench), perf (Debian: linux-perf) and inferno (cargo install
# inferno; installed here if missing). perf needs kernel.perf_event_paranoid <= 1 or root.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
NAME=${1:?usage: profile.sh NAME SECS [relay-bench run options...]}
SECS=${2:?usage: profile.sh NAME SECS [relay-bench run options...]}
shift 2
command -v perf >/dev/null || { log "perf is missing (apt-get install linux-perf)"; exit 1; }
command -v inferno-flamegraph >/dev/null || { log "installing inferno"; cargo install inferno --locked --quiet; }
raise_memlock
cd "$ROOT"
[ -x target/release/relay-bench ] && [ -x target/release/relay ] || { log "build first: cargo build --release -p engine -p bench"; exit 1; }
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/relay-profile.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# The run lasts SECS + 10: perf starts 5 s in (after connections) and samples SECS seconds.
start_bench_relay --duration $((SECS + 10)) --label "profile-$NAME" "$@"
sleep 5
log "perf record of relay pid $PID for $SECS s"
perf record -F 499 --call-graph dwarf,16384 -p "$PID" -o "$WORK/perf.data" -- sleep "$SECS" 2>"$WORK/perf.err" >/dev/null
wait $BENCH || true
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/flame-$NAME.folded"
inferno-flamegraph --title "relay: $NAME ($*)" <"$OUT/flame-$NAME.folded" >"$OUT/flame-$NAME.svg"
tail -n 1 "$WORK/bench.out" >>"$OUT/profile-runs.jsonl"
log "wrote $OUT/flame-$NAME.svg ($(wc -l <"$OUT/flame-$NAME.folded") stacks); the run's JSON line is in $OUT/profile-runs.jsonl"
# The top of the profile, by function (self time), for the commit message and bench/README.md.
awk '{ n = $NF; $NF = ""; split($0, f, ";"); leaf = f[length(f)]; gsub(/ +$/, "", leaf); self[leaf] += n; total += n }
     END { for (k in self) printf "%6.2f%% %s\n", 100 * self[k] / total, k }' "$OUT/flame-$NAME.folded" | sort -rn | head -n 25
