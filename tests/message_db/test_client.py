"""message-db-py, unchanged, against the façade: the role is set up as Message DB's installer
sets up its own (search path message_store), given access with grant_access."""

import datetime
import uuid

import pytest

from conftest import category, sql


def test_write_and_read_a_stream(mdb):
    stream = f"{category()}-1"
    assert mdb.write(stream, "Opened", {"owner": "ann"}) == 0
    assert mdb.write(stream, "Deposited", {"amount": 10}, {"correlationStreamName": "billing-7"}) == 1
    assert mdb.write(stream, "Deposited", {"amount": 5}) == 2
    messages = mdb.read_stream(stream)
    assert [(m["position"], m["type"], m["data"], m["metadata"]) for m in messages] == [
        (0, "Opened", {"owner": "ann"}, None),
        (1, "Deposited", {"amount": 10}, {"correlationStreamName": "billing-7"}),
        (2, "Deposited", {"amount": 5}, None),
    ]
    assert all(m["stream_name"] == stream for m in messages)
    positions = [m["global_position"] for m in messages]
    assert positions == sorted(positions) and len(set(positions)) == 3
    for m in messages:
        uuid.UUID(m["id"])
        # Message DB's time: timestamp without time zone, in UTC
        assert m["time"].tzinfo is None
        assert abs(m["time"] - datetime.datetime.utcnow()) < datetime.timedelta(minutes=5)
    assert [m["position"] for m in mdb.read_stream(stream, position=1)] == [1, 2]
    assert [m["position"] for m in mdb.read_stream(stream, position=1, no_of_messages=1)] == [1]
    # read() picks the stream function for a name with '-'
    assert [m["position"] for m in mdb.read(stream)] == [0, 1, 2]


def test_read_a_category(mdb):
    cat = category()
    mdb.write(f"{cat}-1", "A", {"n": 1})
    mdb.write(f"{cat}-2", "B", {"n": 2})
    mdb.write(f"{cat}-1", "C", {"n": 3})
    mdb.write(f"{category()}-1", "Other", {"n": 4})
    messages = mdb.read_category(cat)
    assert [(m["stream_name"], m["position"], m["type"]) for m in messages] == [
        (f"{cat}-1", 0, "A"), (f"{cat}-2", 0, "B"), (f"{cat}-1", 1, "C")]
    gp = [m["global_position"] for m in messages]
    assert gp == sorted(gp)
    # the position of a category read is a global position, inclusive
    assert [m["type"] for m in mdb.read_category(cat, position=gp[1])] == ["B", "C"]
    assert [m["type"] for m in mdb.read_category(cat, position=gp[2] + 1)] == []
    assert [m["type"] for m in mdb.read_category(cat, no_of_messages=2)] == ["A", "B"]
    assert [m["type"] for m in mdb.read(cat)] == ["A", "B", "C"]


def test_category_types_and_compound_ids(mdb):
    cat = category()
    mdb.write(f"{cat}:command-1", "Do", {})
    mdb.write(f"{cat}-1+2", "Done", {})
    assert [m["type"] for m in mdb.read_category(f"{cat}:command")] == ["Do"]
    assert [m["stream_name"] for m in mdb.read_category(cat)] == [f"{cat}-1+2"]
    assert sql(mdb, "SELECT aggregate_type, aggregate_id FROM eventstore.read_stream(%s, '1+2')", (cat,)) == [(cat, "1+2")]


def test_last_message_and_stream_version(mdb):
    stream = f"{category()}-9"
    assert mdb.read_last_message(stream) is None
    assert sql(mdb, "SELECT stream_version(%s)", (stream,)) == [(None,)]
    mdb.write(stream, "First", {"i": 1})
    mdb.write(stream, "Second", {"i": 2})
    mdb.write(stream, "First", {"i": 3})
    last = mdb.read_last_message(stream)
    assert (last["type"], last["position"], last["data"]) == ("First", 2, {"i": 3})
    assert sql(mdb, "SELECT stream_version(%s)", (stream,)) == [(2,)]
    assert sql(mdb, "SELECT type, position FROM get_last_stream_message(%s, 'Second')", (stream,)) == [("Second", 1)]


