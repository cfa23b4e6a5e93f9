#!/usr/bin/env bash
# cargo audit of Cargo.lock against the offline RustSec snapshot (the live
# database cannot be fetched here), ignoring only the advisories recorded in
# deploy/audit-exceptions.toml, each with the reason it does not affect Dash.
# Fails on any other advisory, on an exception without a reason, and on an
# exception that no longer matches anything in Cargo.lock (remove it).
#   DASH_ADVISORY_DB=PATH   the snapshot (default: ../shared/advisory-db beside the checkout)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
cd "$HERE"
DB=${DASH_ADVISORY_DB:-}
if [ -z "$DB" ]; then
  for d in "$HERE/../shared/advisory-db" /work/shared/advisory-db; do
    [ -d "$d/crates" ] && { DB=$d; break; }
  done
fi
[ -n "$DB" ] && [ -d "$DB/crates" ] || {
  echo "no RustSec advisory snapshot found: set DASH_ADVISORY_DB to a copy of the advisory database" >&2
  exit 1
}
if ! cargo audit --version >/dev/null 2>&1; then
  cargo install --locked cargo-audit
fi
EXCEPTIONS=deploy/audit-exceptions.toml
# id<TAB>reason for each [[exception]].
table=$(awk '
  /^\[\[exception\]\]/ { if (id != "") print id "\t" reason; id = ""; reason = "" }
  /^id *=/ { sub(/^id *= *"/, ""); sub(/".*$/, ""); id = $0 }
  /^reason *=/ { sub(/^reason *= *"/, ""); sub(/"[^"]*$/, ""); reason = $0 }
  END { if (id != "") print id "\t" reason }
' "$EXCEPTIONS")
args=()
while IFS=$'\t' read -r id reason; do
  [ -n "$id" ] || continue
  if [ ${#reason} -lt 20 ]; then
    echo "$EXCEPTIONS: $id has no reason (say why the affected code is not reached)" >&2
    exit 1
  fi
  args+=(--ignore "$id")
done <<< "$table"
echo "advisory snapshot: $DB; $(( ${#args[@]} / 2 )) exceptions in $EXCEPTIONS"
# Every exception must still match: audit without ignores and look for each id.
report=$(cargo audit --db "$DB" --no-fetch --stale --json 2>/dev/null || true)
while IFS=$'\t' read -r id reason; do
  [ -n "$id" ] || continue
  if ! grep -q "\"$id\"" <<< "$report"; then
    echo "$EXCEPTIONS: $id no longer applies to Cargo.lock; remove the exception" >&2
    exit 1
  fi
  echo "  excepted $id: $reason"
done <<< "$table"
exec cargo audit --db "$DB" --no-fetch --stale --deny warnings "${args[@]}"
