#!/usr/bin/env bash
# Runs the golden files in sql/ against a running cluster (port $1), each in a fresh database
# with eventstore installed, and compares with expected/. PGXS's pg_regress is called directly:
# `cargo pgrx regress` cannot run as root.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PORT=${1:?port}
PG_REGRESS="$(dirname "$(/usr/lib/postgresql/15/bin/pg_config --pgxs)")/../test/regress/pg_regress"
OUTDIR="$HERE/../../target/pg_regress"
mkdir -p "$OUTDIR"
TESTS=$(cd "$HERE/sql" && ls *.sql | sed 's/\.sql$//' | sort)
# shellcheck disable=SC2086
"$PG_REGRESS" --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres \
  --dbname=eventstore_regress --load-extension=eventstore \
  --inputdir="$HERE" --outputdir="$OUTDIR" $TESTS || {
  echo "--- regression.diffs ---"; cat "$OUTDIR/regression.diffs" 2>/dev/null | head -200; exit 1; }
