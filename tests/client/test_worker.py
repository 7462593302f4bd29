"""Projections and the background worker, against the real preloaded cluster.

The cluster's worker serves the database named by `eventstore.database`; scripts/test.sh sets it
to `eventstore_worker_test`, so this module (re)creates that database instead of a random one
and waits for the worker to come up in it. Async projections run in the worker: a batch per
transaction, the handler's writes and the checkpoint committed together, a failing event retried
`eventstore.projection_max_attempts` times and then parked. Inline projections run inside the
appending transaction.

Some tests kill the worker (SIGKILL: the postmaster restarts the whole cluster; SIGTERM: the
worker ends and is started again), so this module needs the cluster on this machine.
"""

import json
import os
import signal
import time

import psycopg
import pytest

from conftest import (CLUSTER, HOST, WORKER_DB, append, append_events, connect_retrying, expect_error,
                      feed_unblocked, recreate_worker_database, restart_cluster, stream_version, unique,
                      wait_for_worker, wait_until)

# a process that is told to end (SIGTERM) must be gone within this many seconds
PROMPT_EXIT = 5
ZERO_CURSOR = "0000000000000000-0000000000000000"

pytestmark = pytest.mark.skipif(HOST not in ("127.0.0.1", "localhost", "::1"),
                                reason="signals the worker process: the cluster must run on this machine")


# --- the worker's database and the worker --------------------------------------------------


@pytest.fixture(scope="module")
def database(worker_database):
    """The database the preloaded worker serves (conftest's worker_database: created afresh,
    the worker running in it). The `connect` fixture then opens connections to it."""
    return worker_database


def ensure_worker():
    """Brings the worker back for the tests that follow when a test left it stopped: a worker
    that ends with exit code 0 is never started again until the server restarts."""
    if wait_for_worker(timeout=1) is None and CLUSTER:
        restart_cluster()
        wait_for_worker()


def worker_status(conn):
    return conn.execute("SELECT eventstore.worker_status() AS s").fetchone()["s"]


def worker_backends(conn):
    """pid and database of every 'eventstore worker' backend."""
    return conn.execute(
        "SELECT pid, datname FROM pg_stat_activity WHERE backend_type = 'eventstore worker' ORDER BY pid"
    ).fetchall()


def process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def server_log():
    if not CLUSTER:
        return None
    with open(f"{CLUSTER}/server.log", errors="replace") as f:
        return f.read()


# --- projections ---------------------------------------------------------------------------


def register_projection(conn, name, handler, event_types=None, mode="async", reset=None):
    conn.execute(
        "SELECT eventstore.register_projection(%s, %s::regprocedure, %s::text[], %s, %s::regprocedure)",
        (name, handler, event_types, mode, reset),
    )


def projection_status(conn, name):
    return conn.execute("SELECT * FROM eventstore.projection_status() WHERE name = %s", (name,)).fetchone()


def wait_applied(conn, name, count, parked=0, timeout=30):
    """Waits until projection `name` has applied exactly `count` events and parked `parked`;
    fails at once if it applied more."""
    def check():
        s = projection_status(conn, name)
        assert s["events_applied"] <= count, f"{name} applied more events than there are: {s}"
        return s if s["events_applied"] == count and s["parked"] == parked and s["lag"] == 0 else None
    return wait_until(check, timeout=timeout, interval=0.05, what=f"projection {name} to apply {count} events")


def create_totals_projection(conn, name, mode="async", event_types=("Deposited", "Withdrawn"), reset=True):
    """A read model: per account (aggregate_id) the balance and the number of events applied,
    kept by a plpgsql handler that upserts into public.<name>_totals. Handlers schema-qualify
    their tables: inline handlers run inside eventstore's functions, whose search_path is pinned."""
    conn.execute(f"CREATE TABLE public.{name}_totals (account text PRIMARY KEY, total bigint NOT NULL,"
                 f" events bigint NOT NULL)")
    conn.execute(f"""
        CREATE FUNCTION public.{name}_apply(e eventstore.event) RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            amount bigint := (e.payload ->> 'amount')::bigint
                             * CASE e.event_type WHEN 'Withdrawn' THEN -1 ELSE 1 END;
        BEGIN
            INSERT INTO public.{name}_totals AS t VALUES (e.aggregate_id, amount, 1)
            ON CONFLICT (account) DO UPDATE SET total = t.total + excluded.total, events = t.events + 1;
        END $$""")
    conn.execute(f"CREATE FUNCTION public.{name}_reset() RETURNS void LANGUAGE sql AS"
                 f" $$ DELETE FROM public.{name}_totals $$")
    register_projection(conn, name, f"public.{name}_apply(eventstore.event)",
                        list(event_types) if event_types else None, mode,
                        f"public.{name}_reset()" if reset else None)


