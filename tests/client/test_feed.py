"""The global feed, read_all with cursors: never skips an event even when
writers commit out of order or roll back, holds back behind running transactions (and says who
via feed_lag), filters by event and aggregate type."""

import random
import threading
import time


from conftest import (append, append_events, backend_pid, expect_error, feed_lag, feed_unblocked, follow,
                      new_events, read_all, start)


def ids(rows):
    return [r["event_id"] for r in rows]


def test_first_started_last_committed_transaction_is_never_skipped(connect, tenant):
    reader = connect(tenant=tenant)
    w = connect(tenant=tenant)
    t1 = connect(tenant=tenant, autocommit=False)
    t2 = connect(tenant=tenant, autocommit=False)

    e0 = append(w, "order", "o0", "Before")
    rows, cursor = follow(reader)
    assert ids(rows) == [e0["event_id"]]

    # T1 takes its transaction id first (by appending), T2 after it
    e1 = append(t1, "order", "o1", "T1First")
    e2, e3 = append_events(t2, "order", "o2", new_events(2, "T2"))
    assert e2["global_position"] > e1["global_position"]
    t2.commit()
    e4 = append(t1, "order", "o1", "T1Second")  # T1 goes on after T2 committed
    assert e4["global_position"] > e3["global_position"]

    # T2 has committed but T1 is still running: the feed holds T2 back
    assert read_all(reader, cursor) == []
    assert follow(reader, cursor) == ([], cursor)
    lag = feed_lag(reader)
    assert lag["blocking_backend"] is not None, lag
    assert lag["blocking_backend"]["pid"] == backend_pid(t1)
    assert lag["held_back_events"] == 2, lag  # T2's two committed events
    assert lag["oldest_held_back_at"] is not None

    t1.commit()
    rows, cursor2 = follow(reader, cursor)
    assert ids(rows) == [e1["event_id"], e4["event_id"], e2["event_id"], e3["event_id"]]
    assert [r["event_type"] for r in rows] == ["T1First", "T1Second", "T2", "T2"]
    # cursors grow strictly, also as text; nothing more behind the last one
    cursors = [cursor] + [r["cursor"] for r in rows]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert read_all(reader, cursor2) == []
    # a reader starting now sees the same order
    fresh, _ = follow(connect(tenant=tenant), batch=2)
    assert ids(fresh) == [e0["event_id"]] + ids(rows)
    assert feed_unblocked(reader)["held_back_events"] == 0


def test_rolled_back_append_does_not_stall_the_feed(connect, tenant):
    reader = connect(tenant=tenant)
    w = connect(tenant=tenant)
    doomed = connect(tenant=tenant, autocommit=False)

    _, cursor = follow(reader)
    gone = append(doomed, "order", "o1", "Doomed")
    kept = append(w, "order", "o2", "Kept")
    assert read_all(reader, cursor) == []
    assert feed_lag(reader)["blocking_backend"]["pid"] == backend_pid(doomed)
    doomed.rollback()

    rows, cursor = follow(reader, cursor)
    assert ids(rows) == [kept["event_id"]]
    assert gone["event_id"] not in ids(rows)
    later = append(w, "order", "o1", "Later")
    assert later["aggregate_version"] == 1  # the rolled-back version was never taken
    rows, _ = follow(reader, cursor)
    assert ids(rows) == [later["event_id"]]
    assert feed_lag(reader)["held_back_events"] == 0


def test_an_aborted_transaction_after_an_error_does_not_stall_the_feed(connect, tenant):
    reader = connect(tenant=tenant)
    w = connect(tenant=tenant)
    broken = connect(tenant=tenant, autocommit=False)
    _, cursor = follow(reader)
    append(broken, "order", "o1", "Doomed")
    expect_error("23P01", broken, "SELECT eventstore.append_event('order', 'o1', 'X', '{}', expected_version => 0)")
    # the failed statement aborted the transaction at once: its events are gone, nothing waits
    kept = append(w, "order", "o2", "Kept")
    assert ids(follow(reader, cursor)[0]) == [kept["event_id"]]
    feed_unblocked(reader)
    broken.rollback()
    assert ids(follow(reader, cursor)[0]) == [kept["event_id"]]


