#!/usr/bin/env bash
# eventstore's Message DB façade against the real Message DB (npm @eventide/message-db), side by
# side on one throwaway cluster (target/bench-message-db, 127.0.0.1:$BENCH_PORT): the same
# message_store.write_message call from 8 pgbench writers in ONE category (streams account-1 ..
# account-1000), with synchronous_commit on and off, and message_store.get_category_messages
# read throughput (batches of 1000 from random positions). Each round runs every workload once
# per system, in alternating order; the report (medians) goes into bench/README.md between the
# message_db markers.
#
# usage: bash bench/message_db.sh
#   BENCH_SECONDS=10   duration of every pgbench run
#   BENCH_ROUNDS=3     rounds
#   BENCH_MESSAGES=100000  messages seeded into each system before the read runs
#   BENCH_PORT=5444    port of the throwaway cluster
#   BENCH_INSTALL=1    0 benchmarks the eventstore installed already (no setup, no build)
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

BENCH="$ROOT/bench"
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
MESSAGES=${BENCH_MESSAGES:-100000}
PORT=${BENCH_PORT:-5444}
INSTALL=${BENCH_INSTALL:-1}
DIR="$ROOT/target/bench-message-db"
MESSAGE_DB_VERSION=1.3.1
PAYLOAD='{"account_id": "ACC-000123", "amount": 125.50, "currency": "EUR", "reference": "INV-2024-000987", "channel": "web"}'
for v in SECS ROUNDS MESSAGES PORT INSTALL; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number" >&2; exit 2; }
done

if [ "$INSTALL" != 0 ]; then
  bash "$ROOT/scripts/setup.sh"
  install_extension
fi

# the reference Message DB, from npm, as bench/run.sh fetches it
MDB="$BENCH/.npm/node_modules/@eventide/message-db/database"
mdb_installed() { sed -n 's/^ *"version": "\(.*\)",$/\1/p' "$MDB/../package.json" 2>/dev/null; }
if [ "$(mdb_installed)" != "$MESSAGE_DB_VERSION" ]; then
  log "installing Message DB $MESSAGE_DB_VERSION from npm into bench/.npm"
  mkdir -p "$BENCH/.npm"
  npm install --prefix "$BENCH/.npm" --no-audit --no-fund --loglevel=error \
    "@eventide/message-db@$MESSAGE_DB_VERSION" >/dev/null
fi

log "fresh cluster in $DIR on port $PORT"
cluster_stop "$DIR"
rm -rf "$DIR"
cluster_start "$DIR" "$PORT" "shared_buffers = 1GB" "max_wal_size = 16GB" "checkpoint_timeout = 30min" \
  "autovacuum = off" "eventstore.database = 'bench_es'"
trap 'cluster_stop "$DIR"' EXIT
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
export PGOPTIONS='-c client_min_messages=warning'

log "database bench_es: eventstore"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench_es"
"${PSQL[@]}" -d bench_es -c "CREATE EXTENSION eventstore"

# As the npm package's database/install.sh installs it (role, database, schema, table, type,
# functions, indexes, privileges): its own database in the same cluster.
log "database message_store: Message DB $(mdb_installed)"
"${PSQL[@]}" -d postgres -f "$MDB/roles/message-store.sql"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE message_store"
for f in schema/message-store.sql extensions/pgcrypto.sql tables/messages.sql types/message.sql \
         functions/message-store-version.sql functions/hash-64.sql functions/acquire-lock.sql \
         functions/category.sql functions/is-category.sql functions/id.sql functions/cardinal-id.sql \
         functions/stream-version.sql functions/write-message.sql functions/get-stream-messages.sql \
         functions/get-category-messages.sql functions/get-last-stream-message.sql \
         indexes/messages-id.sql indexes/messages-stream.sql indexes/messages-category.sql \
         privileges/schema.sql privileges/table.sql privileges/sequence.sql privileges/functions.sql; do
  "${PSQL[@]}" -d message_store -f "$MDB/$f"
done
# both databases: Message DB's clients run with this search path
for db in message_store bench_es; do
  "${PSQL[@]}" -d postgres -c "ALTER DATABASE $db SET search_path = message_store, public"
done

WORK=$(mktemp -d)
trap 'cluster_stop "$DIR"; rm -rf "$WORK"' EXIT
cat > "$WORK/write.sql" <<SQL
\set sid random(1, 1000)
SELECT message_store.write_message(gen_random_uuid()::varchar, 'account-' || :sid::text, 'Deposited', '$PAYLOAD', '{}');
SQL
cat > "$WORK/read.sql" <<SQL
\set pos random(1, $MESSAGES - 1000)
SELECT count(*) FROM message_store.get_category_messages('account', :pos, 1000);
SQL
db_of() { case $1 in messagedb) echo message_store ;; eventstore) echo bench_es ;; esac; }

reset() {
  local db; db=$(db_of "$1")
  case $1 in
    messagedb) "${PSQL[@]}" -d "$db" -c "TRUNCATE message_store.messages RESTART IDENTITY" ;;
    # the append-only guard is lifted for the TRUNCATE only; this is a throwaway cluster
    eventstore) "${PSQL[@]}" -d "$db" -c "ALTER TABLE eventstore.events DISABLE TRIGGER events_no_truncate" \
                  -c "TRUNCATE eventstore.events, eventstore.streams RESTART IDENTITY" \
                  -c "ALTER TABLE eventstore.events ENABLE TRIGGER events_no_truncate" ;;
  esac
  "${PSQL[@]}" -d "$db" -c "VACUUM ANALYZE" -c "CHECKPOINT"
}

