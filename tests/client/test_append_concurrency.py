"""Appending under concurrency: optimistic concurrency with expected_version,
gapless versions under many writers, and writers of different streams never waiting for each
other."""

import re
import threading
import time

import psycopg
import pytest

from conftest import (append, append_events, backend_pid, blocking_pids, expect_error, new_events,
                      read_stream, start, stream_version, unique, wait_until, waiting_on_lock)


def positions(conn, tenant):
    return [r["global_position"] for r in conn.execute(
        "SELECT global_position FROM eventstore.events WHERE tenant_id = %s ORDER BY 1", (tenant,))]


def assert_contiguous(values):
    assert values == list(range(values[0], values[0] + len(values))), f"gap in {values}"


def assert_wrong_version(err, stream, expected, actual):
    assert err.sqlstate == "23P01"
    assert str(err.diag.message_primary).startswith("wrong expected version"), err.diag.message_primary
    detail = err.diag.message_detail or ""
    assert stream in detail, detail
    assert re.search(rf"expected\D*{re.escape(str(expected))}\b", detail), detail
    assert re.search(rf"actual\D*{actual}\b", detail), detail


def race(connect, tenant, aggregate_id, expected_version, hold=0.3):
    """Two sessions open a transaction each and append at the same expected version at the same
    moment; each holds its transaction a little before committing. Returns both outcomes."""
    barrier = threading.Barrier(2, timeout=10)
    conns = [connect(tenant=tenant, autocommit=False) for _ in range(2)]

    def writer(conn):
        try:
            with conn.transaction():
                barrier.wait()
                row = append(conn, "order", aggregate_id, "Raced", {"by": backend_pid(conn)},
                             expected_version=expected_version)
                time.sleep(hold)
            return row
        except psycopg.Error as e:
            return e

    workers = [start(writer, c) for c in conns]
    return [w.join_result() for w in workers]