def totals(conn, name):
    return {r["account"]: (r["total"], r["events"])
            for r in conn.execute(f"SELECT account, total, events FROM public.{name}_totals ORDER BY account")}


def ledger_events(account_no, n, offset=0):
    """`n` Deposited/Withdrawn events of one account with known amounts; returns them and their
    net effect on the balance."""
    events, net = [], 0
    for k in range(offset, offset + n):
        amount = (k * 7 + account_no * 3) % 100 + 1
        if k % 5 == 4:
            events.append({"event_type": "Withdrawn", "payload": {"amount": amount, "k": k}})
            net -= amount
        else:
            events.append({"event_type": "Deposited", "payload": {"amount": amount, "k": k}})
            net += amount
    return events, net


def append_ledger(conn, prefix, accounts, per_account, transactions):
    """Appends accounts × per_account events in `transactions` transactions (each one appends a
    slice of every account); returns the expected totals {account: (balance, events)}."""
    assert per_account % transactions == 0
    chunk = per_account // transactions
    expected = {f"{prefix}{a}": [0, 0] for a in range(accounts)}
    for t in range(transactions):
        with conn.transaction():
            for a in range(accounts):
                events, net = ledger_events(a, chunk, offset=t * chunk)
                append_events(conn, "account", f"{prefix}{a}", events)
                expected[f"{prefix}{a}"][0] += net
                expected[f"{prefix}{a}"][1] += chunk
    return {k: tuple(v) for k, v in expected.items()}


def drop_projection_row(conn, tenant, name):
    """There is no drop_projection(); the superuser deletes the row so that the worker stops
    running a projection whose role is about to be dropped."""
    conn.execute("DELETE FROM eventstore.projections WHERE tenant_id = %s AND name = %s", (tenant, name))


# --- async projections in the worker -------------------------------------------------------


def test_async_projection_catches_up_with_10000_events(connect, tenant):
    conn = connect(tenant=tenant)
    name = unique("p")
    create_totals_projection(conn, name)
    s = projection_status(conn, name)
    assert (s["mode"], s["position"], s["events_applied"], s["parked"]) == ("async", ZERO_CURSOR, 0, 0)

    started = time.monotonic()
    expected = append_ledger(conn, "acct", accounts=10, per_account=1000, transactions=4)
    # events of a type the projection does not ask for are neither applied nor counted as lag
    append_events(conn, "account", "acct-notes", [{"event_type": "Noted", "payload": {"amount": 1}}] * 100)
    assert sum(n for _, n in expected.values()) == 10_000

    s = wait_applied(conn, name, 10_000, timeout=60)
    elapsed = time.monotonic() - started
    assert totals(conn, name) == expected
    assert (s["lag"], s["events_applied"], s["attempts"], s["last_error"], s["parked"]) == (0, 10_000, 0, None, 0)
    assert s["position"] > ZERO_CURSOR
    # the checkpoint is the cursor of the last event applied
    last = conn.execute(
        "SELECT lpad(to_hex(transaction_id::text::bigint), 16, '0') || '-' || lpad(to_hex(global_position), 16, '0')"
        " AS c FROM eventstore.events WHERE tenant_id = %s AND event_type IN ('Deposited', 'Withdrawn')"
        " ORDER BY transaction_id DESC, global_position DESC LIMIT 1", (tenant,)).fetchone()["c"]
    # caught up: the checkpoint is at the last event, or past it at the feed's end (a projection
    # moves over events its filter skips)
    assert s["position"] >= last

    w = worker_status(conn)
    assert w["preloaded"] is True and w["served"] is True and w["database"] == WORKER_DB
    assert w["running"] is True
    backends = worker_backends(conn)
    assert [b["pid"] for b in backends if b["datname"] == WORKER_DB] == [w["pid"]]
    assert w["events_applied"] >= 10_000
    assert w["runs"] > 0 and w["last_run_at"] is not None and w["started_at"] is not None
    assert w["backlog"] == 0
    print(f"caught up with 10,000 events in {elapsed:.2f}s")


