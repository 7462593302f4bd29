"""Soft and hard deletion of streams."""

import json

from conftest import append, append_events, expect_error, follow, new_events, read_stream, stream_version


def delete_stream(conn, aggregate_type, aggregate_id, hard=False):
    return conn.execute("SELECT eventstore.delete_stream(%s, %s, %s) AS d",
                        (aggregate_type, aggregate_id, hard)).fetchone()["d"]


def versions(rows):
    return [r["aggregate_version"] for r in rows]


def feed_ids(conn, aggregate_id):
    rows, _ = follow(conn)
    return [r["event_id"] for r in rows if r["aggregate_id"] == aggregate_id]


def test_soft_delete_hides_and_a_later_append_numbers_on(connect, tenant):
    conn = connect(tenant=tenant)
    old = append_events(conn, "order", "s1", new_events(3, "Old"), expected_version=0)
    assert delete_stream(conn, "order", "s1") is True
    assert read_stream(conn, "order", "s1") == []
    assert stream_version(conn, "order", "s1") == 0
    assert delete_stream(conn, "order", "s1") is False  # deleted already
    # the events stay in the log and the feed
    assert feed_ids(conn, "s1") == [r["event_id"] for r in old]

    # a later append recreates the stream; numbering goes on
    new = append(conn, "order", "s1", "New", expected_version=0)
    assert new["aggregate_version"] == 4
    assert stream_version(conn, "order", "s1") == 4
    assert [(r["aggregate_version"], r["event_type"]) for r in read_stream(conn, "order", "s1")] == [(4, "New")]
    assert versions(read_stream(conn, "order", "s1", from_version=1)) == [4]
    assert versions(read_stream(conn, "order", "s1", from_version=2)) == [4]
    more = append_events(conn, "order", "s1", new_events(2, "Newer"), expected_version=4)
    assert versions(more) == [5, 6]
    assert versions(read_stream(conn, "order", "s1")) == [4, 5, 6]
    assert versions(read_stream(conn, "order", "s1", from_version=5)) == [5, 6]
    assert feed_ids(conn, "s1") == [r["event_id"] for r in old + [new] + more]

    # deleting again hides everything up to then, and the hidden stay hidden
    assert delete_stream(conn, "order", "s1") is True
    assert read_stream(conn, "order", "s1") == []
    last = append(conn, "order", "s1", "Latest")
    assert last["aggregate_version"] == 7
    assert [(r["aggregate_version"], r["event_type"]) for r in read_stream(conn, "order", "s1")] == [(7, "Latest")]


def test_soft_deleted_stream_with_any_version(connect, tenant):
    conn = connect(tenant=tenant)
    append_events(conn, "order", "s2", new_events(2))
    assert delete_stream(conn, "order", "s2") is True
    row = append(conn, "order", "s2", "Again")
    assert row["aggregate_version"] == 3
    assert versions(read_stream(conn, "order", "s2")) == [3]
    assert stream_version(conn, "order", "s2") == 3


def test_soft_delete_of_a_missing_stream(connect, tenant):
    conn = connect(tenant=tenant)
    assert delete_stream(conn, "order", "never") is False
    assert append(conn, "order", "never", expected_version=0)["aggregate_version"] == 1


def test_hard_delete_is_a_tombstone(connect, tenant):
    conn = connect(tenant=tenant)
    old = append_events(conn, "order", "h1", new_events(2), expected_version=0)
    assert delete_stream(conn, "order", "h1", hard=True) is True
    assert read_stream(conn, "order", "h1") == []
    assert stream_version(conn, "order", "h1") == 0

    batch = json.dumps([{"event_type": "E", "payload": {}}])
    for expected in ("NULL", "0", "-1", "2"):
        err = expect_error("55000", conn,
                           f"SELECT eventstore.append_event('order', 'h1', 'E', '{{}}', expected_version => {expected})")
        assert "h1" in err.diag.message_primary and "deleted" in err.diag.message_primary
        expect_error("55000", conn,
                     f"SELECT * FROM eventstore.append_events('order', 'h1', %s, expected_version => {expected})",
                     (batch,))
    # a soft delete cannot revive it; a second hard delete changes nothing
    assert delete_stream(conn, "order", "h1") is False
    assert delete_stream(conn, "order", "h1", hard=True) is False
    expect_error("55000", conn, "SELECT eventstore.append_event('order', 'h1', 'E', '{}')")
    # the events stay in the audit trail: the table and the feed
    assert feed_ids(conn, "h1") == [r["event_id"] for r in old]
    assert conn.execute("SELECT count(*) AS n FROM eventstore.events WHERE tenant_id = %s AND aggregate_id = 'h1'",
                        (tenant,)).fetchone()["n"] == 2
    # other streams are unaffected
    assert append(conn, "order", "h2")["aggregate_version"] == 1


def test_hard_delete_of_a_soft_deleted_or_missing_stream(connect, tenant):
    conn = connect(tenant=tenant)
    append(conn, "order", "h3")
    assert delete_stream(conn, "order", "h3") is True
    assert delete_stream(conn, "order", "h3", hard=True) is True
    expect_error("55000", conn, "SELECT eventstore.append_event('order', 'h3', 'E', '{}', expected_version => 0)")
    # a stream that never existed can be tombstoned too
    delete_stream(conn, "order", "never", hard=True)
    expect_error("55000", conn, "SELECT eventstore.append_event('order', 'never', 'E', '{}')")
    assert stream_version(conn, "order", "never") == 0