def test_readers_never_hold_the_feed_back(connect, tenant):
    """Reading (in a long transaction) takes no transaction id, so it holds nobody back."""
    w = connect(tenant=tenant)
    append(w, "order", "o1")
    long_reader = connect(tenant=tenant, autocommit=False)
    long_reader.execute("SELECT * FROM eventstore.read_all()").fetchall()
    long_reader.execute("SELECT * FROM eventstore.read_stream('order', 'o1')").fetchall()
    long_reader.execute("SELECT eventstore.stream_version('order', 'o1')").fetchall()
    long_reader.execute("SELECT eventstore.get_event_store_stats(), eventstore.feed_lag()").fetchall()
    assert long_reader.execute("SELECT pg_current_xact_id_if_assigned() AS x").fetchone()["x"] is None

    other = connect(tenant=tenant)
    _, cursor = follow(other)
    e = append(w, "order", "o1")
    assert ids(read_all(other, cursor)) == [e["event_id"]]
    feed_unblocked(other)
    long_reader.rollback()


def test_filters_by_event_and_aggregate_type(connect, tenant):
    conn = connect(tenant=tenant)
    a = append(conn, "order", "1", "OrderPlaced")
    b = append(conn, "customer", "1", "CustomerRegistered")
    c = append(conn, "order", "1", "OrderShipped")
    d = append(conn, "invoice", "1", "OrderPlaced")
    e = append(conn, "customer", "1", "CustomerRenamed")

    assert ids(read_all(conn)) == ids([a, b, c, d, e])
    assert ids(read_all(conn, event_types=["OrderPlaced"])) == ids([a, d])
    assert ids(read_all(conn, event_types=["OrderShipped", "CustomerRenamed"])) == ids([c, e])
    assert ids(read_all(conn, aggregate_types=["order"])) == ids([a, c])
    assert ids(read_all(conn, aggregate_types=["customer", "invoice"])) == ids([b, d, e])
    assert ids(read_all(conn, event_types=["OrderPlaced"], aggregate_types=["order"])) == ids([a])
    assert read_all(conn, event_types=["Nothing"]) == []
    assert read_all(conn, aggregate_types=["nothing"]) == []

    # following a filtered feed with cursors, one row at a time
    rows, _ = follow(conn, batch=1, aggregate_types=["customer", "order"])
    assert ids(rows) == ids([a, b, c, e])
    first = read_all(conn, event_types=["OrderPlaced"], max_count=1)
    assert ids(first) == ids([a])
    assert ids(read_all(conn, first[0]["cursor"], event_types=["OrderPlaced"])) == ids([d])

    # rows carry the event's columns plus the cursor
    row = read_all(conn, max_count=1)[0]
    assert (row["tenant_id"], row["aggregate_type"], row["aggregate_id"], row["aggregate_version"],
            row["event_type"], row["global_position"]) == (tenant, "order", "1", 1, "OrderPlaced", a["global_position"])
    assert isinstance(row["cursor"], str) and row["cursor"]


def test_max_count_and_bad_cursors(connect, tenant):
    conn = connect(tenant=tenant)
    rows = append_events(conn, "order", "1", new_events(5))
    assert ids(read_all(conn, max_count=2)) == ids(rows[:2])
    page2 = read_all(conn, read_all(conn, max_count=2)[-1]["cursor"], max_count=2)
    assert ids(page2) == ids(rows[2:4])
    for bad in ["", "nonsense", "12-34", "zzzzzzzzzzzzzzzz-zzzzzzzzzzzzzzzz"]:
        err = expect_error("22023", conn, "SELECT * FROM eventstore.read_all(%s)", (bad,))
        assert "cursor" in err.diag.message_primary
    for bad in [0, -1]:
        expect_error("22023", conn, "SELECT * FROM eventstore.read_all(NULL, %s)", (bad,))