class TestOptimisticConcurrency:
    def test_racing_writers_at_same_version_one_wins(self, connect, tenant):
        conn = connect(tenant=tenant)
        first = append_events(conn, "order", "o1", new_events(2), expected_version=0)
        assert [r["aggregate_version"] for r in first] == [1, 2]

        outcomes = race(connect, tenant, "o1", expected_version=2)
        winners = [o for o in outcomes if not isinstance(o, Exception)]
        losers = [o for o in outcomes if isinstance(o, Exception)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert winners[0]["aggregate_version"] == 3
        assert_wrong_version(losers[0], "order/o1", expected=2, actual=3)

        assert stream_version(conn, "order", "o1") == 3
        assert [r["event_type"] for r in read_stream(conn, "order", "o1")] == ["Happened", "Happened", "Raced"]
        # the loser drew no position: the next append follows the winner directly
        later = append(conn, "order", "o1", expected_version=3)
        assert later["aggregate_version"] == 4
        assert later["global_position"] == winners[0]["global_position"] + 1
        assert_contiguous(positions(conn, tenant))

    def test_racing_creators_of_a_new_stream_one_wins(self, connect, tenant):
        outcomes = race(connect, tenant, "fresh", expected_version=0)
        winners = [o for o in outcomes if not isinstance(o, Exception)]
        losers = [o for o in outcomes if isinstance(o, Exception)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert winners[0]["aggregate_version"] == 1
        assert_wrong_version(losers[0], "order/fresh", expected=0, actual=1)
        conn = connect(tenant=tenant)
        assert stream_version(conn, "order", "fresh") == 1
        later = append(conn, "order", "fresh")
        assert (later["aggregate_version"], later["global_position"]) == (2, winners[0]["global_position"] + 1)
        assert_contiguous(positions(conn, tenant))

    def test_blocked_writer_fails_after_the_holder_commits(self, connect, tenant):
        """Deterministic order: A holds the stream, B waits on A's row lock, A commits, B fails."""
        a = connect(tenant=tenant, autocommit=False)
        b = connect(tenant=tenant, autocommit=False)
        observer = connect()
        append(connect(tenant=tenant), "order", "o2", expected_version=0)

        won = append(a, "order", "o2", expected_version=1)
        assert won["aggregate_version"] == 2
        pid_b = backend_pid(b)

        def lose():
            try:
                append(b, "order", "o2", expected_version=1)
            except psycopg.Error as e:
                b.rollback()
                return e
            b.rollback()
            return None

        w = start(lose)
        wait_until(lambda: waiting_on_lock(observer, pid_b), what="B to wait on A's lock")
        assert blocking_pids(observer, pid_b) == [backend_pid(a)]
        a.commit()
        err = w.join_result()
        assert err is not None, "second writer at the same expected version succeeded"
        assert_wrong_version(err, "order/o2", expected=1, actual=2)

    def test_expected_version_rules(self, connect, tenant):
        conn = connect(tenant=tenant)
        # -1: the stream must exist
        err = expect_error("23P01", conn,
                           "SELECT eventstore.append_event('order', 'missing', 'E', '{}', expected_version => -1)")
        assert_wrong_version(err, "order/missing", expected=-1, actual=0)
        assert stream_version(conn, "order", "missing") == 0
        # N > 0 on a missing stream
        err = expect_error("23P01", conn,
                           "SELECT eventstore.append_event('order', 'missing', 'E', '{}', expected_version => 4)")
        assert_wrong_version(err, "order/missing", expected=4, actual=0)
        # 0: the stream must not exist yet
        assert append(conn, "order", "o3", expected_version=0)["aggregate_version"] == 1
        err = expect_error("23P01", conn,
                           "SELECT eventstore.append_event('order', 'o3', 'E', '{}', expected_version => 0)")
        assert_wrong_version(err, "order/o3", expected=0, actual=1)
        # -1 on an existing stream, then exact N, then stale N
        assert append(conn, "order", "o3", expected_version=-1)["aggregate_version"] == 2
        assert append(conn, "order", "o3", expected_version=2)["aggregate_version"] == 3
        err = expect_error("23P01", conn,
                           "SELECT eventstore.append_event('order', 'o3', 'E', '{}', expected_version => 2)")
        assert_wrong_version(err, "order/o3", expected=2, actual=3)
        err = expect_error("23P01", conn,
                           "SELECT eventstore.append_events('order', 'o3', '[{\"event_type\": \"E\", \"payload\": {}}]',"
                           " expected_version => 7)")
        assert_wrong_version(err, "order/o3", expected=7, actual=3)
        # a batch at the right version gets consecutive versions
        rows = append_events(conn, "order", "o3", new_events(3), expected_version=3)
        assert [r["aggregate_version"] for r in rows] == [4, 5, 6]
        # out of range
        expect_error("22023", conn, "SELECT eventstore.append_event('order', 'o3', 'E', '{}', expected_version => -2)")

        # no failed attempt left a gap: positions of this tenant are contiguous
        assert stream_version(conn, "order", "o3") == 6
        assert [r["aggregate_version"] for r in read_stream(conn, "order", "o3")] == [1, 2, 3, 4, 5, 6]
        assert_contiguous(positions(conn, tenant))

    def test_a_failed_check_inside_a_transaction_leaves_no_gap(self, connect, tenant):
        conn = connect(tenant=tenant)
        before = append(conn, "order", "o4", expected_version=0)
        tx = connect(tenant=tenant, autocommit=False)
        expect_error("23P01", tx, "SELECT eventstore.append_event('order', 'o4', 'E', '{}', expected_version => 0)")
        tx.rollback()
        after = append(conn, "order", "o4", expected_version=1)
        assert after["global_position"] == before["global_position"] + 1


def test_many_writers_one_stream_get_gapless_versions(connect, tenant):
    sessions, per_session = 20, 25
    conns = [connect(tenant=tenant) for _ in range(sessions)]
    barrier = threading.Barrier(sessions, timeout=20)

    def writer(conn, n):
        barrier.wait()
        got = []
        for i in range(per_session):
            row = append(conn, "account", "shared", "Deposited", {"writer": n, "i": i})
            got.append(row["aggregate_version"])
        return got

    workers = [start(writer, c, n) for n, c in enumerate(conns)]
    per_writer = [w.join_result() for w in workers]

    for got in per_writer:
        assert len(got) == per_session
        assert got == sorted(got) and len(set(got)) == per_session, got
    all_versions = sorted(v for got in per_writer for v in got)
    assert all_versions == list(range(1, sessions * per_session + 1))

    conn = conns[0]
    assert stream_version(conn, "account", "shared") == 500
    stored = read_stream(conn, "account", "shared")
    assert [r["aggregate_version"] for r in stored] == list(range(1, 501))
    assert conn.execute(
        "SELECT count(*) AS n, count(DISTINCT aggregate_version) AS d, count(DISTINCT global_position) AS p"
        " FROM eventstore.events WHERE tenant_id = %s", (tenant,)).fetchone() == {"n": 500, "d": 500, "p": 500}
    # each writer's events are in its own order within the stream
    for n in range(sessions):
        mine = [r["payload"]["i"] for r in stored if r["payload"]["writer"] == n]
        assert mine == list(range(per_session))
    assert conn.execute("SELECT version FROM eventstore.streams WHERE tenant_id = %s", (tenant,)).fetchone() == {"version": 500}


@pytest.mark.parametrize("streams_exist", [True, False], ids=["existing-streams", "new-streams"])
def test_writers_of_different_streams_never_wait(connect, tenant, streams_exist):
    x, y = unique("x"), unique("y")
    setup = connect(tenant=tenant)
    observer = connect()
    if streams_exist:
        append(setup, "cart", x)
        append(setup, "cart", y)
    base = 1 if streams_exist else 0

    a = connect(tenant=tenant, autocommit=False)
    held = append(a, "cart", x, "ItemAdded")
    assert held["aggregate_version"] == base + 1

    # B, on another stream, goes straight through while A holds X
    b = connect(tenant=tenant, settings={"lock_timeout": "2s"})
    row = append(b, "cart", y, "ItemAdded")
    assert row["aggregate_version"] == base + 1
    rows = append_events(b, "cart", unique("z"), new_events(3))
    assert [r["aggregate_version"] for r in rows] == [1, 2, 3]

    # C, on the same stream, cannot get past A
    c = connect(tenant=tenant, settings={"lock_timeout": "300ms"})
    t0 = time.monotonic()
    expect_error("55P03", c, "SELECT eventstore.append_event('cart', %s, 'ItemAdded', '{}')", (x,))
    assert time.monotonic() - t0 >= 0.25
    # ... and without a lock timeout it waits until A commits, then numbers on behind A
    c.execute("SET lock_timeout = 0")
    pid_c = backend_pid(c)
    w = start(append, c, "cart", x, "ItemAdded")
    wait_until(lambda: waiting_on_lock(observer, pid_c), what="C to wait on A")
    time.sleep(0.3)
    assert w.is_alive(), "C appended to X while A held it"
    assert blocking_pids(observer, pid_c) == [backend_pid(a)]
    a.commit()
    assert w.join_result()["aggregate_version"] == base + 2
    assert stream_version(setup, "cart", x) == base + 2
    assert stream_version(setup, "cart", y) == base + 1
