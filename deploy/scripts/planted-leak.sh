#!/usr/bin/env bash
# Shows that the isolation suite catches a missing scope filter: with the
# aggregator's `plant-scope-leak` feature the device listing forgets the
# caller's scope, and the suite must fail, on that leak.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=$(DASH_ALLOW_PLANTED_LEAK=1 cargo nextest run --locked -p dash-tests --features dash-aggregator/plant-scope-leak \
  --test access -E 'test(every_route_answers_only_within_the_callers_scope)' 2>&1)
status=$?
if [ "$status" -eq 0 ]; then
  echo "$out" | tail -20
  echo "the isolation suite passed with the scope filter removed: it checks nothing" >&2
  exit 1
fi
if ! grep -q "region viewer: GET /api/v1/tenants/acme/devices shows e-dev" <<<"$out"; then
  echo "$out" | tail -40
  echo "the isolation suite failed, but not on the planted leak" >&2
  exit 1
fi
echo "the isolation suite caught the planted leak: a region viewer was shown another region's device"
