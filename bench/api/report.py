"""Writes bench/api/README.md from a run of bench/api/run.sh (its results directory in argv[1])."""

import csv
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
meta = dict(line.rstrip("\n").split("\t", 1) for line in open(f"{out}/meta.tsv"))
runs = list(csv.DictReader(open(f"{out}/runs.csv")))
TARGET_US = 100

by = defaultdict(list)
for r in runs:
    by[(r["workload"], r["config"], r["how"])].append(r)


def med(rows, key):
    return statistics.median(float(r[key]) for r in rows)


def overhead(workload, config, key, base):
    """Median over rounds of (routed - base) in the same round."""
    baseline = {r["round"]: float(r[key]) for r in by[(workload, config, base)]}
    routed = {r["round"]: float(r[key]) for r in by[(workload, config, "routed")]}
    return statistics.median(routed[k] - baseline[k] for k in baseline if k in routed)


CONFIGS = {
    "logged": "defaults: logged log, synchronous_commit = on",
    "unlogged": "`api_request_log` UNLOGGED, synchronous_commit = on",
    "async": "logged log, synchronous_commit = off",
}
rows = []
for workload in ("bare", "postgrest"):
    for config in CONFIGS:
        d, h, r = (by[(workload, config, how)] for how in ("direct", "handlog", "routed"))
        if d and h and r:
            rows.append(dict(
                workload=workload, config=config,
                direct=med(d, "median_us"), handlog=med(h, "median_us"), routed=med(r, "median_us"),
                overhead=overhead(workload, config, "median_us", "direct"),
                over_handlog=overhead(workload, config, "median_us", "handlog"),
                ratio=med(r, "median_us") / max(med(d, "median_us"), 1),
                direct_tps=med(d, "tps"), routed_tps=med(r, "tps"),
                direct_cpu=med(d, "server_cpu_us_per_tx"), handlog_cpu=med(h, "server_cpu_us_per_tx"),
                routed_cpu=med(r, "server_cpu_us_per_tx"),
                cpu_overhead=overhead(workload, config, "server_cpu_us_per_tx", "direct"),
                cpu_over_handlog=overhead(workload, config, "server_cpu_us_per_tx", "handlog")))

print(f"""# route_api_call overhead

How much `eventstore.route_api_call` adds to an API call over calling its handler directly
(see the README's API versioning section). Measured by [`run.sh`](run.sh) on a throwaway cluster (port 5444) with pgbench, 8
clients, `-M prepared`. The handler is a one-line SQL function `(payload jsonb) -> jsonb` that only
reads. A routed call resolves the version, checks the client's `x-app-version` against the
version's minimum (when the request has one), runs the handler as the calling role in a
subtransaction, and writes its `api_request_log` row (the benchmark checks one row per call).

- **bare**: one `SELECT` per transaction, no request headers: the active version answers.
- **postgrest**: the transaction PostgREST runs for `POST /rpc/...` (set_config of role, JWT
  claims, method, path and headers with `x-api-version` and `x-app-version`; the call, reading
  `response.headers` and `response.status` in the same statement; `COMMIT`), with the handler called
  directly in the place of route_api_call for the baseline.
- configurations: {'; '.join(f'**{k}**: {v}' for k, v in CONFIGS.items())}.

*handler + own log INSERT* is the baseline any per-call log pays: the handler and an `INSERT` of
the same row into a table of the same shape and indexes, in one statement.

*Median* latencies are those of every transaction of one of the 8 clients (pgbench `-l` in a pgbench
of its own: with several clients per thread pgbench logs most latencies as 0), the median of each
run; *overhead* is routed minus direct in the same round, the median over rounds; *ratio* is
routed / direct. *Server CPU* is the CPU time of all server processes (backends, WAL writer, ...)
per call: unlike latency it does not depend on how many clients queue for the machine's CPUs.

Command: `{meta['command']}`

| workload | configuration | direct median µs | handler + own log INSERT median µs | routed median µs | **overhead µs** | ratio | over handler + INSERT µs | direct calls/s | routed calls/s | server CPU µs/call direct / + INSERT / routed | CPU overhead µs/call | CPU over handler + INSERT µs/call |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|""")
for x in rows:
    print(f"| {x['workload']} | {x['config']} | {x['direct']:.0f} | {x['handlog']:.0f} | {x['routed']:.0f} "
          f"| **{x['overhead']:.0f}** | {x['ratio']:.1f} | {x['over_handlog']:.0f} | {x['direct_tps']:.0f} "
          f"| {x['routed_tps']:.0f} | {x['direct_cpu']:.1f} / {x['handlog_cpu']:.1f} / {x['routed_cpu']:.1f} "
          f"| {x['cpu_overhead']:.1f} | {x['cpu_over_handlog']:.1f} |")
met = [f"{x['workload']}/{x['config']}" for x in rows if x["overhead"] <= TARGET_US]
missed = [f"{x['workload']}/{x['config']} ({x['overhead']:.0f} µs)" for x in rows if x["overhead"] > TARGET_US]
print(f"""
Target, at most {TARGET_US} µs median overhead: met by {', '.join(met) or 'none'}; missed by {', '.join(missed) or 'none'}.

Reading the numbers:

- The log row is most of the overhead. With the defaults every routed call is a write
  transaction that waits for its own WAL flush, which a read-only handler called directly never
  does; the hand-written *handler + INSERT* pays the same. A handler that writes pays that flush
  anyway, and the log row rides along in it.
- Without the flush (UNLOGGED log, or synchronous_commit = off) the CPU a routed call costs over
  the hand-written *handler + INSERT* is what route_api_call itself adds: the SECURITY DEFINER
  call with its pinned search_path, the subtransaction, a second statement (the handler and the
  log insert cannot share one: the handler runs as the caller in a subtransaction, the insert as
  the extension's owner after it), and the JSON of headers, claims and envelope. A perf profile of
  one client (synchronous_commit = off) put about 30% of the backend's CPU in COMMIT of the write
  transaction, 19% in the two SPI statements, 4% in turning the envelope into jsonb, 2% in the
  security-definer switch of search_path, and under 1% each in the subtransaction and the version
  resolution.
- With 8 clients on 2 CPUs the clients queue for the CPUs, so a microsecond of CPU per call
  becomes about four of latency: {TARGET_US} µs of median overhead would need about
  {TARGET_US // 4} µs of CPU per call, less than the write transaction of the log row alone costs
  here (see *handler + INSERT*). The load average during the run (other work on the machine)
  is below; it makes single runs noisy, the CPU-per-call figures less so.

| | |
|---|---|""")
for k in ("date", "machine", "server", "eventstore", "pgbench", "loadavg_before", "loadavg_after"):
    if k in meta:
        print(f"| {k} | {meta[k]} |")
print(f"""
Every run (CSV; `logged_rows` is the size of the request log after the run, which starts empty):

```
{open(f"{out}/runs.csv").read().rstrip()}
```""")
