"""API versioning through PostgREST: version resolution, statuses, deprecation
headers, client fallback, version changes, the hot switch under load, and usage.

Calls are made the way PostgREST makes them: one transaction that sets the role, the JWT claims
and the request headers with set_config(..., true), calls the function and reads
response.headers and response.status in the same statement, then commits.

The API catalog (versions, routes, changes, the active version) belongs to the database, not to
a tenant, so every test gets a database of its own.
"""

import email.utils
import json
import re
import statistics
import threading
import time
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from conftest import DEFAULT_STATEMENT_TIMEOUT_MS, admin_connect, dsn, expect_error, start, unique

UUID_V7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")

HANDLERS = """
CREATE SCHEMA api;
GRANT USAGE ON SCHEMA api TO PUBLIC;
-- one handler per version, each saying who served the call
CREATE FUNCTION api.echo_v1(payload jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('served_by', '1.0', 'got', payload) $$;
CREATE FUNCTION api.echo_v2(payload jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('served_by', '2.0', 'got', payload) $$;
CREATE FUNCTION api.whoami(payload jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('user', current_user::text, 'tenant', eventstore.current_tenant()) $$;
CREATE TABLE api.orders (id int PRIMARY KEY, note text);
GRANT ALL ON api.orders TO PUBLIC;
CREATE FUNCTION api.place_order(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO api.orders VALUES ((payload->>'id')::int, payload->>'note');
    IF payload ? 'fail' THEN
        RAISE EXCEPTION 'order % refused', payload->>'id' USING ERRCODE = 'P0001', HINT = 'try later';
    END IF;
    RETURN jsonb_build_object('placed', payload->'id');
END $$;
CREATE FUNCTION api.slow(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep((payload->>'seconds')::float8);
    RETURN jsonb_build_object('slept', payload->'seconds');
END $$;
"""


@pytest.fixture
def apidb():
    """A fresh database with eventstore and the handlers above; yields its name."""
    name = f"es_api_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with admin_connect(name) as conn:
        conn.execute("CREATE EXTENSION eventstore")
        conn.execute(HANDLERS)
    yield name
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def connect(apidb):
    """Connections to the test's database (superuser unless user= is given), closed afterwards."""
    opened = []
    lock = threading.Lock()

    def _connect(user="postgres", **settings):
        gucs = {"statement_timeout": DEFAULT_STATEMENT_TIMEOUT_MS, **settings}
        conn = psycopg.connect(dsn(apidb, user=user, settings=gucs), autocommit=True, row_factory=dict_row)
        with lock:
            opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def roles(apidb):
    """Login roles with reader and admin access (cluster-wide, unique names), dropped afterwards;
    `authenticated` plays PostgREST's authenticator-switched role."""
    names = {k: unique(f"es_api_{k}") for k in ("authenticated", "admin")}
    with admin_connect(apidb) as conn:
        for name in names.values():
            conn.execute(f'CREATE ROLE "{name}" LOGIN')
        conn.execute("SELECT eventstore.grant_access(%s, 'reader')", (names["authenticated"],))
        conn.execute("SELECT eventstore.grant_access(%s, 'admin')", (names["admin"],))
    yield names
    with admin_connect(apidb) as conn:
        for name in names.values():
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


# --- PostgREST, emulated ---------------------------------------------------------------------


class Response:
    def __init__(self, status, body, headers):
        self.status, self.body, self.headers = status, body, headers

    def header(self, name):
        """The values of a response header, in order."""
        return [v for h in self.headers for k, v in h.items() if k.lower() == name.lower()]

    @property
    def version(self):
        return self.body["meta"]["version"]

    @property
    def code(self):
        return self.body.get("error", {}).get("code")

    def __repr__(self):
        return f"Response({self.status}, {self.body}, {self.headers})"


