"""route_api_call where the request log cannot be written (a hot standby, a read-only
transaction on the primary): it answers as usual with `meta.logged = false`, and the call is
counted in the server's shared memory, which that server's get_api_usage adds to the log."""

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import caught_up, expect_error, route, unique, usage

HANDLERS = """
CREATE SCHEMA IF NOT EXISTS replica_api;
CREATE OR REPLACE FUNCTION replica_api.echo(payload jsonb) RETURNS jsonb LANGUAGE sql AS
  $$ SELECT jsonb_build_object('echo', payload, 'tenant', eventstore.current_tenant()) $$;
CREATE OR REPLACE FUNCTION replica_api.echo_old(payload jsonb) RETURNS jsonb LANGUAGE sql AS
  $$ SELECT jsonb_build_object('old', payload) $$;
CREATE OR REPLACE FUNCTION replica_api.version_of(payload jsonb) RETURNS jsonb LANGUAGE sql AS
  $$ SELECT jsonb_build_object('version', eventstore.stream_version(payload->>'type', payload->>'id')) $$;
CREATE OR REPLACE FUNCTION replica_api.open(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  PERFORM eventstore.append_event('account', payload->>'id', 'Opened', payload);
  RETURN jsonb_build_object('opened', payload->>'id');
END $$;
CREATE OR REPLACE FUNCTION replica_api.fail(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'refused' USING ERRCODE = '22023';
END $$;
"""


@pytest.fixture(scope="module")
def api():
    from conftest import Servers
    s = Servers()
    p = s.primary()
    p.execute(HANDLERS)
    p.execute("SELECT eventstore.register_api_version('1.0.0', now() - interval '30 days', docs_url => 'https://example.com/v1')")
    p.execute("SELECT eventstore.register_api_version('2.0.0')")
    p.execute("SELECT eventstore.register_api_route('echo', '1.0.0', 'replica_api.echo_old(jsonb)'::regprocedure)")
    p.execute("SELECT eventstore.register_api_route('echo', '2.0.0', 'replica_api.echo(jsonb)'::regprocedure)")
    p.execute("SELECT eventstore.register_api_route('version_of', '2.0.0', 'replica_api.version_of(jsonb)'::regprocedure)")
    p.execute("SELECT eventstore.register_api_route('open', '2.0.0', 'replica_api.open(jsonb)'::regprocedure)")
    p.execute("SELECT eventstore.register_api_route('fail', '2.0.0', 'replica_api.fail(jsonb)'::regprocedure)")
    p.execute("SELECT eventstore.switch_api_version('2.0.0')")
    p.execute("SELECT eventstore.deprecate_api_version('1.0.0', now() - interval '1 day')")
    caught_up()
    yield
    s.close()


def logged_rows(p, request_id):
    return p.execute("SELECT count(*) AS n FROM eventstore.api_request_log WHERE request_id = %s",
                     (request_id,)).fetchone()["n"]


def test_route_api_call_answers_on_the_standby_unlogged(servers, api, tenant):
    s = servers.standby(tenant=tenant)
    r = route(s, "echo", {"a": 1})
    assert r["success"] is True
    assert r["data"] == {"echo": {"a": 1}, "tenant": tenant}
    meta = r["meta"]
    assert set(meta) == {"version", "requested_version", "request_id", "timestamp", "processing_ms", "logged"}
    assert (meta["version"], meta["requested_version"], meta["logged"]) == ("2.0.0", None, False)
    caught_up()
    assert logged_rows(servers.primary(), meta["request_id"]) == 0


def test_refusals_and_handler_errors_answer_with_their_status(servers, api, tenant):
    s = servers.standby(tenant=tenant, autocommit=False)
    r = route(s, "nope")
    assert (r["success"], r["error"]["code"], r["meta"]["logged"]) == (False, "unknown_rpc", False)
    assert s.execute("SELECT current_setting('response.status') AS s").fetchone()["s"] == "404"
    s.rollback()
    r = route(s, "open", {"id": "x1"})
    assert (r["success"], r["error"]["code"], r["meta"]["logged"]) == (False, "handler_error", False)
    assert r["error"]["details"]["sqlstate"] == "25006", "the handler's write is refused by the standby"
    assert s.execute("SELECT current_setting('response.status') AS s").fetchone()["s"] == "500"
    s.rollback()
    r = route(s, "echo", version="9.9")
    assert (r["error"]["code"], r["meta"]["logged"]) == ("unsupported_api_version", False)
    s.rollback()
    # a read-only handler answers from the replica's data
    r = route(s, "version_of", {"type": "account", "id": "none"})
    assert r["data"] == {"version": 0}
    s.rollback()


