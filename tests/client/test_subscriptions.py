"""Subscriptions: catch-up consumers with server-side checkpoints, and the NOTIFY sent by every
commit that appends. A subscription is a named checkpoint on the tenant's
feed: poll reads after it without moving it, ack moves it forward only."""

import json

import psycopg
import pytest

from conftest import (admin_connect, append, append_events, backend_pid, expect_error, feed_unblocked, follow,
                      new_events, unique)

ZERO_CURSOR = "0000000000000000-0000000000000000"
CHANNEL = "eventstore_events"


def create(conn, name, event_types=None, aggregate_types=None, start_from="beginning"):
    """create_subscription; returns the cursor it starts after."""
    return conn.execute(
        "SELECT eventstore.create_subscription(%s, %s::text[], %s::text[], %s) AS c",
        (name, event_types, aggregate_types, start_from),
    ).fetchone()["c"]


def poll(conn, name, max_count=100):
    return conn.execute("SELECT * FROM eventstore.poll_subscription(%s, %s::int)", (name, max_count)).fetchall()


def ack(conn, name, cursor):
    return conn.execute("SELECT eventstore.ack_subscription(%s, %s) AS moved", (name, cursor)).fetchone()["moved"]


def drop(conn, name):
    conn.execute("SELECT eventstore.drop_subscription(%s)", (name,))


def ids(rows):
    return [r["event_id"] for r in rows]


def poll_settled(conn, name, max_count=100):
    """poll once nothing holds the feed back (another session's open transaction, an
    autovacuum ANALYZE elsewhere in the cluster delay events, they never lose them)."""
    feed_unblocked(conn)
    return poll(conn, name, max_count)


def test_poll_does_not_move_the_checkpoint_ack_does_and_never_backwards(connect, tenant):
    conn = connect(tenant=tenant)
    events = append_events(conn, "order", "o1", new_events(3, "Placed"))
    events += [append(conn, "invoice", "i1", "Issued", {"n": 1})]
    assert create(conn, "billing") == ZERO_CURSOR

    first = poll_settled(conn, "billing")
    assert ids(first) == ids(events)
    assert [r["cursor"] for r in first] == sorted(r["cursor"] for r in first)
    assert [(r["aggregate_type"], r["aggregate_id"], r["aggregate_version"], r["event_type"]) for r in first] == \
        [("order", "o1", 1, "Placed"), ("order", "o1", 2, "Placed"), ("order", "o1", 3, "Placed"),
         ("invoice", "i1", 1, "Issued")]
    # polling again returns the same events: polling is not acknowledging
    assert ids(poll(conn, "billing")) == ids(events)
    assert ids(poll(conn, "billing", max_count=2)) == ids(events[:2])

    # ack the second: the next poll starts after it, from any session of the tenant
    assert ack(conn, "billing", first[1]["cursor"]) is True
    assert ids(poll(connect(tenant=tenant), "billing")) == ids(events[2:])
    # an older cursor (or the same one again) does not move it back
    assert ack(conn, "billing", first[0]["cursor"]) is False
    assert ack(conn, "billing", first[1]["cursor"]) is False
    assert ack(conn, "billing", ZERO_CURSOR) is False
    assert ids(poll(conn, "billing")) == ids(events[2:])

    # consume everything; later events come next
    assert ack(conn, "billing", first[-1]["cursor"]) is True
    assert poll_settled(conn, "billing") == []
    later = append(conn, "order", "o1", "Shipped")
    got = poll_settled(conn, "billing")
    assert ids(got) == [later["event_id"]]
    assert ack(conn, "billing", got[0]["cursor"]) is True
    assert poll_settled(conn, "billing") == []

    # the checkpoint survives the session; dropping forgets it
    assert poll(connect(tenant=tenant), "billing") == []
    drop(conn, "billing")
    expect_error("P0002", conn, "SELECT * FROM eventstore.poll_subscription('billing')")
    assert create(conn, "billing") == ZERO_CURSOR
    assert len(poll_settled(conn, "billing")) == 5