def test_worker_killed_mid_catch_up_applies_every_event_exactly_once(connect, tenant):
    conn = connect(tenant=tenant)
    name = unique("p")
    create_totals_projection(conn, name)
    pid = worker_status(conn)["pid"]
    assert pid in [b["pid"] for b in worker_backends(conn)]

    expected = append_ledger(conn, "acct", accounts=10, per_account=2000, transactions=4)
    assert sum(n for _, n in expected.values()) == 20_000

    # kill the worker while it is catching up: some batches committed, more to come
    def part_way():
        n = projection_status(conn, name)["events_applied"]
        if n >= 20_000:
            pytest.fail("the worker caught up before it could be killed")
        return n if n > 0 else None
    applied = wait_until(part_way, timeout=30, interval=0.005, what="the worker to be part-way through")
    os.kill(pid, signal.SIGKILL)

    # the postmaster treats it as a crash: every backend ends, the cluster recovers
    def connection_dropped():
        try:
            conn.execute("SELECT 1")
            return False
        except psycopg.OperationalError:
            return True
    wait_until(connection_dropped, timeout=10, interval=0.05, what="the crash restart to end our connection")
    log = server_log()
    if log is not None:
        assert f"(PID {pid}) was terminated by signal 9" in log
        assert "all server processes terminated; reinitializing" in log

    conn = connect_retrying(connect, tenant=tenant)
    assert wait_for_worker(timeout=60, not_pid=pid) is not None, "the worker did not come back after the crash"
    s = wait_applied(conn, name, 20_000, timeout=60)
    assert totals(conn, name) == expected  # no event lost, none applied twice
    assert (s["lag"], s["parked"], s["attempts"]) == (0, 0, 0)
    w = worker_status(conn)
    assert w["running"] is True and w["pid"] != pid
    print(f"killed after {applied} of 20,000 events")


def test_poison_event_is_retried_then_parked_and_replayed_after_the_fix(connect, tenant):
    conn = connect(tenant=tenant)
    name = unique("p")
    max_attempts = int(conn.execute("SELECT current_setting('eventstore.projection_max_attempts') AS m")
                       .fetchone()["m"])
    assert max_attempts == 5  # the default
    conn.execute(f"CREATE TABLE public.{name}_totals (account text PRIMARY KEY, total bigint NOT NULL)")
    conn.execute(f"CREATE TABLE public.{name}_fixed (fixed boolean)")
    # nextval() is not rolled back with the failed attempt: it counts the handler's calls
    conn.execute(f"CREATE SEQUENCE public.{name}_calls")
    conn.execute(f"""
        CREATE FUNCTION public.{name}_apply(e eventstore.event) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            IF (e.payload ->> 'poison')::boolean THEN
                PERFORM nextval('public.{name}_calls');
                IF NOT EXISTS (SELECT FROM public.{name}_fixed) THEN
                    RAISE EXCEPTION 'cannot digest event % of %', e.aggregate_version, e.aggregate_id;
                END IF;
            END IF;
            INSERT INTO public.{name}_totals AS t VALUES (e.aggregate_id, (e.payload ->> 'amount')::bigint)
            ON CONFLICT (account) DO UPDATE SET total = t.total + excluded.total;
        END $$""")
    register_projection(conn, name, f"public.{name}_apply(eventstore.event)")

    e1 = append(conn, "account", "a", "Deposited", {"amount": 10})
    e2 = append(conn, "account", "a", "Deposited", {"amount": 20, "poison": True})
    e3 = append(conn, "account", "a", "Deposited", {"amount": 5})
    e4 = append(conn, "account", "b", "Deposited", {"amount": 1})

    s = wait_applied(conn, name, 3, parked=1)
    # tried max_attempts times, then parked; the events after it went on
    assert conn.execute(f"SELECT last_value FROM public.{name}_calls").fetchone()["last_value"] == max_attempts
    assert totals_of(conn, name) == {"a": 15, "b": 1}
    assert s["attempts"] == 0 and s["lag"] == 0
    assert s["last_error"] == "cannot digest event 2 of a" and s["last_error_at"] is not None
    parked = conn.execute(
        "SELECT event_id, global_position, error, attempts FROM eventstore.parked_events"
        " WHERE tenant_id = %s AND projection = %s ORDER BY global_position", (tenant, name)).fetchall()
    assert parked == [{"event_id": e2["event_id"], "global_position": e2["global_position"],
                       "error": "cannot digest event 2 of a", "attempts": max_attempts}]
    assert {e1["event_id"], e3["event_id"], e4["event_id"]}.isdisjoint({p["event_id"] for p in parked})
    # the projection goes on with later events
    append(conn, "account", "b", "Deposited", {"amount": 2})
    wait_applied(conn, name, 4, parked=1)
    assert totals_of(conn, name) == {"a": 15, "b": 3}

    # replaying while the handler still fails: its error, and the event stays parked
    err = expect_error("P0001", conn, "SELECT eventstore.replay_parked_events(%s)", (name,))
    assert err.diag.message_primary == "cannot digest event 2 of a"
    assert projection_status(conn, name)["parked"] == 1

    conn.execute(f"INSERT INTO public.{name}_fixed VALUES (true)")
    assert conn.execute("SELECT eventstore.replay_parked_events(%s) AS n", (name,)).fetchone()["n"] == 1
    assert totals_of(conn, name) == {"a": 35, "b": 3}
    assert conn.execute("SELECT count(*) AS n FROM eventstore.parked_events WHERE tenant_id = %s AND projection = %s",
                        (tenant, name)).fetchone()["n"] == 0
    assert projection_status(conn, name)["parked"] == 0
    assert conn.execute("SELECT eventstore.replay_parked_events(%s) AS n", (name,)).fetchone()["n"] == 0
    assert conn.execute(f"SELECT last_value FROM public.{name}_calls").fetchone()["last_value"] == max_attempts + 2
    # nothing was applied twice by the worker meanwhile
    time.sleep(0.3)
    assert projection_status(conn, name)["events_applied"] == 4
    assert totals_of(conn, name) == {"a": 35, "b": 3}


