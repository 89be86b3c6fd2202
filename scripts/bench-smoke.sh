#!/usr/bin/env bash
# A few seconds of relay-bench against our relay, twice: small fleet, lean subscribers, Jetstream
# subscribers and a prefilled store with events made live; then the same traffic from a pre-generated
# corpus (built, cached, loaded). The tool works end to end, events are delivered, nothing is lost or
# repeated, and the JSON lines parse; last, topology mode (relay -> splitter -> splitter). No speed
# threshold.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
raise_memlock
cd "$ROOT"
cargo build --locked -p engine -p bench
out=$(mktemp /tmp/relay-bench-smoke.XXXXXX.json)
corpus=$(mktemp -d /tmp/relay-bench-corpus.XXXXXX)
trap 'rm -rf "$out" "$corpus"' EXIT
target/debug/relay-bench run --spawn target/debug/relay --relay-arg=--fsync=never \
  --hosts 4 --accounts-per-host 5 --subscribers 4 --rate 200 --duration 4 --cursor-subscribers 1 \
  --jetstream-subscribers 4 --prefill-events 2000 \
  --label smoke --json-out "$out" >/dev/null
# The corpus run twice: the first builds and caches it, the second loads it.
for label in smoke-corpus-built smoke-corpus-loaded; do
  target/debug/relay-bench run --spawn target/debug/relay --relay-arg=--fsync=never \
    --hosts 4 --accounts-per-host 5 --subscribers 2 --rate 200 --duration 3 \
    --corpus-events 1200 --corpus-dir "$corpus" --label "$label" --json-out "$out" >/dev/null
done
python3 - "$out" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]).read().strip().splitlines()]
r = lines[0]
problems = []
for c in lines[1:]:
    for k in ("lost_by_seq", "repeated_by_seq", "lost_by_repo_rev", "repeated_by_repo_rev"):
        if c[k] != 0: problems.append(f"{c['label']}: {k} = {c[k]}")
    if c["offered"] <= 0 or c["accepted"] != c["offered"]: problems.append(f"{c['label']}: accepted {c['accepted']} of {c['offered']}")
    if c["latency_us"]["count"] <= 0: problems.append(f"{c['label']}: no latency samples")
    if c.get("corpus_exhausted") or not (c.get("corpus") or {}).get("events"): problems.append(f"{c['label']}: corpus {c.get('corpus')}")
if len(lines) == 3 and (lines[1]["corpus"]["built_s"] is None or lines[2]["corpus"]["built_s"] is not None):
    problems.append("the corpus was not built once and then loaded")
if r["offered"] <= 0: problems.append("nothing offered")
if r["accepted"] != r["offered"]: problems.append(f"accepted {r['accepted']} of {r['offered']}")
if r["deliveries_per_s"] <= 0: problems.append("nothing delivered")
for k in ("lost_by_seq", "repeated_by_seq", "lost_by_repo_rev", "repeated_by_repo_rev"):
    if r[k] != 0: problems.append(f"{k} = {r[k]}")
if r["latency_us"]["count"] <= 0: problems.append("no latency samples")
if not r.get("replay_events_per_s"): problems.append("no replay measurement")
j = r.get("jetstream") or {}
if not j.get("messages"): problems.append("no Jetstream message")
if j.get("time_regressions") or j.get("cut_off"): problems.append(f"Jetstream: {j}")
if not j.get("bytes_per_message_wire_compressed"): problems.append("no compressed Jetstream message")
if r.get("fleet_cpu_us_per_frame") is None: problems.append("no fleet CPU figure")
for k in ("commit", "kernel", "cpu_model", "layout"):
    if not r.get(k): problems.append(f"missing {k}")
print(f"bench smoke: offered {r['offered']}, delivered {r['deliveries_per_s']:.0f}/s, p99 {r['latency_us']['p99']} us")
if problems:
    print("bench smoke FAILED: " + "; ".join(problems)); sys.exit(1)
PY
# Topology mode: the relay and a chain of two `relay splitter`s, subscribers spread over the three.
topo=$(mktemp /tmp/relay-bench-topology.XXXXXX.json)
trap 'rm -rf "$out" "$corpus" "$topo"' EXIT
target/debug/relay-bench run --spawn target/debug/relay --relay-arg=--fsync=never --splitter-arg=--fsync=never \
  --hosts 4 --accounts-per-host 5 --subscribers 3 --splitters 2 --splitter-chain --rate 200 --duration 3 \
  --label smoke-topology --json-out "$topo" >/dev/null
python3 - "$topo" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
t = r.get("topology") or []
problems = []
if [p.get("name") for p in t] != ["relay", "splitter 1", "splitter 2"]: problems.append(f"processes {[p.get('name') for p in t]}")
if [p.get("upstream") for p in t[1:]] != ["relay", "splitter 1"]: problems.append("not a chain")
for p in t:
    if p.get("subscribers") != 1 or not p.get("deliveries_per_s"): problems.append(f"{p.get('name')}: {p}")
    if p.get("name") != "relay" and "added_ms" not in p: problems.append(f"{p.get('name')}: no added latency")
for k in ("lost_by_seq", "repeated_by_seq"):
    if r[k] != 0: problems.append(f"{k} = {r[k]}")
print(f"bench smoke topology: {[(p['name'], round(p['latency_ms']['p50'], 1)) for p in t]}")
if problems:
    print("bench smoke topology FAILED: " + "; ".join(problems)); sys.exit(1)
PY