def test_start_from_end_skips_what_is_already_committed(connect, tenant):
    conn = connect(tenant=tenant)
    # an empty feed: the end is the beginning
    assert create(conn, "empty", start_from="end") == ZERO_CURSOR
    before = append_events(conn, "order", "o1", new_events(3, "Placed"))
    feed_unblocked(conn)
    start = create(conn, "tail", start_from="end")
    _, end = follow(conn)
    assert start == end
    assert poll(conn, "tail") == []
    after = append_events(conn, "order", "o2", new_events(2, "Placed"))
    assert ids(poll_settled(conn, "tail")) == ids(after)
    # a subscription from the beginning of the same feed gets everything
    assert create(conn, "head") == ZERO_CURSOR
    assert ids(poll(conn, "head")) == ids(before + after)
    assert ids(poll(conn, "empty")) == ids(before + after)


def test_filters_by_event_type_and_aggregate_type(connect, tenant):
    conn = connect(tenant=tenant)
    placed = append(conn, "order", "o1", "Placed")
    paid = append(conn, "order", "o1", "Paid")
    registered = append(conn, "customer", "c1", "Registered")
    issued = append(conn, "invoice", "i1", "Issued")
    paid_invoice = append(conn, "invoice", "i1", "Paid")
    create(conn, "paid", event_types=["Paid"])
    create(conn, "orders", aggregate_types=["order"])
    create(conn, "order_or_customer", aggregate_types=["order", "customer"])
    create(conn, "paid_orders", event_types=["Paid", "Refunded"], aggregate_types=["order"])
    create(conn, "nothing", event_types=["Unknown"])

    feed_unblocked(conn)
    assert ids(poll(conn, "paid")) == [paid["event_id"], paid_invoice["event_id"]]
    assert ids(poll(conn, "orders")) == [placed["event_id"], paid["event_id"]]
    assert ids(poll(conn, "order_or_customer")) == [placed["event_id"], paid["event_id"], registered["event_id"]]
    assert ids(poll(conn, "paid_orders")) == [paid["event_id"]]
    assert poll(conn, "nothing") == []
    # acking the last matching event of a filtered subscription: nothing matching is left
    rows = poll(conn, "paid")
    assert ack(conn, "paid", rows[-1]["cursor"]) is True
    assert poll(conn, "paid") == []
    assert ids(poll(conn, "orders")) == [placed["event_id"], paid["event_id"]]
    assert issued["event_id"] not in ids(poll(conn, "orders"))


def test_invalid_calls(connect, tenant):
    conn = connect(tenant=tenant)
    create(conn, "s")
    err = expect_error("23505", conn, "SELECT eventstore.create_subscription('s')")
    assert err.diag.message_primary == 'subscription "s" already exists'
    expect_error("23505", conn, "SELECT eventstore.create_subscription('s', start_from => 'end')")

    for sql in ("SELECT * FROM eventstore.poll_subscription('nope')",
                "SELECT eventstore.ack_subscription('nope', '0000000000000000-0000000000000000')",
                "SELECT eventstore.drop_subscription('nope')"):
        err = expect_error("P0002", conn, sql)
        assert err.diag.message_primary == 'subscription "nope" does not exist'

    for start_from in ("middle", "END", "", None):
        err = expect_error("22023", conn, "SELECT eventstore.create_subscription('t', start_from => %s)",
                           (start_from,))
        assert err.diag.message_primary == "start_from must be 'beginning' or 'end'"
    for cursor in ("yesterday", "", "12-34", "0000000000000000", "0000000000000000-zzzzzzzzzzzzzzzz", None):
        expect_error("22023", conn, "SELECT eventstore.ack_subscription('s', %s)", (cursor,))
    for name in ("", "   ", None):
        expect_error("22023", conn, "SELECT eventstore.create_subscription(%s)", (name,))
        expect_error("22023", conn, "SELECT * FROM eventstore.poll_subscription(%s)", (name,))
    for max_count in (0, -1, None):
        expect_error("22023", conn, "SELECT * FROM eventstore.poll_subscription('s', %s::int)", (max_count,))
    # nothing above created anything
    assert [r["name"] for r in conn.execute(
        "SELECT name FROM eventstore.subscriptions WHERE tenant_id = %s ORDER BY name", (tenant,))] == ["s"]


