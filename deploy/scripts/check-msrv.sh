#!/usr/bin/env bash
# Builds and tests dash-agent, dash-mqtt and dash-shared with Debian 13's rustc 1.85
# inside the Debian 13 root (deploy/scripts/debian13-root.sh), using the
# committed Cargo.lock: proves `rust-version = "1.85"` is true.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
ROOT=${DASH_DEBIAN13_ROOT:-/var/tmp/dash-trixie}
"$HERE/deploy/scripts/debian13-root.sh" "$ROOT"
# A fresh copy of the tree each time (files removed or moved since the last
# run must not linger there); the build directory beside it is kept.
rm -rf "$ROOT/build/dash"
mkdir -p "$ROOT/build/dash"
tar -C "$HERE" --exclude=./target --exclude=./.git -cf - . | tar -C "$ROOT/build/dash" -xf -
chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root CARGO_HOME=/root/.cargo \
  CARGO_TARGET_DIR=/build/target \
  sh -c 'cd /build/dash && rustc --version && cargo build --locked -p dash-shared -p dash-runtime -p dash-mqtt -p dash-agent --bins && cargo test --locked -p dash-shared -p dash-runtime -p dash-mqtt -p dash-agent'
