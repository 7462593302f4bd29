"""The background worker under faults: it never exits or loops because of one event, and a worker
that crashes repeatedly backs off instead of restarting the whole server every few seconds.

- A failure that belongs to one event (an event too deep to upcast under the current
  `eventstore.max_json_depth`, a failing handler) is counted in projection_status() and the event
  is parked after `eventstore.projection_max_attempts` failures; later events are applied.
- A failure outside any event (the batch cannot even start) backs off per projection and is
  shown in projection_status().last_error; nothing is parked for it.
- Repeated crashes: after several quick restarts the worker waits before working (1 s, 2 s, 4 s
  ... up to a minute) and worker_status() says it is backing off; the server stays usable.

Like test_worker.py this module (re)creates the database the preloaded worker serves, and one
test kills the worker (SIGKILL: the postmaster restarts the whole cluster), so it needs the
cluster on this machine.
"""

import os
import signal

import pytest
from psycopg.types.json import Jsonb

from conftest import (CLUSTER, HOST, append, connect_retrying, restart_cluster, server_survives,
                      unique, wait_for_worker, wait_until, worker_status_now)

pytestmark = pytest.mark.skipif(HOST not in ("127.0.0.1", "localhost", "::1"),
                                reason="signals the worker process: the cluster must run on this machine")

ERROR_KEY = "$eventstore_error"
# how long the worker may take to come back after a crash restart, backing off included
COMEBACK_TIMEOUT = 90


@pytest.fixture(scope="module")
def database(worker_database):
    """The database the preloaded worker serves (conftest's worker_database)."""
    return worker_database


def nested(depth, key="a", leaf=1):
    """An object of exactly `depth` levels: nested(1) is {"a": 1}."""
    value = leaf
    for _ in range(depth):
        value = {key: value}
    return value


def worker_status(conn):
    return conn.execute("SELECT eventstore.worker_status() AS s").fetchone()["s"]


def projection_status(conn, name):
    return conn.execute("SELECT * FROM eventstore.projection_status() WHERE name = %s", (name,)).fetchone()


def parked_events(conn, tenant, name):
    return conn.execute(
        "SELECT event_id, global_position, error, attempts FROM eventstore.parked_events"
        " WHERE tenant_id = %s AND projection = %s ORDER BY global_position", (tenant, name)).fetchall()


def wait_applied(conn, name, count, parked=0, timeout=60):
    """Waits until projection `name` has applied exactly `count` events and parked `parked`."""
    def check():
        s = projection_status(conn, name)
        assert s["events_applied"] <= count, f"{name} applied more events than there are: {s}"
        return s if s["events_applied"] == count and s["parked"] == parked and s["lag"] == 0 else None
    return wait_until(check, timeout=timeout, interval=0.05, what=f"projection {name} to apply {count} events")


def create_rows_projection(conn, name, event_types=("Deposited",)):
    """An async projection that records every event it is given (payload and schema version as
    the handler saw them) in public.<name>_rows."""
    conn.execute(f"CREATE TABLE public.{name}_rows (event_id uuid PRIMARY KEY, schema_version int, payload jsonb)")
    conn.execute(f"""
        CREATE FUNCTION public.{name}_apply(e eventstore.event) RETURNS void LANGUAGE sql AS $$
            INSERT INTO public.{name}_rows VALUES (e.event_id, e.schema_version, e.payload) $$""")
    conn.execute("SELECT eventstore.register_projection(%s, %s::regprocedure, %s::text[], 'async')",
                 (name, f"public.{name}_apply(eventstore.event)", list(event_types)))


def rows_of(conn, name):
    return {r["event_id"]: (r["schema_version"], r["payload"])
            for r in conn.execute(f"SELECT * FROM public.{name}_rows")}


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- failures of one event -------------------------------------------------------------------


