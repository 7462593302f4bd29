"""Client tests against a real, preloaded PostgreSQL 15 (started by scripts/test.sh).

Environment: EVENTSTORE_TEST_HOST, EVENTSTORE_TEST_PORT (the cluster), EVENTSTORE_TEST_CLUSTER
(its directory, for tests that need its log or must restart it). Each test module gets a fresh
database with the extension installed, dropped afterwards.

Shared helpers live here: connections (with a tenant and settings), thin wrappers around the
SQL functions, an error assertion, and threads that always end in bounded time.
"""

import os
import subprocess
import threading
import time
import uuid
import warnings

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

HOST = os.environ.get("EVENTSTORE_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("EVENTSTORE_TEST_PORT", "5441"))
CLUSTER = os.environ.get("EVENTSTORE_TEST_CLUSTER")

# Safety net: no statement of the client tests may run longer than this (ms).
DEFAULT_STATEMENT_TIMEOUT_MS = 60_000
# Longest a helper thread may run before the test fails (s).
THREAD_TIMEOUT = 60


def dsn(dbname, user="postgres", settings=None, **options):
    """A conninfo string; `settings` are server settings (GUCs) applied at connection start."""
    params = dict(host=HOST, port=PORT, dbname=dbname, user=user, connect_timeout=10)
    params.update(options)
    if settings:
        params["options"] = " ".join(f"-c {k}={v}" for k, v in settings.items())
    return make_conninfo(**params)


def admin_connect(dbname="postgres"):
    return psycopg.connect(dsn(dbname), autocommit=True)


def unique(prefix):
    """A name no earlier run used: tenants, streams, roles."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def database():
    """A fresh database with eventstore installed; yields its name."""
    name = f"es_test_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with admin_connect(name) as conn:
        conn.execute("CREATE EXTENSION eventstore")
    yield name
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def connect(database):
    """Opens connections to the test database (superuser unless user= is given); all are
    closed after the test. Rows come back as dicts.

    tenant=   sets eventstore.tenant_id for the session
    settings= other server settings for the session, e.g. {"lock_timeout": "2s"}
    **options further libpq connection parameters
    """
    opened = []
    lock = threading.Lock()

    def _connect(user="postgres", autocommit=True, tenant=None, settings=None, **options):
        gucs = {"statement_timeout": DEFAULT_STATEMENT_TIMEOUT_MS}
        if tenant is not None:
            gucs["eventstore.tenant_id"] = tenant
        gucs.update(settings or {})
        conn = psycopg.connect(
            dsn(database, user=user, settings=gucs, **options),
            autocommit=autocommit,
            row_factory=dict_row,
        )
        with lock:
            opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def tenant():
    """A tenant of its own for one test, so that its rows and feed are its alone."""
    return unique("t")


# --- errors --------------------------------------------------------------------------------


def expect_error(sqlstate, conn, sql, params=None):
    """Runs `sql`, which must fail with `sqlstate`; returns the exception (see .diag)."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    err = info.value
    assert err.sqlstate == sqlstate, f"expected SQLSTATE {sqlstate}, got {err.sqlstate}: {err}"
    return err


# --- the SQL functions ---------------------------------------------------------------------


def append(conn, aggregate_type, aggregate_id, event_type="Happened", payload=None,
           metadata=None, expected_version=None, event_id=None):
    """eventstore.append_event; returns the appended row as a dict."""
    return conn.execute(
        "SELECT * FROM eventstore.append_event(%s, %s, %s, %s, metadata => %s,"
        " expected_version => %s::bigint, event_id => %s::uuid)",
        (aggregate_type, aggregate_id, event_type, Jsonb({} if payload is None else payload),
         Jsonb(metadata if metadata is not None else {}), expected_version, event_id),
    ).fetchone()


def append_events(conn, aggregate_type, aggregate_id, events, expected_version=None):
    """eventstore.append_events; returns the appended rows as dicts."""
    return conn.execute(
        "SELECT * FROM eventstore.append_events(%s, %s, %s, expected_version => %s::bigint)",
        (aggregate_type, aggregate_id, Jsonb(events), expected_version),
    ).fetchall()


def new_events(n, event_type="Happened", with_ids=False, **extra):
    """A batch of `n` events for append_events."""
    out = []
    for i in range(n):
        ev = {"event_type": event_type, "payload": {"i": i}, **extra}
        if with_ids:
            ev["event_id"] = str(uuid.uuid4())
        out.append(ev)
    return out


def read_stream(conn, aggregate_type, aggregate_id, from_version=1, max_count=1000):
    return conn.execute(
        "SELECT * FROM eventstore.read_stream(%s, %s, %s::bigint, %s::int)",
        (aggregate_type, aggregate_id, from_version, max_count),
    ).fetchall()


def stream_version(conn, aggregate_type, aggregate_id):
    return conn.execute(
        "SELECT eventstore.stream_version(%s, %s) AS v", (aggregate_type, aggregate_id)
    ).fetchone()["v"]


def read_all(conn, after=None, max_count=1000, event_types=None, aggregate_types=None):
    return conn.execute(
        "SELECT * FROM eventstore.read_all(%s::text, %s::int, %s::text[], %s::text[])",
        (after, max_count, event_types, aggregate_types),
    ).fetchall()


def follow(conn, after=None, batch=1000, **filters):
    """Reads the feed from `after` until it returns nothing; returns (rows, last cursor)."""
    rows = []
    while True:
        got = read_all(conn, after, batch, **filters)
        if not got:
            return rows, after
        rows += got
        after = got[-1]["cursor"]


def feed_lag(conn):
    return conn.execute("SELECT eventstore.feed_lag() AS lag").fetchone()["lag"]


def feed_unblocked(conn, timeout=5.0):
    """Waits until no running transaction holds the feed back (a test's own writers are done,
    but an autovacuum ANALYZE elsewhere in the cluster may hold an xid for a moment); returns
    feed_lag()."""
    return wait_until(lambda: (lambda lag: lag if lag["blocking_backend"] is None else None)(feed_lag(conn)),
                      timeout=timeout, what="the feed to be held back by nobody")


def stats(conn):
    return conn.execute("SELECT eventstore.get_event_store_stats() AS s").fetchone()["s"]


def backend_pid(conn):
    return conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]


