"""The growth, reads and emmett parts of bench/run.sh (issue 13), on run.sh's cluster.

  suite.py PART...                      run parts (reads, emmett, growth), results as JSON into
                                        $BENCH_OUT/suite/<part>.json
  suite.py report RESULTS_DIR README    write the section between the suite markers of README

Environment (set by run.sh): BENCH_PORT, BENCH_OUT, BENCH_PMPID, BENCH_SECONDS, BENCH_ROUNDS,
BENCH_SCALE, BENCH_GROWTH_MAX, BENCH_COMMAND, PG_BIN. Every figure is measured beside its
baseline in the same run; the report says which.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tool  # noqa: E402  (cpu accounting shared with run.sh)

BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
ENV = os.environ
PORT = int(ENV.get("BENCH_PORT", "5442"))
OUT = ENV.get("BENCH_OUT", "")
PMPID = int(ENV.get("BENCH_PMPID", "0") or 0)
SECS = int(ENV.get("BENCH_SECONDS", "9"))
ROUNDS = int(ENV.get("BENCH_ROUNDS", "3"))
SCALE = float(ENV.get("BENCH_SCALE", "1"))
GROWTH_MAX = int(ENV.get("BENCH_GROWTH_MAX", "10000000"))
PG_BIN = ENV.get("PG_BIN", "/usr/lib/postgresql/15/bin")
PAYLOAD = '{"account_id": "ACC-000123", "amount": 125.50, "currency": "EUR", "reference": "INV-2024-000987", "channel": "web"}'
CLIENTS, THREADS = 8, 2


def log(msg):
    print(f"\033[1m==> {msg}\033[0m", file=sys.stderr, flush=True)


def connect(db, autocommit=True):
    import psycopg
    return psycopg.connect(f"host=127.0.0.1 port={PORT} dbname={db} user=postgres "
                           "options='-c client_min_messages=warning'", autocommit=autocommit)


def psql_file(db, path):
    subprocess.run([f"{PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(PORT),
                    "-U", "postgres", "-d", db, "-f", path], check=True, stdout=subprocess.DEVNULL,
                   env={**ENV, "PGOPTIONS": "-c client_min_messages=warning"})


def workload(name):
    """A filled workload or SQL file of run.sh (payload substituted), from the results dir."""
    return os.path.join(OUT, "workloads", name)


def checkpoint():
    with connect("postgres") as c:
        c.execute("CHECKPOINT")


def cpu_now():
    if not PMPID:
        return None
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tool.cpu(PMPID)
    return buf.getvalue().strip()


def cpu_account(c0, c1, t0, t1, n, client_user=0.0, client_sys=0.0):
    """(% of the machine others used, server CPU µs per unit) between two cpu_now() readings."""
    if not c0 or not c1:
        return None, None
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tool.account(c0, c1, t0, t1, max(1, int(n)), client_user, client_sys)
    foreign, server_us, _ = buf.getvalue().split()
    return float(foreign), float(server_us)


class Waits:
    """Samples what the client backends of one database wait on, 4 times a second."""

    def __init__(self, db):
        self.db, self.counts, self.stop = db, {}, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            with connect(self.db) as c:
                while not self.stop.is_set():
                    for (w,) in c.execute(
                            "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND datname = %s AND pid <> pg_backend_pid()",
                            (self.db,)):
                        self.counts[w] = self.counts.get(w, 0) + 1
                    self.stop.wait(0.25)
        except Exception as e:  # sampling is best effort
            self.counts["sampler error: " + str(e)[:40]] = 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.thread.join(5)

    def top(self, n=3):
        total = sum(self.counts.values())
        if not total:
            return []
        return [(k, round(100 * v / total)) for k, v in sorted(self.counts.items(), key=lambda kv: -kv[1])[:n]]


class Measure:
    """Wall time, server CPU and others' CPU around a block; units set by the caller."""

    def __init__(self, db=None):
        self.db = db
        self.waits = Waits(db) if db else None

    def __enter__(self):
        if self.waits:
            self.waits.__enter__()
        self.c0, self.t0 = cpu_now(), time.time()
        self.r0 = os.times()
        return self

    def __exit__(self, *a):
        self.t1 = time.time()
        if self.waits:
            self.waits.__exit__()
        time.sleep(0.3)  # reaped backends' CPU lands in the postmaster's cutime
        self.c1 = cpu_now()
        r1 = os.times()
        # the client: this process (psycopg readers) and the children it waited for (pgbench, node)
        self.client = (r1.children_user - self.r0.children_user + r1.user - self.r0.user,
                       r1.children_system - self.r0.children_system + r1.system - self.r0.system)

    @property
    def seconds(self):
        return self.t1 - self.t0

    def account(self, units, client=True):
        u, s = self.client if client else (0.0, 0.0)
        return cpu_account(self.c0, self.c1, self.t0, self.t1, units, u, s)


