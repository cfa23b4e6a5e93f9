#!/usr/bin/env bash
# Installs what Dash's demo and tests need on Debian/Ubuntu, skipping what is
# already there: PostgreSQL (server binaries, no service is started),
# Mosquitto and its clients (an external broker for tests, devices for the demo), debootstrap (the Debian 13 root
# for the rustc 1.85 check and TimescaleDB), socat (serial-line pairs for the Modbus RTU tests) and
# paho-mqtt (PyPI, in a venv under the build cache), cargo-nextest and
# cargo-audit when missing.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v socat >/dev/null 2>&1 || need+=(socat)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a cluster and a broker on install; Dash runs its own.
  $SUDO systemctl disable --now postgresql mosquitto >/dev/null 2>&1 || true
fi
# paho-mqtt from PyPI for the device listener's client tests, in a venv
# beside the build cache (tests/tests/devices/clients.rs finds it there).
PY=${DASH_CACHE_DIR:-/var/tmp/dash-cache}/python
if ! "$PY/bin/python3" -c 'import paho.mqtt' >/dev/null 2>&1; then
  python3 -m venv "$PY"
  "$PY/bin/pip" install --quiet --disable-pip-version-check 'paho-mqtt==2.1.0'
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
if ! cargo audit --version >/dev/null 2>&1; then
  cargo install --locked cargo-audit
fi
