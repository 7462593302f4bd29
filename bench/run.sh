#!/usr/bin/env bash
# Write-throughput benchmark: eventstore.append_event(s) against a raw INSERT into a table of the
# same shape (the physical limit) and against Message DB's write_message, side by side on one
# throwaway PostgreSQL 15 cluster (127.0.0.1:5442, target/bench-cluster). Writes the raw numbers to
# bench/results/<UTC timestamp>/ and regenerates bench/README.md below its hand-written intro.
#
# usage: bash bench/run.sh
#   BENCH_SECONDS=9    duration of every pgbench run
#   BENCH_ROUNDS=3     rounds; each round runs every workload once per system, in rotated order,
#                      and the README reports the median over rounds
#   BENCH_DIAG=1       also run the diagnostic variants (1 event/tx, async commit only): SELECT 1,
#                      raw INSERT + stream row in one statement, the same two statements in
#                      PL/pgSQL, and those plus eventstore's NOTIFY
#   BENCH_MAX_OTHER=15 a run during which other processes took more than this % of the machine's
#   BENCH_RETRIES=2    CPU is repeated, at most BENCH_RETRIES times (the least disturbed attempt counts)
#   BENCH_INSTALL=1    0 skips scripts/setup.sh and the build: benchmarks the eventstore that
#                      is installed already (the README then says so)
#   BENCH_ONLY=all     comma-separated parts to run (default all of them):
#                      writes      raw / eventstore / Message DB, async and sync, batches, diagnostics
#                      situations  append_event in the situations of the issue-13 table, each
#                                  beside raw INSERT in the same round (bench/sql/situation_*.sql)
#                      growth      append throughput and get_aggregate_state at 10^5 .. 10^7 events
#                      reads       read_all vs raw SELECT (analyzed or not), read_stream, replay,
#                                  async projection, route_api_call (bench/suite.py)
#                      emmett      Emmett 0.42 vs eventstore from Node, same pool (bench/emmett/)
#   BENCH_GROWTH_MAX=10000000  largest store of the growth curve (10^5, 10^6, ... up to it)
#   BENCH_SCALE=1      scales the sizes of the reads and emmett parts (0.2 for a quick run)
#   BENCH_PORT=5442    port of the throwaway cluster
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

BENCH="$ROOT/bench"
SECS=${BENCH_SECONDS:-9}
ROUNDS=${BENCH_ROUNDS:-3}
DIAG=${BENCH_DIAG:-1}
INSTALL=${BENCH_INSTALL:-1}
MAX_OTHER=${BENCH_MAX_OTHER:-15}
RETRIES=${BENCH_RETRIES:-2}
ONLY=${BENCH_ONLY:-all}
[ "$ONLY" = all ] && ONLY=writes,situations,growth,reads,emmett
part() { [[ ",$ONLY," == *",$1,"* ]]; }
for p in ${ONLY//,/ }; do
  case $p in writes|situations|growth|reads|emmett) ;; *) echo "BENCH_ONLY: unknown part $p" >&2; exit 2 ;; esac
done
export BENCH_GROWTH_MAX=${BENCH_GROWTH_MAX:-10000000}
export BENCH_SCALE=${BENCH_SCALE:-1}
CLIENTS=8
THREADS=2
STREAMS=1000   # also hard-wired as random(1, 1000) in the workloads and in the seed
PORT=${BENCH_PORT:-5442}
DIR="$ROOT/target/bench-cluster"
MESSAGE_DB_VERSION=1.3.1
# ~110 bytes of JSON, the same for every system and workload
PAYLOAD='{"account_id": "ACC-000123", "amount": 125.50, "currency": "EUR", "reference": "INV-2024-000987", "channel": "web"}'
# one postgresql.conf for all three systems (2 cores, 24 GB); checkpoints only between runs
SETTINGS=(
  "shared_buffers = 1GB"
  "effective_cache_size = 8GB"
  "maintenance_work_mem = 256MB"
  "max_wal_size = 16GB"
  "min_wal_size = 2GB"
  "checkpoint_timeout = 30min"
  "autovacuum = off"
  # as a deployment would: eventstore's background worker serves the benchmark's database
  "eventstore.database = 'bench_es'"
  # webhook endpoints of the situations part point at a receiver on 127.0.0.1
  "eventstore.webhook_allowed_hosts = '127.0.0.1'"
)