def test_subscriptions_belong_to_their_tenant(connect):
    ta, tb = unique("a"), unique("b")
    a, b = connect(tenant=ta), connect(tenant=tb)
    a_events = append_events(a, "order", "o1", new_events(2, "Placed"))
    b_event = append(b, "order", "o1", "Placed", {"tenant": "b"})
    create(a, "shared_name")
    # tenant B cannot see, poll, ack or drop tenant A's subscription ...
    for sql in ("SELECT * FROM eventstore.poll_subscription('shared_name')",
                "SELECT eventstore.ack_subscription('shared_name', '0000000000000000-0000000000000000')",
                "SELECT eventstore.drop_subscription('shared_name')"):
        expect_error("P0002", b, sql)
    # ... and has its own of the same name, over its own feed only
    assert create(b, "shared_name") == ZERO_CURSOR
    assert ids(poll_settled(b, "shared_name")) == [b_event["event_id"]]
    assert ids(poll_settled(a, "shared_name")) == ids(a_events)
    rows = poll(b, "shared_name")
    assert ack(b, "shared_name", rows[-1]["cursor"]) is True
    assert ids(poll(a, "shared_name")) == ids(a_events)  # A's checkpoint did not move
    drop(b, "shared_name")
    assert ids(poll(a, "shared_name")) == ids(a_events)


def test_subscriptions_as_a_reader_role_see_only_their_tenant_rows(connect, database, tenant):
    role = unique("es_sub_reader")
    with admin_connect(database) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute("SELECT eventstore.grant_access(%s, 'reader')", (role,))
    try:
        writer = connect(tenant=tenant)
        event = append(writer, "order", "o1", "Placed")
        append(connect(tenant=unique("t")), "order", "o1", "Placed")
        with connect(user=role, tenant=tenant) as reader:
            assert create(reader, "mine") == ZERO_CURSOR
            rows = poll_settled(reader, "mine")
            assert ids(rows) == [event["event_id"]]
            assert ack(reader, "mine", rows[0]["cursor"]) is True
            # direct reads of the table are under RLS: the reader's tenant only
            assert [(r["tenant_id"], r["name"]) for r in reader.execute(
                "SELECT tenant_id, name FROM eventstore.subscriptions ORDER BY name")] == [(tenant, "mine")]
            # and no writes behind the functions' back
            expect_error("42501", reader, "UPDATE eventstore.subscriptions SET checkpoint_position = 0")
            drop(reader, "mine")
    finally:
        with admin_connect(database) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def test_poll_never_skips_an_event_committed_out_of_order(connect, tenant):
    consumer = connect(tenant=tenant)
    first = connect(tenant=tenant, autocommit=False)
    second = connect(tenant=tenant)
    create(consumer, "c")
    early = append(first, "order", "o1", "Placed")  # takes its transaction id first, commits last
    late = append(second, "order", "o2", "Placed")
    # the later transaction has committed, but the feed holds it back behind the open one
    assert poll(consumer, "c") == []
    first.commit()
    rows = poll_settled(consumer, "c")
    assert ids(rows) == [early["event_id"], late["event_id"]]
    assert ack(consumer, "c", rows[-1]["cursor"]) is True
    assert poll_settled(consumer, "c") == []


# --- NOTIFY --------------------------------------------------------------------------------


def notifications(listener, timeout, stop_after=None):
    return list(listener.notifies(timeout=timeout, stop_after=stop_after))


def listen(listener, tenant_conn):
    """LISTENs on the shared channel and on the tenant's own; returns the tenant's channel."""
    own = tenant_conn.execute("SELECT eventstore.notification_channel() AS c").fetchone()["c"]
    listener.execute(f"LISTEN {CHANNEL}")
    listener.execute(f'LISTEN "{own}"')
    return own


def said(got):
    """channel -> payload of what one commit sent: the shared channel says only {}."""
    return {n.channel: json.loads(n.payload) for n in got}


