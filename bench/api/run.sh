#!/usr/bin/env bash
# Overhead of eventstore.route_api_call over calling its handler directly, with
# pgbench (8 clients) on a throwaway PostgreSQL 15 cluster (127.0.0.1:5444,
# target/bench-api-cluster). Writes bench/api/README.md (numbers and command) and the raw
# results to target/bench-api/<UTC timestamp>/.
#
# usage: bash bench/api/run.sh
#   BENCH_SECONDS=10  duration of every pgbench run
#   BENCH_ROUNDS=3    rounds; each runs every workload once, direct and routed alternating
#   BENCH_INSTALL=0   1 builds and installs eventstore first (scripts/lib.sh install_extension);
#                     0 benchmarks the eventstore installed already
#
# Workloads, each as a direct call of the handler (direct), as the handler plus a hand-written
# INSERT of the same log row into a table of the same shape in the same statement (handlog: the
# least any per-call log costs), and as route_api_call of the same handler (routed):
#   bare       one SELECT per transaction (pgbench -M prepared)
#   postgrest  the transaction PostgREST runs for POST /rpc/...: set_config of role, claims,
#              method, path and headers; the call, reading response.headers and response.status in
#              the same statement; COMMIT
# each in three configurations:
#   logged    the defaults: api_request_log is a logged table, synchronous_commit = on, so the log
#             row makes a routed call a write transaction that waits for its WAL flush
#   unlogged  ALTER TABLE eventstore.api_request_log SET UNLOGGED (the log is lost in a crash and is
#             not replicated; a call whose handler writes nothing commits without a WAL flush)
#   async     a logged table with synchronous_commit = off
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

HERE="$ROOT/bench/api"
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
INSTALL=${BENCH_INSTALL:-0}
CLIENTS=8
THREADS=2
PORT=5444
DIR="$ROOT/target/bench-api-cluster"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/target/bench-api/$STAMP"
for v in SECS ROUNDS INSTALL; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "BENCH_${v/SECS/SECONDS} must be a whole number" >&2; exit 2; }
done
command=""
[ -n "${BENCH_SECONDS:-}" ] && command+="BENCH_SECONDS=$SECS "
[ -n "${BENCH_ROUNDS:-}" ] && command+="BENCH_ROUNDS=$ROUNDS "
[ -n "${BENCH_INSTALL:-}" ] && command+="BENCH_INSTALL=$INSTALL "
command+="bash bench/api/run.sh"
mkdir -p "$OUT/logs" "$OUT/workloads"

[ "$INSTALL" = 0 ] || install_extension

log "fresh cluster in $DIR on port $PORT"
cluster_stop "$DIR"
rm -rf "$DIR"
cluster_start "$DIR" "$PORT" "shared_buffers = 1GB" "max_wal_size = 16GB" "min_wal_size = 2GB" \
  "checkpoint_timeout = 30min" "autovacuum = off"
trap 'cluster_stop "$DIR"' EXIT
PMPID=$(head -1 "$DIR/data/postmaster.pid")
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
export PGOPTIONS='-c client_min_messages=warning'

