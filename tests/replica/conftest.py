"""Replica tests: a real primary and a real hot standby that follows it (started by run.sh).

Environment: EVENTSTORE_PRIMARY_PORT, EVENTSTORE_STANDBY_PORT (both on 127.0.0.1),
EVENTSTORE_REPLICA_DIR (the servers' directories, for their logs and for promotion) and
EVENTSTORE_REPLICA_DATABASE (the database with the extension, served by the primary's worker).

Writes go to the primary; `caught_up()` waits until the standby has replayed everything the
primary wrote so far, after which both must answer the same. Tests of one module share the
database and keep apart by tenant. Tests marked `promotion` run last: they promote the standby.
"""

import os
import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

HOST = "127.0.0.1"
PRIMARY_PORT = int(os.environ.get("EVENTSTORE_PRIMARY_PORT", "5443"))
STANDBY_PORT = int(os.environ.get("EVENTSTORE_STANDBY_PORT", "5444"))
REPLICA_DIR = os.environ.get("EVENTSTORE_REPLICA_DIR", "")
DATABASE = os.environ.get("EVENTSTORE_REPLICA_DATABASE", "es_replica")
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")

STATEMENT_TIMEOUT_MS = 60_000
REPLAY_TIMEOUT = 60


def pytest_configure(config):
    config.addinivalue_line("markers", "promotion: promotes the standby; runs after every other test")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("promotion") is not None)


def dsn(port, user="postgres", settings=None, dbname=DATABASE):
    params = dict(host=HOST, port=port, dbname=dbname, user=user, connect_timeout=10)
    if settings:
        params["options"] = " ".join(f"-c {k}={v}" for k, v in settings.items())
    return make_conninfo(**params)


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class Servers:
    """Opens connections to the primary or the standby; closes them all at the end."""

    def __init__(self):
        self.opened = []
        self.lock = threading.Lock()

    def _open(self, port, tenant=None, autocommit=True, user="postgres", settings=None):
        gucs = {"statement_timeout": STATEMENT_TIMEOUT_MS}
        if tenant is not None:
            gucs["eventstore.tenant_id"] = tenant
        gucs.update(settings or {})
        conn = psycopg.connect(dsn(port, user=user, settings=gucs), autocommit=autocommit, row_factory=dict_row)
        with self.lock:
            self.opened.append(conn)
        return conn

    @staticmethod
    def dsn_primary(tenant):
        return dsn(PRIMARY_PORT, settings={"statement_timeout": STATEMENT_TIMEOUT_MS, "eventstore.tenant_id": tenant})

    @staticmethod
    def dsn_standby(tenant):
        return dsn(STANDBY_PORT, settings={"statement_timeout": STATEMENT_TIMEOUT_MS, "eventstore.tenant_id": tenant})

    def primary(self, **kw):
        return self._open(PRIMARY_PORT, **kw)

    def standby(self, **kw):
        return self._open(STANDBY_PORT, **kw)

    def close(self):
        for conn in self.opened:
            conn.close()


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.close()


@pytest.fixture
def tenant():
    return unique("t")


def caught_up(timeout=REPLAY_TIMEOUT):
    """Waits until the standby has replayed all WAL the primary has written so far."""
    with psycopg.connect(dsn(PRIMARY_PORT), autocommit=True) as p:
        lsn = p.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
    with psycopg.connect(dsn(STANDBY_PORT), autocommit=True) as s:
        deadline = time.monotonic() + timeout
        while True:
            done = s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]
            if done:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby did not replay up to {lsn} within {timeout} s")
            time.sleep(0.02)


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def expect_error(sqlstate, conn, sql, params=None):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    err = info.value
    assert err.sqlstate == sqlstate, f"expected SQLSTATE {sqlstate}, got {err.sqlstate}: {err}"
    return err


def server_log(which):
    path = os.path.join(REPLICA_DIR, which, "server.log")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def pg_ctl(which, *args):
    subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PG_BIN, "pg_ctl"), "-D",
                    os.path.join(REPLICA_DIR, which, "data"), *args], check=True, capture_output=True, timeout=120)


# --- the SQL functions ----------------------------------------------------------------------


def append(conn, aggregate_type, aggregate_id, event_type="Happened", payload=None, event_id=None):
    return conn.execute(
        "SELECT * FROM eventstore.append_event(%s, %s, %s, %s, event_id => %s)",
        (aggregate_type, aggregate_id, event_type, Jsonb(payload or {}), event_id),
    ).fetchone()


def read_stream(conn, aggregate_type, aggregate_id):
    return conn.execute(
        "SELECT * FROM eventstore.read_stream(%s, %s) ORDER BY aggregate_version", (aggregate_type, aggregate_id)
    ).fetchall()


def read_all(conn, after=None, max_count=1000):
    return conn.execute("SELECT * FROM eventstore.read_all(%s, %s)", (after, max_count)).fetchall()


def follow(conn, after=None, batch=1000):
    """The whole feed after a cursor, page by page."""
    rows = []
    while True:
        page = read_all(conn, after, batch)
        if not page:
            return rows
        rows.extend(page)
        after = page[-1]["cursor"]


def get_state(conn, aggregate_type, aggregate_id, at_version=None, as_of=None):
    return conn.execute(
        "SELECT * FROM eventstore.get_aggregate_state(%s, %s, %s, %s)", (aggregate_type, aggregate_id, at_version, as_of)
    ).fetchone()


def route(conn, rpc, payload=None, version=None):
    return conn.execute(
        "SELECT eventstore.route_api_call(%s, %s, %s) AS r", (rpc, Jsonb(payload or {}), version)
    ).fetchone()["r"]


def usage(conn, since=None, until=None):
    return conn.execute(
        "SELECT * FROM eventstore.get_api_usage(%s, %s) ORDER BY day, version NULLS FIRST, rpc_name NULLS FIRST",
        (since, until),
    ).fetchall()
