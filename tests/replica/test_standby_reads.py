"""Every read on the hot standby answers what the primary answers once replay has caught up:
streams, versions, the feed, statistics, aggregate state at every version (from the
primary's snapshots, writing none), subscriptions, feed_lag and worker_status."""

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import (append, caught_up, follow, get_state, read_stream, server_log, unique, wait_until)

RULE = [{"op": "increment", "path": "balance", "from": "amount"}, {"op": "append", "path": "log", "from": "note"}]


@pytest.fixture(scope="module")
def filled():
    """A tenant with accounts (snapshots every 3 events), a stream soft-deleted, a subscription."""
    from conftest import Servers
    s = Servers()
    tenant = unique("reads")
    p = s.primary(tenant=tenant)
    p.execute("SELECT eventstore.define_aggregate('account', %s, snapshot_every => 3, keep_snapshots => 2)",
              (Jsonb({"balance": 0, "log": []}),))
    p.execute("SELECT eventstore.define_reducer('account', 'Deposited', rule => %s)", (Jsonb(RULE),))
    accounts = [f"a{i}" for i in range(4)]
    for n in range(1, 9):
        for a in accounts:
            append(p, "account", a, "Deposited", {"amount": n, "note": f"{a}-{n}"})
    append(p, "order", "o1", "Placed", {"total": 5})
    append(p, "order", "gone", "Placed", {"total": 1})
    p.execute("SELECT eventstore.delete_stream('order', 'gone')")
    p.execute("SELECT eventstore.create_subscription('replica_sub', event_types => ARRAY['Deposited'])")
    caught_up()
    yield tenant, accounts
    s.close()


def same(p, s, sql, params=None):
    a = p.execute(sql, params).fetchall()
    b = s.execute(sql, params).fetchall()
    assert a == b, f"{sql}: primary {a!r} != standby {b!r}"
    return b


def test_the_standby_is_a_hot_standby(servers):
    s = servers.standby()
    assert s.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"] is True
    assert s.execute("SELECT current_setting('transaction_read_only') AS r").fetchone()["r"] == "on"
    p = servers.primary()
    slot = p.execute("SELECT slot_name, active FROM pg_replication_slots").fetchall()
    assert slot == [{"slot_name": "replica_standby", "active": True}]


def test_streams_versions_and_stats_are_the_primary_s(servers, filled):
    tenant, accounts = filled
    p, s = servers.primary(tenant=tenant), servers.standby(tenant=tenant)
    for a in accounts + ["missing"]:
        assert read_stream(p, "account", a) == read_stream(s, "account", a)
        same(p, s, "SELECT eventstore.stream_version('account', %s) AS v", (a,))
    assert read_stream(s, "order", "gone") == []
    assert same(p, s, "SELECT eventstore.stream_version('order', 'gone') AS v") == [{"v": 0}]
    stats = same(p, s, "SELECT eventstore.get_event_store_stats() AS s")[0]["s"]
    assert (stats["total_events"], stats["subscriptions"]) == (34, 1)


def test_the_feed_is_the_primary_s_page_by_page(servers, filled):
    tenant, _ = filled
    p, s = servers.primary(tenant=tenant), servers.standby(tenant=tenant)
    everything = follow(p)
    assert len(everything) == 34
    assert follow(s, batch=5) == everything
    same(p, s, "SELECT * FROM eventstore.read_all(%s, 7, event_types => ARRAY['Placed'])", (everything[3]["cursor"],))
    same(p, s, "SELECT * FROM eventstore.read_all(NULL, 100, aggregate_types => ARRAY['order'])")


def test_state_at_every_version_equals_the_primary_and_writes_no_snapshot(servers, filled):
    tenant, accounts = filled
    p, s = servers.primary(tenant=tenant), servers.standby(tenant=tenant)
    count = "SELECT count(*) AS n FROM eventstore.snapshots WHERE tenant_id = %s"
    snapshots = p.execute(count, (tenant,)).fetchone()["n"]
    assert snapshots == len(accounts) * 2, "kept snapshots at versions 3 and 6"
    for a in accounts:
        for v in list(range(1, 9)) + [None, 99]:
            here, there = get_state(p, "account", a, at_version=v), get_state(s, "account", a, at_version=v)
            assert here == there, (a, v)
        full = get_state(s, "account", a)
        assert (full["version"], full["state"]["balance"], full["snapshot_version"]) == (8, 36, 6)
        assert full["state"]["log"] == [f"{a}-{n}" for n in range(1, 9)]
        at = read_stream(p, "account", a)[4]["recorded_at"]
        assert get_state(p, "account", a, as_of=at) == get_state(s, "account", a, as_of=at)
    assert get_state(s, "account", "missing")["version"] == 0
    # create_snapshot is a write; get_aggregate_state never is, on either server
    caught_up()
    assert s.execute(count, (tenant,)).fetchone()["n"] == snapshots
    assert p.execute(count, (tenant,)).fetchone()["n"] == snapshots


