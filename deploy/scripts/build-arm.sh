#!/usr/bin/env bash
# Builds dash-agent for the gateways: aarch64-unknown-linux-gnu (Raspberry
# Pi 3/4/5 with a 64-bit OS, most industrial ARM gateways) and
# armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS), with Debian 13's own
# Rust (1.85) and cross gcc inside the Debian 13 root
# (deploy/scripts/debian13-root.sh), from the committed Cargo.lock. Then runs
# each binary under qemu-user and prints the stripped sizes.
#   deploy/scripts/build-arm.sh [OUT_DIR]     default OUT_DIR: target/arm
# Needs root (chroot). The first run installs the cross packages in the root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
ROOT=${DASH_DEBIAN13_ROOT:-/var/tmp/dash-trixie}
OUT=${1:-$HERE/target/arm}
"$HERE/deploy/scripts/debian13-root.sh" "$ROOT"

in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    CARGO_HOME=/root/.cargo DEBIAN_FRONTEND=noninteractive "$@"
}
CROSS=(libstd-rust-dev:arm64 libstd-rust-dev:armhf gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
  libc6-dev-arm64-cross libc6-dev-armhf-cross binutils-aarch64-linux-gnu binutils-arm-linux-gnueabihf qemu-user)
if [ ! -x "$ROOT/usr/bin/aarch64-linux-gnu-gcc" ] || [ ! -x "$ROOT/usr/bin/arm-linux-gnueabihf-gcc" ] ||
  [ ! -x "$ROOT/usr/bin/qemu-aarch64" ] || [ ! -d "$ROOT/usr/lib/rustlib/armv7-unknown-linux-gnueabihf" ]; then
  in_root dpkg --add-architecture arm64
  in_root dpkg --add-architecture armhf
  in_root apt-get update -q
  in_root apt-get install -y -q --no-install-recommends "${CROSS[@]}"
  in_root apt-get clean
fi

# A fresh copy of the tree each time (files removed or moved since the last
# run must not linger there); the build directory beside it is kept.
rm -rf "$ROOT/build/dash"
mkdir -p "$ROOT/build/dash"
tar -C "$HERE" --exclude=./target --exclude=./.git -cf - . | tar -C "$ROOT/build/dash" -xf -
in_root sh -c '
  set -e
  cd /build/dash
  export CARGO_TARGET_DIR=/build/target-arm
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
  rustc --version
  for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    cargo build --locked --release -p dash-agent --bin dash-agent --target $t
  done
'
mkdir -p "$OUT"
cp "$ROOT/build/target-arm/aarch64-unknown-linux-gnu/release/dash-agent" "$OUT/dash-agent-aarch64"
cp "$ROOT/build/target-arm/armv7-unknown-linux-gnueabihf/release/dash-agent" "$OUT/dash-agent-armv7"
cp "$OUT/dash-agent-aarch64" "$ROOT/build/dash-agent-aarch64"
cp "$OUT/dash-agent-armv7" "$ROOT/build/dash-agent-armv7"
in_root aarch64-linux-gnu-strip /build/dash-agent-aarch64
in_root arm-linux-gnueabihf-strip /build/dash-agent-armv7
cp "$ROOT/build/dash-agent-aarch64" "$OUT/dash-agent-aarch64"
cp "$ROOT/build/dash-agent-armv7" "$OUT/dash-agent-armv7"
# They run: under qemu-user, with the target's libc from the cross packages.
in_root qemu-aarch64 -L /usr/aarch64-linux-gnu /build/dash-agent-aarch64 --version
in_root qemu-arm -L /usr/arm-linux-gnueabihf /build/dash-agent-armv7 --version
cp "$HERE/deploy/examples/agent-gateway-modbus.toml" "$ROOT/build/agent.toml"
in_root qemu-aarch64 -L /usr/aarch64-linux-gnu /build/dash-agent-aarch64 check-config /build/agent.toml
in_root qemu-arm -L /usr/arm-linux-gnueabihf /build/dash-agent-armv7 check-config /build/agent.toml
echo "stripped sizes:"
for f in "$OUT"/dash-agent-aarch64 "$OUT"/dash-agent-armv7; do
  awk -v n="$(stat -c %s "$f")" -v f="$(basename "$f")" 'BEGIN { printf "  %-24s %9d bytes (%.1f MB)\n", f, n, n / 1e6 }'
