#!/usr/bin/env bash
# Builds (once) a Debian 13 root with what the host's Debian 12 lacks:
#   - Debian's Rust 1.85, to check that the agent and the protocol crate build
#     with the rustc our users' gateways have;
#   - PostgreSQL 17 with TimescaleDB 2.19 (Apache licence), for the storage
#     tests on TimescaleDB (tests/src/pg.rs starts it with chroot).
#   deploy/scripts/debian13-root.sh [DIR]      default DIR: /var/tmp/dash-trixie
# Needs root and debootstrap (deploy/scripts/install-deps.sh installs it).
set -euo pipefail
ROOT=${1:-/var/tmp/dash-trixie}
PACKAGES=(rustc cargo gcc libc6-dev ca-certificates postgresql-17 postgresql-17-timescaledb)
ready() {
  [ -x "$ROOT/usr/bin/cargo" ] && [ -x "$ROOT/usr/lib/postgresql/17/bin/postgres" ] &&
    [ -f "$ROOT/usr/share/postgresql/17/extension/timescaledb.control" ]
}
if ready; then
  echo "Debian 13 root ready at $ROOT"
  exit 0
fi
# No cluster of its own and no services started inside the root.
quiet_packages() {
  mkdir -p "$ROOT/etc/postgresql-common" "$ROOT/usr/sbin"
  echo 'create_main_cluster = false' >"$ROOT/etc/postgresql-common/createcluster.conf"
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
}
if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
  rm -rf "$ROOT"
  debootstrap --variant=minbase --include=ca-certificates trixie "$ROOT"
fi
quiet_packages
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive apt-get update -q
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
chroot "$ROOT" apt-get clean
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
ready || { echo "Debian 13 root at $ROOT is incomplete" >&2; exit 1; }
echo "Debian 13 root ready at $ROOT ($(chroot "$ROOT" rustc --version), PostgreSQL 17 + TimescaleDB)"
