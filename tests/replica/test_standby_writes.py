"""Every write on the hot standby fails with PostgreSQL's own read-only error, 25006, with
arguments that succeed on the primary: never XX000, never another code, and the standby's
session goes on working afterwards."""

import uuid

import pytest
from psycopg.types.json import Jsonb

from conftest import append, caught_up, expect_error, follow, unique


@pytest.fixture(scope="module")
def world():
    """Objects on the primary that the writes below name, so that only the standby refuses them."""
    from conftest import Servers
    s = Servers()
    tenant = unique("writes")
    p = s.primary(tenant=tenant)
    p.execute("CREATE SCHEMA IF NOT EXISTS replica_app")
    p.execute("CREATE OR REPLACE FUNCTION replica_app.project(e eventstore.event) RETURNS void LANGUAGE sql AS 'SELECT'")
    p.execute("CREATE OR REPLACE FUNCTION replica_app.reduce(s jsonb, e eventstore.event) RETURNS jsonb LANGUAGE sql AS 'SELECT s'")
    p.execute("CREATE OR REPLACE FUNCTION replica_app.handle(payload jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT payload'")
    event = append(p, "account", "a1", "Opened", {"owner": "ann", "email": "ann@example.com"})
    p.execute("SELECT eventstore.define_aggregate('account')")
    p.execute("SELECT eventstore.create_subscription('sub_w')")
    p.execute("SELECT eventstore.register_projection('proj_w', 'replica_app.project(eventstore.event)'::regprocedure, mode => 'inline')")
    endpoint = p.execute("SELECT endpoint_id FROM eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook')").fetchone()["endpoint_id"]
    p.execute("SELECT eventstore.register_api_version('9.0.0')")
    cursor = follow(p)[-1]["cursor"]
    caught_up()
    yield tenant, event, endpoint, cursor
    s.close()


WRITES = {
    "append_event": "SELECT eventstore.append_event('account', 'a1', 'Renamed', '{\"owner\": \"bob\"}')",
    "append_event new stream": "SELECT eventstore.append_event('account', 'new', 'Opened', '{}', expected_version => 0)",
    "append_events": "SELECT eventstore.append_events('account', 'a1', '[{\"event_type\": \"X\", \"payload\": {}}]')",
    "append_event with id": "SELECT eventstore.append_event('account', 'a2', 'Opened', '{}', event_id => gen_random_uuid())",
    "delete_stream": "SELECT eventstore.delete_stream('account', 'a1')",
    "delete_stream hard": "SELECT eventstore.delete_stream('account', 'a1', hard => true)",
    "define_aggregate": "SELECT eventstore.define_aggregate('account', '{\"n\": 0}')",
    "define_reducer rule": "SELECT eventstore.define_reducer('account', 'Opened', rule => '[{\"op\": \"set\", \"path\": \"o\", \"from\": \"owner\"}]')",
    "define_reducer handler": "SELECT eventstore.define_reducer('account', 'Opened', handler => 'replica_app.reduce(jsonb, eventstore.event)'::regprocedure)",
    "create_snapshot": "SELECT eventstore.create_snapshot('account', 'a1')",
    "register_event_schema": "SELECT eventstore.register_event_schema('Opened', 2, '{\"type\": \"object\"}')",
    "register_upcaster": "SELECT eventstore.register_upcaster('Opened', 1, 2, '[{\"op\": \"set_default\", \"path\": \"x\", \"value\": 1}]')",
    "redact_event": "SELECT eventstore.redact_event(%(event_id)s, 'gdpr request')",
    "redact_subject": "SELECT eventstore.redact_subject('email', 'ann@example.com', 'gdpr request')",
    "create_subscription": "SELECT eventstore.create_subscription('sub_new')",
    "create_subscription at the end": "SELECT eventstore.create_subscription('sub_end', start_from => 'end')",
    "ack_subscription": "SELECT eventstore.ack_subscription('sub_w', %(cursor)s)",
    "drop_subscription": "SELECT eventstore.drop_subscription('sub_w')",
    "register_projection inline": "SELECT eventstore.register_projection('p2', 'replica_app.project(eventstore.event)'::regprocedure, mode => 'inline')",
    "register_projection async": "SELECT eventstore.register_projection('p3', 'replica_app.project(eventstore.event)'::regprocedure)",
    "rebuild_projection": "SELECT eventstore.rebuild_projection('proj_w')",
    "drop_projection": "SELECT eventstore.drop_projection('proj_w')",
    "replay_parked_events": "SELECT eventstore.replay_parked_events('proj_w')",
    "create_webhook_endpoint": "SELECT eventstore.create_webhook_endpoint('http://127.0.0.1:9/other')",
    "queue_event_for_webhooks": "SELECT eventstore.queue_event_for_webhooks(%(event_id)s)",
    "rotate_webhook_secret": "SELECT eventstore.rotate_webhook_secret(%(endpoint)s)",
    "recover_webhook_endpoint": "SELECT eventstore.recover_webhook_endpoint(%(endpoint)s, now() - interval '1 hour')",
    "disable_webhook_endpoint": "SELECT eventstore.disable_webhook_endpoint(%(endpoint)s)",
    "enable_webhook_endpoint": "SELECT eventstore.enable_webhook_endpoint(%(endpoint)s)",
    "register_api_version": "SELECT eventstore.register_api_version('9.1.0')",
    "register_api_route": "SELECT eventstore.register_api_route('w', '9.0.0', 'replica_app.handle(jsonb)'::regprocedure)",
    "deprecate_api_version": "SELECT eventstore.deprecate_api_version('9.0.0')",
    "switch_api_version": "SELECT eventstore.switch_api_version('9.0.0')",
    "grant_access": "SELECT eventstore.grant_access('pg_monitor', 'reader')",
}


