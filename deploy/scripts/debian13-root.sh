#!/usr/bin/env bash
# Builds (once) a Debian 13 root with Debian's Rust 1.85, for checking that the
# agent and the protocol crate build with the rustc our users' gateways have.
#   deploy/scripts/debian13-root.sh [DIR]      default DIR: /var/tmp/dash-trixie
# Needs root and debootstrap (deploy/scripts/install-deps.sh installs it).
set -euo pipefail
ROOT=${1:-/var/tmp/dash-trixie}
if [ -x "$ROOT/usr/bin/cargo" ]; then
  echo "Debian 13 root ready at $ROOT"
  exit 0
fi
rm -rf "$ROOT"
debootstrap --variant=minbase --include=rustc,cargo,gcc,libc6-dev,ca-certificates trixie "$ROOT"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
echo "Debian 13 root ready at $ROOT ($(chroot "$ROOT" rustc --version))"