def totals_of(conn, name):
    return {r["account"]: r["total"]
            for r in conn.execute(f"SELECT account, total FROM public.{name}_totals ORDER BY account")}


def test_async_handler_runs_as_the_registering_role_in_the_projection_tenant(connect, tenant):
    admin = connect(tenant=tenant)
    name, role, other = unique("p"), unique("es_proj"), unique("t")
    admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        admin.execute("SELECT eventstore.grant_access(%s, 'admin')", (role,))
        admin.execute(f"CREATE TABLE public.{name}_seen (who text, tenant text, event_tenant text,"
                      f" event_id uuid, aggregate_id text)")
        admin.execute(f'GRANT INSERT ON public.{name}_seen TO "{role}"')
        admin.execute(f"CREATE TABLE public.{name}_secret (x int)")  # no privilege for the role
        admin.execute(f"""
            CREATE FUNCTION public.{name}_apply(e eventstore.event) RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.{name}_seen
                VALUES (current_user, eventstore.current_tenant(), e.tenant_id, e.event_id, e.aggregate_id);
                IF (e.payload ->> 'forbidden')::boolean THEN
                    INSERT INTO public.{name}_secret VALUES (1);
                END IF;
            END $$""")
        app = connect(user=role, tenant=tenant)
        register_projection(app, name, f"public.{name}_apply(eventstore.event)")
        assert admin.execute("SELECT run_as::regrole::text AS r FROM eventstore.projections"
                             " WHERE tenant_id = %s AND name = %s", (tenant, name)).fetchone()["r"] == role

        mine = [append(admin, "order", f"o{i}", "Placed", {"i": i})["event_id"] for i in range(3)]
        forbidden = append(admin, "order", "o9", "Placed", {"forbidden": True})
        theirs = connect(tenant=other)
        append(theirs, "order", "o1", "Placed", {"tenant": "other"})

        s = wait_applied(app, name, 3, parked=1)
        seen = admin.execute(f"SELECT * FROM public.{name}_seen ORDER BY aggregate_id").fetchall()
        assert [r["event_id"] for r in seen] == mine
        assert {(r["who"], r["tenant"], r["event_tenant"]) for r in seen} == {(role, tenant, tenant)}
        # the handler can do no more than the role could: the event it cannot apply is parked
        parked = admin.execute("SELECT event_id, error FROM eventstore.parked_events"
                               " WHERE tenant_id = %s AND projection = %s", (tenant, name)).fetchall()
        assert [p["event_id"] for p in parked] == [forbidden["event_id"]]
        assert parked[0]["error"] == f"permission denied for table {name}_secret"
        assert admin.execute(f"SELECT count(*) AS n FROM public.{name}_secret").fetchone()["n"] == 0
        assert s["last_error"] == f"permission denied for table {name}_secret"
        # the other tenant does not see this projection at all
        assert projection_status(theirs, name) is None
        expect_error("P0002", theirs, "SELECT eventstore.rebuild_projection(%s)", (name,))
    finally:
        drop_projection_row(admin, tenant, name)
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')