# --- threads and waiting -------------------------------------------------------------------


class Worker(threading.Thread):
    """Runs fn() in a thread and keeps its result or exception; join_result() re-raises."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result = None
        self.error = None

    def run(self):
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            self.error = e

    def join_result(self, timeout=THREAD_TIMEOUT):
        self.join(timeout)
        assert not self.is_alive(), f"worker did not finish within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def start(fn, *args, **kwargs):
    w = Worker(fn, *args, **kwargs)
    w.start()
    return w


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def waiting_on_lock(observer, pid):
    """True when backend `pid` is blocked on a heavyweight lock."""
    row = observer.execute(
        "SELECT wait_event_type = 'Lock' AS waiting FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return bool(row and row["waiting"])


def blocking_pids(observer, pid):
    return observer.execute("SELECT pg_blocking_pids(%s) AS p", (pid,)).fetchone()["p"]


# --- aggregate state, schemas, redaction ---------------------------------------------------


def get_state(conn, aggregate_type, aggregate_id, at_version=None, as_of=None):
    """eventstore.get_aggregate_state; returns the aggregate_state row as a dict."""
    return conn.execute(
        "SELECT * FROM eventstore.get_aggregate_state(%s, %s, at_version => %s::bigint,"
        " as_of => %s::timestamptz)",
        (aggregate_type, aggregate_id, at_version, as_of),
    ).fetchone()


def define_aggregate(conn, aggregate_type, initial_state=None, snapshot_every=100, keep_snapshots=3):
    conn.execute(
        "SELECT eventstore.define_aggregate(%s, %s, snapshot_every => %s::int, keep_snapshots => %s::int)",
        (aggregate_type, Jsonb({} if initial_state is None else initial_state), snapshot_every, keep_snapshots),
    )


def define_reducer(conn, aggregate_type, event_type, rule=None, handler=None):
    """A declarative rule (a JSON program) or a handler (a regprocedure text)."""
    if handler is not None:
        conn.execute("SELECT eventstore.define_reducer(%s, %s, handler => %s::regprocedure)",
                     (aggregate_type, event_type, handler))
    else:
        conn.execute("SELECT eventstore.define_reducer(%s, %s, rule => %s)",
                     (aggregate_type, event_type, Jsonb(rule)))


def create_snapshot(conn, aggregate_type, aggregate_id):
    return conn.execute("SELECT eventstore.create_snapshot(%s, %s) AS v",
                        (aggregate_type, aggregate_id)).fetchone()["v"]


def snapshot_rows(conn, tenant, aggregate_type, aggregate_id):
    """The stream's rows of eventstore.snapshots (version, state, reducer_hash), oldest first.
    Filters by tenant explicitly: a superuser bypasses RLS."""
    return conn.execute(
        "SELECT version, state, reducer_hash FROM eventstore.snapshots"
        " WHERE tenant_id = %s AND aggregate_type = %s AND aggregate_id = %s ORDER BY version",
        (tenant, aggregate_type, aggregate_id),
    ).fetchall()


def stored_events(conn, tenant, aggregate_type, aggregate_id):
    """The stream's stored rows of eventstore.events as written (no upcasting), by version."""
    return conn.execute(
        "SELECT * FROM eventstore.events"
        " WHERE tenant_id = %s AND aggregate_type = %s AND aggregate_id = %s ORDER BY aggregate_version",
        (tenant, aggregate_type, aggregate_id),
    ).fetchall()