def test_soak_concurrent_writers_and_readers(connect, tenant):
    """Writers commit out of order (some hold their transaction open a while, some roll back)
    while readers follow the feed with cursors. At the end every reader has seen every committed
    event exactly once, no rolled-back event, all in one order that a fresh read repeats."""
    n_writers, n_readers, duration = 4, 3, 6.0
    streams = [f"s{i}" for i in range(40)]
    stop = threading.Event()
    rng_seed = random.randrange(1 << 30)

    def writer(k):
        rng = random.Random(rng_seed + k)
        conn = connect(tenant=tenant, autocommit=False, settings={"lock_timeout": "10s"})
        committed, rolled_back, txns = [], [], 0
        while not stop.is_set():
            # one or two streams per transaction, locked in a fixed order: no deadlocks
            chosen = sorted(rng.sample(streams, rng.choice([1, 1, 2])))
            written = []
            for s in chosen:
                if rng.random() < 0.5:
                    written.append(append(conn, "soak", s, "One", {"w": k})["event_id"])
                else:
                    batch = new_events(rng.randint(1, 12), "Many", with_ids=rng.random() < 0.5)
                    written += [r["event_id"] for r in append_events(conn, "soak", s, batch)]
            roll = rng.random()
            if roll < 0.2:
                time.sleep(rng.uniform(0.01, 0.2))  # hold the feed back a while
            if roll > 0.85:
                conn.rollback()
                rolled_back += written
            else:
                conn.commit()
                committed += written
            txns += 1
        conn.close()
        return committed, rolled_back, txns

    def reader(k):
        rng = random.Random(rng_seed + 1000 + k)
        conn = connect(tenant=tenant)
        seen, cursor, reads = [], None, 0
        while not stop.is_set():
            rows = read_all(conn, cursor, rng.randint(1, 150))
            reads += 1
            if rows:
                seen += rows
                cursor = rows[-1]["cursor"]
            else:
                time.sleep(0.005)
        return conn, seen, cursor, reads

    writers = [start(writer, k) for k in range(n_writers)]
    readers = [start(reader, k) for k in range(n_readers)]
    time.sleep(duration)
    stop.set()
    results = [w.join_result(timeout=30) for w in writers]
    committed = [e for c, _, _ in results for e in c]
    rolled_back = {e for _, r, _ in results for e in r}
    print(f"soak: {len(committed)} committed, {len(rolled_back)} rolled back, {sum(t for _, _, t in results)} transactions")
    assert len(committed) >= 200, f"too little traffic: {len(committed)} events"
    assert rolled_back, "no transaction rolled back"
    assert len(set(committed)) == len(committed)

    orders = []
    for r in readers:
        conn, seen, cursor, reads = r.join_result(timeout=30)
        assert reads > 10
        # every writer has finished: the rest of the feed is final, drain it
        rest, _ = follow(conn, cursor, batch=97)
        seen += rest
        order = ids(seen)
        assert len(order) == len(set(order)), "an event was returned twice"
        assert not rolled_back & set(order), "a rolled-back event was returned"
        assert set(order) == set(committed), (
            f"missing {len(set(committed) - set(order))}, unexpected {len(set(order) - set(committed))}")
        cursors = [row["cursor"] for row in seen]
        assert cursors == sorted(cursors)
        orders.append(order)
    assert all(o == orders[0] for o in orders), "readers saw different orders"

    fresh, _ = follow(connect(tenant=tenant), batch=1000)
    assert ids(fresh) == orders[0]
    # writers did commit out of position order, so the feed had something to get right
    assert [r["global_position"] for r in fresh] != sorted(r["global_position"] for r in fresh)
    assert [r["cursor"] for r in fresh] == sorted(r["cursor"] for r in fresh)
    # the stored log agrees: same events, each stream gapless
    check = connect(tenant=tenant)
    assert check.execute("SELECT count(*) AS n FROM eventstore.events WHERE tenant_id = %s",
                         (tenant,)).fetchone()["n"] == len(committed)
    gaps = check.execute(
        "SELECT aggregate_id, count(*) AS n, max(aggregate_version) AS m FROM eventstore.events"
        " WHERE tenant_id = %s GROUP BY 1 HAVING count(*) <> max(aggregate_version)", (tenant,)).fetchall()
    assert gaps == []
