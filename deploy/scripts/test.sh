#!/usr/bin/env bash
# The whole test suite, as CI runs it: lints, the real binaries, unit and
# end-to-end tests (each starts its own PostgreSQL cluster and brokers), the
# storage suites again on TimescaleDB, then the rustc 1.85 build of the agent,
# both from a Debian 13 root, and the ARM builds of the agent with a qemu
# smoke run against an x86 aggregator. Each step prints its time.
#   deploy/scripts/test.sh            everything
#   DASH_SKIP_MSRV=1 deploy/scripts/test.sh   skip the Debian 13 / rustc 1.85 check
#   DASH_SKIP_ARM=1 deploy/scripts/test.sh    skip the ARM builds
set -euo pipefail
# Suites that talk to PostgreSQL directly (tests/tests/*.rs), run on both servers.
STORAGE_SUITES="tiers ingest retention query"
cd "$(dirname "$0")/../.."
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
step "build" cargo build --workspace --bins --locked
step "suite on PostgreSQL 15" cargo nextest run --workspace --locked --no-fail-fast
# The storage suites again on PostgreSQL 17 + TimescaleDB (hypertables) from the Debian 13 root.
step "Debian 13 root" deploy/scripts/debian13-root.sh
step "storage suites on TimescaleDB" env DASH_TEST_DB=timescaledb \
  cargo nextest run --locked -p dash-tests $(printf -- '--test %s ' $STORAGE_SUITES) --no-fail-fast
if [ -z "${DASH_SKIP_MSRV:-}" ]; then
  step "agent with rustc 1.85" deploy/scripts/check-msrv.sh
fi
if [ -z "${DASH_SKIP_ARM:-}" ]; then
  step "ARM builds and qemu smoke" deploy/scripts/build-arm.sh
fi