def server_now(conn):
    """The server's clock (not the transaction start): a point in time between two commits."""
    return conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]


# --- the background worker's database ------------------------------------------------------
# The preloaded worker serves the database named by eventstore.database; scripts/test.sh sets it
# to WORKER_DB. A test module that needs the worker overrides `database` with this fixture:
#
#     @pytest.fixture(scope="module")
#     def database(worker_database):
#         return worker_database
#
# Modules run one after another, so each may drop and recreate WORKER_DB; the worker ends when
# its database is dropped and the postmaster starts it again within ~5 s.

WORKER_DB = "eventstore_worker_test"
PG_CTL = os.path.join(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"), "pg_ctl")
# the worker comes up within 5 s (its restart interval) once its database exists
WORKER_START_TIMEOUT = 30


def create_extension(dbname, timeout=60):
    """CREATE EXTENSION eventstore, retried while another session reinstalls the library."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with admin_connect(dbname) as conn:
                conn.execute("CREATE EXTENSION eventstore")
            return
        except psycopg.Error as e:
            if "could not find function" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def recreate_worker_database():
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{WORKER_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{WORKER_DB}"')
    create_extension(WORKER_DB)


def worker_status_now():
    """eventstore.worker_status() of WORKER_DB from a short-lived connection; None while the
    server does not accept connections (crash recovery, restart)."""
    try:
        conn = psycopg.connect(dsn(WORKER_DB, connect_timeout=5), autocommit=True)
    except psycopg.OperationalError:
        return None
    with conn:
        try:
            return conn.execute("SELECT eventstore.worker_status()").fetchone()[0]
        except psycopg.Error:
            return None


def wait_for_worker(timeout=WORKER_START_TIMEOUT, not_pid=None):
    """Waits until the worker runs in WORKER_DB (with a pid other than `not_pid`); returns its
    worker_status(), or None after `timeout` seconds."""
    def running():
        s = worker_status_now()
        return s if s and s.get("running") and s.get("pid") != not_pid else None
    try:
        return wait_until(running, timeout=timeout, interval=0.1, what="the eventstore worker")
    except AssertionError:
        return None


def restart_cluster():
    """pg_ctl restart of the test cluster (EVENTSTORE_TEST_CLUSTER); its log stays where it was."""
    assert CLUSTER, "EVENTSTORE_TEST_CLUSTER is not set: cannot restart the cluster"
    cmd = [PG_CTL, "-D", f"{CLUSTER}/data", "-l", f"{CLUSTER}/server.log", "-m", "fast", "-w", "-t", "60",
           "restart"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)


def connect_retrying(connect, timeout=60, **kwargs):
    """connect(**kwargs) retried while the server restarts after a crash."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = connect(**kwargs)
            conn.execute("SELECT 1")
            return conn
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def worker_database():
    """WORKER_DB created afresh with eventstore installed and the worker running in it;
    dropped afterwards."""
    recreate_worker_database()
    if wait_for_worker() is None:
        if not CLUSTER:
            pytest.fail(f"the eventstore worker did not start in {WORKER_DB} within {WORKER_START_TIMEOUT}s")
        warnings.warn("the eventstore worker did not come back after its database was recreated; restarting the cluster")
        restart_cluster()
        assert wait_for_worker() is not None, f"no eventstore worker in {WORKER_DB} even after a restart"
    yield WORKER_DB
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{WORKER_DB}" WITH (FORCE)')



# --- the server stays up -------------------------------------------------------------------
# No input, definition or stored row may take a backend down: a crashing backend makes the
# postmaster end every connection of every database and tenant.


class server_survives:
    """`with server_survives(connect):` asserts that nothing in the block restarted the server:
    a connection opened before it still works afterwards and pg_postmaster_start_time() is
    unchanged. `connect` is the `connect` fixture (kwargs go to it); the connection is the
    block's `as` value. When the server did restart, this waits until it accepts connections
    again (so that later tests can run) and fails."""

    def __init__(self, connect, **kwargs):
        self.connect, self.kwargs = connect, kwargs

    def __enter__(self):
        self.sentinel = self.connect(**self.kwargs)
        self.started = self._start_time()
        return self.sentinel

    def _start_time(self):
        with self.sentinel.cursor() as cur:
            return cur.execute("SELECT pg_postmaster_start_time()").fetchone()

    def __exit__(self, *exc):
        try:
            now = self._start_time()
        except psycopg.OperationalError as e:
            connect_retrying(self.connect, **self.kwargs)
            raise AssertionError(f"the server restarted: a connection opened before the call was lost ({e})") from e
        assert now == self.started, f"the postmaster restarted: started at {self.started}, now {now}"
        return False
