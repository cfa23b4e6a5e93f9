#!/usr/bin/env bash
# The whole test suite, as CI runs it: lints, the real binaries, unit and
# end-to-end tests (each starts its own PostgreSQL cluster and brokers), the
# storage suites again on TimescaleDB, then the rustc 1.85 build of the agent,
# both from a Debian 13 root.
#   deploy/scripts/test.sh            everything
#   DASH_SKIP_MSRV=1 deploy/scripts/test.sh   skip the Debian 13 / rustc 1.85 check
set -euo pipefail
# Suites that talk to PostgreSQL directly (tests/tests/*.rs), run on both servers.
STORAGE_SUITES="tiers ingest retention query"
cd "$(dirname "$0")/../.."
deploy/scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast
# The storage suites again on PostgreSQL 17 + TimescaleDB (hypertables) from the Debian 13 root.
deploy/scripts/debian13-root.sh
DASH_TEST_DB=timescaledb cargo nextest run --locked -p dash-tests $(printf -- '--test %s ' $STORAGE_SUITES) --no-fail-fast
if [ -z "${DASH_SKIP_MSRV:-}" ]; then
  deploy/scripts/check-msrv.sh
fi