"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench_api"
"${PSQL[@]}" -d bench_api <<'SQL'
CREATE EXTENSION eventstore;
CREATE SCHEMA bench;
-- a small handler: what an rpc that reads its payload and answers does
CREATE FUNCTION bench.get_order(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('order_id', payload->'order_id', 'status', 'shipped', 'items', 3) $$;
SELECT eventstore.register_api_version('1.0', '2024-01-01');
SELECT eventstore.register_api_version('2.0', '2024-06-01', min_client_version => '2.0.0');
SELECT eventstore.register_api_route('get_order', '2.0', 'bench.get_order(jsonb)');
SELECT eventstore.switch_api_version('2.0');
CREATE TABLE bench.request_log (LIKE eventstore.api_request_log INCLUDING ALL);
SQL

PAYLOAD='{"order_id": "ORD-2024-000987", "expand": ["items"]}'
HEADERS='{"accept": "application/json", "x-api-version": "2.0", "x-app-name": "bench", "x-app-version": "2.3.1", "x-client-region": "eu-west-1"}'
CLAIMS='{"sub": "user-1", "role": "postgres", "tenant_id": "acme"}'
HANDLOG="INSERT INTO bench.request_log (request_id, tenant_id, requested_at, day, rpc_name, version, version_source, status, duration_ms, role, jwt_sub, client_app, client_version, client_region) VALUES (gen_random_uuid(), 'acme', clock_timestamp(), current_date, 'get_order', '2.0', 'header', 200, 0.1, current_user, 'user-1', 'bench', '2.3.1', 'eu-west-1')"
call_of() {
  case $1 in
    direct|handlog) echo "bench.get_order('$PAYLOAD'::jsonb)" ;;
    routed) echo "eventstore.route_api_call('get_order', '$PAYLOAD'::jsonb)" ;;
  esac
}
log_of() { [ "$1" = handlog ] && echo ", pgrst_log AS ($HANDLOG)"; true; }
for how in direct handlog routed; do
  echo "WITH pgrst_source AS (SELECT $(call_of $how) AS body)$(log_of $how) SELECT body FROM pgrst_source;" > "$OUT/workloads/bare_$how.sql"
  cat > "$OUT/workloads/postgrest_$how.sql" <<SQL
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT set_config('role', 'postgres', true), set_config('request.jwt.claims', '$CLAIMS', true), set_config('request.method', 'POST', true), set_config('request.path', '/rpc/get_order', true), set_config('request.headers', '$HEADERS', true);
WITH pgrst_source AS (SELECT $(call_of $how) AS pgrst_scalar)$(log_of $how) SELECT coalesce(json_agg(_postgrest_t.pgrst_scalar)->0, 'null') AS body, nullif(current_setting('response.headers', true), '') AS response_headers, nullif(current_setting('response.status', true), '') AS response_status FROM (SELECT * FROM pgrst_source) _postgrest_t;
COMMIT;
SQL
done