def test_rebuild_of_an_async_projection_resets_it_and_the_worker_replays(connect, tenant):
    conn = connect(tenant=tenant)
    name = unique("p")
    create_totals_projection(conn, name)
    expected = append_ledger(conn, "acct", accounts=5, per_account=40, transactions=2)
    wait_applied(conn, name, 200)
    assert totals(conn, name) == expected

    tx = connect(tenant=tenant, autocommit=False)
    assert tx.execute("SELECT eventstore.rebuild_projection(%s) AS n", (name,)).fetchone()["n"] == 0
    # in the rebuilding transaction: the reset function ran and the checkpoint is back at the start
    assert totals(tx, name) == {}
    s = projection_status(tx, name)
    assert (s["position"], s["events_applied"], s["attempts"], s["parked"], s["last_error"]) == \
        (ZERO_CURSOR, 0, 0, 0, None)
    tx.commit()

    wait_applied(conn, name, 200)
    assert totals(conn, name) == expected  # replayed once, not on top of the old totals


# --- inline projections --------------------------------------------------------------------


def create_rows_projection(conn, name, mode="inline", event_types=None):
    """A read model that records every event its handler gets, in public.<name>_rows."""
    conn.execute(f"CREATE TABLE public.{name}_rows (event_id uuid, tenant text, aggregate_id text,"
                 f" aggregate_version bigint, event_type text, payload jsonb, global_position bigint)")
    conn.execute(f"""
        CREATE FUNCTION public.{name}_apply(e eventstore.event) RETURNS void LANGUAGE sql AS $$
            INSERT INTO public.{name}_rows VALUES (e.event_id, e.tenant_id, e.aggregate_id,
                e.aggregate_version, e.event_type, e.payload, e.global_position)
        $$""")
    register_projection(conn, name, f"public.{name}_apply(eventstore.event)", event_types, mode)


def rows_of(conn, name):
    return conn.execute(f"SELECT * FROM public.{name}_rows ORDER BY global_position").fetchall()


def test_inline_projection_runs_inside_the_appending_transaction(connect, tenant):
    admin = connect(tenant=tenant)
    other_session = connect(tenant=tenant)
    tx = connect(tenant=tenant, autocommit=False)
    # this session appends before the projection exists (and so knows of none) ...
    warm = append(other_session, "account", "a0", "Deposited", {"amount": 1})
    name = unique("p")
    create_rows_projection(admin, name, event_types=["Deposited", "Withdrawn"])
    # ... and runs it once it is registered by another session
    e1 = append(other_session, "account", "a1", "Deposited", {"amount": 2})
    assert [r["event_id"] for r in rows_of(admin, name)] == [e1["event_id"]]
    assert warm["event_id"] not in [r["event_id"] for r in rows_of(admin, name)]

    # visible to the appending transaction before it commits, to nobody else
    e2 = append(tx, "account", "a2", "Deposited", {"amount": 3})
    mine = rows_of(tx, name)
    assert [r["event_id"] for r in mine] == [e1["event_id"], e2["event_id"]]
    assert {k: mine[1][k] for k in ("tenant", "aggregate_id", "aggregate_version", "event_type", "payload",
                                    "global_position")} == \
        {"tenant": tenant, "aggregate_id": "a2", "aggregate_version": 1, "event_type": "Deposited",
         "payload": {"amount": 3}, "global_position": e2["global_position"]}
    assert [r["event_id"] for r in rows_of(admin, name)] == [e1["event_id"]]
    # rolled back with it
    tx.rollback()
    assert [r["event_id"] for r in rows_of(admin, name)] == [e1["event_id"]]
    assert stream_version(admin, "account", "a2") == 0

    # a batch: every event of the types asked for, in order, committed with the events
    batch = append_events(tx, "account", "a3", [
        {"event_type": "Deposited", "payload": {"amount": 4}},
        {"event_type": "Noted", "payload": {"note": "not projected"}},
        {"event_type": "Withdrawn", "payload": {"amount": 5}},
    ])
    tx.commit()
    got = rows_of(admin, name)
    assert [r["event_id"] for r in got] == [e1["event_id"], batch[0]["event_id"], batch[2]["event_id"]]
    assert [(r["aggregate_id"], r["aggregate_version"]) for r in got] == [("a1", 1), ("a3", 1), ("a3", 3)]
    # another tenant's appends do not run this tenant's projections
    append(connect(tenant=unique("t")), "account", "a1", "Deposited", {"amount": 9})
    assert len(rows_of(admin, name)) == 3
    assert projection_status(admin, name)["mode"] == "inline"