done

# Smoke run: each ARM agent, under qemu, takes readings from simulated MQTT
# sensors, buffers them and forwards them to an x86 aggregator (with its
# private PostgreSQL), which must commit them. Needs the x86 binaries
# (cargo build --workspace --bins); skipped with DASH_SKIP_ARM_SMOKE=1.
[ "${DASH_SKIP_ARM_SMOKE:-0}" = 1 ] && exit 0
BIN=${DASH_X86_BIN:-${CARGO_TARGET_DIR:-$HERE/target}/debug}
for b in dash-aggregator dash-sim; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b missing: cargo build --workspace --bins first" >&2; exit 1; }
done
port() { echo $((20000 + RANDOM % 40000)); }
SMOKE=$(mktemp -d /tmp/dash-arm-smoke.XXXXXX)
# The private PostgreSQL runs as the postgres user when started as root.
chmod 755 "$SMOKE"
BROKER=$(port) HTTP=$(port)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
DASH_DATA_DIR=$SMOKE/aggregator DASH_BROKER__LISTEN=127.0.0.1:$BROKER DASH_HTTP__LISTEN=127.0.0.1:$HTTP \
  "$BIN/dash-aggregator" serve >"$SMOKE/aggregator.log" 2>&1 &
pids+=($!)
committed() {
  { exec 3<>"/dev/tcp/127.0.0.1/$HTTP" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3; } 2>/dev/null |
    awk '/^dash_ingest_samples_total / { print $2 }'
}
for arch in aarch64 armv7; do
  case $arch in
    aarch64) QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7) QEMU="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
  esac
  DEVICES=$(port)
  mkdir -p "$ROOT/build/smoke-$arch"
  cat >"$ROOT/build/smoke-$arch/agent.toml" <<TOML
tenant = "smoke"
agent_id = "pi-$arch"
data_dir = "/build/smoke-$arch/data"

[uplink]
url = "mqtt://127.0.0.1:$BROKER"
batch_linger_ms = 200

[devices]
listen = "127.0.0.1:$DEVICES"

[[devices.mappings]]
topic = "sensors/{device}/{metric}"
TOML
  before=$(committed || true)
  # chroot execs env, env execs qemu: $! is the agent's pid.
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin $QEMU "/build/dash-agent-$arch" \
    run --config "/build/smoke-$arch/agent.toml" >"$SMOKE/agent-$arch.log" 2>&1 &
  agent=$!
  pids+=($agent)
  sleep 3
  "$BIN/dash-sim" mqtt --broker "127.0.0.1:$DEVICES" --devices 3 --every-ms 100 >"$SMOKE/sim-$arch.log" 2>&1 &
  sim=$!
  pids+=($sim)
  ok=0
  for _ in $(seq 1 60); do
    now=$(committed || true)
    if [ -n "$now" ] && [ "${now%.*}" -gt "$(( ${before:-0} + 100 ))" ]; then ok=1; break; fi
    sleep 1
  done
  kill "$sim" "$agent" 2>/dev/null || true
  if [ $ok != 1 ]; then
    echo "smoke: the $arch agent's readings did not reach the aggregator; logs in $SMOKE" >&2
    tail -20 "$SMOKE/agent-$arch.log" >&2
    exit 1
  fi
  echo "smoke: $arch agent under qemu -> x86 aggregator: $(( ${now%.*} - ${before:-0} )) samples committed"
done
