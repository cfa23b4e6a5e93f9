#!/usr/bin/env bash
# The whole test suite, as CI runs it: lints, the real binaries, unit and
# end-to-end tests (each starts its own PostgreSQL cluster and brokers), the
# same suite again on TimescaleDB, then the rustc 1.85 build of the agent,
# both from a Debian 13 root, and the ARM builds of the agent with a qemu
# smoke run against an x86 aggregator. Each step prints its time.
#   deploy/scripts/test.sh            everything
#   DASH_SKIP_MSRV=1 deploy/scripts/test.sh   skip the Debian 13 / rustc 1.85 check
#   DASH_SKIP_ARM=1 deploy/scripts/test.sh    skip the ARM builds
#   DASH_SKIP_TIMESCALEDB=1 deploy/scripts/test.sh   skip the second run on TimescaleDB
# Builds are cached between runs on the same machine under DASH_CACHE_DIR
# (default /var/tmp/dash-cache; empty: cargo's own target/), beside the
# Debian 13 root (/var/tmp/dash-trixie), which keeps the ARM and rustc 1.85
# builds.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -n "${DASH_CACHE_DIR-/var/tmp/dash-cache}" ]; then
  export CARGO_TARGET_DIR=${DASH_CACHE_DIR:-/var/tmp/dash-cache}/target
  mkdir -p "$CARGO_TARGET_DIR"
  echo "build cache: $CARGO_TARGET_DIR"
fi
STARTED=$SECONDS
step() {
  local name=$1 t=$SECONDS
  shift
  echo "==> $name"
  "$@"
  echo "==> $name: $((SECONDS - t)) s (total $((SECONDS - STARTED)) s)"
}
step "dependencies" deploy/scripts/install-deps.sh
step "fmt" cargo fmt --all --check
step "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "advisories (cargo audit)" deploy/scripts/audit.sh
step "build" cargo build --workspace --bins --locked
# The profile users run: tests/tests/release.rs starts this build.
step "release agent" cargo build --release --locked -p dash-agent --bin dash-agent
step "suite on PostgreSQL 15" cargo nextest run --workspace --locked --no-fail-fast
step "isolation suite against a planted scope leak" deploy/scripts/planted-leak.sh
step "Debian 13 root" deploy/scripts/debian13-root.sh
# The whole suite again on PostgreSQL 17 + TimescaleDB (hypertables) from the
# Debian 13 root: every test that starts a database gets that one. Left out:
# the suites that use no database (the release agent's damage test, logs)
# and the tests of the aggregator's private cluster, which is the host's
# PostgreSQL whatever DASH_TEST_DB says.
if [ -z "${DASH_SKIP_TIMESCALEDB:-}" ]; then
  step "suite on TimescaleDB" env DASH_TEST_DB=timescaledb \
    cargo nextest run --workspace --locked --no-fail-fast \
    -E 'not (binary(release) | binary(logs) | test(/second_start|without_a_database_url/))'
fi
if [ -z "${DASH_SKIP_MSRV:-}" ]; then
  step "agent with rustc 1.85" deploy/scripts/check-msrv.sh
fi
if [ -z "${DASH_SKIP_ARM:-}" ]; then
  step "ARM builds and qemu smoke" deploy/scripts/build-arm.sh
fi