def create_failing_pair(conn, base, errcode):
    """Two inline projections: <base>_a records events (and runs first: by name), <base>_b raises
    (with `errcode`, a detail and a hint) for accounts whose payload says frozen."""
    create_rows_projection(conn, f"{base}_a")
    conn.execute(f"""
        CREATE FUNCTION public.{base}_b_apply(e eventstore.event) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            IF (e.payload ->> 'frozen')::boolean THEN
                RAISE EXCEPTION 'account % is frozen', e.aggregate_id
                    USING ERRCODE = '{errcode}', DETAIL = 'frozen since monday', HINT = 'unfreeze it first';
            END IF;
        END $$""")
    register_projection(conn, f"{base}_b", f"public.{base}_b_apply(eventstore.event)", mode="inline")


def test_failing_inline_handler_fails_the_append_with_its_own_error(connect, tenant):
    conn = connect(tenant=tenant)
    base = unique("p")
    create_failing_pair(conn, base, "23514")

    err = expect_error("23514", conn, "SELECT eventstore.append_event('account', 'f1', 'Deposited', %s)",
                       ('{"amount": 1, "frozen": true}',))
    assert err.diag.message_primary == "account f1 is frozen"
    # (the server may add a backtrace below the handler's detail when it runs with RUST_BACKTRACE)
    assert (err.diag.message_detail or "").startswith("frozen since monday")
    assert err.diag.message_hint == "unfreeze it first"
    # nothing was written: no event, no stream, no row of the projection that ran before
    assert stream_version(conn, "account", "f1") == 0
    assert rows_of(conn, f"{base}_a") == []
    assert conn.execute("SELECT count(*) AS n FROM eventstore.events WHERE tenant_id = %s",
                        (tenant,)).fetchone()["n"] == 0

    # a batch with one frozen event: all or nothing
    err = expect_error("23514", conn, "SELECT * FROM eventstore.append_events('account', 'f2', %s)",
                       ('[{"event_type": "Deposited", "payload": {"amount": 1}},'
                        ' {"event_type": "Deposited", "payload": {"amount": 2, "frozen": true}}]',))
    assert err.diag.message_primary == "account f2 is frozen"
    assert stream_version(conn, "account", "f2") == 0
    assert rows_of(conn, f"{base}_a") == []

    # the same projections let other events through
    ok = append(conn, "account", "f3", "Deposited", {"amount": 3})
    assert [r["event_id"] for r in rows_of(conn, f"{base}_a")] == [ok["event_id"]]


def test_failing_inline_handler_with_a_user_defined_sqlstate_keeps_its_message(connect, tenant):
    """An application-defined SQLSTATE (outside PostgreSQL's own codes) cannot pass through
    pgrx 0.18, which knows only PostgreSQL's codes: it arrives as XX000 (a documented
    limitation), but with the handler's message, detail and hint, and nothing is written."""
    conn = connect(tenant=tenant)
    base = unique("p")
    create_failing_pair(conn, base, "ES001")
    err = expect_error("XX000", conn, "SELECT eventstore.append_event('account', 'f1', 'Deposited', %s)",
                       ('{"amount": 1, "frozen": true}',))
    assert err.diag.message_primary == "account f1 is frozen"
    assert err.diag.message_detail == "frozen since monday"
    assert err.diag.message_hint == "unfreeze it first"
    assert stream_version(conn, "account", "f1") == 0