def test_an_event_too_deep_to_upcast_is_counted_and_parked_while_later_events_apply(connect, tenant):
    conn = connect(tenant=tenant)
    max_attempts = int(conn.execute("SELECT current_setting('eventstore.projection_max_attempts') AS m")
                       .fetchone()["m"])
    name = unique("p")
    conn.execute("SELECT eventstore.register_upcaster('Deposited', 1, 2, %s)",
                 (Jsonb([{"op": "set_default", "path": "v2", "value": True}]),))
    create_rows_projection(conn, name)
    worker_pid = worker_status(conn)["pid"]
    # stored as if under a higher limit (or by 0.1.0): the worker reads with the default, 64
    conn.execute("SET eventstore.max_json_depth = 300")
    deep = nested(200)
    with server_survives(connect, tenant=tenant):
        e1 = append(conn, "account", "a", "Deposited", {"n": 1})
        e2 = append(conn, "account", "a", "Deposited", deep)
        e3 = append(conn, "account", "b", "Deposited", {"n": 3})

        s = wait_applied(conn, name, 2, parked=1)
        assert rows_of(conn, name) == {e1["event_id"]: (2, {"n": 1, "v2": True}),
                                       e3["event_id"]: (2, {"n": 3, "v2": True})}
        parked = parked_events(conn, tenant, name)
        assert [(p["event_id"], p["global_position"], p["attempts"]) for p in parked] == [
            (e2["event_id"], e2["global_position"], max_attempts)]
        assert isinstance(parked[0]["error"], str) and parked[0]["error"].strip()
        assert s["last_error"] == parked[0]["error"] and s["last_error_at"] is not None
        assert (s["attempts"], s["lag"]) == (0, 0)

        # the projection goes on with later events
        e4 = append(conn, "account", "b", "Deposited", {"n": 4})
        wait_applied(conn, name, 3, parked=1)
        assert rows_of(conn, name)[e4["event_id"]] == (2, {"n": 4, "v2": True})

        # once the limit allows it, the parked event replays like any other
        assert conn.execute("SELECT eventstore.replay_parked_events(%s) AS n", (name,)).fetchone()["n"] == 1
        assert rows_of(conn, name)[e2["event_id"]] == (2, {**deep, "v2": True})
        assert parked_events(conn, tenant, name) == []
    # one worker all along: it neither crashed nor exited
    assert worker_status(conn)["pid"] == worker_pid


def test_a_failing_handler_is_counted_and_parked_while_later_events_apply(connect, tenant):
    conn = connect(tenant=tenant)
    max_attempts = int(conn.execute("SELECT current_setting('eventstore.projection_max_attempts') AS m")
                       .fetchone()["m"])
    name = unique("p")
    conn.execute(f"CREATE TABLE public.{name}_rows (event_id uuid PRIMARY KEY)")
    conn.execute(f"""
        CREATE FUNCTION public.{name}_apply(e eventstore.event) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            -- division by zero for the poison event
            INSERT INTO public.{name}_rows VALUES (e.event_id);
            PERFORM 1 / (e.payload ->> 'divisor')::int;
        END $$""")
    conn.execute("SELECT eventstore.register_projection(%s, %s::regprocedure, NULL, 'async')",
                 (name, f"public.{name}_apply(eventstore.event)"))
    worker_pid = worker_status(conn)["pid"]
    with server_survives(connect, tenant=tenant):
        e1 = append(conn, "account", "a", "Deposited", {"divisor": 1})
        e2 = append(conn, "account", "a", "Deposited", {"divisor": 0})
        e3 = append(conn, "account", "a", "Deposited", {"divisor": 2})
        s = wait_applied(conn, name, 2, parked=1)
        # the failed attempts' writes were rolled back with them
        assert {r["event_id"] for r in conn.execute(f"SELECT event_id FROM public.{name}_rows")} == {
            e1["event_id"], e3["event_id"]}
        assert parked_events(conn, tenant, name) == [
            {"event_id": e2["event_id"], "global_position": e2["global_position"], "error": "division by zero",
             "attempts": max_attempts}]
        assert (s["last_error"], s["attempts"]) == ("division by zero", 0)
    assert worker_status(conn)["pid"] == worker_pid


# --- failures outside any event ------------------------------------------------------------


