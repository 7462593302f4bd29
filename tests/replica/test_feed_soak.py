"""The feed on a hot standby: a reader that follows cursors with read_all on the standby, while
writers on the primary commit out of order, sees every committed event exactly once, in the
primary's feed order, and nothing of a rolled-back transaction or subtransaction.

Why it holds: the feed returns the events of transactions below its snapshot's xmin, in
(transaction id, position) order. On a standby the snapshot comes from the transactions the
standby knows to be running on the primary (KnownAssignedXids): every xid up to the newest one
seen in the WAL counts as running until its commit or abort record is replayed, or a
running-transactions record proves it over. So an xid below a standby snapshot's xmin has ended,
and its events, replayed before its commit record, are all visible: what the reader is shown
is always a prefix of the primary's feed. Subtransactions do not change that (the feed orders by
the top-level xid, which stays known even when the standby's snapshot overflows and the subxids
move to pg_subtrans), nor does hot_standby_feedback (it holds back the primary's vacuum, not the
primary's snapshots). The writers below exercise each case: out-of-order commits, an xid taken
long before the first write, more than 64 subtransactions (some rolled back), prepared
transactions, rollbacks; run once with hot_standby_feedback on and once off."""

import os
import random
import threading
import time
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import Servers, caught_up, follow, read_all, unique, wait_until

SECONDS = float(os.environ.get("EVENTSTORE_SOAK_SECONDS", "8"))
WRITERS = 6
SUBXACTS = 70  # more than PGPROC_MAX_CACHED_SUBXIDS (64): the primary WAL-logs the assignment


class Writer(threading.Thread):
    def __init__(self, n, tenant, stop, book):
        super().__init__(daemon=True)
        self.n, self.tenant, self.stop, self.book = n, tenant, stop, book
        self.rng = random.Random(1000 + n)
        self.error = None

    def append(self, conn, ids):
        event_id = str(uuid.uuid4())
        conn.execute("SELECT eventstore.append_event('soak', %s, 'Wrote', %s, event_id => %s)",
                     (f"w{self.n}-{self.rng.randrange(4)}", Jsonb({"w": self.n}), event_id))
        ids.append(event_id)

    def commit(self, conn, ids, dropped, style):
        xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        conn.execute("COMMIT")
        self.book.committed(xid, ids, dropped, style)

    def run(self):
        try:
            self.loop()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def loop(self):
        rng = self.rng
        with psycopg.connect(Servers.dsn_primary(self.tenant), autocommit=True) as conn:
            while not self.stop.is_set():
                style = rng.choices(["plain", "early_xid", "subxacts", "rollback", "prepared"], [5, 3, 1, 1, 1])[0]
                ids, dropped = [], []
                conn.execute("BEGIN")
                if style == "early_xid":
                    # the xid is taken long before the first WAL record names it
                    conn.execute("SELECT pg_current_xact_id()")
                    time.sleep(rng.uniform(0.05, 0.3))
                if style == "subxacts":
                    for i in range(SUBXACTS):
                        conn.execute("SAVEPOINT s")
                        mine = []
                        self.append(conn, mine)
                        if rng.random() < 0.1:
                            conn.execute("ROLLBACK TO SAVEPOINT s")
                            dropped += mine
                        else:
                            conn.execute("RELEASE SAVEPOINT s")
                            ids += mine
                else:
                    for _ in range(rng.randint(1, 3)):
                        self.append(conn, ids)
                time.sleep(rng.uniform(0, 0.06))
                if style == "rollback":
                    conn.execute("ROLLBACK")
                    self.book.rolled_back(ids)
                elif style == "prepared":
                    xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
                    gid = f"soak-{uuid.uuid4().hex[:12]}"
                    conn.execute(f"PREPARE TRANSACTION '{gid}'")
                    time.sleep(rng.uniform(0.02, 0.2))
                    if rng.random() < 0.3:
                        conn.execute(f"ROLLBACK PREPARED '{gid}'")
                        self.book.rolled_back(ids)
                    else:
                        conn.execute(f"COMMIT PREPARED '{gid}'")
                        self.book.committed(xid, ids, dropped, style)
                else:
                    self.commit(conn, ids, dropped, style)