def test_rebuild_of_an_inline_projection_resets_and_replays_everything(connect, tenant):
    conn = connect(tenant=tenant)
    name = unique("p")
    create_totals_projection(conn, name, mode="inline")
    expected = append_ledger(conn, "acct", accounts=3, per_account=10, transactions=2)
    append_events(conn, "account", "acct-notes", [{"event_type": "Noted", "payload": {"amount": 1}}] * 5)
    append(connect(tenant=unique("t")), "account", "acct0", "Deposited", {"amount": 1000})
    assert totals(conn, name) == expected

    # the read model drifts (a bug in an older handler, a manual fix gone wrong)
    conn.execute(f"UPDATE public.{name}_totals SET total = 0, events = 99")
    conn.execute(f"INSERT INTO public.{name}_totals VALUES ('ghost', 1, 1)")
    feed_unblocked(conn)
    assert conn.execute("SELECT eventstore.rebuild_projection(%s) AS n", (name,)).fetchone()["n"] == 30
    assert totals(conn, name) == expected
    s = projection_status(conn, name)
    assert (s["mode"], s["lag"], s["parked"], s["last_error"]) == ("inline", 0, 0, None)
    # a rebuild is transactional like everything else
    with conn.transaction(force_rollback=True):
        conn.execute(f"DELETE FROM public.{name}_totals")
        assert conn.execute("SELECT eventstore.rebuild_projection(%s) AS n", (name,)).fetchone()["n"] == 30
    assert totals(conn, name) == expected


def test_rebuild_of_an_inline_projection_replays_events_the_feed_still_holds_back(connect, tenant):
    """Committed events that the feed holds back behind an older, unrelated transaction are part
    of "everything": after the rebuild the read model must still include them."""
    conn = connect(tenant=tenant)
    name = unique("p")
    create_totals_projection(conn, name, mode="inline")
    append(conn, "account", "a", "Deposited", {"amount": 1})
    holder = connect(autocommit=False)
    holder.execute("SELECT pg_current_xact_id()")  # an older transaction with an id, still open
    append(conn, "account", "a", "Deposited", {"amount": 2})  # committed after it
    assert totals(conn, name) == {"a": (3, 2)}
    try:
        conn.execute("SELECT eventstore.rebuild_projection(%s) AS n", (name,))
        assert totals(conn, name) == {"a": (3, 2)}
    finally:
        holder.rollback()
    assert totals(conn, name) == {"a": (3, 2)}


# --- registration --------------------------------------------------------------------------


def test_register_projection_checks_handler_mode_and_names(connect, tenant):
    conn = connect(tenant=tenant)
    n = unique("p")
    conn.execute(f"""
        CREATE FUNCTION public.{n}_ok(e eventstore.event) RETURNS void LANGUAGE sql AS 'SELECT';
        CREATE FUNCTION public.{n}_json(e jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
        CREATE FUNCTION public.{n}_two(e eventstore.event, x int) RETURNS void LANGUAGE sql AS 'SELECT';
        CREATE FUNCTION public.{n}_none() RETURNS void LANGUAGE sql AS 'SELECT';
        CREATE FUNCTION public.{n}_set(e eventstore.event) RETURNS SETOF int LANGUAGE sql AS 'SELECT 1';
        CREATE PROCEDURE public.{n}_proc(e eventstore.event) LANGUAGE sql AS 'SELECT';
        CREATE FUNCTION public.{n}_reset_arg(x int) RETURNS void LANGUAGE sql AS 'SELECT';
    """)
    sql = "SELECT eventstore.register_projection(%s, %s::regprocedure, NULL, %s, %s::regprocedure)"
    for mode in ("async", "inline"):
        for handler, why in ((f"public.{n}_json(jsonb)", "takes (e jsonb)"),
                             (f"public.{n}_two(eventstore.event, int)", "takes (e eventstore.event, x integer)"),
                             (f"public.{n}_none()", "takes ()"),
                             (f"public.{n}_set(eventstore.event)", "returns a set"),
                             (f"public.{n}_proc(eventstore.event)", "is not a plain function")):
            err = expect_error("22023", conn, sql, (n, handler, mode, None))
            assert err.diag.message_primary.endswith(why), err.diag.message_primary
        err = expect_error("22023", conn, sql, (n, f"public.{n}_ok(eventstore.event)", mode,
                                                f"public.{n}_reset_arg(int)"))
        assert err.diag.message_primary.endswith("takes (x integer)")
        err = expect_error("22023", conn, sql, (n, None, mode, None))
        assert err.diag.message_primary == "handler must not be null"
        expect_error("22023", conn, sql, ("", f"public.{n}_ok(eventstore.event)", mode, None))
        expect_error("22023", conn, sql, (None, f"public.{n}_ok(eventstore.event)", mode, None))
    for mode in ("sync", "Async", "", None):
        err = expect_error("22023", conn, sql, (n, f"public.{n}_ok(eventstore.event)", mode, None))
        assert err.diag.message_primary == "mode must be 'async' or 'inline'"
    assert conn.execute("SELECT count(*) AS c FROM eventstore.projection_status()").fetchone()["c"] == 0

    # unknown projections: P0002
    for fn in ("rebuild_projection", "replay_parked_events"):
        err = expect_error("P0002", conn, f"SELECT eventstore.{fn}(%s)", (n,))
        assert err.diag.message_primary == f'projection "{n}" does not exist'

    # registering again replaces the definition (here: async becomes inline)
    conn.execute(sql, (n, f"public.{n}_ok(eventstore.event)", "async", None))
    conn.execute(sql, (n, f"public.{n}_ok(eventstore.event)", "inline", f"public.{n}_none()"))
    rows = conn.execute("SELECT name, mode FROM eventstore.projection_status()").fetchall()
    assert rows == [{"name": n, "mode": "inline"}]
    assert conn.execute("SELECT eventstore.replay_parked_events(%s) AS c", (n,)).fetchone()["c"] == 0
    assert conn.execute("SELECT eventstore.rebuild_projection(%s) AS c", (n,)).fetchone()["c"] == 0
    drop_projection_row(conn, tenant, n)