def test_a_deprecated_version_sets_its_headers_on_the_standby(servers, api, tenant):
    s = servers.standby(tenant=tenant, autocommit=False)
    r = route(s, "echo", {"b": 2}, version="1.0.0")
    assert r["data"] == {"old": {"b": 2}} and r["meta"]["deprecation"]["docs_url"] == "https://example.com/v1"
    headers = s.execute("SELECT current_setting('response.headers')::jsonb AS h").fetchone()["h"]
    assert [next(iter(h)) for h in headers] == ["Deprecation", "Link"]
    s.rollback()


CALLS = [("echo", None, {"n": 1}), ("echo", None, {"n": 2}), ("echo", "1.0.0", {}), ("nope", None, {}),
         ("fail", None, {}), (None, None, {}), ("echo", "7.0", {})]


def make_calls(conns):
    for i, (rpc, version, payload) in enumerate(CALLS * 2):
        conn = conns[i % len(conns)]
        if rpc is None:
            conn.execute("SELECT eventstore.route_api_call(NULL)")
        else:
            route(conn, rpc, payload, version)
        if not conn.autocommit:
            conn.rollback()


def shape(rows):
    return [(r["day"], r["version"], r["rpc_name"], r["calls"], r["errors"]) for r in rows]


def test_standby_usage_counts_like_the_primary_s_log(servers, api):
    """The same calls, logged on the primary for one tenant and counted in the standby's memory
    for another, give the same usage rows; two standby sessions count into one table."""
    on_primary, on_standby = unique("logged"), unique("counted")
    make_calls([servers.primary(tenant=on_primary)])
    make_calls([servers.standby(tenant=on_standby), servers.standby(tenant=on_standby, autocommit=False)])
    expected = usage(servers.primary(tenant=on_primary))
    assert sum(r["calls"] for r in expected) == 2 * len(CALLS)
    counted = usage(servers.standby(tenant=on_standby))
    assert shape(counted) == shape(expected)
    for r in counted:
        assert 0 < r["avg_ms"] < 60_000 and 0 < r["p95_ms"] < 60_000, r
    # each server shows its own: the primary never saw the standby's calls
    assert usage(servers.primary(tenant=on_standby)) == []
    assert usage(servers.standby(tenant=unique("nobody"))) == []


def test_standby_usage_adds_its_counts_to_the_replicated_log(servers, api):
    t = unique("both")
    p, s = servers.primary(tenant=t), servers.standby(tenant=t)
    for _ in range(3):
        route(p, "echo", {})
    caught_up()
    assert shape(usage(s)) == shape(usage(p))
    for _ in range(2):
        route(s, "echo", {})
    route(s, "nope")
    (day, version, rpc, calls, errors), = [x for x in shape(usage(s)) if x[2] == "echo"]
    assert (version, calls, errors) == ("2.0.0", 5, 0)
    assert [x[3:] for x in shape(usage(s)) if x[2] == "nope"] == [(1, 1)]
    assert [x[3] for x in shape(usage(p))] == [3]
    # filtered by day like the log
    assert usage(s, since="2000-01-01", until="2000-01-02") == []
    expect_error("22023", s, "SELECT * FROM eventstore.get_api_usage('2020-01-02', '2020-01-01')")


def test_a_read_only_transaction_on_the_primary_counts_in_memory(servers, api):
    t = unique("ro")
    p = servers.primary(tenant=t, autocommit=False)
    p.execute("SET TRANSACTION READ ONLY")
    r = route(p, "echo", {"ro": True})
    assert r["success"] is True and r["meta"]["logged"] is False
    rows = usage(p)
    p.commit()
    assert shape(rows)[0][1:] == ("2.0.0", "echo", 1, 0)
    assert logged_rows(servers.primary(), r["meta"]["request_id"]) == 0
    session = servers.primary(tenant=t, settings={"default_transaction_read_only": "on"})
    assert route(session, "echo", {})["meta"]["logged"] is False
    writable = servers.primary(tenant=t)
    r = route(writable, "echo", {})
    assert "logged" not in r["meta"] and logged_rows(writable, r["meta"]["request_id"]) == 1
    assert shape(usage(writable))[0][3] == 3, "one logged call and two counted in memory"


def test_a_switch_on_the_primary_reaches_a_standby_session(servers, api, tenant):
    s = servers.standby(tenant=tenant)
    assert route(s, "echo")["meta"]["version"] == "2.0.0"
    p = servers.primary()
    p.execute("SELECT eventstore.switch_api_version('1.0.0')")
    try:
        caught_up()
        r = route(s, "echo")
        assert r["meta"]["version"] == "1.0.0" and r["data"] == {"old": {}}
        assert s.execute("SELECT eventstore.get_active_api_version() ->> 'current_version' AS v").fetchone()["v"] == "1.0.0"
    finally:
        p.execute("SELECT eventstore.switch_api_version('2.0.0')")
        caught_up()
    assert route(s, "echo")["meta"]["version"] == "2.0.0"
