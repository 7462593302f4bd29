"""Consumer groups of eventstore's own subscriptions: member m of n gets the streams Message
DB's partition gives it, in feed order, with a checkpoint of its own."""

from conftest import append, expect_error, unique


def poll(conn, name, member, max_count=1000):
    return conn.execute("SELECT * FROM eventstore.poll_subscription(%s, %s, %s)", (name, max_count, member)).fetchall()


def test_members_split_the_streams_exactly_once(connect, tenant):
    conn = connect(tenant=tenant)
    kind = unique("acct")
    for round_ in range(3):
        for i in range(25):
            append(conn, kind, f"{i}", "E", {"r": round_})
    conn.execute("SELECT eventstore.create_subscription('g', consumer_group_size => 4)")
    seen, owner = set(), {}
    for member in range(4):
        rows = poll(conn, "g", member)
        cursors = [r["cursor"] for r in rows]
        assert cursors == sorted(cursors)
        for r in rows:
            assert r["event_id"] not in seen
            seen.add(r["event_id"])
            assert owner.setdefault(r["aggregate_id"], member) == member
        versions = {}
        for r in rows:
            assert r["aggregate_version"] == versions.get(r["aggregate_id"], 0) + 1
            versions[r["aggregate_id"]] = r["aggregate_version"]
    assert len(seen) == 75


def test_each_member_has_its_own_checkpoint(connect, tenant):
    conn = connect(tenant=tenant)
    kind = unique("acct")
    for i in range(20):
        append(conn, kind, f"{i}", "E", {})
    conn.execute("SELECT eventstore.create_subscription('g', consumer_group_size => 2)")
    first0, first1 = poll(conn, "g", 0), poll(conn, "g", 1)
    assert first0 and first1
    assert conn.execute("SELECT eventstore.ack_subscription('g', %s, member => 1) AS m",
                        (first1[-1]["cursor"],)).fetchone()["m"] is True
    assert poll(conn, "g", 1) == []
    assert [r["event_id"] for r in poll(conn, "g", 0)] == [r["event_id"] for r in first0]
    # never backwards
    assert conn.execute("SELECT eventstore.ack_subscription('g', %s, 1) AS m",
                        (first1[0]["cursor"],)).fetchone()["m"] is False
    append(conn, kind, "0", "Later", {})
    append(conn, kind, "1", "Later", {})
    later = poll(conn, "g", 0) + poll(conn, "g", 1)
    assert sorted(r["event_type"] for r in later if r["event_type"] == "Later") == ["Later", "Later"]


def test_group_arguments_are_checked(connect, tenant):
    conn = connect(tenant=tenant)
    for bad in (0, -1, 1001):
        expect_error("22023", conn, "SELECT eventstore.create_subscription('x', consumer_group_size => %s)", (bad,))
    expect_error("22023", conn, "SELECT eventstore.create_subscription('x', consumer_group_size => NULL)")
    conn.execute("SELECT eventstore.create_subscription('g', consumer_group_size => 2)")
    conn.execute("SELECT eventstore.create_subscription('one')")
    for name, member in (("g", 2), ("g", -1), ("one", 1)):
        expect_error("22023", conn, "SELECT * FROM eventstore.poll_subscription(%s, 10, %s)", (name, member))
        expect_error("22023", conn, "SELECT eventstore.ack_subscription(%s, '0000000000000000-0000000000000000', %s)",
                     (name, member))
    expect_error("22023", conn, "SELECT * FROM eventstore.poll_subscription('g', 10, NULL)")
    expect_error("P0002", conn, "SELECT * FROM eventstore.poll_subscription('nope', 10, 1)")
    # dropping the subscription drops its members' checkpoints
    conn.execute("SELECT eventstore.drop_subscription('g')")
    assert conn.execute("SELECT count(*) AS n FROM eventstore.subscription_members WHERE tenant_id = %s AND name = 'g'",
                        (tenant,)).fetchone()["n"] == 0