@pytest.mark.parametrize("name", WRITES)
def test_a_write_on_the_standby_is_25006(servers, world, name):
    tenant, event, endpoint, cursor = world
    s = servers.standby(tenant=tenant)
    params = {"event_id": event["event_id"], "endpoint": endpoint, "cursor": cursor}
    err = expect_error("25006", s, WRITES[name], params)
    assert "read-only" in str(err) or "recovery" in str(err), str(err)
    # the session goes on
    assert s.execute("SELECT eventstore.stream_version('account', 'a1') AS v").fetchone()["v"] == 1


@pytest.mark.parametrize("name", WRITES)
def test_a_write_in_a_read_only_transaction_on_the_primary_is_25006(servers, world, name):
    tenant, event, endpoint, cursor = world
    p = servers.primary(tenant=tenant, autocommit=False)
    p.execute("SET TRANSACTION READ ONLY")
    params = {"event_id": event["event_id"], "endpoint": endpoint, "cursor": cursor}
    expect_error("25006", p, WRITES[name], params)
    p.rollback()


def test_the_writes_succeed_on_the_primary(servers, world):
    """The same arguments are good ones: the standby refused the write, not the input."""
    tenant, event, endpoint, cursor = world
    p = servers.primary(tenant=tenant, autocommit=False)
    params = {"event_id": event["event_id"], "endpoint": endpoint, "cursor": cursor}
    for name, sql in WRITES.items():
        p.execute("SAVEPOINT w")
        p.execute(sql, params)
        p.execute("ROLLBACK TO SAVEPOINT w")
    p.rollback()


def test_a_retry_of_a_webhook_delivery_is_25006(servers, world):
    tenant, event, endpoint, _ = world
    p = servers.primary(tenant=tenant)
    append(p, "account", "a9", "Opened", {})
    delivery = p.execute("SELECT delivery_id FROM eventstore.webhook_deliveries WHERE tenant_id = %s LIMIT 1",
                         (tenant,)).fetchone()
    assert delivery is not None, "the append queued a delivery for the endpoint"
    caught_up()
    s = servers.standby(tenant=tenant)
    expect_error("25006", s, "SELECT eventstore.retry_webhook_delivery(%s)", (delivery["delivery_id"],))
