"""Promotion: the standby becomes a primary. Its background worker starts then (never before),
writes work, route_api_call logs again, and what it counted in memory as a standby is still
in its get_api_usage. Runs after every other test of the layer."""

import pytest

from conftest import (Servers, append, caught_up, follow, pg_ctl, route, server_log, unique, usage, wait_until)

pytestmark = pytest.mark.promotion


def test_a_promoted_standby_starts_its_worker_and_writes(servers):
    t = unique("promoted")
    p = servers.primary()
    p.execute("SELECT eventstore.register_api_version('1.0.0', now() - interval '30 days')")
    p.execute("CREATE SCHEMA IF NOT EXISTS replica_api")
    p.execute("CREATE OR REPLACE FUNCTION replica_api.ping(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{\"pong\": true}'::jsonb $$")
    p.execute("SELECT eventstore.register_api_route('ping', '1.0.0', 'replica_api.ping(jsonb)'::regprocedure)")
    append(servers.primary(tenant=t), "account", "p1", "Opened")
    caught_up()
    s = servers.standby(tenant=t)
    before = follow(s)
    assert len(before) == 1
    assert route(s, "ping", version="1.0.0")["meta"]["logged"] is False
    assert "eventstore worker started" not in server_log("standby")

    pg_ctl("standby", "promote", "-w", "-t", "60")
    promoted = servers.standby(tenant=t)
    assert promoted.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"] is False
    wait_until(lambda: promoted.execute("SELECT eventstore.worker_status() AS w").fetchone()["w"].get("running"),
               timeout=60, what="the worker of the promoted server")
    status = promoted.execute("SELECT eventstore.worker_status() AS w").fetchone()["w"]
    assert "standby" not in status

    event = append(promoted, "account", "p1", "Renamed")
    assert event["aggregate_version"] == 2
    assert [r["event_id"] for r in follow(promoted, before[-1]["cursor"])] == [event["event_id"]]
    r = route(promoted, "ping", version="1.0.0")
    assert r["data"] == {"pong": True} and "logged" not in r["meta"]
    (row,) = usage(promoted)
    assert (row["version"], row["rpc_name"], row["calls"]) == ("1.0.0", "ping", 2), "one counted, one logged"
