#!/usr/bin/env bash
# Runs every test layer and exits non-zero on any failure:
#   unit       plain #[test]s of the pure modules (cargo test)
#   pg_test    #[pg_test]s inside a throwaway PostgreSQL (cargo pgrx test, run as postgres)
#   regress    pg_regress golden files for the public SQL surface
#   client     pytest client tests against a real preloaded cluster (commits, many sessions)
#   message_db the Message DB façade (schema message_store) driven by the PyPI client
#              message-db-py, known answers, cross-API and no-skip concurrency (tests/message_db)
#   fuzz       generated inputs for every public function: never XX000, never a crash, nothing
#              written by a failed call (tests/fuzz, seeded: see its README)
#   postgrest  a real PostgREST 12 in front of the same cluster, driven over HTTP with signed JWTs
#   upgrade    every frozen earlier release installed, filled and updated: same catalog as a
#              fresh install, rows kept, the extension goes on from them (tests/upgrade)
#   replica    a real primary and hot standby: reads, the feed soak, 25006 for writes,
#              route_api_call unlogged, a PostgREST read replica, promotion (tests/replica)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

bash "$ROOT/scripts/setup.sh" || exit 1

TEST_DIR="$ROOT/target/test-cluster"
TEST_PORT=5441
declare -a SUMMARY=()
TOTAL_PASSED=0
TOTAL_FAILED=0
OUT=$(mktemp -d)

# layer NAME PASS_REGEX FAIL_REGEX COMMAND...: runs a layer, keeps its counts and verdict
layer() {
  local name=$1 pass_re=$2 fail_re=$3; shift 3
  log "layer $name"
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local passed failed
  passed=$(grep -oE "$pass_re" "$OUT/$name.log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
  failed=$(grep -oE "$fail_re" "$OUT/$name.log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
  passed=${passed:-0}; failed=${failed:-0}
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  TOTAL_PASSED=$((TOTAL_PASSED + passed)); TOTAL_FAILED=$((TOTAL_FAILED + failed))
  SUMMARY+=("$(printf '%-9s %s  (%s passed, %s failed)' "$name" "$([ "$rc" -eq 0 ] && echo ok || echo FAILED)" "$passed" "$failed")")
}

layer unit '[0-9]+ passed;' '[0-9]+ failed;' \
  cargo test --lib -- --skip tests::tests::

mkdir -p "$ROOT/target/pgrx-test"; chown postgres:postgres "$ROOT/target/pgrx-test"
layer pg_test 'test result: .* [0-9]+ passed;' '[0-9]+ failed;' \
  cargo pgrx test pg15 --runas postgres --pgdata "$ROOT/target/pgrx-test/data" tests::tests::

# The layers below use the release build, installed into Debian's PostgreSQL 15.
install_extension || exit 1
# workers serve the databases the worker tests and the upgrade test use
rm -rf "$TEST_DIR"
cluster_start "$TEST_DIR" "$TEST_PORT" \
  "eventstore.database = 'eventstore_worker_test,upgrade_updated'" "eventstore.worker_poll_interval = 50" "eventstore.webhook_allowed_hosts = '127.0.0.1'" "eventstore.webhook_timeout = 2000" || exit 1
trap 'cluster_stop "$TEST_DIR"; rm -rf "$OUT"' EXIT

layer regress 'All [0-9]+ tests passed' '[0-9]+ of ' \
  bash "$ROOT/tests/pg_regress/run.sh" "$TEST_PORT"

layer client '[0-9]+ passed' '[0-9]+ failed|[0-9]+ errors?' \
  env EVENTSTORE_TEST_HOST=127.0.0.1 EVENTSTORE_TEST_PORT="$TEST_PORT" EVENTSTORE_TEST_CLUSTER="$TEST_DIR" \
  "$VENV/bin/pytest" -q -p no:cacheprovider "$ROOT/tests/client"

layer message_db '[0-9]+ passed' '[0-9]+ failed|[0-9]+ errors?' \
  env EVENTSTORE_TEST_HOST=127.0.0.1 EVENTSTORE_TEST_PORT="$TEST_PORT" EVENTSTORE_TEST_CLUSTER="$TEST_DIR" \
  "$VENV/bin/pytest" -q -p no:cacheprovider "$ROOT/tests/message_db"

layer fuzz '[0-9]+ passed' '[0-9]+ failed|[0-9]+ errors?' \
  env EVENTSTORE_TEST_HOST=127.0.0.1 EVENTSTORE_TEST_PORT="$TEST_PORT" EVENTSTORE_TEST_CLUSTER="$TEST_DIR" \
  "$VENV/bin/pytest" -q -p no:cacheprovider "$ROOT/tests/fuzz"

layer postgrest '[0-9]+ passed' '[0-9]+ failed|[0-9]+ errors?' \
  env EVENTSTORE_TEST_HOST=127.0.0.1 EVENTSTORE_TEST_PORT="$TEST_PORT" POSTGREST="$POSTGREST" \
  "$VENV/bin/pytest" -q -p no:cacheprovider "$ROOT/tests/postgrest"

layer upgrade 'upgrade: [0-9]+ passed' 'passed, [0-9]+ failed' \
  bash "$ROOT/tests/upgrade/run.sh" "$TEST_PORT"

# a primary and a hot standby of its own (pg_basebackup -R), on 5443 and 5444, stopped at its end
layer replica '[0-9]+ passed' '[0-9]+ failed|[0-9]+ errors?' \
  env POSTGREST="$POSTGREST" bash "$ROOT/tests/replica/run.sh" 5443 5444

echo
echo "== summary =="
printf '%s\n' "${SUMMARY[@]}"
echo "tests: $TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$TOTAL_FAILED" -eq 0 ]