seed() {
  local db; db=$(db_of "$1")
  reset "$1"
  "${PSQL[@]}" -d "$db" -c "SELECT count(message_store.write_message(gen_random_uuid()::varchar,
      'account-' || (1 + i % 1000)::text, 'Deposited', '$PAYLOAD', '{}')) FROM generate_series(1, $MESSAGES) AS i" \
    -c "VACUUM ANALYZE" -c "CHECKPOINT"
}

# run SYSTEM WORKLOAD CLIENTS COMMIT: prints the pgbench tps
run() {
  local db; db=$(db_of "$1")
  PGOPTIONS="-c client_min_messages=warning -c synchronous_commit=$4" \
    "$PG_BIN/pgbench" -n -M prepared -c "$3" -j 2 -T "$SECS" -h 127.0.0.1 -p "$PORT" -U postgres \
    -f "$WORK/$2.sql" "$db" 2>&1 | sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

RESULTS="$WORK/results.tsv"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  order=(eventstore messagedb)
  [ $((round % 2)) = 0 ] && order=(messagedb eventstore)
  for commit in on off; do
    for sys in "${order[@]}"; do
      reset "$sys"
      tps=$(run "$sys" write 8 "$commit")
      log "round $round: write, synchronous_commit $commit, $sys: $tps tps"
      printf 'write_%s\t%s\t%s\n' "$commit" "$sys" "$tps" >> "$RESULTS"
    done
  done
done
for sys in eventstore messagedb; do
  seed "$sys"
done
for round in $(seq 1 "$ROUNDS"); do
  order=(eventstore messagedb)
  [ $((round % 2)) = 0 ] && order=(messagedb eventstore)
  for sys in "${order[@]}"; do
    tps=$(run "$sys" read 4 on)
    log "round $round: get_category_messages, $sys: $tps batches/s"
    printf 'read\t%s\t%s\n' "$sys" "$tps" >> "$RESULTS"
  done
done

REPORT="$WORK/report.md"
python3 - "$RESULTS" "$REPORT" "$SECS" "$ROUNDS" "$MESSAGES" "$(nproc)" "$("$PG_BIN/postgres" --version)" \
  "$(cd "$ROOT" && git rev-parse --short HEAD)" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import statistics, sys, datetime
results, report, secs, rounds, messages, nproc, server, rev, load = sys.argv[1:]
runs = {}
for line in open(results):
    workload, system, tps = line.rstrip("\n").split("\t")
    runs.setdefault((workload, system), []).append(float(tps or 0))
med = {k: statistics.median(v) for k, v in runs.items()}
def row(label, workload, unit, scale=1, target=None):
    es, mdb = med[(workload, "eventstore")] * scale, med[(workload, "messagedb")] * scale
    ratio = es / mdb if mdb else float("inf")
    verdict = "" if target is None else (" (target ≥ %g×: %s)" % (target, "met" if ratio >= target else "NOT met"))
    return f"| {label} | {es:,.0f} {unit} | {mdb:,.0f} {unit} | **{ratio:.2f}×**{verdict} |"
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = [
    "<!-- message_db:begin -->",
    "# Message DB compatibility: eventstore's façade against Message DB 1.3.1",
    "",
    f"Command: `bash bench/message_db.sh` ({now}, {nproc} cores, {server}, eventstore {rev}, "
    f"load average at the end {load}). {rounds} rounds of {secs} s per run, medians; "
    "both systems in one cluster (`shared_buffers = 1GB`, autovacuum off), each in its own database.",
    "",
    "The same SQL call on both: `message_store.write_message(gen_random_uuid()::varchar, 'account-' || n, "
    "'Deposited', <110-byte JSON>, '{}')` from `pgbench -M prepared -c 8 -j 2`, n random in 1..1000, so all "
    "8 writers are in one category. Reads: `get_category_messages('account', p, 1000)` from `-c 4`, p random, "
    f"over {int(messages):,} messages in 1000 streams.",
    "",
    "| workload | eventstore | Message DB | ratio |",
    "|---|---|---|---|",
    row("write_message, synchronous_commit on", "write_on", "msg/s", target=3),
    row("write_message, synchronous_commit off", "write_off", "msg/s"),
    row("get_category_messages (1000 per call)", "read", "msg/s", scale=1000, target=1),
    "",
    "Every run: " + "; ".join(f"{w} {s}: " + ", ".join(f"{x:,.0f}" for x in v) for (w, s), v in sorted(runs.items())) + " (tps).",
    "",
    "Why: Message DB's `write_message` takes an advisory lock on the hash of the *category* and holds it to the end "
    "of the transaction, commit included, so its 8 writers of one category run one at a time; eventstore's "
    "writers lock only their stream's row and commit in parallel (group commit). Category readers of eventstore "
    "still never skip: they read below the position horizon (src/store/horizon.rs) instead.",
    "<!-- message_db:end -->",
]
open(report, "w").write("\n".join(lines) + "\n")
PY
cat "$REPORT"
README="$BENCH/README.md"
python3 - "$README" "$REPORT" <<'PY'
import re, sys
readme, report = open(sys.argv[1]).read(), open(sys.argv[2]).read().strip()
pattern = re.compile(r"<!-- message_db:begin -->.*<!-- message_db:end -->", re.S)
readme = pattern.sub(lambda _: report, readme) if pattern.search(readme) else readme.rstrip() + "\n\n" + report + "\n"
open(sys.argv[1], "w").write(readme)
PY