# --- the worker's own life -----------------------------------------------------------------


def test_sigterm_ends_the_worker_promptly_and_it_is_restarted(connect, tenant):
    conn = connect(tenant=tenant)
    name = unique("p")
    create_totals_projection(conn, name)
    pid = worker_status(conn)["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: process_gone(pid), timeout=PROMPT_EXIT, interval=0.02, what="the worker to exit")
        # the cluster goes on: a clean exit is no crash
        assert conn.execute("SELECT 1 AS one").fetchone()["one"] == 1
        # started again (its restart interval is 5 s), and it applies what was appended meanwhile
        append(conn, "account", "a", "Deposited", {"amount": 7})
        restarted = wait_for_worker(timeout=15, not_pid=pid)
        assert restarted is not None, "the worker was not restarted within 15 s after SIGTERM"
        wait_applied(conn, name, 1)
        assert totals(conn, name) == {"a": (7, 1)}
    finally:
        ensure_worker()


def test_worker_reconnects_after_its_database_is_recreated(database):
    """The worker reconnects when its database is dropped and created again."""
    try:
        assert wait_for_worker() is not None
        recreate_worker_database()
        assert wait_for_worker(timeout=20) is not None, \
            "the worker did not come back within 20 s after its database was dropped and created again"
    finally:
        ensure_worker()


def test_where_a_worker_serves_the_database_it_sends_the_notifications(connect, tenant):
    """Appending transactions leave their notification to the worker (so their commits do not
    take turns on NOTIFY's lock): one notification per commit, from the worker's process,
    naming the tenant and both aggregate types; nothing while open, nothing after a rollback."""
    listener = connect()
    listener.execute("LISTEN eventstore_events")
    worker_pid = int(listener.execute("SELECT eventstore.worker_status()->>'pid' AS pid").fetchone()["pid"])
    writer = connect(tenant=tenant, autocommit=False)
    own = writer.execute("SELECT eventstore.notification_channel() AS c").fetchone()["c"]
    writer.commit()
    listener.execute(f'LISTEN "{own}"')
    append(writer, "order", unique("o"), "Placed", {})
    append(writer, "invoice", unique("i"), "Issued", {})
    assert list(listener.notifies(timeout=0.5)) == []
    writer.commit()
    got = list(listener.notifies(timeout=5, stop_after=2))
    assert len(got) == 2
    assert {n.pid for n in got} == {worker_pid}
    assert {n.channel: json.loads(n.payload) for n in got} == {
        "eventstore_events": {}, own: {"aggregate_types": ["invoice", "order"]}}
    append(writer, "order", unique("o"), "Placed", {})
    writer.rollback()
    assert list(listener.notifies(timeout=1)) == []
