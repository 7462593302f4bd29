"""Category reads by position never skip: writers of one category commit out of order (and
some roll back), readers follow the category by global position, and every committed message
is read exactly once. Writers of one category do not wait for each other."""

import random
import threading
import uuid

from psycopg.types.json import Jsonb

from conftest import category, expect_error, start

WRITERS = 8
WRITES_PER_WRITER = 60


def write(conn, stream, data):
    return conn.execute("SELECT message_store.write_message(%s, %s, 'E', %s) AS p",
                        (str(uuid.uuid4()), stream, Jsonb(data))).fetchone()["p"]


def category_after(conn, cat, position, batch=50):
    return conn.execute(
        "SELECT id, global_position FROM message_store.get_category_messages(%s, %s, %s)",
        (cat, position, batch)).fetchall()


def test_a_held_transaction_holds_category_readers_back(connect, tenant):
    cat = category()
    slow, fast, reader = connect(tenant=tenant, autocommit=False), connect(tenant=tenant), connect(tenant=tenant)
    write(fast, f"{cat}-0", {"before": True})
    start_at = category_after(reader, cat, 1)[-1]["global_position"] + 1
    write(slow, f"{cat}-1", {"slow": True})          # draws the lower position, not committed
    write(fast, f"{cat}-2", {"fast": True})          # a higher position, committed
    # the committed message is not returned while a lower position may still commit
    assert category_after(reader, cat, start_at) == []
    slow.commit()
    got = category_after(reader, cat, start_at)
    assert len(got) == 2
    assert [g["global_position"] for g in got] == sorted(g["global_position"] for g in got)


def test_a_transaction_reads_its_own_messages(connect, tenant):
    cat = category()
    conn = connect(tenant=tenant, autocommit=False)
    write(conn, f"{cat}-1", {"n": 1})
    write(conn, f"{cat}-2", {"n": 2})
    assert len(category_after(conn, cat, 1)) == 2
    conn.rollback()
    assert category_after(conn, cat, 1) == []


def test_writers_of_one_category_do_not_wait_for_each_other(connect, tenant):
    cat = category()
    a, b = connect(tenant=tenant, autocommit=False), connect(tenant=tenant, autocommit=False)
    b.execute("SET lock_timeout = '2s'")
    write(a, f"{cat}-1", {})
    write(b, f"{cat}-2", {})   # Message DB would wait here for a's category lock
    b.commit()
    a.commit()


def test_repeatable_read_is_refused_for_category_reads(connect, tenant):
    conn = connect(tenant=tenant, autocommit=False)
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    expect_error("0A000", conn, "SELECT * FROM message_store.get_category_messages('anything')")
    conn.rollback()


def test_readers_by_position_never_skip(connect, tenant):
    cat = category()
    committed = []
    lock = threading.Lock()
    done = threading.Event()

    def writer(w):
        conn = connect(tenant=tenant, autocommit=False)
        rnd = random.Random(w)
        for i in range(WRITES_PER_WRITER):
            got = conn.execute("SELECT message_store.write_message(%s, %s, 'E', %s) AS p, pg_sleep(%s)",
                               (str(uuid.uuid4()), f"{cat}-{w}-{i % 5}", Jsonb({"w": w, "i": i}),
                                rnd.choice([0, 0, 0.001, 0.003]))).fetchone()
            ids = conn.execute("SELECT id FROM message_store.get_stream_messages(%s, %s, 1)",
                               (f"{cat}-{w}-{i % 5}", got["p"])).fetchall()
            if rnd.random() < 0.1:
                conn.rollback()
            else:
                conn.commit()
                with lock:
                    committed.append(ids[0]["id"])

    def reader(batch):
        conn = connect(tenant=tenant)
        position, seen = 1, []
        while True:
            finished = done.is_set()
            rows = category_after(conn, cat, position, batch)
            for r in rows:
                assert r["global_position"] >= position
                seen.append(r["id"])
                position = r["global_position"] + 1
            if finished and not rows:
                return seen

    readers = [start(reader, b) for b in (1, 7, 50)]
    writers = [start(writer, w) for w in range(WRITERS)]
    for w in writers:
        w.join_result()
    done.set()
    for r in readers:
        seen = r.join_result()
        assert len(seen) == len(set(seen)), "a message was read twice"
        assert set(seen) == set(committed), "a committed message was skipped"
    assert len(committed) > WRITERS * WRITES_PER_WRITER // 2