git_rev=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && [ -z "$(git status --porcelain -- src sql)" ] || echo " + uncommitted changes")
{
  printf 'command\t%s\n' "$command"
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'machine\t%s CPUs (%s), %s\n' "$(nproc)" "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(free -g | awk '/^Mem:/ {print $2 " GB"}')"
  printf 'server\t%s\n' "$("${PSQL[@]}" -d postgres -At -c "SELECT version()")"
  printf 'eventstore\t%s\n' "$git_rev"
  printf 'pgbench\t-c %s -j %s -T %s -M prepared, %s rounds\n' "$CLIENTS" "$THREADS" "$SECS" "$ROUNDS"
  printf 'loadavg_before\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/meta.tsv"

# server CPU (postmaster, its live children, and its reaped children) in clock ticks
server_cpu() {
  python3 - "$PMPID" <<'PY'
import os, sys
pm = sys.argv[1]
def fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()
f = fields(pm)
total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime of the postmaster
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            g = fields(pid)
        except OSError:
            continue
        if g[1] == pm:
            total += int(g[11]) + int(g[12])
print(total)
PY
}

# median_us, p95_us: latency of the logging client's transactions; tps, transactions: all 8
echo "workload,config,how,round,transactions,tps,median_us,p95_us,server_cpu_us_per_tx,loadavg,logged_rows" > "$OUT/runs.csv"
run_one() { # workload config how round
  local workload=$1 config=$2 how=$3 round=$4 tag="$1-$2-$3-r$4" commit=on
  [ "$config" = async ] && commit=off
  "${PSQL[@]}" -d bench_api -c "TRUNCATE eventstore.api_request_log, bench.request_log"
  "${PSQL[@]}" -d postgres -c CHECKPOINT
  local c0 c1 load
  load=$(cut -d' ' -f1 /proc/loadavg)
  c0=$(server_cpu)
  # pgbench's per-transaction log is only exact for a thread that drives one client (with more,
  # its clock is read lazily and most latencies come out as 0): 7 clients make the load, an 8th
  # in a pgbench of its own logs every transaction
  local env=(env PGOPTIONS="-c client_min_messages=warning -c synchronous_commit=$commit")
  local bench=("$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -M prepared -T "$SECS"
               -f "$OUT/workloads/${workload}_$how.sql")
  (cd "$OUT/logs" && "${env[@]}" "${bench[@]}" -c $((CLIENTS - 1)) -j "$THREADS" bench_api > "$tag.load" 2>&1) &
  local loader=$!
  (cd "$OUT/logs" && "${env[@]}" "${bench[@]}" -c 1 -j 1 -l --log-prefix="$tag" bench_api > "$tag.out" 2>&1) \
    || { cat "$OUT/logs/$tag.out" >&2; exit 1; }
  wait "$loader" || { cat "$OUT/logs/$tag.load" >&2; exit 1; }
  sleep 0.3   # let the postmaster reap the pgbench backends: their CPU lands in its cutime
  c1=$(server_cpu)
  # one log row per routed call: the count must equal the transactions
  local logged
  logged=$("${PSQL[@]}" -d bench_api -At -c "SELECT (SELECT count(*) FROM eventstore.api_request_log) + (SELECT count(*) FROM bench.request_log)")
  python3 - "$OUT/logs" "$tag" "$workload,$config,$how,$round" "$c0" "$c1" "$(getconf CLK_TCK)" "$load" "$logged" >> "$OUT/runs.csv" <<'PY'
import glob, os, re, statistics, sys
logs, tag, key, c0, c1, tck, load, logged = sys.argv[1:]
lat = []
for path in glob.glob(os.path.join(logs, tag + ".[0-9]*")):
    with open(path) as f:
        lat += [int(line.split()[2]) for line in f]
    os.remove(path)
lat.sort()
def run(suffix):
    text = open(os.path.join(logs, tag + suffix)).read()
    return (float(re.search(r"tps = ([0-9.]+)", text).group(1)),
            int(re.search(r"number of transactions actually processed: ([0-9]+)", text).group(1)))
(tps1, n1), (tps7, n7) = run(".out"), run(".load")
cpu_us = (int(c1) - int(c0)) * 1e6 / int(tck) / (n1 + n7)
print(f"{key},{n1 + n7},{tps1 + tps7:.0f},{statistics.median(lat):.0f},{lat[int(0.95 * (len(lat) - 1))]},{cpu_us:.1f},{load},{logged}")
if key.split(",")[2] != "direct" and int(logged) != n1 + n7:
    sys.exit(f"{key}: {n1 + n7} calls but {logged} log rows")
PY
  log "$(tail -1 "$OUT/runs.csv")"
}

"${PSQL[@]}" -d bench_api -c "SELECT eventstore.route_api_call('get_order', '$PAYLOAD'::jsonb) -> 'data'" \
  -f "$OUT/workloads/bare_handlog.sql" -f "$OUT/workloads/postgrest_handlog.sql"
for round in $(seq 1 "$ROUNDS"); do
  for config in logged unlogged async; do
    persistence=LOGGED
    [ "$config" = unlogged ] && persistence=UNLOGGED
    "${PSQL[@]}" -d bench_api -c "TRUNCATE eventstore.api_request_log, bench.request_log" \
      -c "ALTER TABLE eventstore.api_request_log SET $persistence" -c "ALTER TABLE bench.request_log SET $persistence"
    for workload in bare postgrest; do
      # alternate the order, so that drift in the machine's load evens out
      if [ $((round % 2)) = 1 ]; then order="direct handlog routed"; else order="routed handlog direct"; fi
      for how in $order; do run_one "$workload" "$config" "$how" "$round"; done
    done
  done
done
printf 'loadavg_after\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/meta.tsv"

python3 "$HERE/report.py" "$OUT" > "$HERE/README.md"
log "wrote $HERE/README.md (raw results in $OUT)"
