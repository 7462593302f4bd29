"""Benchmarks of what happens downstream of the log: aggregate state, async
projections in the background worker (§5.2) and webhook delivery (§5.3).

Run through bench/downstream.sh, which starts a throwaway cluster and passes its port. Prints a
Markdown report on stdout; every number is measured in this run.
"""

import http.server
import json
import os
import statistics
import sys
import threading
import time

import psycopg

PORT = int(os.environ.get("BENCH_PORT", "5443"))
DB = "eventstore_bench"
SCALE = float(os.environ.get("BENCH_SCALE", "1"))


def connect(autocommit=True):
    return psycopg.connect(f"host=127.0.0.1 port={PORT} dbname={DB} user=postgres", autocommit=autocommit)


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def append_batches(conn, aggregate_type, aggregate_id, n, payload='{"amount": 1, "note": "bench"}'):
    done = 0
    while done < n:
        size = min(5000, n - done)
        conn.execute(
            "SELECT count(*) FROM eventstore.append_events(%s, %s, "
            "(SELECT jsonb_agg(jsonb_build_object('event_type', 'Deposited', 'payload', %s::jsonb)) "
            " FROM generate_series(1, %s)))",
            (aggregate_type, aggregate_id, payload, size),
        )
        done += size


def bench_state(out):
    conn = connect()
    conn.execute("SELECT eventstore.define_aggregate('snap', '{\"balance\": 0}', snapshot_every => 100)")
    conn.execute(
        "SELECT eventstore.define_reducer('snap', 'Deposited', "
        "rule => '[{\"op\": \"increment\", \"path\": \"balance\", \"from\": \"amount\"}]')"
    )
    rows = []
    lengths = [10, 1_000, 10_000, 100_000]
    for n in lengths:
        for kind in ("snap", "nosnap"):
            append_batches(conn, kind, f"s{n}", n)
        for kind in ("snap", "nosnap"):
            runs = 200 if n <= 10_000 else 30
            samples = []
            for _ in range(runs):
                t = time.perf_counter()
                conn.execute("SELECT version FROM eventstore.get_aggregate_state(%s, %s)", (kind, f"s{n}")).fetchone()
                samples.append((time.perf_counter() - t) * 1000)
            rows.append((n, kind, statistics.median(samples), pct(samples, 99)))
    # raw replay speed: the default reducer over the 100,000-event stream without snapshots,
    # timed inside the server so the client round trip is not counted
    def server_ms():
        plan = conn.execute(
            "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON) SELECT eventstore.get_aggregate_state('nosnap', 's100000')"
        ).fetchall()
        line = next(r[0] for r in plan if r[0].startswith("Execution Time"))
        return float(line.split(":")[1].split()[0])

    best = min(server_ms() for _ in range(5))
    out.append("## Aggregate state (issue 3)\n")
    out.append("`get_aggregate_state` over one connection, latency measured at the client (includes the round trip).")
    out.append("`snap`: a defined aggregate with `snapshot_every => 100` and a rule reducer; `nosnap`: an undefined")
    out.append("aggregate type (default merge-patch reducer, no snapshots, full replay every time).\n")
    out.append("| events in stream | aggregate | median ms | p99 ms | target |")
    out.append("|---:|---|---:|---:|---|")
    for n, kind, med, p99 in rows:
        target = ("≤ 1 ms median: " + ("met" if med <= 1 else "missed")) if kind == "snap" else ""
        out.append(f"| {n:,} | {kind} | {med:.3f} | {p99:.3f} | {target} |")
    speed = 100_000 / (float(best) / 1000)
    out.append(
        f"\nRaw replay with the default reducer (100,000 events, no snapshot, timed in the server, best of 5): "
        f"{float(best):.1f} ms = **{speed:,.0f} events/s** (target ≥ 1,000,000 events/s: {'met' if speed >= 1e6 else 'missed'}).\n"
    )