class Book:
    """What the writers did, in the order their commits returned."""

    def __init__(self):
        self.lock = threading.Lock()
        self.commits = []  # (xid, style)
        self.ids = set()
        self.dropped = set()

    def committed(self, xid, ids, dropped, style):
        with self.lock:
            self.commits.append((xid, style))
            self.ids.update(ids)
            self.dropped.update(dropped)

    def rolled_back(self, ids):
        with self.lock:
            self.dropped.update(ids)

    def out_of_order(self):
        """Commits that returned after a commit of a younger transaction."""
        newest, late = 0, 0
        for xid, _ in self.commits:
            late += xid < newest
            newest = max(newest, xid)
        return late


class Reader(threading.Thread):
    """Follows the feed on the standby, cursor to cursor."""

    def __init__(self, tenant):
        super().__init__(daemon=True)
        self.tenant = tenant
        self.seen = []
        self.pages = 0
        self.conflicts = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            with psycopg.connect(Servers.dsn_standby(self.tenant), autocommit=True) as conn:
                cursor = None
                while not self.stop.is_set():
                    try:
                        page = conn.execute("SELECT event_id::text, cursor FROM eventstore.read_all(%s, 200)",
                                            (cursor,)).fetchall()
                    except psycopg.errors.SerializationFailure:
                        # a recovery conflict cancelled the read: a client reads again
                        self.conflicts += 1
                        continue
                    for event_id, c in page:
                        assert cursor is None or c > cursor, f"cursor went back: {c} after {cursor}"
                        self.seen.append(event_id)
                        cursor = c
                    if page:
                        self.pages += 1
                    else:
                        time.sleep(0.003)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


@pytest.mark.parametrize("feedback", ["on", "off"])
def test_a_standby_reader_sees_every_event_once_in_the_primary_s_order(servers, feedback):
    set_feedback(servers, feedback)
    try:
        soak(servers, feedback)
    finally:
        set_feedback(servers, None)


def set_feedback(servers, value):
    """hot_standby_feedback of the standby: `value`, or back to its configuration (None)."""
    s = servers.standby()
    s.execute("ALTER SYSTEM RESET hot_standby_feedback" if value is None else f"ALTER SYSTEM SET hot_standby_feedback = {value}")
    s.execute("SELECT pg_reload_conf()")
    want = value or "on"
    wait_until(lambda: servers.standby().execute("SHOW hot_standby_feedback").fetchone()["hot_standby_feedback"] == want,
               what="hot_standby_feedback to change")


def soak(servers, feedback):
    tenant = unique("soak")
    stop, book = threading.Event(), Book()
    reader = Reader(tenant)
    writers = [Writer(n, tenant, stop, book) for n in range(WRITERS)]
    reader.start()
    for w in writers:
        w.start()
    time.sleep(SECONDS)
    stop.set()
    for w in writers:
        w.join(60)
        assert not w.is_alive(), "a writer did not stop"
        assert w.error is None, f"writer {w.n}: {w.error!r}"
    seen_while_writing = len(reader.seen)
    p = servers.primary(tenant=tenant)
    # a running-transactions record, so the standby need not wait for the next one
    p.execute("CHECKPOINT")
    expected = [str(r["event_id"]) for r in follow(p)]
    caught_up()
    wait_until(lambda: len(reader.seen) >= len(expected) or reader.error, timeout=60,
               what="the standby reader to reach the end of the feed")
    time.sleep(0.2)
    reader.stop.set()
    reader.join(30)
    assert reader.error is None, repr(reader.error)

    assert set(expected) == book.ids, "the primary's feed holds exactly the committed events"
    assert len(reader.seen) == len(set(reader.seen)), "an event was seen twice"
    assert not set(reader.seen) & book.dropped, "an event of a rolled-back transaction was seen"
    assert reader.seen == expected, "the standby reader saw the primary's feed, in its order"
    # the run did what it claims to test
    styles = {style for _, style in book.commits}
    assert {"plain", "early_xid", "subxacts", "prepared"} <= styles, styles
    assert book.out_of_order() > 0, "no commit came out of xid order"
    assert book.dropped, "nothing was rolled back"
    assert 0 < seen_while_writing and reader.pages > 10, "the reader followed the feed while writers ran"
    print(f"\nsoak (hot_standby_feedback={feedback}): {len(book.commits)} commits "
          f"({book.out_of_order()} out of xid order), {len(expected)} events, {len(book.dropped)} rolled back, "
          f"{reader.pages} pages read on the standby ({seen_while_writing} events while writing), "
          f"{reader.conflicts} recovery conflicts")
