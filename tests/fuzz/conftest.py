"""Fuzz layer: generated inputs (hypothesis) for the public SQL surface of eventstore.

Every call made through `Harness.call` is checked for the three things no input may cause:

- an internal error (SQLSTATE XX000, XX001, XX002) or a system error (class 58);
- a crashed backend or a restarted postmaster: the call's connection is lost, or a sentinel
  connection opened when the module started stops answering, or pg_postmaster_start_time()
  changes;
- a write by a failed call: a fingerprint of every table and sequence of schema eventstore is
  taken before each call and compared after each failing one: per table the calling tenant's
  rows (count, and the sum of their xmin, which moves on every insert, update and delete) and
  the table's greatest primary key (every table without tenant_id: all its rows), per sequence
  its last value. Sequences are not transactional: a sequence moved by a call that failed with
  a wrong expected version (checked before a position is drawn) is a finding, one moved by any
  other failure (a handler, a snapshot, the commit, after the insert) is a note.

A statement timeout (57014, every statement runs with EVENTSTORE_FUZZ_TIMEOUT_MS) is a finding
too: no input may make a function run away. 54001 (stack depth) and 53xxx (out of resources) are
noted, not failed: they are deliberate PostgreSQL errors, but a limit of the extension should
have refused the input earlier; the session summary lists them.

Modes (EVENTSTORE_FUZZ_MODE):
  collect  (default) a test runs all its examples, records every finding and fails at the end
           with the distinct ones (function, kind, SQLSTATE, message) and the smallest input
           that produced each;
  shrink   the first finding fails the example at once, so hypothesis shrinks it to a minimal
           example and prints it (use it to replay one test).
Examples are derandomized (the same test code always generates the same examples), so rerunning
a test replays it; see README.md.
"""

import contextlib
import importlib.util
import json
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, settings
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# The client layer's connection helpers (its conftest cannot be imported by name here: this
# file is "conftest" too).
_spec = importlib.util.spec_from_file_location("eventstore_client_helpers", HERE.parent / "client" / "conftest.py")
client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client)
dsn, admin_connect, unique, create_extension = client.dsn, client.admin_connect, client.unique, client.create_extension

MODE = os.environ.get("EVENTSTORE_FUZZ_MODE", "collect")
assert MODE in ("collect", "shrink"), f"EVENTSTORE_FUZZ_MODE must be collect or shrink, not {MODE!r}"
TIMEOUT_MS = int(os.environ.get("EVENTSTORE_FUZZ_TIMEOUT_MS", "10000"))
# multiplies every test's max_examples
SCALE = float(os.environ.get("EVENTSTORE_FUZZ_SCALE", "1"))
REPORT = os.environ.get("EVENTSTORE_FUZZ_REPORT")
# how long to wait for the server to accept connections again after a crash (s)
RECOVERY_TIMEOUT = 120

HARD_STATES = {"XX000": "internal error", "XX001": "data corrupted", "XX002": "index corrupted",
               "57014": "statement timeout"}
# a wrong expected version is checked before a position is drawn: a losing writer leaves no gap
# (other failures may come after the insert: a handler, a snapshot of a state grown too deep)
NO_GAP_STATES = {"40001", "23P01"}
LOST_STATES = {"57P01", "57P02", "57P03", "08000", "08003", "08006"}


# --- hypothesis settings -------------------------------------------------------------------

settings.register_profile(
    "eventstore-fuzz",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
    # no explain phase: it reruns examples to find which parts matter, too costly here
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
# random examples: `EVENTSTORE_FUZZ_PROFILE=eventstore-random pytest --hypothesis-seed=N ...`
settings.register_profile("eventstore-random", parent=settings.get_profile("eventstore-fuzz"), derandomize=False)
settings.load_profile(os.environ.get("EVENTSTORE_FUZZ_PROFILE", "eventstore-fuzz"))


def fuzz_settings(examples):
    """@settings for one test: `examples` scaled by EVENTSTORE_FUZZ_SCALE."""
    return settings(max_examples=max(1, int(examples * SCALE)))


# --- findings ------------------------------------------------------------------------------


def short(value, limit=160):
    """A printable, bounded description of an argument."""
    desc = getattr(value, "desc", None)
    if desc is not None:
        return desc
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:60]!r}…[{len(value)} chars]"
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(short(v, 40) for v in value[:6]) + (f", …{len(value)} items" if len(value) > 6 else "") + "]"
        return text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {short(v, 60)}" for k, v in list(value.items())[:8]) + "}"
    return repr(value)


