#!/usr/bin/env bash
# One box, the whole path: a private PostgreSQL, dash-aggregator with its
# embedded broker (MQTT 1883, HTTP 8080), dash-agent listening for devices on
# 1884, and five simulated MQTT devices publishing temperature and humidity
# every second. Ctrl-C stops everything; data stays under .dash/.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/install-deps.sh
cargo build --release --bins
STATE=$PWD/.dash
mkdir -p "$STATE"
chmod 755 "$STATE"   # the private PostgreSQL runs as 'postgres' when we are root

cat > "$STATE/aggregator.toml" <<TOML
data_dir = "$STATE/aggregator"
[broker]
listen = "127.0.0.1:1883"
[http]
listen = "127.0.0.1:8080"
TOML
cat > "$STATE/agent.toml" <<TOML
tenant = "demo"
agent_id = "gateway-1"
data_dir = "$STATE/agent"
[uplink]
url = "mqtt://127.0.0.1:1883"
batch_linger_ms = 1000
[devices]
listen = "127.0.0.1:1884"
[[devices.mappings]]
topic = "sensors/{device}/{metric}"
TOML

pids=()
cleanup() {
  echo; echo "stopping..."
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

target/release/dash-aggregator serve --config "$STATE/aggregator.toml" >"$STATE/aggregator.log" 2>&1 &
pids+=($!)
target/release/dash-agent run --config "$STATE/agent.toml" >"$STATE/agent.log" 2>&1 &
pids+=($!)
sleep 3

simulate() {  # device id, starting temperature
  local dev=$1 t=$2 h=45
  while true; do
    t=$(awk -v t="$t" -v r="$RANDOM" 'BEGIN { printf "%.2f", t + (r % 21 - 10) / 100 }')
    h=$(awk -v h="$h" -v r="$RANDOM" 'BEGIN { printf "%.1f", h + (r % 11 - 5) / 10 }')
    mosquitto_pub -h 127.0.0.1 -p 1884 -q 1 -t "sensors/$dev/temperature" -m "$t" || true
    mosquitto_pub -h 127.0.0.1 -p 1884 -q 1 -t "sensors/$dev/humidity" -m "$h" || true
    sleep 1
  done
}
for i in 1 2 3 4 5; do simulate "th-0$i" "2$i.50" & pids+=($!); done

PGURL="postgres://dash@localhost/dash?host=$STATE/aggregator/postgres"
cat <<INFO

Dash is running.
  devices publish to   mqtt://127.0.0.1:1884  (topic sensors/DEVICE/METRIC, plain numbers)
  agent -> aggregator  mqtt://127.0.0.1:1883
  metrics              curl -s http://127.0.0.1:8080/metrics
  the data             psql "$PGURL" -c "SELECT s.device, s.metric, x.ts, x.value FROM samples x JOIN series s ON s.id = x.series_id ORDER BY x.ts DESC LIMIT 10"
  logs                 $STATE/aggregator.log, $STATE/agent.log
Ctrl-C to stop.
INFO
wait
