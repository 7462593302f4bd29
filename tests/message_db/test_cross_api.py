"""One log, two APIs: what write_message writes, read_stream and read_all read, and what
append_event writes, the Message DB functions read."""

import uuid

from psycopg.types.json import Jsonb

from conftest import append, category, expect_error, follow, read_stream


def write(conn, stream, type_, data, metadata=None, expected=None, id_=None):
    return conn.execute(
        "SELECT message_store.write_message(%s, %s, %s, %s, %s, %s) AS p",
        (id_ or str(uuid.uuid4()), stream, type_, Jsonb(data), Jsonb(metadata) if metadata is not None else None,
         expected)).fetchone()["p"]


def test_write_message_is_read_by_eventstore(connect, tenant):
    conn = connect(tenant=tenant)
    cat = category()
    mid = str(uuid.uuid4())
    assert write(conn, f"{cat}-1+2", "Opened", {"a": 1}, {"correlationStreamName": "x-1", "actor": "ann"}, -1, mid) == 0
    assert write(conn, f"{cat}-1+2", "Closed", {"a": 2}, None, 0) == 1
    rows = read_stream(conn, cat, "1+2")
    assert [(r["aggregate_version"], r["event_type"], r["payload"]) for r in rows] == [
        (1, "Opened", {"a": 1}), (2, "Closed", {"a": 2})]
    assert str(rows[0]["event_id"]) == mid
    assert rows[0]["metadata"] == {"correlationStreamName": "x-1", "actor": "ann"}
    assert rows[0]["actor"] == "ann"
    assert rows[1]["metadata"] == {}
    assert rows[0]["tenant_id"] == tenant
    feed, _ = follow(conn, aggregate_types=[cat])
    assert [f["global_position"] for f in feed] == [r["global_position"] for r in rows]
    msgs = conn.execute("SELECT * FROM message_store.get_stream_messages(%s)", (f"{cat}-1+2",)).fetchall()
    assert [m["global_position"] for m in msgs] == [r["global_position"] for r in rows]
    assert conn.execute("SELECT eventstore.stream_version(%s, '1+2') AS v", (cat,)).fetchone()["v"] == 2


def test_append_event_is_read_by_message_db_functions(connect, tenant):
    conn = connect(tenant=tenant)
    cat = category()
    first = append(conn, cat, "7", "Placed", {"n": 1}, metadata={"correlationStreamName": "billing-3"})
    second = append(conn, cat, "7", "Shipped", {"n": 2})
    msgs = conn.execute("SELECT * FROM message_store.get_stream_messages(%s)", (f"{cat}-7",)).fetchall()
    assert [(m["id"], m["position"], m["global_position"], m["type"], m["data"], m["metadata"]) for m in msgs] == [
        (str(first["event_id"]), 0, first["global_position"], "Placed", '{"n": 1}', '{"correlationStreamName": "billing-3"}'),
        (str(second["event_id"]), 1, second["global_position"], "Shipped", '{"n": 2}', None),
    ]
    got = conn.execute("SELECT type FROM message_store.get_category_messages(%s)", (cat,)).fetchall()
    assert [g["type"] for g in got] == ["Placed", "Shipped"]
    got = conn.execute("SELECT type FROM message_store.get_category_messages(%s, correlation => 'billing')", (cat,)).fetchall()
    assert [g["type"] for g in got] == ["Placed"]
    assert conn.execute("SELECT message_store.stream_version(%s) AS v", (f"{cat}-7",)).fetchone()["v"] == 1
    last = conn.execute("SELECT * FROM message_store.get_last_stream_message(%s)", (f"{cat}-7",)).fetchone()
    assert last["type"] == "Shipped"
    # the expected version of one API is the position of the other
    assert write(conn, f"{cat}-7", "Delivered", {}, None, 1) == 2
    expect_error("23P01", conn, "SELECT eventstore.append_event(%s, '7', 'Late', '{}', expected_version => 2)", (cat,))
    assert append(conn, cat, "7", "Late", {}, expected_version=3)["aggregate_version"] == 4


def test_write_message_refuses_what_eventstore_refuses(connect, tenant):
    conn = connect(tenant=tenant)
    cat = category()
    expect_error("22023", conn, "SELECT message_store.write_message(gen_random_uuid()::text, %s, 'A', '{}')", (cat,))
    expect_error("22023", conn, "SELECT message_store.write_message(gen_random_uuid()::text, %s, 'A', '[1]')", (f"{cat}-1",))
    expect_error("22P02", conn, "SELECT message_store.write_message('not-a-uuid', %s, 'A', '{}')", (f"{cat}-1",))
    mid = str(uuid.uuid4())
    write(conn, f"{cat}-1", "A", {}, id_=mid)
    # as in Message DB, a message id is unique
    expect_error("23505", conn, "SELECT message_store.write_message(%s, %s, 'A', '{}')", (mid, f"{cat}-2"))
    assert conn.execute("SELECT count(*) AS n FROM message_store.messages WHERE stream_name LIKE %s",
                        (f"{cat}-%",)).fetchone()["n"] == 1


def test_deleted_streams_are_hidden_as_in_read_stream(connect, tenant):
    conn = connect(tenant=tenant)
    cat = category()
    write(conn, f"{cat}-1", "A", {})
    conn.execute("SELECT eventstore.delete_stream(%s, '1')", (cat,))
    assert conn.execute("SELECT * FROM message_store.get_stream_messages(%s)", (f"{cat}-1",)).fetchall() == []
    assert conn.execute("SELECT message_store.stream_version(%s) AS v", (f"{cat}-1",)).fetchone()["v"] is None
    assert write(conn, f"{cat}-1", "B", {}, None, -1) == 1
    assert [m["type"] for m in conn.execute("SELECT * FROM message_store.get_stream_messages(%s)",
                                            (f"{cat}-1",)).fetchall()] == ["B"]


def test_subscription_groups_split_like_message_db(connect, tenant):
    conn = connect(tenant=tenant)
    cat = category()
    for i in range(40):
        write(conn, f"{cat}-{i % 13}+{i}", "E", {"i": i})
    size = 3
    conn.execute("SELECT eventstore.create_subscription(%s, aggregate_types => ARRAY[%s], consumer_group_size => %s)",
                 ("grp", cat, size))
    for member in range(size):
        polled = conn.execute("SELECT event_id::text AS id FROM eventstore.poll_subscription('grp', 1000, %s)",
                              (member,)).fetchall()
        read = conn.execute("SELECT id FROM message_store.get_category_messages(%s, 1, -1, NULL, %s, %s)",
                            (cat, member, size)).fetchall()
        assert [p["id"] for p in polled] == [r["id"] for r in read]
