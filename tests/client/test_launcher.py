"""The launcher (src/worker/launcher.rs) on a cluster of its own, configured as users run it:
eventstore preloaded and `eventstore.database` not set. Every database in which the extension
is installed gets a worker within seconds, without configuration; DROP EXTENSION and a plain
DROP DATABASE end it; `eventstore.max_workers` caps the databases served, and a database left
without a worker says so in worker_status() and in the server log.

The cluster is started for this module (port EVENTSTORE_LAUNCHER_PORT, default 5446) and
removed afterwards."""

import os
import shutil
import subprocess
import tempfile
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from conftest import HOST, wait_until

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
PORT = int(os.environ.get("EVENTSTORE_LAUNCHER_PORT", "5446"))
MAX_WORKERS = 2
# a worker comes up within this (launcher round 5 s, and it is woken at once by CREATE EXTENSION)
START_TIMEOUT = 15

pytestmark = pytest.mark.skipif(HOST not in ("127.0.0.1", "localhost", "::1"),
                                reason="starts a cluster of its own on this machine")


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def cluster():
    base = tempfile.mkdtemp(prefix="eventstore-launcher-", dir=os.environ.get("TMPDIR", "/tmp"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, log = f"{base}/data", f"{base}/server.log"
    subprocess.run(as_postgres([f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                "--locale=C.UTF-8"]), check=True, stdout=subprocess.DEVNULL)
    with open(f"{data}/postgresql.conf", "a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {PORT}\nunix_socket_directories = '{base}'\n"
                   f"shared_preload_libraries = 'eventstore'\neventstore.max_workers = {MAX_WORKERS}\n"
                   "eventstore.worker_poll_interval = 50\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUST_")}
    subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start"]),
                   check=True, stdout=subprocess.DEVNULL, env=env)
    try:
        yield {"log": log}
    finally:
        subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


def connect(dbname="postgres"):
    return psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname=dbname, autocommit=True,
                           row_factory=dict_row)


def workers(conn):
    """Databases with a running eventstore worker."""
    rows = conn.execute("SELECT datname FROM pg_stat_activity WHERE backend_type = 'eventstore worker'").fetchall()
    return sorted(r["datname"] for r in rows)


def wait_workers(conn, expected, timeout=START_TIMEOUT):
    return wait_until(lambda: workers(conn) == sorted(expected) or None, timeout=timeout, interval=0.1,
                      what=f"workers in exactly {sorted(expected)} (now {workers(conn)})")


def create_database(conn, name, extension=True):
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.execute(f'CREATE DATABASE "{name}"')
    if extension:
        with connect(name) as db:
            db.execute("CREATE EXTENSION eventstore")


def test_the_launcher_runs_and_a_database_without_eventstore_gets_no_worker(cluster):
    with connect() as conn:
        launcher = conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'eventstore launcher'")
        assert launcher.fetchone()["n"] == 1
        create_database(conn, "plain", extension=False)
        time.sleep(2)
        assert workers(conn) == []
        conn.execute('DROP DATABASE "plain"')


def test_create_extension_gets_a_worker_that_works_without_configuration(cluster):
    with connect() as conn:
        create_database(conn, "shop")
        wait_workers(conn, ["shop"])
    with connect("shop") as db:
        status = db.execute("SELECT eventstore.worker_status() AS s").fetchone()["s"]
        assert (status["served"], status["running"], status["database"]) == (True, True, "shop")
        # the worker does its work there: an async projection applies what is appended
        db.execute("CREATE TABLE public.seen (id uuid PRIMARY KEY)")
        db.execute("CREATE FUNCTION public.see(e eventstore.event) RETURNS void LANGUAGE sql"
                   " AS $$ INSERT INTO public.seen VALUES (e.event_id) $$")
        db.execute("SELECT eventstore.register_projection('seen', 'public.see(eventstore.event)'::regprocedure)")
        for i in range(5):
            db.execute("SELECT eventstore.append_event('order', %s, 'Placed', '{}')", (str(i),))
        wait_until(lambda: db.execute("SELECT count(*) AS n FROM public.seen").fetchone()["n"] == 5 or None,
                   timeout=15, interval=0.05, what="the projection to apply 5 events")


def test_drop_extension_ends_the_worker_and_create_brings_it_back(cluster):
    with connect() as conn:
        create_database(conn, "shop")
        wait_workers(conn, ["shop"])
        with connect("shop") as db:
            db.execute("DROP EXTENSION eventstore CASCADE")
        wait_workers(conn, [])
        with connect("shop") as db:
            db.execute("CREATE EXTENSION eventstore")
        wait_workers(conn, ["shop"])


def test_a_plain_drop_database_succeeds_while_a_worker_serves_it(cluster):
    with connect() as conn:
        create_database(conn, "doomed")
        wait_workers(conn, ["doomed", "shop"])
        conn.execute('DROP DATABASE "doomed"')  # no WITH (FORCE): the hook stops the worker first
        assert conn.execute("SELECT count(*) AS n FROM pg_database WHERE datname = 'doomed'").fetchone()["n"] == 0
        wait_workers(conn, ["shop"])
        time.sleep(6)  # longer than a launcher round: it is not started again
        assert workers(conn) == ["shop"]


def test_max_workers_caps_the_databases_and_the_one_left_out_says_so(cluster):
    with connect() as conn:
        create_database(conn, "second")
        wait_workers(conn, ["second", "shop"])
        create_database(conn, "third")
        time.sleep(3)
        assert workers(conn) == ["second", "shop"]
        with connect("third") as db:
            status = db.execute("SELECT eventstore.worker_status() AS s").fetchone()["s"]
            assert status["served"] is False
            assert f"eventstore.max_workers ({MAX_WORKERS})" in status["reason"], status
        with open(cluster["log"]) as f:
            assert 'no worker serves database "third"' in f.read()
        conn.execute('DROP DATABASE "second"')
        wait_workers(conn, ["shop", "third"])
