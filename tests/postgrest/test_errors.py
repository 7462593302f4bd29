"""What each error class of eventstore looks like over HTTP through PostgREST 12.0.2.

PostgREST answers an error with its SQLSTATE, message, detail and hint as a JSON object
{"code", "message", "details", "hint"} and an HTTP status of its own mapping of SQLSTATEs. The
statuses below are what PostgREST 12.0.2 answers (measured); a change of PostgREST that changes
one of them fails here.

A wrong expected version (23P01) must answer at once and be run once: PostgREST (through
hasql-transaction) re-runs a transaction that failed with 40001, which is why eventstore no
longer raises 40001 for it.
"""

import time
import uuid

import pytest

from conftest import admin_connect, as_tenant, create_database, drop_database

# SQLSTATE -> HTTP status of PostgREST 12.0.2, as measured by the tests below
STATUS = {
    "23P01": 400,  # wrong expected version (PostgREST maps only 23503 and 23505 to 409)
    "23505": 409,  # duplicate event id, subscription name taken
    "22023": 400,  # invalid argument, JSON too deep
    "23514": 400,  # payload fails its JSON Schema
    "42501": 403,  # no tenant, missing privilege (401 when the request had no token)
    "55000": 500,  # hard-deleted stream
    "P0002": 500,  # unknown subscription
    "42883": 404,  # reducer handler dropped since it was registered
    "25006": 405,  # a writing function called by GET (read-only transaction)
}


def expect(r, sqlstate, message_start):
    assert r.body is not None and r.body.get("code") == sqlstate, r
    assert r.status == STATUS[sqlstate], r
    assert set(r.body) == {"code", "message", "details", "hint"}, r
    assert r.body["message"].startswith(message_start), r
    return r.body


def event_count(dbname, tenant):
    with admin_connect(dbname) as conn:
        return conn.execute("SELECT count(*) AS n FROM eventstore.events WHERE tenant_id = %s",
                            (tenant,)).fetchone()["n"]


def test_wrong_expected_version(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    stream = {"aggregate_type": "order", "aggregate_id": "ev"}
    assert pgrst.rpc("append_event", {**stream, "event_type": "Placed", "payload": {}, "expected_version": 0}, tok).status == 200
    for expected, wording in ((0, "expected no stream (0), actual version 1"), (5, "expected version 5, actual version 1")):
        body = expect(pgrst.rpc("append_event", {**stream, "event_type": "Late", "payload": {}, "expected_version": expected}, tok),
                      "23P01", "wrong expected version for stream order/ev")
        assert body["details"] == f"stream order/ev: {wording}"
        assert body["hint"] == "Reload the stream, decide again and append again."
    body = expect(pgrst.rpc("append_events", {**stream, "expected_version": 3, "events": [{"event_type": "Late", "payload": {}}]}, tok),
                  "23P01", "wrong expected version")
    expect(pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "missing", "event_type": "X",
                                      "payload": {}, "expected_version": -1}, tok), "23P01", "wrong expected version")
    assert event_count(pgrst.dbname, ta) == 1


def test_duplicates(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    eid = str(uuid.uuid4())
    first = pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "d1", "event_type": "Placed",
                                       "payload": {}, "event_id": eid}, tok)
    assert first.status == 200
    # the same event again at its place: the original row, nothing written
    again = pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "d1", "event_type": "Placed",
                                       "payload": {}, "event_id": eid}, tok)
    assert (again.status, again.body) == (200, first.body)
    expect(pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "d2", "event_type": "Placed",
                                      "payload": {}, "event_id": eid}, tok), "23505", "event")
    assert pgrst.rpc("create_subscription", {"name": "twice"}, tok).status == 200
    expect(pgrst.rpc("create_subscription", {"name": "twice"}, tok), "23505", "subscription")
    assert event_count(pgrst.dbname, ta) == 1


def test_invalid_arguments(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    base = {"aggregate_type": "order", "aggregate_id": "i1", "event_type": "X"}
    body = expect(pgrst.rpc("append_event", {**base, "payload": [1, 2]}, tok), "22023", "payload must be a JSON object")
    assert body["details"] == "payload is an array"
    expect(pgrst.rpc("append_event", {**base, "aggregate_type": "", "payload": {}}, tok), "22023",
           "aggregate_type must not be empty")
    expect(pgrst.rpc("append_events", {"aggregate_type": "order", "aggregate_id": "i1", "events": {"event_type": "X"}}, tok),
           "22023", "events must be")
    expect(pgrst.rpc("ack_subscription", {"name": "x", "cursor": "not-a-cursor"}, tok), "22023", "")
    deep = {}
    for _ in range(70):
        deep = {"a": deep}
    body = expect(pgrst.rpc("append_event", {**base, "payload": deep}, tok), "22023", "payload is nested too deeply")
    assert "eventstore.max_json_depth is 64" in body["details"]
    assert event_count(pgrst.dbname, ta) == 0


def test_schema_violation(pgrst, tenants):
    ta, _ = tenants
    with admin_connect(pgrst.dbname) as conn:
        as_tenant(conn, ta).execute(
            "SELECT eventstore.register_event_schema('Deposited', 1, '{\"type\": \"object\", \"required\": [\"amount\"],"
            " \"properties\": {\"amount\": {\"type\": \"number\"}}}')")
    body = expect(pgrst.rpc("append_event", {"aggregate_type": "account", "aggregate_id": "a1", "event_type": "Deposited",
                                             "payload": {"amount": "lots"}}, pgrst.token(ta)),
                  "23514", "payload does not match the JSON Schema of Deposited version 1")
    assert body["details"] == '/amount: "lots" is not of type "number"'
    assert event_count(pgrst.dbname, ta) == 0


def test_missing_privilege_and_missing_tenant(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    # writer access does not include the admin functions
    expect(pgrst.rpc("delete_stream", {"aggregate_type": "order", "aggregate_id": "x"}, tok), "42501",
           "permission denied for function delete_stream")
    expect(pgrst.rpc("register_api_version", {"version": "9.9"}, tok), "42501", "permission denied for function")
    # no tenant in the token while eventstore.require_tenant is on
    body = expect(pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "x", "event_type": "X",
                                             "payload": {}}, pgrst.token(None)), "42501", "no tenant for this call")
    assert body["hint"].startswith("SET LOCAL eventstore.tenant_id, or sign the JWT with the claim")
    # without a token PostgREST answers 401 for the same SQLSTATE
    r = pgrst.get_rpc("read_stream", {"aggregate_type": "order", "aggregate_id": "x"})
    assert (r.status, r.body["code"]) == (401, "42501"), r