for v in SECS ROUNDS DIAG INSTALL MAX_OTHER RETRIES PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "BENCH_${v/SECS/SECONDS} must be a whole number" >&2; exit 2; }
done
command=""
[ -n "${BENCH_SECONDS:-}" ] && command+="BENCH_SECONDS=$SECS "
[ -n "${BENCH_ROUNDS:-}" ] && command+="BENCH_ROUNDS=$ROUNDS "
[ -n "${BENCH_DIAG:-}" ] && command+="BENCH_DIAG=$DIAG "
[ -n "${BENCH_INSTALL:-}" ] && command+="BENCH_INSTALL=$INSTALL "
[ -n "${BENCH_MAX_OTHER:-}" ] && command+="BENCH_MAX_OTHER=$MAX_OTHER "
[ -n "${BENCH_RETRIES:-}" ] && command+="BENCH_RETRIES=$RETRIES "
[ -n "${BENCH_ONLY:-}" ] && command+="BENCH_ONLY=$BENCH_ONLY "
[ "$BENCH_GROWTH_MAX" != 10000000 ] && command+="BENCH_GROWTH_MAX=$BENCH_GROWTH_MAX "
[ "$BENCH_SCALE" != 1 ] && command+="BENCH_SCALE=$BENCH_SCALE "
[ -n "${BENCH_PORT:-}" ] && command+="BENCH_PORT=$PORT "
command+="bash bench/run.sh"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$BENCH/results/$STAMP"
mkdir -p "$OUT/logs" "$OUT/workloads"
started=$(date +%s)

if [ "$INSTALL" != 0 ]; then
  bash "$ROOT/scripts/setup.sh"
  install_extension
else
  log "BENCH_INSTALL=0: benchmarking the eventstore installed already"
fi

MDB="$BENCH/.npm/node_modules/@eventide/message-db/database"
mdb_installed() { sed -n 's/^ *"version": "\(.*\)",$/\1/p' "$MDB/../package.json" 2>/dev/null; }
PGBENCH_PARTS=0
{ part writes || part situations; } && PGBENCH_PARTS=1
if [ "$PGBENCH_PARTS" = 1 ] && [ "$(mdb_installed)" != "$MESSAGE_DB_VERSION" ]; then
  if ! command -v npm >/dev/null; then
    log "installing npm (Debian package) to fetch Message DB"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  log "installing Message DB $MESSAGE_DB_VERSION from npm into bench/.npm"
  mkdir -p "$BENCH/.npm"
  npm install --prefix "$BENCH/.npm" --no-audit --no-fund --loglevel=error \
    "@eventide/message-db@$MESSAGE_DB_VERSION" >/dev/null
fi

log "fresh cluster in $DIR on port $PORT"
cluster_stop "$DIR"
rm -rf "$DIR"
cluster_start "$DIR" "$PORT" "${SETTINGS[@]}"
RECEIVER=""
trap '[ -z "$RECEIVER" ] || kill "$RECEIVER" 2>/dev/null; cluster_stop "$DIR"' EXIT
PMPID=$(head -1 "$DIR/data/postmaster.pid")

PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
export PGOPTIONS='-c client_min_messages=warning'

# the webhook receiver of the situations part (answers 204 to every POST; port in a file)
HOOK_PORT=0
if part situations; then
  python3 "$BENCH/tool.py" receiver "$OUT/receiver.port" "$OUT/receiver.count" 2>"$OUT/receiver.log" &
  RECEIVER=$!
  for _ in $(seq 1 50); do [ -s "$OUT/receiver.port" ] && break; sleep 0.1; done
  HOOK_PORT=$(cat "$OUT/receiver.port")
fi

