#!/usr/bin/env bash
# Benchmarks downstream of the log (aggregate state, async projections, webhooks) on a
# throwaway cluster (target/bench-downstream, 127.0.0.1:5443) with the worker serving the
# bench database; writes the report into bench/README.md between the downstream markers.
#   bash bench/downstream.sh            # BENCH_SCALE=0.2 for a quick run
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
bash "$ROOT/scripts/setup.sh"
install_extension
DIR="$ROOT/target/bench-downstream"
PORT=5443
cluster_stop "$DIR"; rm -rf "$DIR"
cluster_start "$DIR" "$PORT" "eventstore.database = 'eventstore_bench'" "eventstore.webhook_allowed_hosts = '127.0.0.1'" \
  "shared_buffers = '1GB'" "max_wal_size = '8GB'" "synchronous_commit = off"
trap 'cluster_stop "$DIR"' EXIT
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE eventstore_bench"
"${PSQL[@]}" -d eventstore_bench -c "CREATE EXTENSION eventstore"
REPORT=$(mktemp)
{
  echo "<!-- downstream:begin -->"
  echo "# Downstream of the log"
  echo
  echo "Command: \`bash bench/downstream.sh\` ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $("$PG_BIN/postgres" --version), synchronous_commit off)."
  echo
  BENCH_PORT=$PORT "$VENV/bin/python" "$ROOT/bench/downstream.py" "$@"
  echo "<!-- downstream:end -->"
} > "$REPORT"
cat "$REPORT"
README="$ROOT/bench/README.md"
touch "$README"
python3 - "$README" "$REPORT" <<'PY'
import re, sys
readme, report = open(sys.argv[1]).read(), open(sys.argv[2]).read().strip()
pattern = re.compile(r"<!-- downstream:begin -->.*<!-- downstream:end -->", re.S)
readme = pattern.sub(lambda _: report, readme) if pattern.search(readme) else readme.rstrip() + "\n\n" + report + "\n"
open(sys.argv[1], "w").write(readme)
PY