def _weight(inputs):
    """How big an input really is (not its description): to keep the smallest of a finding."""
    values = inputs.values() if isinstance(inputs, dict) else [inputs]
    total = 0
    for v in values:
        if isinstance(v, list):
            total += sum(_weight(x) if isinstance(x, (list, dict)) else len(str(x)) for x in v) + len(v)
        else:
            total += len(str(v)) if v is not None else 0
    return total


def _normalize(message):
    first = (message or "").strip().splitlines()[0] if message else ""
    first = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UUID", first)
    first = re.sub(r"\b[0-9a-f]{16}\b", "HEX", first)
    first = re.sub(r"\d+", "N", first)
    first = re.sub(r'"[^"]{20,}"', '"…"', first)
    return first[:100]


class Findings:
    """Every finding of the session; the ones of the running test decide its verdict."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_key = {}      # key -> finding dict (smallest input kept)
        self.notes = {}       # soft findings, same shape
        self.current = []     # keys of the running test
        self.test = None

    def start_test(self, nodeid):
        self.test = nodeid
        self.current = []

    def record(self, kind, function, sqlstate, message, inputs, soft=False):
        key = (function, kind, sqlstate or "", _normalize(message))
        weight = _weight(inputs)
        text = ", ".join(f"{k}={short(v)}" for k, v in inputs.items()) if isinstance(inputs, dict) else short(inputs)
        entry = {"function": function, "kind": kind, "sqlstate": sqlstate, "message": (message or "").strip()[:500],
                 "input": text, "test": self.test, "count": 1, "weight": weight}
        with self.lock:
            table = self.notes if soft else self.by_key
            old = table.get(key)
            if old is None:
                table[key] = entry
            else:
                old["count"] += 1
                if weight < old["weight"]:
                    old.update(input=text, message=entry["message"], test=self.test, weight=weight)
            if not soft and key not in self.current:
                self.current.append(key)
        if not soft and MODE == "shrink":
            raise AssertionError(format_finding(entry))

    def current_report(self):
        return "\n".join(format_finding(self.by_key[k]) for k in self.current)


def format_finding(f):
    state = f" SQLSTATE {f['sqlstate']}" if f["sqlstate"] else ""
    return f"- {f['function']}: {f['kind']}{state}: {f['message'].splitlines()[0] if f['message'] else ''}\n    input: {f['input']}"


FINDINGS = Findings()
# outcomes per function ("ok" or the SQLSTATE), shown with EVENTSTORE_FUZZ_STATS=1: how far
# the generated calls get
STATS = {}
TIMES = {}   # seconds spent per function (with EVENTSTORE_FUZZ_STATS=1)
SLOWEST = []  # (seconds, call) of the slowest calls


SAMPLES = {}


def _count(function, outcome, message=None):
    per = STATS.setdefault(function, {})
    per[outcome] = per.get(outcome, 0) + 1
    if message:
        SAMPLES.setdefault((function, outcome), {}).setdefault(_normalize(message), 0)
        SAMPLES[(function, outcome)][_normalize(message)] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    FINDINGS.start_test(item.nodeid)
    outcome = yield
    if FINDINGS.current and outcome.excinfo is None:
        outcome.force_exception(pytest.fail.Exception(
            f"{len(FINDINGS.current)} distinct finding(s):\n{FINDINGS.current_report()}\n"
            f"(replay: rerun this test; EVENTSTORE_FUZZ_MODE=shrink minimizes the first one)", pytrace=False))


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if FINDINGS.by_key or FINDINGS.notes:
        tr.section("eventstore fuzz findings")
        for title, table in (("findings", FINDINGS.by_key), ("notes (not failed: 54001/53xxx errors, sequence gaps left by failures after the insert, calls far past the timeout)", FINDINGS.notes)):
            if table:
                tr.write_line(f"{title}: {len(table)} distinct")
                for f in sorted(table.values(), key=lambda f: (f["function"], f["kind"])):
                    tr.write_line(format_finding(f) + f"\n    seen {f['count']}x, smallest in {f['test']}")
    if os.environ.get("EVENTSTORE_FUZZ_STATS") == "1" and STATS:
        tr.section("eventstore fuzz call outcomes")
        for fn in sorted(STATS):
            tr.write_line(f"{fn} ({TIMES.get(fn, 0):.1f} s): " + ", ".join(f"{k} {v}" for k, v in sorted(STATS[fn].items(), key=lambda kv: -kv[1])))
            for (f, outcome), msgs in sorted(SAMPLES.items()):
                if f == fn:
                    for m, n in sorted(msgs.items(), key=lambda kv: -kv[1])[:6]:
                        tr.write_line(f"    {outcome} {n}x {m}")
    if os.environ.get("EVENTSTORE_FUZZ_STATS") == "1" and SLOWEST:
        tr.section("eventstore fuzz slowest calls")
        for spent, call in SLOWEST:
            tr.write_line(f"{spent:6.2f} s {call}")
    if REPORT:
        with open(REPORT, "w") as out:
            json.dump({"findings": list(FINDINGS.by_key.values()), "notes": list(FINDINGS.notes.values())}, out, indent=1)


# --- the harness ---------------------------------------------------------------------------

# Functions the roles may call as handlers: every kind a caller might register, right or wrong.
HANDLERS = r"""
CREATE SCHEMA fz;
GRANT USAGE ON SCHEMA fz TO PUBLIC;
-- reducers: (state jsonb, event eventstore.event) -> jsonb
CREATE FUNCTION fz.r_merge(s jsonb, e eventstore.event) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT coalesce(s, '{}') || e.payload $$;
CREATE FUNCTION fz.r_null(s jsonb, e eventstore.event) RETURNS jsonb LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
CREATE FUNCTION fz.r_scalar(s jsonb, e eventstore.event) RETURNS jsonb LANGUAGE sql AS $$ SELECT '42'::jsonb $$;
CREATE FUNCTION fz.r_deep(s jsonb, e eventstore.event) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT (repeat('{"a":', 300) || '1' || repeat('}', 300))::jsonb $$;
CREATE FUNCTION fz.r_raise(s jsonb, e eventstore.event) RETURNS jsonb LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'reducer refused' USING ERRCODE = 'P0001'; END $$;
CREATE FUNCTION fz.r_div(s jsonb, e eventstore.event) RETURNS jsonb LANGUAGE sql AS $$ SELECT to_jsonb(1 / 0) $$;
CREATE FUNCTION fz.r_wrong(s json) RETURNS json LANGUAGE sql AS $$ SELECT s $$;
-- projections: (event eventstore.event) -> void; resets: () -> void
CREATE TABLE fz.seen (event_id uuid, payload jsonb);
GRANT ALL ON fz.seen TO PUBLIC;
CREATE FUNCTION fz.p_ok(e eventstore.event) RETURNS void LANGUAGE sql AS
    $$ INSERT INTO fz.seen VALUES (e.event_id, e.payload) $$;