def test_a_batch_that_cannot_start_backs_off_and_resumes_when_fixed(connect, tenant):
    """The projection's role loses its usage of the eventstore schema: no batch can run as it,
    which is no event's fault. The projection records why and waits; nothing is parked; once
    the usage is granted back, every event is applied."""
    role = unique("es_faults_app")
    name = unique("p")
    admin = connect(tenant=tenant)
    admin.execute(f'CREATE ROLE "{role}" LOGIN')
    admin.execute("SELECT eventstore.grant_access(%s, 'admin')", (role,))
    admin.execute(f"CREATE TABLE public.{name}_rows (event_id uuid PRIMARY KEY)")
    admin.execute(f"GRANT INSERT, SELECT ON public.{name}_rows TO \"{role}\"")
    admin.execute(f"CREATE FUNCTION public.{name}_apply(e eventstore.event) RETURNS void LANGUAGE sql AS"
                  f" $$ INSERT INTO public.{name}_rows VALUES (e.event_id) $$")
    try:
        app = connect(user=role, tenant=tenant)
        app.execute("SELECT eventstore.register_projection(%s, %s::regprocedure, NULL, 'async')",
                    (name, f"public.{name}_apply(eventstore.event)"))
        append(admin, "account", "a", "Deposited", {"n": 1})
        wait_applied(admin, name, 1)

        admin.execute(f'REVOKE USAGE ON SCHEMA eventstore FROM "{role}"')
        with server_survives(connect, tenant=tenant):
            append(admin, "account", "a", "Deposited", {"n": 2})
            append(admin, "account", "a", "Deposited", {"n": 3})
            s = wait_until(lambda: (lambda s: s if s["last_error"] else None)(projection_status(admin, name)),
                           timeout=60, interval=0.1, what=f"projection {name} to record why its batch failed")
            # no event is blamed: none has failed attempts, none is parked
            assert (s["events_applied"], s["attempts"], s["parked"]) == (1, 0, 0), s
            assert parked_events(admin, tenant, name) == []

            admin.execute(f'GRANT USAGE ON SCHEMA eventstore TO "{role}"')
            # the back-off is at most a minute
            wait_applied(admin, name, 3, timeout=COMEBACK_TIMEOUT)
            assert admin.execute(f"SELECT count(*) AS n FROM public.{name}_rows").fetchone()["n"] == 3
    finally:
        admin = connect(tenant=tenant)
        admin.execute("DELETE FROM eventstore.projections WHERE tenant_id = %s AND name = %s", (tenant, name))
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')


# --- repeated crashes ----------------------------------------------------------------------


def running_worker_pid(not_pids):
    """The pid of the worker of the test database when a live one other than `not_pids` is
    reported by worker_status(); else None (also while the server recovers from a crash)."""
    s = worker_status_now()
    pid = s.get("pid") if s else None
    return pid if pid and pid not in not_pids and process_alive(pid) else None


def test_a_crash_loop_backs_off_and_the_server_stays_usable(connect, tenant):
    assert CLUSTER, "EVENTSTORE_TEST_CLUSTER is not set: this test crashes and restarts the cluster"
    conn = connect(tenant=tenant)
    name = unique("p")
    create_rows_projection(conn, name)
    conn.execute(f"CREATE TABLE public.{name}_notes (note text)")
    conn.close()

    killed = []
    try:
        # three crashes in quick succession, each time as soon as the worker is back
        for _ in range(3):
            pid = wait_until(lambda: running_worker_pid(killed), timeout=COMEBACK_TIMEOUT, interval=0.05,
                             what="the worker to come back")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        # the worker comes back, but backs off before working, and says so
        def backing_off():
            s = worker_status_now()
            return s if s and "backing off" in (s.get("last_error") or "") else None
        s = wait_until(backing_off, timeout=COMEBACK_TIMEOUT, interval=0.05, what="the worker to report backing off")
        assert any(ch.isdigit() for ch in s["last_error"]), s  # how many quick restarts

        # meanwhile the server serves everyone: a superuser's writes, an application's append
        with server_survives(connect, tenant=tenant) as su:
            su.execute(f"INSERT INTO public.{name}_notes VALUES ('during the back-off')")
            su.execute(f"DELETE FROM public.{name}_notes WHERE note = 'during the back-off'")
            e = append(su, "account", "a", "Deposited", {"n": 1})
            assert su.execute(f"SELECT count(*) AS n FROM public.{name}_notes").fetchone()["n"] == 0

            # and once the back-off is over the worker applies what was appended meanwhile
            wait_applied(su, name, 1, timeout=COMEBACK_TIMEOUT)
            assert rows_of(su, name) == {e["event_id"]: (1, {"n": 1})}
            assert running_worker_pid(killed) is not None
    finally:
        # leave a worker behind for whatever runs next
        conn = connect_retrying(connect, tenant=tenant)
        conn.execute("DELETE FROM eventstore.projections WHERE tenant_id = %s AND name = %s", (tenant, name))
        if wait_for_worker(timeout=COMEBACK_TIMEOUT) is None:
            restart_cluster()
            wait_for_worker()
