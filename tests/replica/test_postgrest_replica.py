"""A PostgREST read replica: a second PostgREST 12 whose db-uri is the hot standby, configured
like the one of the postgrest layer (Supabase roles, JWT tenant claim). GET requests, and POST
to stable functions, run in read-only transactions and work on the standby, route_api_call
included (by GET). A POST to a volatile function does not: PostgREST opens its transaction
READ WRITE, which a standby refuses before the function runs (HTTP 400, SQLSTATE 0A000), so
writes go to the PostgREST of the primary."""

import importlib.util
from pathlib import Path

import pytest

from conftest import DATABASE, STANDBY_PORT, Servers, append, caught_up, unique

HARNESS = Path(__file__).resolve().parents[1] / "postgrest" / "conftest.py"


def harness():
    spec = importlib.util.spec_from_file_location("postgrest_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the PostgREST it starts connects to the standby
    module.HOST, module.PORT = "127.0.0.1", STANDBY_PORT
    return module


SETUP = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN CREATE ROLE authenticator LOGIN NOINHERIT; END IF;
END $$;
GRANT anon, authenticated TO authenticator;
SELECT eventstore.grant_access('authenticated', 'writer');
CREATE SCHEMA IF NOT EXISTS replica_rest;
GRANT USAGE ON SCHEMA replica_rest TO authenticated;
CREATE OR REPLACE FUNCTION replica_rest.hello(payload jsonb) RETURNS jsonb LANGUAGE sql AS
  $$ SELECT jsonb_build_object('hello', eventstore.current_tenant(), 'standby', pg_is_in_recovery()) $$;
SELECT eventstore.register_api_version('3.0.0');
SELECT eventstore.register_api_route('hello', '3.0.0', 'replica_rest.hello(jsonb)'::regprocedure);
"""


@pytest.fixture(scope="module")
def replica():
    h = harness()
    if not Path(h.POSTGREST).is_file():
        pytest.skip(f"no PostgREST at {h.POSTGREST}: run scripts/setup.sh")
    s = Servers()
    s.primary().execute(SETUP)
    tenant = unique("rest")
    event = append(s.primary(tenant=tenant), "order", "1", "Placed", {"total": 5})
    caught_up()
    rest = h.PostgREST(DATABASE).start()
    yield rest, tenant, event
    rest.stop()
    s.close()


def test_reads_through_the_replica(replica):
    rest, tenant, event = replica
    token = rest.token(tenant)
    r = rest.get_rpc("read_all", {}, token)
    assert r.status == 200 and [e["event_id"] for e in r.body] == [str(event["event_id"])]
    r = rest.rpc("read_all", {"max_count": 10}, token)
    assert r.status == 200 and len(r.body) == 1, "POST to a stable function runs read-only"
    r = rest.get_rpc("get_aggregate_state", {"aggregate_type": "order", "aggregate_id": "1"}, token)
    assert (r.status, r.body["version"], r.body["state"]) == (200, 1, {"total": 5})
    r = rest.get_rpc("stream_version", {"aggregate_type": "order", "aggregate_id": "1"}, token)
    assert (r.status, r.body) == (200, 1)


def test_route_api_call_by_get_through_the_replica(replica):
    rest, tenant, _ = replica
    token = rest.token(tenant)
    r = rest.get_rpc("route_api_call", {"name": "hello", "requested_version": "3.0.0"}, token)
    assert r.status == 200, r
    assert r.body["data"] == {"hello": tenant, "standby": True} and r.body["meta"]["logged"] is False
    r = rest.get_rpc("route_api_call", {"name": "nope", "requested_version": "3.0.0"}, token)
    assert (r.status, r.body["error"]["code"], r.body["meta"]["logged"]) == (404, "unknown_rpc", False)


def test_a_post_to_a_volatile_function_is_refused_by_the_replica(replica):
    rest, tenant, _ = replica
    token = rest.token(tenant)
    for name, args in [("route_api_call", {"name": "hello"}),
                       ("append_event", {"aggregate_type": "order", "aggregate_id": "1", "event_type": "X", "payload": {}})]:
        r = rest.rpc(name, args, token)
        assert (r.status, r.body["code"]) == (400, "0A000"), r
        assert r.body["message"] == "cannot set transaction read-write mode during recovery"
