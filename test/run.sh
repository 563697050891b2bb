#!/usr/bin/env bash
# npm test. First every test file on the default backend (the embedded SQLite file), then every
# suite that speaks to Keybrake over HTTP or runs its process again, with every server it starts on
# a fresh PostgreSQL database (KEYBRAKE_TEST_BACKEND=postgres, test/helpers.ts): the same files, not
# copies. Store tests and the replica tests run on both backends within the first pass
# (test/backends.ts). Not repeated: tests of SQLite itself (its file, checkpoints, fsyncs), of the
# configuration, of pure functions, and the demo (which always runs on its own SQLite data dir);
# the long Chromium walk-through (admin-browser) runs once: its pages are checked on PostgreSQL by
# admin.test.ts and the budgets and governance browser tests.
# Arguments go to the first pass only (`npm test -- test/x.test.ts` runs just that file, on SQLite).
set -euo pipefail
# --timeout: bunfig.toml sets it too, but the --parallel workers do not read it.
cd "$(dirname "$0")/.."

POSTGRES_SUITES=(
  test/admin.test.ts
  test/audit-spend.test.ts
  test/budgets-browser.test.ts
  test/governance-tokens-browser.test.ts
  test/operations-process.test.ts
  test/process.test.ts
  test/management.test.ts
  test/governance-tokens.test.ts
  test/proxy-stripe.test.ts
  test/proxy-twilio-resend.test.ts
  test/proxy-log.test.ts
  test/retry-safety.test.ts
  test/attack-families.test.ts
  test/pricing-fuzz.test.ts
  test/budgets.test.ts
  test/webhooks.test.ts
  test/clients.test.ts
  test/recipes.test.ts
)

bun test --parallel --timeout 60000 "$@"
[ $# -eq 0 ] || exit 0

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${KEYBRAKE_PG_BIN:-}" ]; then
  if [ "${KEYBRAKE_TEST_POSTGRES:-}" = required ]; then
    echo "KEYBRAKE_TEST_POSTGRES=required but no PostgreSQL server binaries found (apt-get install postgresql)" >&2
    exit 1
  fi
  echo "PostgreSQL is not installed: the suites ran on SQLite only (apt-get install postgresql for both)." >&2
  exit 0
fi
echo
echo "== the same suites on PostgreSQL"
KEYBRAKE_TEST_BACKEND=postgres bun test --parallel --timeout 60000 "${POSTGRES_SUITES[@]}"