def pgbench(db, script, seconds=None, clients=CLIENTS, threads=THREADS, commit="off", name="run"):
    """One pgbench run; returns tps, latency, transactions, server CPU µs/tx, others' CPU %, waits."""
    seconds = seconds or SECS
    path = os.path.join(OUT, "suite", f"{name}.sql")
    with open(path, "w") as f:
        f.write(script.replace("@PAYLOAD@", PAYLOAD) + "\n")
    checkpoint()
    env = {**ENV, "PGOPTIONS": f"-c client_min_messages=warning -c synchronous_commit={commit}"}
    with Measure(db) as m:
        p = subprocess.run([f"{PG_BIN}/pgbench", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-n",
                            "-M", "prepared", "-c", str(clients), "-j", str(threads), "-T", str(seconds),
                            "-f", path, db], capture_output=True, text=True, env=env)
    out = p.stdout + p.stderr
    with open(os.path.join(OUT, "suite", f"{name}.log"), "w") as f:
        f.write(out)
    if p.returncode != 0:
        raise RuntimeError(f"pgbench {name} failed:\n{out}")
    tps = float(re.search(r"^tps = ([0-9.]+) \(without initial connection time\)$", out, re.M).group(1))
    lat = float(re.search(r"^latency average = ([0-9.]+) ms$", out, re.M).group(1))
    tx = int(re.search(r"^number of transactions actually processed: ([0-9]+)", out, re.M).group(1))
    failed = re.search(r"^number of failed transactions: ([0-9]+)", out, re.M)
    foreign, server_us = m.account(tx)
    r = dict(tps=tps, latency_ms=lat, tx=tx, failed=int(failed.group(1)) if failed else 0,
             server_cpu_us=server_us, foreign_pct=foreign, waits=m.waits.top(), load=os.getloadavg()[0])
    log(f"  {name:34s} {tps:10.1f} tps  lat {lat:.3f} ms  {server_us} server CPU us/tx  (others {foreign}%)")
    return r