def test_one_notify_per_committed_appending_transaction(connect, tenant):
    listener = connect()
    writer = connect(tenant=tenant, autocommit=False)
    own = listen(listener, writer)
    assert own.startswith(CHANNEL + "_") and len(own) == len(CHANNEL) + 17
    writer_pid = backend_pid(writer)
    writer.commit()

    append(writer, "order", "o1", "Placed")
    append_events(writer, "invoice", "i1", new_events(2, "Issued"))
    append(writer, "order", "o2", "Placed")
    # nothing while the transaction is open
    assert notifications(listener, timeout=0.5) == []
    writer.commit()
    got = notifications(listener, timeout=5, stop_after=2)
    assert len(got) == 2, got
    assert {n.pid for n in got} == {writer_pid}
    assert said(got) == {CHANNEL: {}, own: {"aggregate_types": ["invoice", "order"]}}
    # exactly one
    assert notifications(listener, timeout=0.5) == []

    # a rolled-back transaction sends nothing
    append(writer, "order", "o3", "Placed")
    writer.rollback()
    assert notifications(listener, timeout=0.5) == []
    # nor does a failed append, nor a transaction that appended nothing
    with pytest.raises(psycopg.Error):
        append(writer, "order", "o1", "Placed", expected_version=0)
    writer.rollback()
    writer.execute("SELECT eventstore.stream_version('order', 'o1')")
    writer.commit()
    assert notifications(listener, timeout=0.5) == []

    # the next appending commit of the same session notifies again (autocommit too)
    auto = connect(tenant=tenant)
    append(auto, "customer", "c1", "Registered")
    got = notifications(listener, timeout=5, stop_after=2)
    assert said(got) == {CHANNEL: {}, own: {"aggregate_types": ["customer"]}}
    assert {n.pid for n in got} == {backend_pid(auto)}
    append(writer, "order", "o4", "Placed")
    writer.commit()
    got = notifications(listener, timeout=5, stop_after=2)
    assert said(got) == {CHANNEL: {}, own: {"aggregate_types": ["order"]}}
    assert notifications(listener, timeout=0.3) == []


def test_prepared_transaction_leaks_no_notify_into_the_next_transaction(connect, tenant):
    """PostgreSQL cannot NOTIFY from a prepared transaction; what the appends of one noted must
    not be sent by whatever transaction the session runs next (before the events are even
    visible)."""
    listener = connect()
    writer = connect(tenant=tenant, autocommit=False)
    own = listen(listener, writer)
    writer.commit()
    gid = unique("es_2pc")
    append(writer, "order", "o1", "Placed")
    writer.execute(f"PREPARE TRANSACTION '{gid}'")
    try:
        assert notifications(listener, timeout=0.3) == []
        writer.execute("SELECT 1")
        writer.commit()  # appended nothing
        assert notifications(listener, timeout=0.5) == []
    finally:
        with admin_connect(listener.info.dbname) as admin:
            if admin.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone():
                admin.execute(f"ROLLBACK PREPARED '{gid}'")
    # and the session's next appending commit still notifies, with its own types only
    append(writer, "invoice", "i1", "Issued")
    writer.commit()
    got = notifications(listener, timeout=5, stop_after=2)
    assert said(got) == {CHANNEL: {}, own: {"aggregate_types": ["invoice"]}}


def test_a_listener_learns_nothing_of_another_tenants_commits(connect, tenant):
    """LISTEN cannot be limited by row-level security: the shared channel names no tenant and no
    type, and the tenant's own channel name cannot be guessed from the tenant id."""
    other = unique("t")
    eavesdropper = connect(tenant=other)
    theirs = eavesdropper.execute("SELECT eventstore.notification_channel() AS c").fetchone()["c"]
    writer = connect(tenant=tenant)
    own = writer.execute("SELECT eventstore.notification_channel() AS c").fetchone()["c"]
    assert own != theirs and tenant not in own
    eavesdropper.execute(f"LISTEN {CHANNEL}")
    eavesdropper.execute(f'LISTEN "{theirs}"')
    append(writer, "kindX", "1", "Secret")
    got = notifications(eavesdropper, timeout=5, stop_after=1)
    assert [(n.channel, n.payload) for n in got] == [(CHANNEL, "{}")]
    assert notifications(eavesdropper, timeout=0.5) == []