def test_definitions_changed_on_the_primary_reach_a_standby_session(servers, filled):
    """The standby's per-backend caches are invalidated by replay, like the primary's."""
    tenant, _ = filled
    p, s = servers.primary(tenant=tenant), servers.standby(tenant=tenant)
    p.execute("SELECT eventstore.define_aggregate('counter', '{}')")
    append(p, "counter", "c", "Ticked", {"n": 1})
    caught_up()
    assert get_state(s, "counter", "c")["state"] == {"n": 1}
    p.execute("SELECT eventstore.define_reducer('counter', 'Ticked', rule => %s)",
              (Jsonb([{"op": "increment", "path": "ticks", "value": 1}]),))
    caught_up()
    assert get_state(s, "counter", "c")["state"] == {"ticks": 1}


def test_poll_subscription_follows_the_primary_s_checkpoint(servers, filled):
    tenant, _ = filled
    p, s = servers.primary(tenant=tenant), servers.standby(tenant=tenant)
    poll = "SELECT * FROM eventstore.poll_subscription('replica_sub', 10)"
    first = same(p, s, poll)
    assert len(first) == 10 and {r["event_type"] for r in first} == {"Deposited"}
    p.execute("SELECT eventstore.ack_subscription('replica_sub', %s)", (first[-1]["cursor"],))
    caught_up()
    after = same(p, s, poll)
    assert after[0]["cursor"] > first[-1]["cursor"]
    assert s.execute("SELECT count(*) AS n FROM eventstore.poll_subscription('replica_sub', 1000)").fetchone()["n"] == 22


def test_feed_lag_on_the_standby_names_the_primary(servers, filled):
    tenant, _ = filled
    p, s = servers.primary(tenant=tenant), servers.standby(tenant=tenant)
    lag = s.execute("SELECT eventstore.feed_lag() AS l").fetchone()["l"]
    assert lag["standby"] is True and lag["last_replayed_at"] is not None
    assert lag["held_back_events"] == 0
    assert "standby" not in p.execute("SELECT eventstore.feed_lag() AS l").fetchone()["l"]
    # a transaction open on the primary holds the standby's feed back too
    holder = servers.primary(tenant=tenant, autocommit=False)
    append(holder, "order", "held", "Placed")
    append(p, "order", "later", "Placed")
    caught_up()
    lag = s.execute("SELECT eventstore.feed_lag() AS l").fetchone()["l"]
    assert lag["held_back_events"] == 1
    assert (lag["blocking_backend"], lag["blocked_by_other_tenant"]) == (None, False)
    holder.commit()
    caught_up()
    wait_until(lambda: s.execute("SELECT eventstore.feed_lag() AS l").fetchone()["l"]["held_back_events"] == 0,
               what="the standby's feed to pass the committed transaction")


def test_no_worker_runs_on_the_standby(servers, filled):
    tenant, _ = filled
    s = servers.standby(tenant=tenant)
    status = s.execute("SELECT eventstore.worker_status() AS w").fetchone()["w"]
    assert (status["preloaded"], status["served"], status["standby"], status["running"]) == (True, False, True, False)
    assert "hot standby runs no worker" in status["reason"], status
    assert "pid" not in status
    workers = s.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'eventstore worker'").fetchone()
    assert workers["n"] == 0
    assert "eventstore worker started" not in server_log("standby")
    p = servers.primary(tenant=tenant)
    wait_until(lambda: p.execute("SELECT eventstore.worker_status() AS w").fetchone()["w"].get("running"),
               what="the primary's worker")


def test_other_reads_answer(servers, filled):
    tenant, _ = filled
    p, s = servers.primary(tenant=tenant), servers.standby(tenant=tenant)
    same(p, s, "SELECT * FROM eventstore.projection_status()")
    same(p, s, "SELECT eventstore.notification_channel() AS c")
    same(p, s, "SELECT eventstore.current_tenant() AS t")
    since = "SELECT eventstore.get_webhook_delivery_stats('2000-01-01') AS w"
    assert s.execute(since).fetchone()["w"] == p.execute(since).fetchone()["w"]


def test_a_long_standby_read_does_not_hold_back_the_primary_s_feed(servers, filled):
    """hot_standby_feedback holds back the primary's vacuum, never its feed: the feed's horizon
    is the primary's own running transactions."""
    tenant, _ = filled
    p = servers.primary(tenant=tenant)
    assert servers.standby().execute("SHOW hot_standby_feedback").fetchone()["hot_standby_feedback"] == "on"
    long_read = servers.standby(tenant=tenant, autocommit=False)
    long_read.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    before = follow(long_read)
    # the standby's snapshot holds back the primary's vacuum through the slot ...
    wait_until(lambda: p.execute("SELECT xmin IS NOT NULL AS x FROM pg_replication_slots").fetchone()["x"],
               what="the standby's feedback to reach the slot")
    # ... but not the primary's feed
    event = append(p, "order", "fresh", "Placed")
    assert follow(p, before[-1]["cursor"])[-1]["event_id"] == event["event_id"]
    assert follow(long_read, before[-1]["cursor"]) == [], "the standby transaction keeps its snapshot"
    long_read.rollback()
    caught_up()
    assert follow(long_read, before[-1]["cursor"])[-1]["event_id"] == event["event_id"]
    long_read.rollback()