def save(part, data):
    data["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    data["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with open(os.path.join(OUT, "suite", f"{part}.json"), "w") as f:
        json.dump(data, f, indent=1)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def explain_ms(conn, sql, args=(), runs=5):
    """Server-side execution time of a statement (EXPLAIN ANALYZE, no per-node timing), best of runs."""
    best = None
    for _ in range(runs):
        plan = conn.execute("EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON) " + sql, args).fetchall()
        ms = float(next(r[0] for r in plan if r[0].startswith("Execution Time")).split(":")[1].split()[0])
        best = ms if best is None else min(best, ms)
    return best


def append_batches(conn, aggregate_type, aggregate_id, n, event_type="Deposited", size=5000):
    done = 0
    while done < n:
        k = min(size, n - done)
        conn.execute(
            "SELECT count(*) FROM eventstore.append_events(%s, %s, "
            "(SELECT jsonb_agg(jsonb_build_object('event_type', %s::text, 'payload', %s::jsonb)) FROM generate_series(1, %s)))",
            (aggregate_type, aggregate_id, event_type, PAYLOAD, k))
        done += k


# --------------------------------------------------------------------------------------------
# reads: read_all vs raw SELECT (never analyzed, then analyzed), read_stream vs read_all server
# cost, replay, async projection throughput, route_api_call overhead

RAW_COLUMNS = ("global_position, event_id, tenant_id, aggregate_type, aggregate_id, aggregate_version, "
               "event_type, schema_version, payload, metadata, correlation_id, causation_id, actor, "
               "occurred_at, recorded_at, transaction_id, redacted_at")


def feed_pass(conn, kind, page=1000):
    """Reads the whole feed page by page; returns (events, seconds)."""
    n, t = 0, time.perf_counter()
    if kind == "read_all":
        cursor = None
        while True:
            rows = conn.execute("SELECT * FROM eventstore.read_all(after => %s, max_count => %s)", (cursor, page)).fetchall()
            n += len(rows)
            if len(rows) < page:
                break
            cursor = rows[-1][-1]
    else:
        xid, pos = "0", 0
        while True:
            rows = conn.execute(
                f"SELECT {RAW_COLUMNS} FROM bench.raw_events WHERE tenant_id = 'default' "
                "AND (transaction_id, global_position) > (%s::text::xid8, %s) "
                "ORDER BY transaction_id, global_position LIMIT %s", (xid, pos, page)).fetchall()
            n += len(rows)
            if len(rows) < page:
                break
            xid, pos = str(rows[-1][15]), rows[-1][0]
    return n, time.perf_counter() - t


def reads_feed(res):
    n_feed = int(200_000 * SCALE)
    log(f"reads: database bench_reads, {n_feed:,} events appended in batches of 1000, copied into bench.raw_events")
    with connect("postgres") as c:
        c.execute("DROP DATABASE IF EXISTS bench_reads")
        c.execute("CREATE DATABASE bench_reads")
    conn = connect("bench_reads")
    conn.execute("CREATE EXTENSION eventstore")
    conn.execute("CREATE SCHEMA bench")
    conn.execute("CREATE TABLE bench.raw_events (LIKE eventstore.events INCLUDING ALL)")
    streams = max(1, n_feed // 1000)
    for s in range(streams):
        append_batches(conn, "feed", str(s + 1), 1000, size=1000)
    conn.execute(f"INSERT INTO bench.raw_events SELECT {RAW_COLUMNS} FROM eventstore.events ORDER BY global_position")
    total = conn.execute("SELECT count(*) FROM eventstore.events").fetchone()[0]
    res["feed_events"] = total
    res["feed_batches"] = streams
    for state in ("never analyzed", "analyzed"):
        if state == "analyzed":
            conn.execute("ANALYZE eventstore.events, eventstore.streams, bench.raw_events")
        stats = conn.execute("SELECT count(*) FROM pg_statistic WHERE starelid IN "
                             "('eventstore.events'::regclass, 'bench.raw_events'::regclass)").fetchone()[0]
        checkpoint()
        runs = {"read_all": [], "raw": []}
        cpu = {"read_all": [], "raw": []}
        others = []
        for rnd in range(ROUNDS):
            order = ["read_all", "raw"] if rnd % 2 == 0 else ["raw", "read_all"]
            for kind in order:
                with Measure() as m:
                    n, secs = feed_pass(conn, kind)
                if n != total:
                    raise RuntimeError(f"{kind} read {n} events of {total}")
                foreign, server_us = m.account(n)
                runs[kind].append(n / secs)
                cpu[kind].append(server_us)
                others.append(foreign)
                log(f"  feed {state:15s} {kind:9s} {n / secs:12,.0f} events/s  {server_us} server CPU us/event (others {foreign}%)")
        res.setdefault("feed", []).append(dict(
            state=state, statistics_rows=stats,
            read_all=median(runs["read_all"]), raw=median(runs["raw"]),
            read_all_runs=runs["read_all"], raw_runs=runs["raw"],
            read_all_cpu=median(cpu["read_all"]), raw_cpu=median(cpu["raw"]), foreign_pct=median(others),
            plan=[r[0] for r in conn.execute(
                "EXPLAIN SELECT * FROM eventstore.events e WHERE e.tenant_id = 'default' "
                "AND (e.transaction_id, e.global_position) > ('0'::xid8, 0) "
                "AND e.transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())) "
                "ORDER BY e.transaction_id, e.global_position LIMIT 1000")]))

    # server cost per event: 1000 events of one stream, and the first 1000 of the feed
    # count(x) of the whole row, so that every column is formed (count(*) would let the planner
    # drop the raw subquery's unused columns)
    q = {
        "read_stream": ("SELECT count(x) FROM eventstore.read_stream('feed', '1', max_count => 1000) x", ()),
        "read_all": ("SELECT count(x) FROM eventstore.read_all(max_count => 1000) x", ()),
        "raw stream SELECT": (f"SELECT count(x) FROM (SELECT {RAW_COLUMNS} FROM bench.raw_events WHERE tenant_id = 'default' "
                              "AND aggregate_type = 'feed' AND aggregate_id = '1' ORDER BY aggregate_version LIMIT 1000) x", ()),
        "raw feed SELECT": (f"SELECT count(x) FROM (SELECT {RAW_COLUMNS} FROM bench.raw_events WHERE tenant_id = 'default' "
                            "AND (transaction_id, global_position) > ('0'::xid8, 0) ORDER BY transaction_id, global_position LIMIT 1000) x", ()),
    }
    res["server_us_per_event"] = {k: explain_ms(conn, sql, args, runs=7) * 1000 / 1000 for k, (sql, args) in q.items()}
    log(f"  server µs/event: {res['server_us_per_event']}")

    # replay: the default reducer over one long stream, no snapshot, timed in the server
    n_replay = int(100_000 * SCALE)
    append_batches(conn, "replay", "r1", n_replay)
    conn.execute("ANALYZE eventstore.events")
    ms = explain_ms(conn, "SELECT eventstore.get_aggregate_state('replay', 'r1')")
    raw_ms = explain_ms(conn, "SELECT count(*), sum(length(payload::text)) FROM (SELECT payload FROM eventstore.events "
                              "WHERE tenant_id = 'default' AND aggregate_type = 'replay' AND aggregate_id = 'r1' "
                              "ORDER BY aggregate_version) s")
    merge_ms = explain_ms(conn, "SELECT count(*) FROM (SELECT payload || '{\"balance\": 1}'::jsonb FROM eventstore.events "
                                "WHERE tenant_id = 'default' AND aggregate_type = 'replay' AND aggregate_id = 'r1' "
                                "ORDER BY aggregate_version) s")
    res["replay"] = dict(events=n_replay, ms=ms, events_per_s=n_replay / (ms / 1000), raw_read_ms=raw_ms,
                         raw_read_events_per_s=n_replay / (raw_ms / 1000), jsonb_concat_ms=merge_ms)
    log(f"  replay {n_replay:,} events: {ms:.1f} ms = {n_replay / (ms / 1000):,.0f} events/s (reading them: {raw_ms:.1f} ms)")
    conn.close()


def reads_projection(res):
    n = int(20_000 * SCALE)
    log(f"reads: async projection (one-INSERT handler) catching up on {n:,} events in bench_es (served by the worker)")
    psql_file("bench_es", workload("reset_eventstore.sql"))
    conn = connect("bench_es")
    deadline = time.time() + 60
    while conn.execute("SELECT eventstore.worker_status()->>'running'").fetchone()[0] != "true":
        if time.time() > deadline:
            raise RuntimeError("no worker serves bench_es")
        time.sleep(0.2)
    conn.execute("DROP TABLE IF EXISTS bench.proj_seen, bench.proj_direct, bench.proj_calls")
    for t in ("proj_seen", "proj_direct", "proj_calls"):
        conn.execute(f"CREATE TABLE bench.{t} (global_position bigint PRIMARY KEY)")
    conn.execute("CREATE OR REPLACE FUNCTION bench.count_it(e eventstore.event) RETURNS void LANGUAGE sql AS "
                 "$$ INSERT INTO bench.proj_seen VALUES (e.global_position) $$")
    conn.execute("CREATE OR REPLACE FUNCTION bench.count_call(e eventstore.event) RETURNS void LANGUAGE sql AS "
                 "$$ INSERT INTO bench.proj_calls VALUES (e.global_position) $$")
    streams = 100
    for s in range(streams):
        append_batches(conn, "proj", str(s), n // streams, event_type="Projected")
    n = streams * (n // streams)
    conn.execute("VACUUM ANALYZE eventstore.events, eventstore.streams")
    checkpoint()
    # a worker that is backing off after an error would make this measure its pause
    waited = time.time()
    while True:
        ws0 = conn.execute("SELECT eventstore.worker_status()").fetchone()[0]
        until = conn.execute("SELECT %s::timestamptz > now()", (ws0.get("backing_off_until"),)).fetchone()[0]
        if not until or time.time() - waited > 90:
            break
        time.sleep(0.5)
    waited = time.time() - waited
    with Measure("bench_es") as m:
        conn.execute("SELECT eventstore.register_projection('counts', 'bench.count_it(eventstore.event)', ARRAY['Projected'])")
        while conn.execute("SELECT count(*) FROM bench.proj_seen").fetchone()[0] < n:
            if time.time() - m.t0 > 600:
                raise RuntimeError("the projection did not catch up in 10 minutes")
            time.sleep(0.01)
    foreign, server_us = m.account(n)
    ws1 = conn.execute("SELECT eventstore.worker_status()").fetchone()[0]
    status = conn.execute("SELECT row_to_json(p)::jsonb FROM eventstore.projection_status() p WHERE name = 'counts'").fetchone()
    # baselines: the handler's INSERTs as one statement, and the handler called once per event
    # from one statement (what the worker does minus its own machinery)
    t = time.perf_counter()
    conn.execute("INSERT INTO bench.proj_direct SELECT global_position FROM eventstore.events WHERE event_type = 'Projected'")
    direct_s = time.perf_counter() - t
    t = time.perf_counter()
    conn.execute(f"SELECT count(bench.count_call(ROW({RAW_COLUMNS})::eventstore.event)) FROM eventstore.events "
                 "WHERE event_type = 'Projected'")
    calls_s = time.perf_counter() - t
    res["projection"] = dict(events=n, seconds=m.seconds, events_per_s=n / m.seconds, server_cpu_us=server_us,
                             foreign_pct=foreign, one_statement_per_s=n / direct_s, handler_calls_per_s=n / calls_s,
                             waited_for_backoff_s=waited, worker_before=ws0, worker_after=ws1,
                             projection_status=status[0] if status else None)
    log(f"  projection: {n / m.seconds:,.0f} events/s (one INSERT ... SELECT: {n / direct_s:,.0f}/s, "
        f"handler per event in one statement: {n / calls_s:,.0f}/s)")
    conn.execute("SELECT eventstore.drop_projection('counts')")
    conn.close()


def reads_api(res):
    log("reads: route_api_call vs calling the handler directly (default settings, synchronous_commit on)")
    conn = connect("bench_es")
    if not conn.execute("SELECT count(*) FROM eventstore.api_routes").fetchone()[0]:
        conn.execute("CREATE OR REPLACE FUNCTION bench.get_order(payload jsonb) RETURNS jsonb LANGUAGE sql AS "
                     "$$ SELECT jsonb_build_object('order_id', payload->'order_id', 'status', 'shipped', 'items', 3) $$")
        conn.execute("SELECT eventstore.register_api_version('2024-06-01')")
        conn.execute("SELECT eventstore.register_api_route('get_order', '2024-06-01', 'bench.get_order(jsonb)')")
        conn.execute("SELECT eventstore.switch_api_version('2024-06-01')")
    conn.close()
    payload = '{"order_id": "ORD-2024-000987", "expand": ["items"]}'
    scripts = {"direct": f"SELECT bench.get_order('{payload}'::jsonb);",
               "routed": f"SELECT eventstore.route_api_call('get_order', '{payload}'::jsonb);"}
    runs = {"direct": [], "routed": []}
    for rnd in range(ROUNDS):
        for how in (["direct", "routed"] if rnd % 2 == 0 else ["routed", "direct"]):
            # one client: its latency is the call's own, not a queue for the machine's 2 CPUs
            r = pgbench("bench_es", scripts[how], clients=1, threads=1, commit="on", name=f"api-{how}-r{rnd + 1}")
            runs[how].append(r)
    over = [r["latency_ms"] * 1000 - d["latency_ms"] * 1000 for r, d in zip(runs["routed"], runs["direct"])]
    cpu_over = [r["server_cpu_us"] - d["server_cpu_us"] for r, d in zip(runs["routed"], runs["direct"])]
    res["api"] = dict(direct_us=median([r["latency_ms"] * 1000 for r in runs["direct"]]),
                      routed_us=median([r["latency_ms"] * 1000 for r in runs["routed"]]),
                      overhead_us=median(over), cpu_overhead_us=median(cpu_over),
                      direct_cpu_us=median([r["server_cpu_us"] for r in runs["direct"]]),
                      routed_cpu_us=median([r["server_cpu_us"] for r in runs["routed"]]),
                      routed_waits=runs["routed"][0]["waits"])


def run_reads():
    res = {}
    reads_feed(res)
    reads_projection(res)
    reads_api(res)
    save("reads", res)


# --------------------------------------------------------------------------------------------
# growth: append throughput and get_aggregate_state latency at 10^5, 10^6, 10^7 events

def uuid7_sql(i):
    # a UUIDv7 shape (48-bit millisecond time, version 7, variant 10), increasing with i like
    # the ids eventstore draws: the event_id index grows at its right edge
    return (f"(lpad(to_hex(1700000000000 + {i}), 12, '0') || '7' || substr(md5({i}::text), 1, 3) || "
            f"'8' || substr(md5({i}::text), 4, 15))::uuid")


def growth_fill(conn, have, want, per_stream=100, chunk=1_000_000):
    """Appends filler events (aggregate type 'filler', streams of per_stream events) with bulk
    INSERT ... SELECT straight into eventstore.events and eventstore.streams, one transaction per chunk."""
    start = conn.execute("SELECT coalesce(max(aggregate_id::bigint * 100), 0) FROM eventstore.streams "
                         "WHERE aggregate_type = 'filler'").fetchone()[0]
    todo = want - have
    i = start
    while todo > 0:
        k = min(chunk, todo)
        k -= k % per_stream or 0
        k = max(k, per_stream)
        with conn.transaction():
            conn.execute(
                "INSERT INTO eventstore.events (global_position, event_id, tenant_id, aggregate_type, aggregate_id, "
                "aggregate_version, event_type, schema_version, payload, metadata, occurred_at, recorded_at, transaction_id) "
                f"SELECT nextval('eventstore.events_global_position_seq'), {uuid7_sql('g')}, 'default', 'filler', "
                f"(g / {per_stream} + 1)::text, g %% {per_stream} + 1, 'Deposited', 1, %s::jsonb, '{{}}', "
                "statement_timestamp(), statement_timestamp(), pg_current_xact_id() "
                "FROM generate_series(%s::bigint, %s::bigint) AS g", (PAYLOAD, i, i + k - 1))
            conn.execute(
                "INSERT INTO eventstore.streams (tenant_id, aggregate_type, aggregate_id, version) "
                f"SELECT 'default', 'filler', s::text, {per_stream} FROM generate_series(%s::bigint, %s::bigint) AS s",
                (i // per_stream + 1, (i + k - 1) // per_stream + 1))
        i += k
        todo -= k


def run_growth():
    sizes = [s for s in (100_000, 1_000_000, 10_000_000, 100_000_000) if s <= GROWTH_MAX] or [GROWTH_MAX]
    rounds = max(1, min(ROUNDS, 2))
    log(f"growth: sizes {sizes}, {rounds} round(s) of raw INSERT / append_event / get_aggregate_state per size")
    psql_file("bench_es", workload("reset_eventstore.sql"))
    conn = connect("bench_es")
    # 1000 streams of 50 events of an undefined aggregate type: get_aggregate_state replays 50
    # events with the default reducer (no snapshot); never appended to, so its work stays the same
    for s in range(1000):
        conn.execute("SELECT count(*) FROM eventstore.append_events('state', %s, "
                     "(SELECT jsonb_agg(jsonb_build_object('event_type', 'Deposited', 'payload', %s::jsonb)) FROM generate_series(1, 50)))",
                     (str(s + 1), PAYLOAD))
    res = {"sizes": [], "rounds": rounds}
    append = "\\set sid random(1, 1000)\nSELECT * FROM eventstore.append_event('account', :sid, 'Deposited', '@PAYLOAD@', '{}');"
    state = "\\set sid random(1, 1000)\nSELECT version FROM eventstore.get_aggregate_state('state', :sid);"
    raw = open(workload("single_raw.sql")).read()
    for size in sizes:
        have = conn.execute("SELECT count(*) FROM eventstore.events").fetchone()[0]
        t = time.perf_counter()
        if size > have:
            growth_fill(conn, have, size)
        conn.execute("VACUUM ANALYZE eventstore.events, eventstore.streams")
        load_s = time.perf_counter() - t
        total = conn.execute("SELECT count(*) FROM eventstore.events").fetchone()[0]
        mb = conn.execute("SELECT pg_total_relation_size('eventstore.events') / 1e6").fetchone()[0]
        log(f"growth: {total:,} events in the store ({mb:,.0f} MB with indexes; loaded and vacuumed in {load_s:.0f} s)")
        entry = dict(size=size, events=total, load_seconds=load_s, mb=float(mb), raw=[], append=[], state=[])
        for rnd in range(rounds):
            psql_file("bench_es", workload("reset_raw.sql"))
            entry["raw"].append(pgbench("bench_es", raw, name=f"growth-{size}-raw-r{rnd + 1}"))
            entry["append"].append(pgbench("bench_es", append, name=f"growth-{size}-append-r{rnd + 1}"))
            entry["state"].append(pgbench("bench_es", state, clients=1, threads=1, name=f"growth-{size}-state-r{rnd + 1}"))
        res["sizes"].append(entry)
        save("growth", res)
    conn.close()


# --------------------------------------------------------------------------------------------
# emmett: Emmett 0.42 (Node) against eventstore from Node with pg, same pool size

def run_emmett():
    edir = os.path.join(HERE, "emmett")
    log("emmett: npm packages in bench/emmett/node_modules")
    subprocess.run(["bash", os.path.join(edir, "install.sh")], check=True)
    versions = json.loads(subprocess.run(["node", os.path.join(edir, "driver.mjs"), "versions"], check=True,
                                         capture_output=True, text=True).stdout)
    with connect("postgres") as c:
        c.execute("DROP DATABASE IF EXISTS bench_emmett")
        c.execute("CREATE DATABASE bench_emmett")
    seconds = max(3, SECS)
    res = {"versions": versions, "seconds": seconds, "pool": CLIENTS, "rounds": ROUNDS, "runs": []}
    base = f"postgresql://postgres@127.0.0.1:{PORT}"
    urls = {"emmett": f"{base}/bench_emmett", "eventstore": f"{base}/bench_es", "eventstore-unnamed": f"{base}/bench_es"}

    def driver(system, op, seconds=seconds):
        p = subprocess.run(["node", os.path.join(edir, "driver.mjs"), op, system, urls[system], str(seconds), str(CLIENTS)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"driver {system} {op} failed:\n{p.stdout}\n{p.stderr}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    log("emmett: seeding both stores (1000 streams of 20 events, one stream of 1000)")
    psql_file("bench_es", workload("reset_eventstore.sql"))
    for system in ("emmett", "eventstore"):
        driver(system, "seed")
    ops = ["single", "batch", "readstream", "readall"]
    for rnd in range(ROUNDS):
        for op in ops:
            order = ["emmett", "eventstore"] if (rnd + ops.index(op)) % 2 == 0 else ["eventstore", "emmett"]
            if op == "single":  # also as Emmett sends its statements: unnamed, planned on every call
                order.append("eventstore-unnamed")
            for system in order:
                checkpoint()
                db = "bench_emmett" if system == "emmett" else "bench_es"
                with Measure(db) as m:
                    r = driver(system, op)
                foreign, server_us = m.account(r["events"])
                if op == "readall":
                    with connect(db) as c:
                        r["feed_size"] = c.execute("SELECT count(*) FROM emt_messages" if system == "emmett"
                                                   else "SELECT count(*) FROM eventstore.events").fetchone()[0]
                r.update(system=system, op=op, round=rnd + 1, server_cpu_us_per_event=server_us,
                         foreign_pct=foreign, waits=m.waits.top())
                res["runs"].append(r)
                log(f"  emmett {op:10s} {system:18s} {r['events_per_s']:12,.0f} events/s {r['ops_per_s']:10,.0f} ops/s "
                    f"({server_us} server CPU us/event, others {foreign}%)")
        save("emmett", res)


# --------------------------------------------------------------------------------------------
# report

def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}".replace(",", " ")


def verdict(ok):
    return "**met**" if ok else "**missed**"


def waits_text(waits):
    return ", ".join(f"`{k}` {v}%" for k, v in waits) if waits else "–"


def others_pct(part, data):
    xs = []
    if part == "growth":
        for e in data["sizes"]:
            xs += [r.get("foreign_pct") for k in ("raw", "append", "state") for r in e[k]]
    elif part == "emmett":
        xs = [r.get("foreign_pct") for r in data["runs"]]
    elif part == "reads":
        xs = [f.get("foreign_pct") for f in data.get("feed", [])]
    m = median(xs)
    return "–" if m is None else f"{m:.0f}% (max {max(x for x in xs if x is not None):.0f}%)"


def report(results_dir, readme):
    d = os.path.join(results_dir, "suite")
    parts = {}
    for name in ("growth", "reads", "emmett"):
        p = os.path.join(d, f"{name}.json")
        if os.path.exists(p):
            parts[name] = json.load(open(p))
    meta = {}
    mp = os.path.join(results_dir, "meta.tsv")
    if os.path.exists(mp):
        for line in open(mp):
            k, _, v = line.rstrip("\n").partition("\t")
            meta.setdefault(k, v)
    o = []
    w = o.append
    w(BEGIN)
    w("## Growth, reads, projections, API, Emmett (issue 13)")
    w("")
    w(f"Command: `{ENV.get('BENCH_COMMAND') or meta.get('command', 'bash bench/run.sh')}` — same cluster and settings "
      f"as above; raw results in `bench/results/{os.path.basename(os.path.normpath(results_dir))}/suite/`. "
      f"Load average after each part: " + ", ".join(f"{k} {v['loadavg_after']} ({v['date']})" for k, v in parts.items()) + ". "
      "CPU taken by other processes (not this cluster, not the benchmark's clients), median over the part's runs: "
      + ", ".join(f"{k} {others_pct(k, v)}" for k, v in parts.items()) + ".")
    w("")
    g = parts.get("growth")
    if g:
        w("### Growth curve")
        w("")
        w("Filler events (aggregate type `filler`, streams of 100) are bulk-inserted straight into "
          "`eventstore.events`/`eventstore.streams` in the row shape append_event writes (UUIDv7-shaped ids, "
          "one transaction id per million), then `VACUUM ANALYZE`. At each size: raw INSERT (same pgbench, "
          "its own small table: the machine's speed at that moment), `append_event` (async commit, pgbench "
          f"-c 8, 1000 streams) and `get_aggregate_state` (one client, 1000 streams of 50 events of an "
          f"undefined type: default reducer, no snapshot), median of {g['rounds']} round(s).")
        w("")
        w("| events in the store | size MB | load s | raw INSERT tps | append_event tps | × raw | server CPU µs/append | get_aggregate_state latency ms | server CPU µs/call | append top waits |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        aps, lats, rats = [], [], []
        for e in g["sizes"]:
            rt, at = median([r["tps"] for r in e["raw"]]), median([r["tps"] for r in e["append"]])
            lat = median([r["latency_ms"] for r in e["state"]])
            aps.append(at); lats.append(lat); rats.append(at / rt)
            w(f"| {e['events']:,} | {e['mb']:,.0f} | {e['load_seconds']:.0f} | {fmt(rt)} | {fmt(at)} | {at / rt:.2f} | "
              f"{fmt(median([r['server_cpu_us'] for r in e['append']]), 1)} | {lat:.3f} | "
              f"{fmt(median([r['server_cpu_us'] for r in e['state']]), 1)} | {waits_text(e['append'][0]['waits'])} |")
        w("")
        if len(aps) > 1:
            cpu_a = [median([r["server_cpu_us"] for r in e["append"]]) for e in g["sizes"]]
            cpu_s = [median([r["server_cpu_us"] for r in e["state"]]) for e in g["sizes"]]
            spread_ca, spread_cs = max(cpu_a) / min(cpu_a) - 1, max(cpu_s) / min(cpu_s) - 1
            spread_a = max(aps) / min(aps) - 1
            spread_r = max(rats) / min(rats) - 1
            spread_l = max(lats) / min(lats) - 1
            w(f"- append throughput spread: {100 * spread_a:.0f}% in tps, {100 * spread_r:.0f}% in × raw "
              f"(target within 10%: {verdict(spread_r <= 0.10)} on × raw, which cancels the machine's drift)")
            w(f"- get_aggregate_state latency spread: {100 * spread_l:.0f}% (target within 10%: {verdict(spread_l <= 0.10)})")
            w(f"- server CPU per append spread {100 * spread_ca:.0f}% ({verdict(spread_ca <= 0.10)} within 10%), per "
              f"get_aggregate_state call {100 * spread_cs:.0f}% ({verdict(spread_cs <= 0.10)}): the CPU cost of the work, which "
              "other load on the machine hardly moves (throughput and latency above do move with it)")
            w("")
    r = parts.get("reads")
    if r:
        w("### Reads")
        w("")
        w(f"The feed: {r['feed_events']:,} events ({r.get('feed_batches', '?')} batches of 1000 events, one stream and transaction each) in a fresh "
          "database `bench_reads`, copied into `bench.raw_events` (`LIKE eventstore.events INCLUDING ALL`). "
          "Read whole, page by page (1000 rows), through psycopg from Python: `read_all(after => cursor)` "
          "against a keyset `SELECT` of the same 17 columns on `(transaction_id, global_position)` "
          "(no snapshot filter, no cursor text). First with the tables never analyzed (autovacuum off), then "
          "after `ANALYZE`; the two alternate, "
          f"median of {len(r['feed'][0]['raw_runs'])}.")
        w("")
        w("| tables | read_all events/s | raw SELECT events/s | × raw | target | server CPU µs/event read_all / raw |")
        w("|---|---:|---:|---:|---|---:|")
        for f in r["feed"]:
            x = f["read_all"] / f["raw"]
            w(f"| {f['state']} ({f['statistics_rows']} pg_statistic rows) | {fmt(f['read_all'])} | {fmt(f['raw'])} | {x:.2f} | ≥ 0.9× raw: {verdict(x >= 0.9)} | "
              f"{fmt(f['read_all_cpu'], 1)} / {fmt(f['raw_cpu'], 1)} |")
        w("")
        s = r["server_us_per_event"]
        w("Server time per event (`EXPLAIN ANALYZE` of `count(*)` over 1000 events, best of 7):")
        w("")
        w("| read | µs/event |")
        w("|---|---:|")
        for k, v in s.items():
            w(f"| {k} | {v:.2f} |")
        w("")
        w(f"read_stream / read_all: **{s['read_stream'] / s['read_all']:.2f}×** (before: 5×); "
          f"read_stream / raw stream SELECT: {s['read_stream'] / s['raw stream SELECT']:.2f}×.")
        w("")
        p = r["replay"]
        w(f"Replay: `get_aggregate_state` over one stream of {p['events']:,} events of an undefined type (default "
          f"merge-patch reducer, no snapshot), timed in the server, best of 5: {p['ms']:.1f} ms = "
          f"**{fmt(p['events_per_s'])} events/s** (target ≥ 1 000 000: {verdict(p['events_per_s'] >= 1e6)}). "
          f"Baseline: reading the same payloads in order takes {p['raw_read_ms']:.1f} ms "
          f"({fmt(p['raw_read_events_per_s'])} events/s); a jsonb `||` per event on top {p['jsonb_concat_ms']:.1f} ms.")
        w("")
        j = r["projection"]
        w(f"Async projection: the worker catches up on a backlog of {j['events']:,} events (100 streams) with a one-INSERT "
          f"SQL handler: **{fmt(j['events_per_s'])} events/s** (before: 2 807) in {j['seconds']:.2f} s, "
          f"{fmt(j['server_cpu_us'], 1)} µs of server CPU per event. Baselines in the same run: the same INSERTs as one "
          f"`INSERT … SELECT` {fmt(j['one_statement_per_s'])} rows/s; the handler called once per event from one "
          f"statement {fmt(j['handler_calls_per_s'])} events/s.")
        wb, wa = j.get("worker_before") or {}, j.get("worker_after") or {}
        if j.get("waited_for_backoff_s", 0) > 1 or wa.get("errors") != wb.get("errors") or wb.get("last_error"):
            w("")
            w(f"The worker before: errors {wb.get('errors')}, last error `{wb.get('last_error')}` at {wb.get('last_error_at')}, "
              f"backing off until {wb.get('backing_off_until')} (waited {j.get('waited_for_backoff_s', 0):.0f} s for it); "
              f"after: errors {wa.get('errors')}, last error `{wa.get('last_error')}`.")
        w("")
        a = r["api"]
        w(f"route_api_call (defaults: logged `api_request_log`, synchronous_commit on; one pgbench client, "
          f"`-M prepared`): direct handler {a['direct_us']:.0f} µs, routed {a['routed_us']:.0f} µs: overhead "
          f"**{a['overhead_us']:.0f} µs** (target ≤ 100 µs: {verdict(a['overhead_us'] <= 100)}; before: 882 µs); "
          f"server CPU {fmt(a['direct_cpu_us'], 1)} → {fmt(a['routed_cpu_us'], 1)} µs/call. Routed, the backend was: "
          f"{waits_text(a['routed_waits'])}.")
        w("")
    e = parts.get("emmett")
    if e:
        w("### Emmett side by side")
        w("")
        v = e["versions"]
        w(f"Node {v.get('node')}, `@event-driven-io/emmett-postgresql` {v.get('emmett-postgresql')}, `pg` {v.get('pg')}; "
          f"both through a `pg.Pool` of {e['pool']} connections with {e['pool']} concurrent workers for "
          f"{e['seconds']} s per run, `synchronous_commit = off` for both, same server. Emmett in database "
          "`bench_emmett` (its own schema, created by its migration), eventstore in `bench_es` (served by the "
          "worker) through `append_event` / `append_events` / `read_stream` / `read_all`, each a named statement "
          "(`pg` prepares it once per connection; Emmett's driver sends its statements unnamed, so they are parsed "
          "and planned on every call; the row \"unnamed\" sends eventstore's the same way). Both seeded with "
          "1000 streams of 20 events and one stream of 1000. Single: one event per call on a random stream of 1000; "
          "batch: 100 events per call; read stream: the 1000-event stream whole; global feed: each worker reads the "
          "whole feed from the start in pages of 1000 (Emmett: `readMessagesBatch`, as its consumers do). "
          f"Median over {e.get('rounds', 1)} round(s), order alternating.")
        w("")
        w("| operation | Emmett events/s | eventstore events/s | eventstore × Emmett | before | target | server CPU µs/event Emmett / eventstore | Node CPU µs/event Emmett / eventstore | eventstore top waits |")
        w("|---|---:|---:|---:|---:|---|---:|---:|---|")
        names = {("single", "eventstore"): ("single appends", 1.84, 2.5),
                 ("single", "eventstore-unnamed"): ("single appends, eventstore's statement unnamed", 1.84, None),
                 ("batch", "eventstore"): ("batches of 100", 1.43, None),
                 ("readstream", "eventstore"): ("reading a 1,000-event stream", 1.34, None),
                 ("readall", "eventstore"): ("global feed", 4.4, None)}
        for (op, mine), (title, before, target) in names.items():
            rs = {s: [x for x in e["runs"] if x["op"] == op and x["system"] == t]
                  for s, t in (("emmett", "emmett"), ("eventstore", mine))}
            if not rs["emmett"] or not rs["eventstore"]:
                continue
            em, es = median([x["events_per_s"] for x in rs["emmett"]]), median([x["events_per_s"] for x in rs["eventstore"]])
            x = es / em
            w(f"| {title} | {fmt(em)} | {fmt(es)} | {x:.2f} | {before} | "
              f"{f'≥ {target}×: ' + verdict(x >= target) if target else '–'} | "
              f"{fmt(median([x['server_cpu_us_per_event'] for x in rs['emmett']]), 1)} / "
              f"{fmt(median([x['server_cpu_us_per_event'] for x in rs['eventstore']]), 1)} | "
              f"{fmt(median([x['client_cpu_s'] * 1e6 / max(1, x['events']) for x in rs['emmett']]), 1)} / "
              f"{fmt(median([x['client_cpu_s'] * 1e6 / max(1, x['events']) for x in rs['eventstore']]), 1)} | "
              f"{waits_text(rs['eventstore'][0]['waits'])} |")
        w("")
        sizes = {s: [x.get("feed_size") for x in e["runs"] if x["op"] == "readall" and x["system"] == s] for s in ("emmett", "eventstore")}
        if any(v for vs in sizes.values() for v in vs):
            w("Feed size when it was read (each store holds its own seed plus what its appends wrote, so they differ): "
              + "; ".join(f"{s} " + ", ".join(fmt(v) for v in vs if v is not None) for s, vs in sizes.items()) + " events. "
              "Emmett's feed query (`readMessagesBatch`) filters `global_position` but orders by "
              "`transaction_id, global_position`, which its indexes do not serve: each page scans the table, so "
              "its feed slows down as the store grows.")
            w("")
    w(END)
    text = open(readme).read() if os.path.exists(readme) else ""
    section = "\n".join(o)
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    open(readme, "w").write(text)


def main(argv):
    if len(argv) == 4 and argv[1] == "report":
        report(argv[2], argv[3])
        return
    parts = argv[1:]
    if not parts or any(p not in ("growth", "reads", "emmett") for p in parts):
        sys.exit(__doc__)
    os.makedirs(os.path.join(OUT, "suite"), exist_ok=True)
    # reads first: its projection runs in bench_es before growth fills it
    for p in ("reads", "emmett", "growth"):
        if p in parts:
            t = time.time()
            {"reads": run_reads, "emmett": run_emmett, "growth": run_growth}[p]()
            log(f"{p}: {time.time() - t:.0f} s")


if __name__ == "__main__":
    main(sys.argv)
