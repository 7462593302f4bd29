#!/usr/bin/env bash
# Runs the golden files in sql/ against a running cluster (port $1), each in a fresh database
# with eventstore installed, and compares with expected/. PGXS's pg_regress is called directly:
# `cargo pgrx regress` cannot run as root.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PORT=${1:?usage: run.sh PORT}
PG_REGRESS="$(dirname "$("${PG_BIN:-/usr/lib/postgresql/15/bin}/pg_config" --pgxs)")/../test/regress/pg_regress"
OUTDIR="$HERE/../../target/pg_regress"
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
rc=0
for file in "$HERE"/sql/*.sql; do
  test=$(basename "$file" .sql)
  db="regress_${test}"
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" || exit 1
  "${PSQL[@]}" -d "$db" -c "CREATE EXTENSION eventstore" -f "$HERE/setup.sql" || exit 1
  "$PG_REGRESS" --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres --dbname="$db" \
    --inputdir="$HERE" --outputdir="$OUTDIR/$test" "$test" || { rc=1; cat "$OUTDIR/$test/regression.diffs" 2>/dev/null | head -150; }
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done
exit $rc