def wait_worker(conn, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if conn.execute("SELECT eventstore.worker_status()->>'running'").fetchone()[0] == "true":
            return
        time.sleep(0.2)
    raise RuntimeError("the worker did not start")


def bench_projection(out):
    conn = connect()
    wait_worker(conn)
    conn.execute("CREATE TABLE public.proj_seen (global_position bigint PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE public.proj_latency (event_id uuid PRIMARY KEY, recorded_at timestamptz, applied_at timestamptz)"
    )
    conn.execute(
        "CREATE FUNCTION public.count_it(e eventstore.event) RETURNS void LANGUAGE sql AS "
        "$$ INSERT INTO public.proj_seen VALUES (e.global_position) $$"
    )
    conn.execute(
        "CREATE FUNCTION public.time_it(e eventstore.event) RETURNS void LANGUAGE sql AS "
        "$$ INSERT INTO public.proj_latency VALUES (e.event_id, e.recorded_at, clock_timestamp()) $$"
    )
    n = int(20_000 * SCALE)
    # throughput: the worker catches up with a backlog appended before the projection exists
    append_batches(conn, "proj", "p1", n)
    t = time.perf_counter()
    conn.execute("SELECT eventstore.register_projection('counts', 'public.count_it(eventstore.event)', ARRAY['Deposited'])")
    while conn.execute("SELECT count(*) FROM public.proj_seen").fetchone()[0] < n:
        time.sleep(0.02)
    elapsed = time.perf_counter() - t
    total = conn.execute("SELECT count(*) FROM eventstore.events").fetchone()[0]
    applied = conn.execute("SELECT count(*) FROM public.proj_seen").fetchone()[0]
    # lag at a steady 500 appends/s: each event's recorded_at against when the handler ran
    conn.execute("SELECT eventstore.register_projection('latency', 'public.time_it(eventstore.event)', ARRAY['Tick'])")
    rate, seconds = 500, int(20 * SCALE)
    writer = connect()
    start = time.perf_counter()
    for i in range(rate * seconds):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        writer.execute("SELECT eventstore.append_event('tick', %s, 'Tick', '{}')", (f"t{i % 50}",))
    achieved = rate * seconds / (time.perf_counter() - start)
    deadline = time.time() + 60
    while conn.execute("SELECT count(*) FROM public.proj_latency").fetchone()[0] < rate * seconds and time.time() < deadline:
        time.sleep(0.05)
    lags = [r[0] for r in conn.execute("SELECT extract(epoch FROM applied_at - recorded_at) * 1000 FROM public.proj_latency")]
    out.append("## Async projections (issue 4)\n")
    out.append(f"Catch-up throughput: the worker applied a backlog of {n:,} events (trivial SQL handler: one")
    out.append(f"INSERT per event; the feed holds {total:,} events, {applied:,} match) in {elapsed:.2f} s =")
    out.append(f"**{n / elapsed:,.0f} events/s**.\n")
    out.append(f"Lag at a steady {rate} appends/s for {seconds} s (achieved {achieved:.0f}/s, one client): from")
    out.append("`recorded_at` (the appending statement's start) to the handler running in the worker:")
    out.append(f"median **{statistics.median(lags):.1f} ms**, p99 **{pct(lags, 99):.1f} ms**, max {max(lags):.1f} ms")
    out.append(f"over {len(lags):,} events. The worker is woken by each commit; `worker_poll_interval` is 200 ms.\n")


class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do
    arrivals = {}
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        now = time.time()
        event_id = json.loads(body)["data"]["event_id"]
        key = event_id if self.path == "/hook" else f"{self.path} {event_id}"
        with Receiver.lock:
            Receiver.arrivals.setdefault(key, now)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def bench_webhooks(out):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    conn = connect()
    wait_worker(conn)
    conn.execute("SELECT * FROM eventstore.create_webhook_endpoint(%s, event_types => ARRAY['Hook'])", (url,))
    # throughput: a backlog of deliveries to one endpoint (delivered in order, one at a time)
    n = int(10_000 * SCALE)
    conn.execute("SELECT eventstore.disable_webhook_endpoint(endpoint_id) FROM eventstore.webhook_endpoints")
    conn.execute(
        "SELECT count(*) FROM eventstore.append_events('hook', 'h1', "
        "(SELECT jsonb_agg(jsonb_build_object('event_type', 'Hook', 'payload', jsonb_build_object('i', i))) "
        " FROM generate_series(1, %s) i))",
        (n,),
    )
    # queue the backlog (the endpoint was disabled while appending), then let the worker go
    conn.execute("SELECT eventstore.enable_webhook_endpoint(endpoint_id) FROM eventstore.webhook_endpoints")
    conn.execute("SELECT eventstore.queue_event_for_webhooks(event_id) FROM eventstore.events WHERE event_type = 'Hook'")
    t = time.perf_counter()
    while len(Receiver.arrivals) < n and time.perf_counter() - t < 300:
        time.sleep(0.02)
    elapsed = time.perf_counter() - t
    delivered = len(Receiver.arrivals)
    # throughput to 8 endpoints: ordered per endpoint, endpoints in parallel
    Receiver.arrivals.clear()
    fan, m = 8, n // 4
    for k in range(fan):
        conn.execute("SELECT * FROM eventstore.create_webhook_endpoint(%s, event_types => ARRAY['Fan'])", (f"{url}/{k}",))
    conn.execute("SELECT eventstore.disable_webhook_endpoint(endpoint_id) FROM eventstore.webhook_endpoints WHERE url LIKE '%%/hook/%%'")
    conn.execute(
        "SELECT count(*) FROM eventstore.append_events('fan', 'f1', "
        "(SELECT jsonb_agg(jsonb_build_object('event_type', 'Fan', 'payload', jsonb_build_object('i', i))) "
        " FROM generate_series(1, %s) i))",
        (m,),
    )
    conn.execute("SELECT eventstore.enable_webhook_endpoint(endpoint_id) FROM eventstore.webhook_endpoints WHERE url LIKE '%%/hook/%%'")
    conn.execute("SELECT eventstore.queue_event_for_webhooks(event_id) FROM eventstore.events WHERE event_type = 'Fan'")
    t = time.perf_counter()
    while len(Receiver.arrivals) < fan * m and time.perf_counter() - t < 300:
        time.sleep(0.02)
    fan_elapsed = time.perf_counter() - t
    fan_delivered = len(Receiver.arrivals)
    # latency at a steady 200 events/s, from the commit (seen by the client) to the arrival
    Receiver.arrivals.clear()
    rate, seconds = 200, int(20 * SCALE)
    committed = {}
    writer = connect()
    start = time.perf_counter()
    for i in range(rate * seconds):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        event_id = writer.execute("SELECT event_id FROM eventstore.append_event('hook', %s, 'Hook', '{}')", (f"l{i % 20}",)).fetchone()[0]
        committed[str(event_id)] = time.time()
    achieved = rate * seconds / (time.perf_counter() - start)
    deadline = time.time() + 60
    while len(Receiver.arrivals) < len(committed) and time.time() < deadline:
        time.sleep(0.05)
    latencies = [(Receiver.arrivals[k] - v) * 1000 for k, v in committed.items() if k in Receiver.arrivals]
    server.shutdown()
    out.append("## Webhooks (issue 5)\n")
    out.append(f"Throughput: a backlog of {n:,} deliveries to one endpoint on 127.0.0.1 that answers 200 at once")
    out.append(f"(one endpoint's deliveries go out one after another, in event order): {delivered:,} delivered in")
    out.append(f"{elapsed:.2f} s = **{delivered / elapsed:,.0f} deliveries/s**.")
    out.append(f"To {fan} endpoints at once (each in event order, the endpoints in parallel): {fan_delivered:,} delivered in")
    out.append(f"{fan_elapsed:.2f} s = **{fan_delivered / fan_elapsed:,.0f} deliveries/s** (target ≥ 2,000/s: {'met' if fan_delivered / fan_elapsed >= 2000 else 'missed'}).")
    out.append("The receiver is Python's ThreadingHTTPServer in the benchmark process, with keep-alive.\n")
    out.append(f"Latency at a steady {rate} events/s for {seconds} s (achieved {achieved:.0f}/s), from the client")
    out.append(f"seeing its commit to the receiver getting the request: p50 **{pct(latencies, 50):.1f} ms**, p99")
    out.append(f"**{pct(latencies, 99):.1f} ms** (target p99 ≤ 250 ms: {'met' if pct(latencies, 99) <= 250 else 'missed'}), over {len(latencies):,} deliveries.\n")


def main():
    out = []
    which = sys.argv[1:] or ["state", "projection", "webhooks"]
    for name in which:
        {"state": bench_state, "projection": bench_projection, "webhooks": bench_webhooks}[name](out)
    print("\n".join(out))


if __name__ == "__main__":
    main()
