"""route_api_call through a real PostgREST: the status it sets in response.status becomes the HTTP
status, the headers it appends to response.headers (Deprecation, Sunset, Link) become HTTP
headers, and the request headers PostgREST passes in request.headers choose the version.

The API catalog belongs to the database; this module sets it up once in the layer's database:
1.0 (deprecated, sunset 2020), 2.0 (deprecated, sunset far ahead, with docs) and 3.0 (active).
"""

import email.utils
from datetime import datetime, timezone

import pytest

from conftest import admin_connect

HANDLERS = """
CREATE SCHEMA api;
GRANT USAGE ON SCHEMA api TO PUBLIC;
CREATE FUNCTION api.echo_v1(payload jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('served_by', '1.0', 'got', payload) $$;
CREATE FUNCTION api.echo_v2(payload jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('served_by', '2.0', 'got', payload) $$;
CREATE FUNCTION api.echo_v3(payload jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('served_by', '3.0', 'got', payload) $$;
CREATE FUNCTION api.whoami(payload jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('user', current_user::text, 'tenant', eventstore.current_tenant(),
                                 'sub', current_setting('request.jwt.claims', true)::jsonb ->> 'sub') $$;
CREATE FUNCTION api.fail(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'order % refused', payload->>'id' USING ERRCODE = 'P0001', HINT = 'try later';
END $$;
SELECT eventstore.register_api_version('1.0', '2019-01-01');
SELECT eventstore.register_api_version('2.0', '2024-01-01', docs_url => 'https://docs.example.com/v2-to-v3');
SELECT eventstore.register_api_version('3.0', '2025-01-01', min_client_version => '1.10.0');
SELECT eventstore.register_api_route('echo', '1.0', 'api.echo_v1(jsonb)');
SELECT eventstore.register_api_route('echo', '2.0', 'api.echo_v2(jsonb)');
SELECT eventstore.register_api_route('echo', '3.0', 'api.echo_v3(jsonb)');
SELECT eventstore.register_api_route('whoami', '3.0', 'api.whoami(jsonb)');
SELECT eventstore.register_api_route('fail', '3.0', 'api.fail(jsonb)');
SELECT eventstore.switch_api_version('3.0', '2.0');
SELECT eventstore.deprecate_api_version('1.0', '2019-06-01', '2020-01-01');
SELECT eventstore.deprecate_api_version('2.0', '2025-01-01T00:00:00Z', '2999-12-31T23:59:59Z');
"""


@pytest.fixture(scope="module")
def api(pgrst):
    with admin_connect(pgrst.dbname) as conn:
        conn.execute(HANDLERS)
    return pgrst


def call(api, tok, name, payload=None, version=None, headers=None):
    args = {"name": name}
    if payload is not None:
        args["payload"] = payload
    if version is not None:
        args["requested_version"] = version
    return api.rpc("route_api_call", args, tok, headers)


def test_the_active_version_answers_200(api, tenants):
    tok = api.token(tenants[0])
    r = call(api, tok, "echo", {"a": 1})
    assert r.status == 200, r
    assert r.body["success"] is True and r.body["data"] == {"served_by": "3.0", "got": {"a": 1}}
    assert r.body["meta"]["version"] == "3.0" and r.header("Deprecation") == []
    active = api.get_rpc("get_active_api_version", None, tok)
    assert active.status == 200 and active.body["current_version"] == "3.0", active
    assert active.body["fallback_version"] == "2.0"


def test_statuses(api, tenants):
    tok = api.token(tenants[0])
    r = call(api, tok, "echo", version="7.0")
    assert (r.status, r.body["error"]["code"]) == (400, "unsupported_api_version"), r
    assert r.body["error"]["details"]["supported_versions"] == ["2.0", "3.0"]
    r = call(api, tok, "nothing_here")
    assert (r.status, r.body["error"]["code"]) == (404, "unknown_rpc"), r
    r = call(api, tok, "echo", version="1.0")
    assert (r.status, r.body["error"]["code"]) == (410, "api_version_sunset"), r
    assert r.header("Sunset") == ["Wed, 01 Jan 2020 00:00:00 GMT"]
    r = call(api, tok, "fail", {"id": 7})
    assert (r.status, r.body["error"]["code"]) == (500, "handler_error"), r
    assert r.body["error"]["details"]["message"] == "order 7 refused"
    r = call(api, tok, "echo", [1, 2])
    assert (r.status, r.body["error"]["code"]) == (400, "invalid_payload"), r
    r = call(api, tok, "echo", headers={"x-app-version": "1.9.9"})
    assert r.status == 200 and r.body["meta"]["version"] == "2.0", r  # 3.0 needs 1.10.0: the fallback


def test_deprecation_headers(api, tenants):
    r = call(api, api.token(tenants[0]), "echo", version="2.0")
    assert r.status == 200 and r.body["data"]["served_by"] == "2.0", r
    assert r.header("Deprecation") == ["@1735689600"]
    (sunset,) = r.header("Sunset")
    assert sunset == "Tue, 31 Dec 2999 23:59:59 GMT"
    assert email.utils.parsedate_to_datetime(sunset) == datetime(2999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    assert r.header("Link") == ['<https://docs.example.com/v2-to-v3>; rel="deprecation"']
    assert r.body["meta"]["deprecation"]["docs_url"] == "https://docs.example.com/v2-to-v3"


def test_the_version_from_request_headers(api, tenants):
    tok = api.token(tenants[0])
    r = call(api, tok, "echo", headers={"X-API-Version": "2.0"})
    assert (r.status, r.body["meta"]["version"], r.header("Deprecation")) == (200, "2.0", ["@1735689600"]), r
    # the argument wins over the header
    r = call(api, tok, "echo", version="3.0", headers={"X-API-Version": "2.0"})
    assert r.body["meta"]["version"] == "3.0", r
    # a vendor media type beside application/json: PostgREST answers JSON, the version is read from it
    r = call(api, tok, "echo", headers={"Accept": "application/json, application/vnd.example.v2+json"})
    assert (r.status, r.body["meta"]["version"]) == (200, "2.0"), r
    # a vendor media type alone is refused by PostgREST itself (415) before the function runs
    r = call(api, tok, "echo", headers={"Accept": "application/vnd.example.v2+json"})
    assert (r.status, r.body["code"]) == (415, "PGRST107"), r


def test_handlers_run_as_the_caller_and_the_log_is_the_tenants(api, tenants):
    ta, tb = tenants
    tok = api.token(ta, sub="user-42")
    r = call(api, tok, "whoami", headers={"x-app-name": "ios", "x-app-version": "2.1.0", "x-client-region": "eu"})
    assert r.status == 200, r
    assert r.body["data"] == {"user": "authenticated", "tenant": ta, "sub": "user-42"}
    call(api, tok, "echo", version="1.0")
    log = api.table("api_request_log", "select=rpc_name,status,tenant_id,role,client_app,client_version,client_region,error_code"
                                        "&order=requested_at", tok)
    assert log.status == 200, log
    assert log.body == [
        {"rpc_name": "whoami", "status": 200, "tenant_id": ta, "role": "authenticated", "client_app": "ios",
         "client_version": "2.1.0", "client_region": "eu", "error_code": None},
        {"rpc_name": "echo", "status": 410, "tenant_id": ta, "role": "authenticated", "client_app": None,
         "client_version": None, "client_region": None, "error_code": "api_version_sunset"}]
    assert api.table("api_request_log", "select=rpc_name", api.token(tb)).body == []