def test_expected_version_conflicts_carry_message_db_text(mdb):
    stream = f"{category()}-1"
    assert mdb.write(stream, "A", {}, expected_version=-1) == 0
    assert mdb.write(stream, "B", {}, expected_version=0) == 1
    with pytest.raises(ValueError) as info:
        mdb.write(stream, "C", {}, expected_version=0)
    assert str(info.value) == f"P0001-ERROR:  Wrong expected version: 0 (Stream: {stream}, Stream Version: 1)"
    with pytest.raises(ValueError) as info:
        mdb.write(stream, "C", {}, expected_version=-1)
    assert str(info.value) == f"P0001-ERROR:  Wrong expected version: -1 (Stream: {stream}, Stream Version: 1)"
    fresh = f"{category()}-1"
    with pytest.raises(ValueError) as info:
        mdb.write(fresh, "C", {}, expected_version=3)
    assert str(info.value) == f"P0001-ERROR:  Wrong expected version: 3 (Stream: {fresh}, Stream Version: -1)"
    # nothing was written by the refused writes
    assert [m["type"] for m in mdb.read_stream(stream)] == ["A", "B"]
    assert mdb.read_stream(fresh) == []
    # a batch checks each message against the one before it
    assert mdb.write_batch(stream, [("C", {}), ("D", {})], expected_version=1) == 3


def test_consumer_groups_partition_a_category(mdb):
    cat = category()
    streams = [f"{cat}-{i}" for i in range(30)] + [f"{cat}-7+{i}" for i in range(5)]
    written = {}
    for round_ in range(3):
        for s in streams:
            mdb.write(s, "Happened", {"round": round_})
            written.setdefault(s, 0)
            written[s] += 1
    size = 3
    seen = {}
    owner = {}
    for member in range(size):
        got = mdb.read_category(cat, consumer_group_member=member, consumer_group_size=size)
        gp = [m["global_position"] for m in got]
        assert gp == sorted(gp)
        for m in got:
            assert m["id"] not in seen, "a message went to two members"
            seen[m["id"]] = member
            cardinal = m["stream_name"].split("-", 1)[1].split("+")[0]
            # one member per stream, and compound ids go with their cardinal id
            assert owner.setdefault(cardinal, member) == member
    assert len(seen) == sum(written.values())
    assert len(set(owner.values())) == size
    # Message DB's own partition, computed in plain SQL
    for s in streams:
        cardinal = s.split("-", 1)[1].split("+")[0]
        (expected,), = sql(mdb, "SELECT abs(mod(left('x' || md5(%s), 17)::bit(64)::bigint, 3))", (cardinal,))
        assert owner[cardinal] == expected


def test_consumer_group_arguments_are_checked_as_message_db_does(mdb):
    cat = category()
    cases = [
        ((0, None), "Consumer group member and size must be specified (Consumer Group Member: 0, Consumer Group Size: <NULL>)"),
        ((0, 0), "Consumer group size must not be less than 1 (Consumer Group Member: 0, Consumer Group Size: 0)"),
        ((-1, 2), "Consumer group member must not be less than 0 (Consumer Group Member: -1, Consumer Group Size: 2)"),
        ((2, 2), "Consumer group member must be less than the group size (Consumer Group Member: 2, Consumer Group Size: 2)"),
    ]
    import psycopg2
    for (member, size), text in cases:
        with pytest.raises(psycopg2.Error) as info:
            sql(mdb, "SELECT * FROM get_category_messages(%s, 1, 10, NULL, %s, %s)", (cat, member, size))
        assert info.value.pgcode == "P0001"
        assert info.value.diag.message_primary == text
    with pytest.raises(psycopg2.Error) as info:
        sql(mdb, "SELECT * FROM get_category_messages(%s)", (f"{cat}-1",))
    assert (info.value.pgcode, info.value.diag.message_primary) == ("P0001", f"Must be a category: {cat}-1")
    with pytest.raises(psycopg2.Error) as info:
        sql(mdb, "SELECT * FROM get_stream_messages(%s)", (cat,))
    assert (info.value.pgcode, info.value.diag.message_primary) == ("P0001", f"Must be a stream name: {cat}")
    with pytest.raises(psycopg2.Error) as info:
        sql(mdb, "SELECT * FROM get_category_messages(%s, 1, 10, 'other-1')", (cat,))
    assert (info.value.pgcode, info.value.diag.message_primary) == (
        "P0001", "Correlation must be a category (Correlation: other-1)")


def test_correlation_filters(mdb):
    cat = category()
    mdb.write(f"{cat}-1", "A", {}, {"correlationStreamName": "billing-1"})
    mdb.write(f"{cat}-2", "B", {}, {"correlationStreamName": "shipping-1"})
    mdb.write(f"{cat}-3", "C", {}, {"correlationStreamName": "billing:command-4"})
    mdb.write(f"{cat}-4", "D", {})
    rows = sql(mdb, "SELECT type FROM get_category_messages(%s, 1, 100, 'billing')", (cat,))
    assert rows == [("A",)]
    rows = sql(mdb, "SELECT type FROM get_category_messages(%s, correlation => 'billing:command')", (cat,))
    assert rows == [("C",)]
    # with a consumer group as well
    both = [sql(mdb, "SELECT type FROM get_category_messages(%s, 1, 100, 'billing', %s, 2)", (cat, m)) for m in (0, 1)]
    assert sorted(both[0] + both[1]) == [("A",)]