CREATE FUNCTION fz.p_raise(e eventstore.event) RETURNS void LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'projection refused %', e.event_id USING ERRCODE = 'P0001'; END $$;
CREATE FUNCTION fz.p_wrong(e jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION fz.p_setof(e eventstore.event) RETURNS SETOF int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION fz.reset_ok() RETURNS void LANGUAGE sql AS $$ DELETE FROM fz.seen $$;
CREATE FUNCTION fz.reset_raise() RETURNS void LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'reset refused' USING ERRCODE = 'P0001'; END $$;
-- api routes: (payload jsonb) -> jsonb
CREATE FUNCTION fz.a_echo(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT p $$;
CREATE FUNCTION fz.a_wrap(p jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('got', p, 'total', jsonb_build_object('amount', 1)) $$;
CREATE FUNCTION fz.a_null(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
CREATE FUNCTION fz.a_scalar(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '"text"'::jsonb $$;
CREATE FUNCTION fz.a_deep(p jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT (repeat('{"a":', 300) || '1' || repeat('}', 300))::jsonb $$;
CREATE FUNCTION fz.a_raise(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'handler refused' USING ERRCODE = 'P0001', DETAIL = p::text; END $$;
CREATE FUNCTION fz.a_write(p jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ INSERT INTO fz.seen VALUES (NULL, p) RETURNING jsonb_build_object('ok', true) $$;
CREATE FUNCTION fz.a_wrong(p json) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
"""

# regprocedure texts for each handler kind: what the strategies choose from
REDUCER_HANDLERS = ["fz.r_merge(jsonb,eventstore.event)", "fz.r_null(jsonb,eventstore.event)",
                    "fz.r_scalar(jsonb,eventstore.event)", "fz.r_deep(jsonb,eventstore.event)",
                    "fz.r_raise(jsonb,eventstore.event)", "fz.r_div(jsonb,eventstore.event)",
                    "fz.r_wrong(json)", "pg_catalog.now()", "fz.p_ok(eventstore.event)"]
PROJECTION_HANDLERS = ["fz.p_ok(eventstore.event)", "fz.p_raise(eventstore.event)", "fz.p_wrong(jsonb)",
                       "fz.p_setof(eventstore.event)", "fz.reset_ok()", "pg_catalog.now()",
                       "fz.r_merge(jsonb,eventstore.event)"]
RESET_HANDLERS = ["fz.reset_ok()", "fz.reset_raise()", "fz.p_ok(eventstore.event)", "pg_catalog.now()"]
ROUTE_HANDLERS = ["fz.a_echo(jsonb)", "fz.a_wrap(jsonb)", "fz.a_null(jsonb)", "fz.a_scalar(jsonb)", "fz.a_deep(jsonb)",
                  "fz.a_raise(jsonb)", "fz.a_write(jsonb)", "fz.a_wrong(json)", "pg_catalog.jsonb_typeof(jsonb)",
                  "pg_catalog.now()"]
ALL_HANDLERS = sorted(set(REDUCER_HANDLERS + PROJECTION_HANDLERS + RESET_HANDLERS + ROUTE_HANDLERS))

ROLES = ("postgres", "admin", "writer", "reader")

def _fingerprint_sql(conn):
    """One statement that fingerprints schema eventstore for a tenant (%(t)s): for a table with
    a tenant_id, the tenant's rows (count, sum of xmin) and the table's greatest primary key (an
    insert for any tenant that sorts last, such as every new event, moves it), both through
    indexes; for a table without one (the API catalog), all its rows; every sequence's value."""
    rels = conn.execute(
        """SELECT c.relname, c.relkind,
                  EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                          AND NOT a.attisdropped) AS tenanted,
                  (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.i)
                     FROM pg_index x CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY k(attnum, i)
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                    WHERE x.indrelid = c.oid AND x.indisprimary) AS pk
           FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind IN ('r', 'p', 'S')
           ORDER BY c.relname""").fetchall()
    parts = []
    for r in rels:
        name = r["relname"]
        q = "eventstore." + '"' + name.replace('"', '""') + '"'
        if r["relkind"] == "S":
            parts.append(f"SELECT '{name}'::text AS rel, 1::bigint AS n, (last_value::text || is_called::text) AS h FROM {q}")
        elif r["tenanted"]:
            top = (f"(SELECT ({r['pk']})::text FROM {q} ORDER BY {', '.join(c + ' DESC' for c in r['pk'].split(', '))} LIMIT 1)"
                   if r["pk"] else "''")
            parts.append(f"SELECT '{name}'::text AS rel, count(*) AS n,"
                         f" coalesce(sum(xmin::text::bigint), 0)::text || '/' || coalesce({top}, '') AS h"
                         f" FROM {q} WHERE tenant_id = %(t)s")
        else:
            parts.append(f"SELECT '{name}'::text AS rel, count(*) AS n, coalesce(sum(xmin::text::bigint), 0)::text AS h FROM {q}")
    return " UNION ALL ".join(parts)


class Context(list):
    """The calls that succeeded earlier in the same example."""

    desc = property(lambda self: "[" + "; ".join(self) + "]")


class Lost(Exception):
    """The connection of a call was lost: the backend crashed or was terminated."""


class Harness:
    """One fuzz database: connections per role, checked calls, crash detection."""

    def __repr__(self):
        return f"<fuzz database {self.db}>"

    def __init__(self, dbname, roles):
        self.db = dbname
        self.roles = roles          # "admin"/"writer"/"reader" -> role name
        self.conns = {}
        self.fp_conn = None
        self.fp_sql = None
        self.sequences = set()
        self.sentinel = None
        self.start_time = None
        # the successful calls of the running example, which a finding lists as its context
        self.history = []
        self._open_sentinel()

    # connections

    def _connect(self, user, timeout=10):
        settings = {"statement_timeout": TIMEOUT_MS, "lock_timeout": min(TIMEOUT_MS, 5000),
                    "idle_in_transaction_session_timeout": 60000}
        conn = psycopg.connect(dsn(self.db, user=user, settings=settings, connect_timeout=timeout),
                               autocommit=True, row_factory=dict_row)
        # results stay text: deep JSON cannot be parsed by Python's json (recursion limit)
        for t in ("json", "jsonb"):
            conn.adapters.register_loader(t, TextLoader)
        return conn

    def _open_sentinel(self):
        self.sentinel = self._connect("postgres")
        self.start_time = self.sentinel.execute("SELECT pg_postmaster_start_time() AS t").fetchone()["t"]

    def conn(self, role):
        user = "postgres" if role == "postgres" else self.roles[role]
        c = self.conns.get(role)
        if c is None or c.closed or c.broken:
            c = self._connect(user)
            self.conns[role] = c
        return c

    def fingerprint(self, tenant):
        try:
            return self._fingerprint(tenant)
        except psycopg.OperationalError:
            # the server went away since the last call (a crash elsewhere): say so, start over
            self.check_server()
            self.fp_conn = None
            return self._fingerprint(tenant)

    def _fingerprint(self, tenant):
        if self.fp_conn is None or self.fp_conn.closed or self.fp_conn.broken:
            self.fp_conn = self._connect("postgres")
        if self.fp_sql is None:
            self.fp_sql = _fingerprint_sql(self.fp_conn)
            self.sequences = {r["relname"] for r in self.fp_conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'eventstore'::regnamespace AND relkind = 'S'")}
        return {r["rel"]: (r["n"], r["h"]) for r in self.fp_conn.execute(self.fp_sql, {"t": tenant or ""}).fetchall()}

    def admin_sql(self, sql, params=None):
        """A superuser statement of the test's own set-up (not a checked call)."""
        c = self.conn("postgres")
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else None

    def wait_for_server(self):
        """After a crash: waits until the server accepts connections again, then reopens the
        sentinel (a new baseline)."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while True:
            try:
                self._open_sentinel()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        # every backend of the cluster ended with the crash, whether its connection knows yet
        for c in list(self.conns.values()) + [self.fp_conn]:
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()
        self.conns, self.fp_conn = {}, None

    def check_server(self, function="(between calls)", inputs=None):
        """The sentinel connection still answers and the postmaster did not restart."""
        try:
            t = self.sentinel.execute("SELECT pg_postmaster_start_time() AS t").fetchone()["t"]
        except psycopg.Error as e:
            self.wait_for_server()
            FINDINGS.record("server restart: a connection opened earlier was lost", function,
                            getattr(e, "sqlstate", None), str(e), inputs or {})
            return False
        if t != self.start_time:
            old, self.start_time = self.start_time, t
            FINDINGS.record("server restart: pg_postmaster_start_time changed", function, None,
                            f"from {old} to {t}", inputs or {})
            return False
        return True

    # the checked call

    def call(self, function, sql, params=(), *, role="postgres", tenant="default", settings=None, inputs=None,
             fetch=True):
        """Runs `sql` (a call of eventstore.`function`) as `role` for `tenant` in a transaction,
        with `settings` applied by set_config(..., true) first. Returns ("ok", rows) or ("error",
        psycopg.Error) or ("lost", exception). Findings are recorded, never raised (unless the
        mode is shrink)."""
        inputs = inputs if inputs is not None else {"params": params}
        if role != "postgres":
            inputs = {"role": role, **inputs}
        this = f"{function}(" + ", ".join(f"{k}={short(v, 60)}" for k, v in inputs.items()) + ")"
        if self.history:
            inputs = {**inputs, "after": Context(self.history)}
        started = time.monotonic()
        try:
            return self._call(function, sql, params, role, tenant, settings, inputs, fetch, this)
        finally:
            spent = time.monotonic() - started
            TIMES[function] = TIMES.get(function, 0.0) + spent
            if spent > TIMEOUT_MS / 1000 + 5:
                # not a verdict (no timing is asserted), but worth a look: code that does not
                # check for interrupts cannot be cancelled
                FINDINGS.record("ran well past statement_timeout", function, None, f"{spent:.1f} s",
                                inputs, soft=True)
            if spent > 0.2:
                SLOWEST.append((spent, this[:300]))
                SLOWEST.sort(reverse=True)
                del SLOWEST[15:]

    def _call(self, function, sql, params, role, tenant, settings, inputs, fetch, this):
        before = self.fingerprint(tenant)
        gucs = {"eventstore.tenant_id": tenant if tenant is not None else ""}
        gucs.update(settings or {})
        try:
            c = self.conn(role)
        except psycopg.OperationalError as e:
            self.wait_for_server()
            c = self.conn(role)
        try:
            try:
                with c.transaction():
                    keys = list(gucs)
                    c.execute("SELECT " + ", ".join("set_config(%s, %s, true)" for _ in keys),
                              [x for k in keys for x in (k, gucs[k])])
                    cur = c.execute(sql, params)
                    rows = cur.fetchall() if (fetch and cur.description) else None
                if len(self.history) < 12:
                    self.history.append(this)
                _count(function, "ok")
                return ("ok", rows)
            except psycopg.OperationalError as e:
                if e.sqlstate is None or e.sqlstate in LOST_STATES or c.broken:
                    raise Lost(e) from e
                raise
        except Lost as lost:
            e = lost.args[0]
            self.wait_for_server()
            _count(function, "LOST")
            FINDINGS.record("backend crashed (connection lost)", function, e.sqlstate, str(e), inputs)
            self.check_server(function, inputs)
            return ("lost", e)
        except psycopg.Error as e:
            if c.broken:
                self.wait_for_server()
                FINDINGS.record("backend crashed (connection lost)", function, e.sqlstate, str(e), inputs)
                return ("lost", e)
            state = e.sqlstate
            _count(function, state or "?", _message(e))
            if state in HARD_STATES or (state or "").startswith("58"):
                FINDINGS.record(HARD_STATES.get(state, "system error"), function, state, _message(e), inputs)
            elif state == "54001" or (state or "").startswith("53"):
                FINDINGS.record("resource error", function, state, _message(e), inputs, soft=True)
            after = self.fingerprint(tenant)
            if after != before:
                changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                tables = [k for k in changed if k not in self.sequences]
                message = f"changed: {', '.join(changed)} (the call failed with {state}: {_message(e)})"
                if tables:
                    FINDINGS.record("a failed call wrote rows", function, state, message, inputs)
                else:
                    # sequences are not transactional: a failure after the insert (a handler,
                    # a snapshot, the commit) leaves a gap by nature; a wrong expected version
                    # must not
                    FINDINGS.record("a failed call advanced a sequence", function, state, message, inputs,
                                    soft=state not in NO_GAP_STATES)
            return ("error", e)


def _message(e):
    d = getattr(e, "diag", None)
    msg = (d.message_primary if d is not None and d.message_primary else str(e)) or ""
    if d is not None and d.message_detail:
        msg += f" (DETAIL: {d.message_detail[:200]})"
    return msg


@pytest.fixture(scope="module")
def fz():
    """A fresh database with eventstore, the handler functions of HANDLERS, three roles granted
    reader, writer and admin access and a fourth granted nothing; yields its Harness. Checks at the end that the
    server is still the one the module started with."""
    name = f"es_fuzz_{uuid.uuid4().hex[:12]}"
    # "spare" is granted nothing here: grant_access's fuzzed calls grant to it, not to the others
    roles = {level: unique(f"fz_{level}") for level in ("admin", "writer", "reader", "spare")}
    with admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        for r in roles.values():
            conn.execute(f'CREATE ROLE "{r}" LOGIN')
    create_extension(name)
    with admin_connect(name) as conn:
        conn.execute(HANDLERS)
        for level, r in roles.items():
            if level != "spare":
                conn.execute("SELECT eventstore.grant_access(%s, %s)", (r, level))
    h = Harness(name, roles)
    try:
        yield h
        h.check_server("(end of module)")
    finally:
        for c in list(h.conns.values()) + [h.fp_conn, h.sentinel]:
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()
        with admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for r in roles.values():
                conn.execute(f'DROP ROLE IF EXISTS "{r}"')


@contextlib.contextmanager
def one_example(fz, what="(example)"):
    """Brackets one generated example: yields a fresh tenant; at the end checks that the
    server did not restart meanwhile."""
    tenant = unique("fzt")
    fz.history = []
    yield tenant
    fz.check_server(what)


# --- calls many tests make -----------------------------------------------------------------

WRITERS = ("postgres", "admin", "writer")
ADMINS = ("postgres", "admin")


def read_everything(fz, tenant, role, aggregate_type="order", aggregate_id="1", subscription=None):
    """Every read of the tenant's data: the stream, its version and state, a snapshot, the
    feed, the stats, a subscription's poll. Returns the feed rows (or [])."""
    at, ai = aggregate_type, aggregate_id
    inputs = {"aggregate_type": at, "aggregate_id": ai}
    fz.call("read_stream", "SELECT * FROM eventstore.read_stream(%s, %s)", (at, ai), role=role, tenant=tenant, inputs=inputs)
    fz.call("stream_version", "SELECT eventstore.stream_version(%s, %s)", (at, ai), role=role, tenant=tenant, inputs=inputs)
    fz.call("get_aggregate_state", "SELECT * FROM eventstore.get_aggregate_state(%s, %s)", (at, ai), role=role,
            tenant=tenant, inputs=inputs)
    fz.call("get_aggregate_state", "SELECT * FROM eventstore.get_aggregate_state(%s, %s, at_version => 1)", (at, ai),
            role=role, tenant=tenant, inputs={**inputs, "at_version": 1})
    if role != "reader":
        fz.call("create_snapshot", "SELECT eventstore.create_snapshot(%s, %s)", (at, ai), role=role, tenant=tenant,
                inputs=inputs)
    status, rows = fz.call("read_all", "SELECT * FROM eventstore.read_all(NULL, 1000)", (), role=role, tenant=tenant,
                           inputs={"after": None, "max_count": 1000})
    fz.call("get_event_store_stats", "SELECT eventstore.get_event_store_stats()", (), role=role, tenant=tenant, inputs={})
    if subscription:
        fz.call("poll_subscription", "SELECT * FROM eventstore.poll_subscription(%s, 100)", (subscription,), role=role,
                tenant=tenant, inputs={"name": subscription})
    return rows if status == "ok" and rows else []