def test_hard_deleted_stream(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    assert pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "gone", "event_type": "Placed",
                                      "payload": {}}, tok).status == 200
    with admin_connect(pgrst.dbname) as conn:
        as_tenant(conn, ta).execute("SELECT eventstore.delete_stream('order', 'gone', hard => true)")
    body = expect(pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "gone", "event_type": "Again",
                                             "payload": {}}, tok), "55000", "stream order/gone is deleted")
    assert body["hint"] == "Append to a new stream."


def test_unknown_subscription(pgrst, tenants):
    tok = pgrst.token(tenants[0])
    expect(pgrst.get_rpc("poll_subscription", {"name": "nope"}, tok), "P0002", 'subscription "nope" does not exist')
    expect(pgrst.rpc("drop_subscription", {"name": "nope"}, tok), "P0002", 'subscription "nope" does not exist')


def test_dropped_reducer_handler(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    with admin_connect(pgrst.dbname) as conn:
        conn.execute("CREATE FUNCTION public.keep_state(s jsonb, e eventstore.event) RETURNS jsonb"
                     " LANGUAGE sql AS $$ SELECT s $$")
        as_tenant(conn, ta).execute(
            "SELECT eventstore.define_reducer('ledger', 'Opened', handler => 'public.keep_state(jsonb, eventstore.event)')")
    assert pgrst.rpc("append_event", {"aggregate_type": "ledger", "aggregate_id": "l1", "event_type": "Opened",
                                      "payload": {}}, tok).status == 200
    assert pgrst.get_rpc("get_aggregate_state", {"aggregate_type": "ledger", "aggregate_id": "l1"}, tok).status == 200
    with admin_connect(pgrst.dbname) as conn:
        conn.execute("DROP FUNCTION public.keep_state(jsonb, eventstore.event)")
    expect(pgrst.get_rpc("get_aggregate_state", {"aggregate_type": "ledger", "aggregate_id": "l1"}, tok),
           "42883", "the reducer handler of event type Opened no longer exists")


def test_a_writing_function_called_by_get(pgrst, tenants):
    expect(pgrst.get_rpc("create_subscription", {"name": "g"}, pgrst.token(tenants[0])), "25006",
           "cannot execute INSERT in a read-only transaction")


@pytest.fixture
def quiet_database():
    """A database of its own, so that no other request's rollback is counted."""
    db = create_database()
    yield db
    drop_database(db)


def rollbacks(dbname):
    with admin_connect() as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT xact_rollback FROM pg_stat_database WHERE datname = %s",
                            (dbname,)).fetchone()["xact_rollback"]


def backends_of(dbname, user="authenticator"):
    with admin_connect() as conn:
        return conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = %s AND usename = %s",
                            (dbname, user)).fetchone()["n"]


def test_a_wrong_expected_version_answers_at_once_and_runs_once(start_postgrest, quiet_database):
    pgrst = start_postgrest(quiet_database)
    tok = pgrst.token("acme")
    stream = {"aggregate_type": "order", "aggregate_id": "once"}
    assert pgrst.rpc("append_event", {**stream, "event_type": "Placed", "payload": {}, "expected_version": 0}, tok).status == 200
    # everything so far committed; PostgREST's own transactions commit too
    before = rollbacks(quiet_database)
    started = time.monotonic()
    r = pgrst.rpc("append_event", {**stream, "event_type": "Late", "payload": {}, "expected_version": 0}, tok)
    elapsed = time.monotonic() - started
    expect(r, "23P01", "wrong expected version")
    assert elapsed < 1.0, f"the conflict took {elapsed:.2f}s to answer"
    # a backend reports its counters when it ends: stop PostgREST, wait for its sessions to end
    pgrst.stop()
    deadline = time.monotonic() + 10
    while backends_of(quiet_database) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backends_of(quiet_database) == 0
    assert rollbacks(quiet_database) - before == 1, "the failed append was run more than once"
    with admin_connect(quiet_database) as conn:
        assert conn.execute("SELECT count(*) AS n FROM eventstore.events").fetchone()["n"] == 1
