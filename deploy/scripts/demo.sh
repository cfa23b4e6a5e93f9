#!/usr/bin/env bash
# One box, the whole path: a private PostgreSQL, dash-aggregator with its
# embedded broker (MQTT 1883, HTTP 8080: metrics and the query API), and
# dash-agent collecting from three kinds of devices:
#   - five simulated MQTT devices publishing temperature and humidity every second (port 1884);
#   - a simulated PLC over Modbus TCP (dash-sim, port 5020), polled every second;
#   - a simulated POS posting a sale every two seconds to the agent's HTTP input (port 8081).
# Ctrl-C stops everything; data stays under .dash/.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/install-deps.sh
cargo build --release --bins
BIN=${CARGO_TARGET_DIR:-target}/release
STATE=$PWD/.dash
mkdir -p "$STATE"
chmod 755 "$STATE"   # the private PostgreSQL runs as 'postgres' when we are root

QUERY_TOKEN=demo-query-token
POS_TOKEN=demo-pos-token
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
cat > "$STATE/aggregator.toml" <<TOML
data_dir = "$STATE/aggregator"
[broker]
listen = "127.0.0.1:1883"
[http]
listen = "127.0.0.1:8080"
[[http.tokens]]
tenant = "demo"
sha256 = "$(sha "$QUERY_TOKEN")"
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

[http]
listen = "127.0.0.1:8081"
[[http.sources]]
name = "pos"
token_sha256 = "$(sha "$POS_TOKEN")"
kind = "sale"
time_field = "time"
source_field = "till"
[[http.sources.metrics]]
field = "amount"
metric = "sales.amount"
tags = ["location", "item"]

[[modbus.devices]]
name = "plc-1"
address = "127.0.0.1:5020"
[[modbus.devices.points]]
metric = "uptime"
kind = "holding"
address = 0
type = "u16"
unit = "s"
[[modbus.devices.points]]
metric = "temperature"
kind = "holding"
address = 2
type = "f32"
unit = "degC"
[[modbus.devices.points]]
metric = "pump.running"
kind = "coil"
address = 10
type = "bool"

# Pump state as one-minute windows instead of every reading.
[[aggregate]]
device = "plc-1"
metric = "pump.running"
window_secs = 60
TOML

pids=()
cleanup() {
  echo; echo "stopping..."
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN"/dash-aggregator serve --config "$STATE/aggregator.toml" >"$STATE/aggregator.log" 2>&1 &
pids+=($!)
"$BIN"/dash-sim modbus-tcp --listen 127.0.0.1:5020 >"$STATE/sim-modbus.log" 2>&1 &
pids+=($!)
"$BIN"/dash-agent run --config "$STATE/agent.toml" >"$STATE/agent.log" 2>&1 &
pids+=($!)
sleep 3

"$BIN"/dash-sim mqtt --broker 127.0.0.1:1884 --devices 5 >"$STATE/sim-mqtt.log" 2>&1 &
pids+=($!)
"$BIN"/dash-sim pos --agent 127.0.0.1:8081 --token "$POS_TOKEN" --rate 0.5 >"$STATE/sim-pos.log" 2>&1 &
pids+=($!)

PGURL="postgres://dash@localhost/dash?host=$STATE/aggregator/postgres"
cat <<INFO

Dash is running.
  devices publish to   mqtt://127.0.0.1:1884  (topic sensors/DEVICE/METRIC, plain numbers)
  agent -> aggregator  mqtt://127.0.0.1:1883
  Modbus PLC           dash-sim on 127.0.0.1:5020, polled by the agent every second
  POS sales            dash-sim posting to http://127.0.0.1:8081/ingest/pos
  metrics              curl -s http://127.0.0.1:8080/metrics
  series               curl -s -H 'Authorization: Bearer $QUERY_TOKEN' http://127.0.0.1:8080/api/v1/tenants/demo/series
  a chart              curl -s -H 'Authorization: Bearer $QUERY_TOKEN' "http://127.0.0.1:8080/api/v1/tenants/demo/query?device=plc-1&metric=temperature&from=\$(date -d '-10 min' +%s)&to=\$(date +%s)&step=30s"
  sales                psql "$PGURL" -c "SELECT ts, source, body FROM events ORDER BY ts DESC LIMIT 5"
  the data             psql "$PGURL" -c "SELECT s.device, s.metric, x.ts, x.value FROM samples x JOIN series s ON s.id = x.series_id ORDER BY x.ts DESC LIMIT 10"
  logs                 $STATE/aggregator.log, $STATE/agent.log
Ctrl-C to stop.
INFO
wait