def test_sql_condition_needs_the_setting(mdb):
    import psycopg2
    stream = f"{category()}-1"
    mdb.write(stream, "A", {"n": 1})
    mdb.write(stream, "B", {"n": 2})
    with pytest.raises(psycopg2.Error) as info:
        sql(mdb, "SELECT * FROM get_stream_messages(%s, condition => 'type = ''B''')", (stream,))
    assert (info.value.pgcode, info.value.diag.message_primary) == ("P0001", "Retrieval with SQL condition is not activated")
    conn = mdb.connection_pool.get_connection()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL message_store.sql_condition = on")
            cur.execute("SELECT type FROM get_stream_messages(%s, condition => 'type = ''B''')", (stream,))
            assert cur.fetchall() == [("B",)]
            cur.execute("SELECT type FROM get_category_messages(%s, condition => 'data->>''n'' = ''1''')",
                        (stream.split("-")[0],))
            assert cur.fetchall() == [("A",)]
    finally:
        mdb.connection_pool.release(conn)


def test_the_messages_relation_and_all_reads(mdb):
    cat = category()
    first = mdb.write(f"{cat}-1", "A", {"n": 1})
    assert first == 0
    rows = sql(mdb, "SELECT stream_name, position, type, data, metadata FROM messages WHERE stream_name LIKE %s",
               (f"{cat}-%",))
    assert rows == [(f"{cat}-1", 0, "A", {"n": 1}, None)]
    assert mdb.stream_identifiers(cat) == ["1"]
    everything = mdb.read("$all")
    assert f"{cat}-1" in [m["stream_name"] for m in everything]


def test_tenants_see_only_their_own_messages(mdb_factory):
    a, b = mdb_factory(f"ta{uuid.uuid4().hex[:8]}"), mdb_factory(f"tb{uuid.uuid4().hex[:8]}")
    cat = category()
    a.write(f"{cat}-1", "OfA", {"secret": "a"})
    b.write(f"{cat}-1", "OfB", {"secret": "b"})
    assert [m["type"] for m in a.read_stream(f"{cat}-1")] == ["OfA"]
    assert [m["type"] for m in b.read_category(cat)] == ["OfB"]
    assert a.read_last_message(f"{cat}-1")["type"] == "OfA"
    # each tenant's stream numbers on its own
    assert b.write(f"{cat}-1", "Again", {}, expected_version=0) == 1
    assert sql(a, "SELECT count(*) FROM messages WHERE stream_name = %s", (f"{cat}-1",)) == [(1,)]
    assert sql(a, "SELECT count(*) FROM eventstore.events WHERE aggregate_type = %s", (cat,)) == [(1,)]
    # the pinned role cannot ask for the other tenant
    import psycopg2
    conn = a.connection_pool.get_connection()
    try:
        with pytest.raises(psycopg2.Error) as info:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT set_config('eventstore.tenant_id', 'someone-else', true)")
                cur.execute("SELECT count(*) FROM get_category_messages(%s)", (cat,))
        assert info.value.pgcode == "42501"
    finally:
        a.connection_pool.release(conn)


def test_reader_access_reads_but_does_not_write(database, mdb, tenant):
    import psycopg2
    from message_db.client import MessageDB
    from conftest import admin_connect, client, unique
    stream = f"{category()}-1"
    mdb.write(stream, "A", {})
    reader, outsider = unique("mdbr"), unique("mdbo")
    with admin_connect(database) as conn:
        conn.execute(f'CREATE ROLE "{reader}" LOGIN')
        conn.execute(f'CREATE ROLE "{outsider}" LOGIN')
        conn.execute("SELECT eventstore.grant_access(%s, 'reader', tenant => %s)", (reader, tenant))
        for role in (reader, outsider):
            conn.execute(f'ALTER ROLE "{role}" SET search_path = message_store, public')
    store = MessageDB.from_url(f"postgresql://{reader}@{client.HOST}:{client.PORT}/{database}", max_connections=2)
    try:
        assert [m["type"] for m in store.read_stream(stream)] == ["A"]
        with pytest.raises(ValueError) as info:
            store.write(stream, "B", {})
        assert str(info.value).startswith("42501-")
    finally:
        store.connection_pool.closeall()
    other = MessageDB.from_url(f"postgresql://{outsider}@{client.HOST}:{client.PORT}/{database}", max_connections=2)
    try:
        # without access the schema is not even on its search path
        with pytest.raises(psycopg2.Error) as info:
            other.read_stream(stream)
        assert info.value.pgcode == "42883"
        for query in ("SELECT * FROM message_store.get_stream_messages(%s)", "SELECT * FROM message_store.messages"):
            with pytest.raises(psycopg2.Error) as info:
                sql(other, query, (stream,) if "%s" in query else None)
            assert info.value.pgcode == "42501"
    finally:
        other.connection_pool.closeall()