def rpc(conn, name, payload=None, version=None, headers=None, claims=None, role=None,
        earlier_headers=None, tenant=None):
    """POST /rpc/route_api_call as PostgREST runs it, in one transaction that commits."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    args = {"name": name}
    if payload is not None:
        args["payload"] = payload
    if version is not None:
        args["requested_version"] = version
    with conn.transaction():
        conn.execute(
            "SELECT set_config('request.method', 'POST', true), set_config('request.path', '/rpc/route_api_call', true),"
            " set_config('request.headers', %s, true), set_config('request.jwt.claims', %s, true)",
            (json.dumps(headers), json.dumps(claims or {"role": role or "postgres"})))
        if role is not None:
            conn.execute("SELECT set_config('role', %s, true)", (role,))
        if tenant is not None:
            conn.execute("SELECT set_config('eventstore.tenant_id', %s, true)", (tenant,))
        if earlier_headers is not None:
            conn.execute("SELECT set_config('response.headers', %s, true)", (json.dumps(earlier_headers),))
        # PostgREST reads the response settings in the statement that calls the function
        row = conn.execute(
            "WITH pgrst_source AS (SELECT eventstore.route_api_call(%s, %s, %s) AS pgrst_scalar)"
            " SELECT coalesce(json_agg(_postgrest_t.pgrst_scalar)->0, 'null') AS body,"
            "        nullif(current_setting('response.headers', true), '') AS response_headers,"
            "        nullif(current_setting('response.status', true), '') AS response_status"
            " FROM (SELECT * FROM pgrst_source) _postgrest_t",
            (args["name"], Jsonb(args.get("payload", {})), args.get("requested_version"))).fetchone()
    status = int(row["response_status"]) if row["response_status"] else 200
    return Response(status, row["body"], json.loads(row["response_headers"]) if row["response_headers"] else [])


def register(conn, version, released_at="2024-01-01", min_client_version=None, docs_url=None):
    conn.execute("SELECT eventstore.register_api_version(%s, %s::timestamptz, %s, %s)",
                 (version, released_at, min_client_version, docs_url))


def route(conn, rpc_name, version, handler):
    conn.execute("SELECT eventstore.register_api_route(%s, %s, %s::regprocedure)", (rpc_name, version, handler))


def switch(conn, version, fallback=None):
    """switch_api_version; without a fallback the version that was active becomes it."""
    return conn.execute("SELECT eventstore.switch_api_version(%s, %s) AS r", (version, fallback)).fetchone()["r"]


def deprecate(conn, version, deprecated_at, sunset_at=None, docs_url=None):
    return conn.execute("SELECT eventstore.deprecate_api_version(%s, %s::timestamptz, %s::timestamptz, %s) AS r",
                        (version, deprecated_at, sunset_at, docs_url)).fetchone()["r"]


def log_rows(conn, **where):
    clause = " AND ".join(f"{k} = %s" for k in where) or "true"
    return conn.execute(f"SELECT * FROM eventstore.api_request_log WHERE {clause} ORDER BY requested_at",
                        tuple(where.values())).fetchall()


def two_versions(conn):
    """1.0 (active, handler echo_v1) and 2.0 (handler echo_v2) of rpc `echo`."""
    register(conn, "1.0", "2024-01-01", docs_url="https://docs.example.com/v1")
    register(conn, "2.0", "2024-06-01")
    route(conn, "echo", "1.0", "api.echo_v1(jsonb)")
    route(conn, "echo", "2.0", "api.echo_v2(jsonb)")


# --- resolution ------------------------------------------------------------------------------


def test_every_resolution_path_in_order(connect):
    conn = connect()
    two_versions(conn)
    # the active version (the first one registered)
    r = rpc(conn, "echo", {"a": 1})
    assert (r.status, r.version, r.body["data"]["served_by"]) == (200, "1.0", "1.0")
    assert r.body["success"] is True and r.body["meta"]["requested_version"] is None
    assert r.body["data"]["got"] == {"a": 1}
    # Accept: application/vnd.<anything>.<version>+json, beside other media types
    r = rpc(conn, "echo", headers={"Accept": "application/json;q=0.9, application/vnd.acme.api.v2+json"})
    assert (r.version, r.body["meta"]["requested_version"]) == ("2.0", "v2")
    # PostgREST's own vendor media type asks for no version
    assert rpc(conn, "echo", headers={"Accept": "application/vnd.pgrst.object+json"}).version == "1.0"
    # x-api-version beats Accept
    r = rpc(conn, "echo", headers={"x-api-version": "1", "accept": "application/vnd.acme.v2+json"})
    assert (r.version, r.body["meta"]["requested_version"]) == ("1.0", "1")
    # the argument beats both
    r = rpc(conn, "echo", version="2.0.0", headers={"x-api-version": "1", "accept": "application/vnd.acme.v1+json"})
    assert (r.version, r.body["meta"]["requested_version"]) == ("2.0", "2.0.0")
    sources = [row["version_source"] for row in log_rows(conn)]
    assert sources == ["active", "accept", "active", "header", "argument"]


def test_the_envelope(connect):
    conn = connect()
    two_versions(conn)
    before = datetime.now(timezone.utc)
    r = rpc(conn, "echo", {"x": [1, 2]}, version="2.0")
    assert set(r.body) == {"success", "data", "meta"}
    meta = r.body["meta"]
    assert set(meta) == {"version", "requested_version", "request_id", "timestamp", "processing_ms"}
    assert UUID_V7.match(meta["request_id"])
    assert RFC3339_UTC.match(meta["timestamp"])
    stamp = datetime.fromisoformat(meta["timestamp"].replace("Z", "+00:00"))
    assert abs((stamp - before).total_seconds()) < 5
    assert isinstance(meta["processing_ms"], (int, float)) and 0 <= meta["processing_ms"] < 5000
    (row,) = log_rows(conn)
    assert str(row["request_id"]) == meta["request_id"]
    r = rpc(conn, "nope")
    assert set(r.body) == {"success", "error", "meta"} and r.body["success"] is False
    assert set(r.body["error"]) == {"code", "message", "details"}


# --- statuses --------------------------------------------------------------------------------


def test_each_status_is_set_for_postgrest_and_logged(connect):
    conn = connect()
    two_versions(conn)
    route(conn, "place_order", "2.0", "api.place_order(jsonb)")
    switch(conn, "2.0")
    deprecate(conn, "1.0", "2020-01-01", "2020-02-01")
    r = rpc(conn, "echo", version="3.0")
    assert (r.status, r.code) == (400, "unsupported_api_version")
    assert r.body["error"]["details"]["supported_versions"] == ["2.0"]
    r = rpc(conn, "echo", {"p": 1}, headers={"x-api-version": "2.0"}, version=None)
    assert r.status == 200
    r = rpc(conn, "get_everything", version="2.0")
    assert (r.status, r.code) == (404, "unknown_rpc")
    r = rpc(conn, "echo", version="1.0")
    assert (r.status, r.code) == (410, "api_version_sunset")
    assert r.body["error"]["details"]["docs_url"] == "https://docs.example.com/v1"
    r = rpc(conn, "place_order", {"id": 1, "fail": True}, version="2.0")
    assert (r.status, r.code) == (500, "handler_error")
    assert r.body["error"]["details"]["sqlstate"] == "P0001"
    assert r.body["error"]["details"]["message"] == "order 1 refused"
    assert r.body["error"]["details"]["hint"] == "try later"
    r = rpc(conn, "echo", [1, 2], version="2.0")
    assert (r.status, r.code) == (400, "invalid_payload")
    statuses = [(row["status"], row["error_code"]) for row in log_rows(conn)]
    assert statuses == [(400, "unsupported_api_version"), (200, None), (404, "unknown_rpc"),
                        (410, "api_version_sunset"), (500, "handler_error"), (400, "invalid_payload")]


def test_the_active_version_starts_at_the_first_one_and_sunset_is_refused_for_it(connect):
    conn = connect()
    two_versions(conn)
    err = expect_error("22023", conn, "SELECT eventstore.deprecate_api_version('1.0', '2020-01-01', '2020-02-01')")
    assert err.diag.message_primary == "api version 1.0 is the active version and cannot be sunset now"
    assert err.diag.message_hint.startswith("Switch to another version")


def test_a_failing_handler_rolls_back_to_its_savepoint_and_the_call_is_still_logged(connect):
    conn = connect()
    register(conn, "1.0")
    route(conn, "place_order", "1.0", "api.place_order(jsonb)")
    with conn.transaction():
        conn.execute("INSERT INTO api.orders VALUES (100, 'before the call')")
        r = rpc_in_tx(conn, "place_order", {"id": 101, "fail": True})
        assert r.status == 500
        # the rest of the transaction goes on
        conn.execute("INSERT INTO api.orders VALUES (102, 'after the call')")
    ids = [row["id"] for row in conn.execute("SELECT id FROM api.orders ORDER BY id").fetchall()]
    assert ids == [100, 102], "the handler's insert of 101 is rolled back, nothing else"
    other = connect()
    (row,) = log_rows(other)
    assert (row["status"], row["error_code"], row["rpc_name"]) == (500, "handler_error", "place_order")
    r = rpc(conn, "place_order", {"id": 103, "note": "ok"})
    assert (r.status, r.body["data"]) == (200, {"placed": 103})
    assert other.execute("SELECT note FROM api.orders WHERE id = 103").fetchone()["note"] == "ok"


def rpc_in_tx(conn, name, payload, version=None):
    """route_api_call inside a transaction the caller controls; returns status and body."""
    body = conn.execute("SELECT eventstore.route_api_call(%s, %s, %s) AS body",
                        (name, Jsonb(payload), version)).fetchone()["body"]
    status = conn.execute("SELECT nullif(current_setting('response.status', true), '') AS s").fetchone()["s"]
    return Response(int(status or 200), body, [])


def test_sunset_calls_are_logged_after_commit(connect):
    conn = connect()
    two_versions(conn)
    switch(conn, "2.0")
    deprecate(conn, "1.0", "2021-01-01", "2021-06-01", "https://docs.example.com/sunset")
    r = rpc(conn, "echo", {"old": True}, headers={"x-api-version": "1.0", "x-app-name": "ios",
                                                   "x-app-version": "3.1.4", "x-client-region": "eu-west-1"})
    assert (r.status, r.code) == (410, "api_version_sunset")
    assert r.header("Sunset") == ["Tue, 01 Jun 2021 00:00:00 GMT"]
    other = connect()
    (row,) = log_rows(other, status=410)
    assert (row["version"], row["requested_version"], row["version_source"]) == ("1.0", "1.0", "header")
    assert (row["client_app"], row["client_version"], row["client_region"]) == ("ios", "3.1.4", "eu-west-1")
    assert (row["tenant_id"], row["role"], row["error_code"]) == ("default", "postgres", "api_version_sunset")
    assert str(row["request_id"]) == r.body["meta"]["request_id"]


# --- deprecation headers ---------------------------------------------------------------------


def test_deprecation_headers_merge_with_a_header_set_earlier(connect):
    conn = connect()
    two_versions(conn)
    switch(conn, "2.0", None)
    deprecate(conn, "1.0", "2025-01-01T00:00:00Z", "2999-12-31T23:59:59Z", "https://docs.example.com/migrate")
    r = rpc(conn, "echo", version="1.0", earlier_headers=[{"Cache-Control": "no-store"}, {"X-Trace": "abc"}])
    assert r.status == 200 and r.body["success"] is True
    assert [list(h)[0] for h in r.headers] == ["Cache-Control", "X-Trace", "Deprecation", "Sunset", "Link"]
    assert all(len(h) == 1 for h in r.headers), "single-key objects, as PostgREST reads them"
    assert r.header("Cache-Control") == ["no-store"]
    (deprecation,) = r.header("Deprecation")
    assert deprecation == "@1735689600"
    (sunset,) = r.header("Sunset")
    assert sunset == "Tue, 31 Dec 2999 23:59:59 GMT"
    assert email.utils.parsedate_to_datetime(sunset) == datetime(2999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    assert r.header("Link") == ['<https://docs.example.com/migrate>; rel="deprecation"']
    assert r.body["meta"]["deprecation"] == {"deprecated_at": "2025-01-01T00:00:00Z",
                                             "sunset_at": "2999-12-31T23:59:59Z",
                                             "docs_url": "https://docs.example.com/migrate"}
    # a version that is not deprecated adds nothing, and leaves what is there alone
    r = rpc(conn, "echo", version="2.0", earlier_headers=[{"Cache-Control": "no-store"}])
    assert r.headers == [{"Cache-Control": "no-store"}] and "deprecation" not in r.body["meta"]


def test_deprecation_rules(connect):
    conn = connect()
    two_versions(conn)
    err = expect_error("22023", conn, "SELECT eventstore.deprecate_api_version('2.0', '2025-06-01', '2025-05-31')")
    assert err.diag.message_primary == "the sunset of api version 2.0 is before its deprecation"
    assert err.diag.message_detail == "deprecated_at is 2025-06-01T00:00:00Z, sunset_at is 2025-05-31T00:00:00Z"
    err = expect_error("P0002", conn, "SELECT eventstore.deprecate_api_version('7.0')")
    assert err.diag.message_primary == 'api version "7.0" does not exist'
    # without a sunset date only Deprecation (and Link) are sent
    deprecate(conn, "2.0", "2025-01-01")
    r = rpc(conn, "echo", version="2.0")
    assert [list(h)[0] for h in r.headers] == ["Deprecation"]
    assert r.body["meta"]["deprecation"]["sunset_at"] is None


# --- client compatibility --------------------------------------------------------------------


def test_client_fallback_in_semantic_version_order(connect):
    conn = connect()
    register(conn, "1.0", "2024-01-01")
    register(conn, "1.5", "2024-02-01", min_client_version="1.9.9")
    register(conn, "2.0", "2024-06-01", min_client_version="1.10.0")
    for v, h in (("1.0", "api.echo_v1(jsonb)"), ("2.0", "api.echo_v2(jsonb)")):
        route(conn, "echo", v, h)
    switch(conn, "2.0", "1.0")

    def call(app):
        return rpc(conn, "echo", headers={"x-app-version": app} if app else {})

    # 1.10.0 > 1.9.9: it meets 2.0's minimum, 1.9.9 does not
    assert call("1.10.0").version == "2.0"
    assert call("v1.10.0").version == "2.0"
    assert call("1.10.0-beta.1").version == "1.5", "a pre-release is below its release"
    assert call("1.9.9").version == "1.5", "the newest older version the app meets"
    assert call("1.2.0").version == "1.0"
    assert call(None).version == "2.0", "an app that does not say its version is not checked"
    rows = log_rows(conn)
    assert [(r["version"], r["fallback_from"]) for r in rows] == [
        ("2.0", None), ("2.0", None), ("1.5", "2.0"), ("1.5", "2.0"), ("1.0", "2.0"), ("2.0", None)]
    # the active fallback when nothing older fits; the minimum when nothing fits at all
    register(conn, "1.0", "2024-01-01", min_client_version="1.1.0")
    register(conn, "3.0", "2024-09-01")
    route(conn, "echo", "3.0", "api.echo_v2(jsonb)")
    switch(conn, "2.0", "3.0")
    assert call("1.0.5").version == "3.0"
    switch(conn, "2.0", "1.5")
    r = call("1.0.5")
    assert (r.status, r.code) == (400, "client_version_unsupported")
    assert r.body["error"]["details"] == {"client_version": "1.0.5", "min_client_version": "1.10.0", "version": "2.0"}
    r = call("latest")
    assert (r.status, r.code) == (400, "invalid_client_version")


# --- version changes (Stripe style) ----------------------------------------------------------


def test_one_handler_serves_old_versions_through_version_changes(connect):
    conn = connect()
    for v, at in (("2024-01-01", "2024-01-01"), ("2024-06-01", "2024-06-01"), ("2025-01-01", "2025-01-01")):
        register(conn, v, at)
    conn.execute("""
        CREATE FUNCTION api.get_customer(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
            SELECT jsonb_build_object('customer', jsonb_build_object('id', payload->'customer_id',
                                                                     'name', 'Ann Lee'),
                                      'amount', jsonb_build_object('value', 12, 'currency', 'EUR'),
                                      'state', 'enabled', 'request_seen', payload) $$""")
    route(conn, "get_customer", "2025-01-01", "api.get_customer(jsonb)")
    # 2024-06-01: "id" became "customer_id"; the amount was wrapped into an object
    conn.execute("SELECT eventstore.register_api_change('2024-06-01', 'get_customer', 'id renamed', %s, %s)",
                 (Jsonb([{"op": "rename", "from": "id", "to": "customer_id"}]),
                  Jsonb([{"op": "move", "from": "amount.value", "to": "total"}, {"op": "remove", "path": "amount"}])))
    # 2025-01-01: the customer became an object; states were renamed
    conn.execute("SELECT eventstore.register_api_change('2025-01-01', 'get_customer', 'customer object', %s, %s)",
                 (Jsonb([{"op": "set_default", "path": "expand", "value": False}]),
                  Jsonb([{"op": "move", "from": "customer.name", "to": "customer_name"},
                         {"op": "move", "from": "customer.id", "to": "customer_id"},
                         {"op": "remove", "path": "customer"},
                         {"op": "map_values", "path": "state", "map": {"enabled": "active"}}])))
    newest = rpc(conn, "get_customer", {"customer_id": 7}, version="2025-01-01").body["data"]
    assert newest == {"customer": {"id": 7, "name": "Ann Lee"}, "amount": {"value": 12, "currency": "EUR"},
                      "state": "enabled", "request_seen": {"customer_id": 7}}
    middle = rpc(conn, "get_customer", {"customer_id": 7}, version="2024-06-01").body["data"]
    assert middle == {"customer_id": 7, "customer_name": "Ann Lee", "amount": {"value": 12, "currency": "EUR"},
                      "state": "active", "request_seen": {"customer_id": 7, "expand": False}}
    # the oldest shape: both changes, requests upwards in order, responses downwards in order
    oldest = rpc(conn, "get_customer", {"id": 7}, version="2024-01-01")
    assert oldest.version == "2024-01-01"
    assert oldest.body["data"] == {"customer_id": 7, "customer_name": "Ann Lee", "total": 12, "state": "active",
                                   "request_seen": {"customer_id": 7, "expand": False}}
    # bad changes are refused when registered
    err = expect_error("22023", conn, "SELECT eventstore.register_api_change('2024-06-01', 'get_customer', 'x', %s)",
                       (Jsonb([{"op": "rename", "from": "a"}]),))
    assert err.diag.message_primary == 'invalid request_transform: step 0: "rename" needs "to"'


def test_handlers_must_take_and_return_jsonb(connect):
    conn = connect()
    register(conn, "1.0")
    conn.execute("CREATE FUNCTION api.bad(payload json) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$")
    err = expect_error("22023", conn, "SELECT eventstore.register_api_route('bad', '1.0', 'api.bad(json)')")
    assert err.diag.message_primary == "handler api.bad(json) takes (payload json)"
    assert err.diag.message_hint == "An API handler is a function (payload jsonb) RETURNS jsonb."
    err = expect_error("P0002", conn, "SELECT eventstore.register_api_route('echo', '9.0', 'api.echo_v1(jsonb)')")
    assert err.diag.message_detail == "registered api versions: 1.0"


# --- the hot switch --------------------------------------------------------------------------


def test_switch_is_admin_only_audited_and_refuses_unknown_and_sunset_versions(connect, roles):
    conn = connect()
    two_versions(conn)
    register(conn, "0.9", "2023-01-01")
    deprecate(conn, "0.9", "2023-06-01", "2023-12-01")
    user = connect(user=roles["authenticated"])
    expect_error("42501", user, "SELECT eventstore.switch_api_version('2.0')")
    admin = connect(user=roles["admin"])
    err = expect_error("22023", admin, "SELECT eventstore.switch_api_version('2.1')")
    assert err.diag.message_primary == 'api version "2.1" does not exist'
    err = expect_error("22023", admin, "SELECT eventstore.switch_api_version('0.9')")
    assert err.diag.message_primary == "api version 0.9 is sunset"
    result = switch(admin, "2.0")
    assert {k: result[k] for k in ("success", "previous_version", "current_version", "fallback_version")} == {
        "success": True, "previous_version": "1.0", "current_version": "2.0", "fallback_version": "1.0"}
    deployments = conn.execute("SELECT * FROM eventstore.api_deployments ORDER BY deployment_id").fetchall()
    assert [(d["from_version"], d["to_version"], d["deployed_by"], d["reason"]) for d in deployments] == [
        (None, "1.0", "postgres", "first version"), ("1.0", "2.0", roles["admin"], "switch")]
    assert deployments[1]["deployment_id"] == result["deployment_id"]
    active = user.execute("SELECT eventstore.get_active_api_version() AS a").fetchone()["a"]
    assert (active["current_version"], active["fallback_version"], active["updated_by"]) == ("2.0", "1.0", roles["admin"])
    assert rpc(user, "echo", role=roles["authenticated"]).version == "2.0"


def test_hot_switch_under_concurrent_calls(connect):
    """Callers hammer the active version while it is switched through ten versions, each with a
    fallback of its own: every answer is whole (its handler and its meta agree, and an old app's
    fallback is the one paired with the current version it fell back from: never a current
    version with the fallback of another switch), no caller ever goes back to an older
    deployment, no call fails, and once the last switch has committed every call sees it."""
    conn = connect()
    # i.0 needs app 2.0.0; 100.i is the fallback switched in together with i.0
    versions = [f"{i}.0" for i in range(1, 11)]
    fallbacks = [f"100.{i}" for i in range(1, 11)]
    for k, v in enumerate(versions + fallbacks):
        register(conn, v, "2024-01-01", min_client_version="2.0.0" if v in versions else None)
        conn.execute(f"CREATE FUNCTION api.h{k}(payload jsonb) RETURNS jsonb LANGUAGE sql AS "
                     f"$$ SELECT jsonb_build_object('served_by', '{v}') $$")
        route(conn, "probe", v, f"api.h{k}(jsonb)")
    switch(conn, versions[0], fallbacks[0])
    stop = threading.Event()
    seen = {}

    def caller(n, app):
        c = connect()
        got = []
        while not stop.is_set():
            r = rpc(c, "probe", {"n": n}, headers={"x-app-version": app})
            assert r.status == 200, r
            assert r.body["data"]["served_by"] == r.version, r
            got.append(r.version)
        seen[n] = (app, got)
        return len(got)

    callers = [start(caller, n, "3.0.0" if n % 2 == 0 else "1.0.0") for n in range(4)]
    switcher = connect()
    for v, f in zip(versions[1:], fallbacks[1:]):
        time.sleep(0.05)
        assert switch(switcher, v, f)["current_version"] == v
    time.sleep(0.05)
    stop.set()
    counts = [w.join_result() for w in callers]
    assert all(c > 0 for c in counts)
    rank = {v: i for i, v in enumerate(versions)} | {f: i for i, f in enumerate(fallbacks)}
    for n, (app, got) in seen.items():
        assert set(got) <= set(versions if app == "3.0.0" else fallbacks), (app, got)
        ranks = [rank[v] for v in got]
        assert ranks == sorted(ranks), f"caller {n} went back to an older deployment: {got}"
    assert len({v for _, got in seen.values() for v in got}) >= 4, "the callers saw the switches"
    pairs = conn.execute("SELECT DISTINCT fallback_from, version FROM eventstore.api_request_log"
                         " WHERE rpc_name = 'probe' AND fallback_from IS NOT NULL").fetchall()
    assert pairs and all(p["version"] == "100." + p["fallback_from"].split(".")[0] for p in pairs), pairs
    fresh = connect()
    assert [rpc(fresh, "probe").version, rpc(fresh, "probe", headers={"x-app-version": "1.0.0"}).version] == ["10.0", "100.10"]
    logged = conn.execute("SELECT count(*) AS n, count(*) FILTER (WHERE status <> 200) AS bad"
                          " FROM eventstore.api_request_log WHERE rpc_name = 'probe'").fetchone()
    assert logged["n"] == sum(counts) + 2 and logged["bad"] == 0
    assert conn.execute("SELECT count(*) AS n FROM eventstore.api_deployments WHERE reason = 'switch'").fetchone()["n"] == 10


def test_a_call_in_flight_keeps_the_version_it_resolved(connect):
    conn = connect()
    register(conn, "1.0")
    register(conn, "2.0")
    route(conn, "slow", "1.0", "api.slow(jsonb)")
    route(conn, "echo", "2.0", "api.echo_v2(jsonb)")
    route(conn, "slow", "2.0", "api.echo_v2(jsonb)")
    caller = connect()
    in_flight = start(rpc, caller, "slow", {"seconds": 1.5})
    time.sleep(0.5)
    # the switch neither waits for the running call nor changes it
    began = time.monotonic()
    switch(connect(), "2.0")
    assert time.monotonic() - began < 1.0
    assert rpc(connect(), "slow", {"seconds": 0}).body["data"]["served_by"] == "2.0"
    r = in_flight.join_result()
    assert (r.status, r.version, r.body["data"]) == (200, "1.0", {"slept": 1.5})


def test_concurrent_switches_serialize(connect):
    conn = connect()
    for v in ("1.0", "2.0", "3.0"):
        register(conn, v)

    def flip(target, times):
        c = connect()
        for _ in range(times):
            switch(c, target)

    workers = [start(flip, v, 15) for v in ("2.0", "3.0", "1.0")]
    for w in workers:
        w.join_result()
    chain = conn.execute("SELECT from_version, to_version FROM eventstore.api_deployments"
                         " WHERE reason = 'switch' ORDER BY deployment_id").fetchall()
    assert len(chain) == 45
    previous = "1.0"
    for d in chain:
        assert d["from_version"] == previous, "every switch starts where the one before ended"
        previous = d["to_version"]
    active = conn.execute("SELECT eventstore.get_active_api_version() AS a").fetchone()["a"]
    assert active["current_version"] == previous


# --- usage and tenancy -----------------------------------------------------------------------


def test_usage_counts_equal_the_calls_made(connect):
    conn = connect()
    two_versions(conn)
    route(conn, "place_order", "2.0", "api.place_order(jsonb)")
    tenant = unique("t")
    plan = [("echo", None, 37), ("echo", "2.0", 23), ("place_order", "2.0", 11), ("nope", "2.0", 5), ("echo", "9.9", 4)]

    def client(rpc_name, version, n, offset):
        c = connect()
        for i in range(n):
            payload = {"id": offset + i, **({"fail": True} if rpc_name == "place_order" and i % 3 == 0 else {})}
            rpc(c, rpc_name, payload, version=version, tenant=tenant)

    workers = [start(client, name, v, n, 1000 * k) for k, (name, v, n) in enumerate(plan)]
    for w in workers:
        w.join_result()
    rpc(conn, "echo", tenant=unique("other"))  # another tenant's call is not counted
    c = connect()
    c.execute("SELECT set_config('eventstore.tenant_id', %s, false)", (tenant,))
    usage = {(u["version"], u["rpc_name"]): u for u in
             c.execute("SELECT * FROM eventstore.get_api_usage(current_date - 1, current_date + 1)").fetchall()}
    assert {k: (u["calls"], u["errors"]) for k, u in usage.items()} == {
        ("1.0", "echo"): (37, 0), ("2.0", "echo"): (23, 0), ("2.0", "place_order"): (11, 4),
        ("2.0", "nope"): (5, 5), (None, "echo"): (4, 4)}
    # exact against the raw log: average and (interpolated) 95th percentile
    for (version, name), u in usage.items():
        durations = sorted(r["duration_ms"] for r in log_rows(c, tenant_id=tenant, rpc_name=name)
                           if r["version"] == version)
        assert len(durations) == u["calls"]
        assert u["avg_ms"] == pytest.approx(statistics.fmean(durations))
        rank = 0.95 * (len(durations) - 1)
        lo, frac = int(rank), rank - int(rank)
        p95 = durations[lo] + (durations[min(lo + 1, len(durations) - 1)] - durations[lo]) * frac
        assert u["p95_ms"] == pytest.approx(p95)
    assert sum(u["calls"] for u in usage.values()) == 80


def test_log_and_usage_belong_to_the_tenant_in_the_jwt(connect, roles):
    conn = connect()
    register(conn, "1.0")
    route(conn, "whoami", "1.0", "api.whoami(jsonb)")
    user = connect(user=roles["authenticated"])
    ta, tb = unique("a"), unique("b")
    r = rpc(user, "whoami", claims={"sub": "user-1", "role": roles["authenticated"], "tenant_id": ta},
            role=roles["authenticated"])
    assert r.body["data"] == {"user": roles["authenticated"], "tenant": ta}, "the handler runs as the caller"
    rpc(user, "whoami", claims={"sub": "user-2", "tenant_id": tb}, role=roles["authenticated"])
    rpc(user, "whoami", claims={"sub": "user-3", "tenant_id": tb}, role=roles["authenticated"])
    with user.transaction():
        user.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"tenant_id": tb}),))
        rows = user.execute("SELECT tenant_id, jwt_sub, role FROM eventstore.api_request_log ORDER BY requested_at").fetchall()
    assert [(r["tenant_id"], r["jwt_sub"], r["role"]) for r in rows] == [
        (tb, "user-2", roles["authenticated"]), (tb, "user-3", roles["authenticated"])]
    admin = connect(user=roles["admin"])
    admin.execute("SELECT set_config('eventstore.tenant_id', %s, false)", (ta,))
    (u,) = admin.execute("SELECT * FROM eventstore.get_api_usage(NULL, NULL)").fetchall()
    assert (u["version"], u["rpc_name"], u["calls"]) == ("1.0", "whoami", 1)
    expect_error("42501", user, "SELECT * FROM eventstore.get_api_usage(NULL, NULL)")


# --- the log row's commit ------------------------------------------------------------------


def sync_commit(conn):
    return conn.execute("SELECT current_setting('synchronous_commit') AS s").fetchone()["s"]


def test_a_read_only_call_commits_its_log_row_without_waiting_for_the_flush(connect):
    conn = connect()
    two_versions(conn)
    with conn.transaction():
        assert rpc_in_tx(conn, "echo", {"a": 1}).status == 200
        # the log row is the transaction's only write: its commit does not wait for WAL
        assert sync_commit(conn) == "off"
    assert sync_commit(conn) == "on"
    assert conn.execute("SELECT count(*) AS n FROM eventstore.api_request_log WHERE rpc_name = 'echo'").fetchone()["n"] == 1


def test_a_call_in_a_transaction_that_wrote_before_keeps_a_synchronous_commit(connect):
    conn = connect()
    two_versions(conn)
    route(conn, "place_order", "1.0", "api.place_order(jsonb)")
    with conn.transaction():
        conn.execute("INSERT INTO api.orders VALUES (1, 'before')")
        assert rpc_in_tx(conn, "echo", {"a": 1}).status == 200
        assert sync_commit(conn) == "on"
    with conn.transaction():
        # the handler's own write counts the same
        assert rpc_in_tx(conn, "place_order", {"id": 2}).status == 200
        assert sync_commit(conn) == "on"
    assert conn.execute("SELECT count(*) AS n FROM api.orders").fetchone()["n"] == 2