# a file with @PAYLOAD@ (and @HOOK_PORT@) filled in, kept with the results
fill() { local text; text=$(<"$1"); text=${text//@HOOK_PORT@/$HOOK_PORT}; printf '%s\n' "${text//@PAYLOAD@/$PAYLOAD}" > "$2"; }
for f in "$BENCH"/workloads/*.sql "$BENCH"/sql/*.sql; do fill "$f" "$OUT/workloads/$(basename "$f")"; done
W="$OUT/workloads"

log "database bench_es: eventstore and the raw baseline"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench_es"
"${PSQL[@]}" -d bench_es -f "$W/eventstore_db.sql"

# the worker could not connect before the database existed; the postmaster restarts it within 5 s
for _ in $(seq 1 60); do
  [ "$("${PSQL[@]}" -d postgres -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventstore worker' AND datname = 'bench_es'")" = 1 ] && break
  sleep 0.5
done
[ "$("${PSQL[@]}" -d postgres -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventstore worker' AND datname = 'bench_es'")" = 1 ] \
  || log "warning: no eventstore worker serves bench_es; appends send their own NOTIFY"

if part situations; then
  # a database that eventstore.database does not name: no worker serves it
  log "database bench_unserved: eventstore, no worker"
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE bench_unserved"
  "${PSQL[@]}" -d bench_unserved -f "$W/eventstore_db.sql"
fi

if [ "$PGBENCH_PARTS" = 1 ]; then
# As database/install.sh of the npm package does it (role, database, schema, pgcrypto, table,
# then install-functions.sh, install-indexes.sh, install-views.sh, install-privileges.sh).
log "database message_store: Message DB $(mdb_installed)"
"${PSQL[@]}" -d postgres -f "$MDB/roles/message-store.sql"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE message_store"
for f in schema/message-store.sql extensions/pgcrypto.sql tables/messages.sql types/message.sql \
         functions/message-store-version.sql functions/hash-64.sql functions/acquire-lock.sql \
         functions/category.sql functions/is-category.sql functions/id.sql functions/cardinal-id.sql \
         functions/stream-version.sql functions/write-message.sql functions/get-stream-messages.sql \
         functions/get-category-messages.sql functions/get-last-stream-message.sql \
         indexes/messages-id.sql indexes/messages-stream.sql indexes/messages-category.sql \
         views/stream-summary.sql views/type-summary.sql views/stream-type-summary.sql \
         views/type-stream-summary.sql views/category-type-summary.sql views/type-category-summary.sql \
         privileges/schema.sql privileges/table.sql privileges/sequence.sql privileges/functions.sql \
         privileges/views.sql; do
  "${PSQL[@]}" -d message_store -f "$MDB/$f"
done
# Message DB's functions name their objects unqualified; its clients run with this search path.
"${PSQL[@]}" -d message_store -c "ALTER DATABASE message_store SET search_path = message_store, public"
fi

server_version=$("${PSQL[@]}" -d postgres -At -c "SELECT version()")
git_rev=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src sql Cargo.toml eventstore.control || echo "+uncommitted changes")
[ "$INSTALL" != 0 ] || git_rev="as installed before the run (BENCH_INSTALL=0, not rebuilt; tree at $git_rev)"
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
{
  printf 'command\t%s\n' "$command"
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'nproc\t%s\n' "$(nproc)"
  printf 'cpu\t%s\n' "$cpu_model"
  printf 'memory\t%s\n' "$(free -g | awk '/^Mem:/ {print $2 " GB"}')"
  printf 'server\t%s\n' "$server_version"
  printf 'pgbench\t%s\n' "$("$PG_BIN/pgbench" --version)"
  printf 'eventstore\t%s\n' "$git_rev"
  printf 'message_db\t%s\n' "$(mdb_installed) (schema version $(cat "$MDB/VERSION.txt" 2>/dev/null))"
  printf 'seconds\t%s\n' "$SECS"
  printf 'rounds\t%s\n' "$ROUNDS"
  printf 'max_other\t%s\n' "$MAX_OTHER"
  printf 'clients\t%s\n' "$CLIENTS"
  printf 'threads\t%s\n' "$THREADS"
  printf 'streams\t%s\n' "$STREAMS"
  printf 'payload\t%s\n' "$PAYLOAD"
  # every setting that differs from the built-in default, as the server reports it
  "${PSQL[@]}" -d postgres -At -F $'\t' -c "SELECT 'setting', name || ' = ' || current_setting(name) FROM pg_settings
      WHERE source = 'configuration file' AND name NOT LIKE 'lc\_%' AND name NOT IN ('DateStyle', 'TimeZone',
      'log_timezone', 'default_text_search_config', 'dynamic_shared_memory_type') ORDER BY name"
  printf 'worker\t%s\n' "$("${PSQL[@]}" -d postgres -At -c "SELECT CASE count(*) WHEN 0 THEN 'no eventstore worker served bench_es: appending transactions sent their own NOTIFY' ELSE 'an eventstore background worker served bench_es (eventstore.database), as in a deployment' END FROM pg_stat_activity WHERE backend_type = 'eventstore worker' AND datname = 'bench_es'")"
  printf 'loadavg_before\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/meta.tsv"

# system -> database, reset script, table that receives the events
# The situations (es-*) are eventstore.append_event with one thing defined (bench/sql/situation_*.sql,
# run after the reset) or in a database that no worker serves.
db_of()    { case $1 in messagedb) echo message_store ;; es-unserved) echo bench_unserved ;; *) echo bench_es ;; esac; }
reset_of() { case $1 in raw|raw+stream|plpgsql|plpgsql+notify) echo reset_raw.sql ;; eventstore|es-*) echo reset_eventstore.sql ;; messagedb) echo reset_messagedb.sql ;; *) echo "" ;; esac; }
setup_of() { case $1 in es-hook-other) echo situation_hook_other.sql ;; es-hook-match) echo situation_hook_match.sql ;; es-snapshot) echo situation_snapshot.sql ;; es-inline) echo situation_inline.sql ;; *) echo "" ;; esac; }
# where the rows written go; with a matching webhook endpoint: the delivery rows (one per event)
table_of() { case $1 in raw|raw+stream|plpgsql|plpgsql+notify) echo bench.raw_events ;; eventstore|es-unserved|es-hook-other|es-snapshot|es-inline) echo eventstore.events ;; es-hook-match) echo eventstore.webhook_deliveries ;; messagedb) echo message_store.messages ;; *) echo "" ;; esac; }
script_of() { # workload system
  case $1:$2 in
    single:es-*) echo single_eventstore.sql ;;
    single:raw) echo single_raw.sql ;; single:eventstore) echo single_eventstore.sql ;;
    single:messagedb) echo single_messagedb.sql ;; single:raw+stream) echo single_rawstream.sql ;;
    single:plpgsql) echo single_plpgsql.sql ;; single:plpgsql+notify) echo single_plpgsql_notify.sql ;;
    single:select1) echo select1.sql ;;
    batch:raw) echo batch_raw.sql ;; batch:eventstore) echo batch_eventstore.sql ;;
  esac
}
count_rows() { "${PSQL[@]}" -d "$(db_of "$1")" -At -c "SELECT count(*) FROM $(table_of "$1")"; }

CSV="$OUT/runs.csv"
echo "workload,commit,system,round,seconds,events_per_tx,tps,events_per_s,latency_ms,transactions,failed,rows_ok,foreign_cpu_pct,loadavg,server_cpu_us_per_tx,pgbench_cpu_us_per_tx,attempt" > "$CSV"

# run_one WORKLOAD COMMIT(on|off) SYSTEM ROUND: one measured run. When other processes took more
# than $MAX_OTHER % of the machine's CPU during it, it is run again after a pause (at most $RETRIES
# times), and the attempt with the least other load counts.
run_one() {
  local workload=$1 commit=$2 system=$3 round=$4
  local db script reset per_tx=1 tag attempt=0 best="" best_other=""
  db=$(db_of "$system"); script=$(script_of "$workload" "$system"); reset=$(reset_of "$system")
  [ "$workload" = batch ] && per_tx=1000
  [ "$system" = select1 ] && per_tx=0
  tag="$workload-$commit-$system-r$round"
  while :; do
    attempt=$((attempt + 1))
    local at="$OUT/logs/$tag.a$attempt" before=0 after load cpu0 cpu1 t0 t1
    if [ -n "$reset" ]; then
      "${PSQL[@]}" -d "$db" -f "$W/$reset" >/dev/null
      [ -z "$(setup_of "$system")" ] || "${PSQL[@]}" -d "$db" -f "$W/$(setup_of "$system")" >/dev/null
      before=$(count_rows "$system")
    fi
    "${PSQL[@]}" -d postgres -c CHECKPOINT
    load=$(cut -d' ' -f1 /proc/loadavg)
    cpu0=$(python3 "$BENCH/tool.py" cpu "$PMPID")
    # what the benchmark's backends are doing, sampled 4 times a second by one extra session
    printf "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = '%s' AND pid <> pg_backend_pid() \\\\watch 0.25\n" "$db" \
      | "${PSQL[@]}" -At -d "$db" > "$at.waits" 2>/dev/null &
    local sampler=$!
    t0=$(date +%s.%N)
    PGOPTIONS="-c client_min_messages=warning -c synchronous_commit=$commit" \
      /usr/bin/time -f '%U %S' -o "$at.time" \
      "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -M prepared \
        -c "$CLIENTS" -j "$THREADS" -T "$SECS" -D loaded=0 -f "$W/$script" "$db" \
        > "$at.log" 2>&1 || { cat "$at.log" >&2; log "pgbench failed: $tag"; exit 1; }
    t1=$(date +%s.%N)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sleep 0.3   # let the postmaster reap the pgbench backends (their CPU lands in its cutime)
    cpu1=$(python3 "$BENCH/tool.py" cpu "$PMPID")
    local tps lat tx failed rows_ok=na foreign server_us client_us
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$at.log")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' "$at.log")
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*$/\1/p' "$at.log")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*$/\1/p' "$at.log")
    if [ -n "$reset" ]; then
      after=$(count_rows "$system")
      rows_ok=$([ $((after - before)) -eq $((tx * per_tx)) ] && echo yes || echo "no($((after - before)) rows for $tx tx)")
    fi
    read -r foreign server_us client_us < <(python3 "$BENCH/tool.py" account "$cpu0" "$cpu1" "$t0" "$t1" "$tx" $(cat "$at.time"))
    printf '    %-28s %10.1f tps  %8.1f server CPU us/tx  (CPU taken by others %s%%, rows ok: %s)\n' \
      "$tag" "$tps" "$server_us" "$foreign" "$rows_ok" >&2
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $foreign < $best_other else 1)"; then
      best_other=$foreign
      best="$workload,$commit,$system,$round,$SECS,$per_tx,$tps,$(python3 -c "print(round($tps*$per_tx))"),$lat,$tx,${failed:-0},$rows_ok,$foreign,$load,$server_us,$client_us,$attempt"
      for f in log waits time; do cp "$at.$f" "$OUT/logs/$tag.$f"; done
    fi
    if [ "$attempt" -le "$RETRIES" ] && python3 -c "import sys; sys.exit(0 if $foreign > $MAX_OTHER else 1)"; then
      log "other processes took ${foreign}% of the CPU during $tag: pausing 10 s, then running it again"
      sleep 10
      continue
    fi
    echo "$best" >> "$CSV"
    return
  done
}

# each round runs every system once per workload, rotating who goes first
rotate() { local n=$1; shift; local a=("$@"); local k=$(( n % ${#a[@]} )); echo "${a[@]:k}" "${a[@]:0:k}"; }
single_async=(raw eventstore messagedb)
part situations && single_async+=(es-unserved es-hook-other es-hook-match es-snapshot es-inline)
part writes && [ "$DIAG" != 0 ] && single_async+=(raw+stream plpgsql plpgsql+notify select1)
single_sync=(raw eventstore)
part writes && single_sync+=(messagedb)
batch=()
part writes && batch+=(raw eventstore)
if [ "$PGBENCH_PARTS" = 1 ]; then
log "benchmark: $ROUNDS rounds x $(( ${#single_async[@]} + ${#single_sync[@]} + ${#batch[@]} )) runs of ${SECS}s ($CLIENTS clients, $THREADS threads)"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS"
  for s in $(rotate $((round - 1)) "${single_async[@]}"); do run_one single off "$s" "$round"; done
  for s in $(rotate $((round - 1)) "${single_sync[@]}"); do run_one single on "$s" "$round"; done
  [ ${#batch[@]} = 0 ] || for s in $(rotate $((round - 1)) "${batch[@]}"); do run_one batch on "$s" "$round"; done
done
fi

{
  printf 'loadavg_after\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'elapsed_seconds\t%s\n' "$(( $(date +%s) - started ))"
} >> "$OUT/meta.tsv"
ln -sfn "$STAMP" "$BENCH/results/latest"
[ "$PGBENCH_PARTS" = 0 ] || python3 "$BENCH/tool.py" report "$OUT" "$BENCH/README.md"

# growth, reads and emmett: bench/suite.py on the same cluster, its own section of the README
suite_parts=()
for p in growth reads emmett; do part "$p" && suite_parts+=("$p"); done
if [ ${#suite_parts[@]} -gt 0 ]; then
  BENCH_PORT=$PORT BENCH_OUT="$OUT" BENCH_PMPID=$PMPID BENCH_SECONDS=$SECS BENCH_ROUNDS=$ROUNDS \
    BENCH_COMMAND="$command" BENCH_MAX_OTHER=$MAX_OTHER \
    "$VENV/bin/python" "$BENCH/suite.py" "${suite_parts[@]}"
  "$VENV/bin/python" "$BENCH/suite.py" report "$OUT" "$BENCH/README.md"
fi
log "results in bench/results/$STAMP, summary in bench/README.md ($(( $(date +%s) - started ))s)"
