"""Tenancy through PostgREST: the tenant is the JWT's `tenant_id` claim; two tenants calling the
same functions and tables see nothing of each other; a token without a tenant, without a valid
signature or without a token at all gets nothing."""

import time

from conftest import admin_connect, sign_jwt

STREAM = {"aggregate_type": "order", "aggregate_id": "shared-name"}


def ok(r, status=200):
    assert r.status == status, r
    return r.body


def test_two_tenants_see_nothing_of_each_other(pgrst, tenants):
    ta, tb = tenants
    tok_a, tok_b = pgrst.token(ta), pgrst.token(tb)
    assert ok(pgrst.get_rpc("current_tenant", None, tok_a)) == ta
    assert ok(pgrst.get_rpc("current_tenant", None, tok_b)) == tb
    # the same stream name is a stream of its own in each tenant
    a_rows = ok(pgrst.rpc("append_events", {**STREAM, "expected_version": 0, "events": [
        {"event_type": "Placed", "payload": {"secret": "a"}}, {"event_type": "Paid", "payload": {"secret": "a"}}]}, tok_a))
    b_row = ok(pgrst.rpc("append_event", {**STREAM, "event_type": "Placed", "payload": {"secret": "b"},
                                          "expected_version": 0}, tok_b))
    assert [r["aggregate_version"] for r in a_rows] == [1, 2] and b_row["aggregate_version"] == 1
    ok(pgrst.rpc("create_subscription", {"name": "feed"}, tok_a))
    ok(pgrst.rpc("create_subscription", {"name": "feed"}, tok_b))  # the name is per tenant, too

    for tenant, tok, ids, secret in ((ta, tok_a, [r["event_id"] for r in a_rows], "a"),
                                     (tb, tok_b, [b_row["event_id"]], "b")):
        events = ok(pgrst.get_rpc("read_stream", STREAM, tok))
        assert [e["event_id"] for e in events] == ids
        assert {e["payload"]["secret"] for e in events} == {secret}
        assert ok(pgrst.get_rpc("stream_version", STREAM, tok)) == len(ids)
        feed = ok(pgrst.get_rpc("read_all", {"select": "event_id,tenant_id"}, tok))
        assert {e["tenant_id"] for e in feed} == {tenant} and set(ids) <= {e["event_id"] for e in feed}
        assert [e["event_id"] for e in ok(pgrst.get_rpc("poll_subscription", {"name": "feed"}, tok))] == \
            [e["event_id"] for e in feed]
        assert ok(pgrst.get_rpc("get_aggregate_state", STREAM, tok))["state"] == {"secret": secret}
        stats = ok(pgrst.get_rpc("get_event_store_stats", None, tok))
        assert stats["total_events"] == len(feed)
        # the tables: RLS by the JWT's tenant, whatever the filter asks for
        rows = ok(pgrst.table("events", "select=event_id,tenant_id&aggregate_id=eq.shared-name", tok))
        assert [r["event_id"] for r in rows] == ids and {r["tenant_id"] for r in rows} == {tenant}
        other = tb if tenant == ta else ta
        assert ok(pgrst.table("events", f"select=event_id&tenant_id=eq.{other}", tok)) == []
        assert ok(pgrst.table("streams", f"select=version&tenant_id=eq.{other}", tok)) == []
        streams = ok(pgrst.table("streams", "select=tenant_id,version&aggregate_id=eq.shared-name", tok))
        assert streams == [{"tenant_id": tenant, "version": len(ids)}]
    # the writes went where the tokens said
    with admin_connect(pgrst.dbname) as conn:
        counts = {r["tenant_id"]: r["n"] for r in conn.execute(
            "SELECT tenant_id, count(*) AS n FROM eventstore.events WHERE aggregate_id = 'shared-name'"
            " GROUP BY 1")}
    assert counts == {ta: 2, tb: 1}


def test_request_headers_do_not_choose_the_tenant(pgrst, tenants):
    ta, tb = tenants
    r = pgrst.get_rpc("current_tenant", None, pgrst.token(ta),
                      headers={"tenant_id": tb, "eventstore.tenant_id": tb, "x-tenant-id": tb})
    assert ok(r) == ta


def test_a_token_without_a_tenant_is_refused(pgrst, tenants):
    """eventstore.require_tenant is on for the authenticator: no claim, no call (42501, 403)."""
    tok = pgrst.token(None)
    for r in (pgrst.rpc("append_event", {**STREAM, "event_type": "X", "payload": {}}, tok),
              pgrst.get_rpc("read_stream", STREAM, tok),
              pgrst.table("events", "select=event_id", tok)):
        assert (r.status, r.body["code"], r.body["message"]) == (403, "42501", "no tenant for this call"), r
    # a claim at another path than eventstore.tenant_claim names is no tenant either
    r = pgrst.get_rpc("current_tenant", None, pgrst.token(None, app_metadata={"tenant_id": tenants[0]}))
    assert (r.status, r.body["code"]) == (403, "42501"), r
    with admin_connect(pgrst.dbname) as conn:
        assert conn.execute("SELECT count(*) AS n FROM eventstore.events WHERE tenant_id = 'default'"
                            ).fetchone()["n"] == 0


def test_anonymous_requests_get_nothing(pgrst):
    """No token: PostgREST runs as anon, which has no access to the schema (42501, 401)."""
    for r in (pgrst.rpc("append_event", {**STREAM, "event_type": "X", "payload": {}}),
              pgrst.get_rpc("read_stream", STREAM),
              pgrst.get_rpc("current_tenant"),
              pgrst.table("events")):
        assert (r.status, r.body["code"]) == (401, "42501"), r
        assert r.body["message"] == "permission denied for schema eventstore"


def test_forged_and_expired_tokens_are_refused(pgrst, tenants):
    ta, _ = tenants
    claims = {"role": "authenticated", "tenant_id": ta, "exp": int(time.time()) + 600}
    forged = sign_jwt("not-the-secret-of-this-server-000000", claims)
    expired = pgrst.token(ta, exp=int(time.time()) - 60)
    for tok in (forged, expired):
        r = pgrst.rpc("append_event", {**STREAM, "event_type": "Forged", "payload": {}}, tok)
        assert (r.status, r.body["code"]) == (401, "PGRST301"), r
    # a valid token may not name a role the authenticator cannot switch to
    r = pgrst.get_rpc("current_tenant", None, pgrst.token(ta, role="postgres"))
    assert (r.status, r.body["code"]) == (403, "42501"), r
    with admin_connect(pgrst.dbname) as conn:
        assert conn.execute("SELECT count(*) AS n FROM eventstore.events WHERE event_type = 'Forged'"
                            ).fetchone()["n"] == 0
