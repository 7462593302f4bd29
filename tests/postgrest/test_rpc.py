"""Every writer and reader function of eventstore called over HTTP through PostgREST, and the
tables a reader may select, as a Supabase client (supabase-js `rpc()` and `from()`) calls them:
POST /rpc/<fn> for volatile functions, GET /rpc/<fn>?args for stable ones, GET /<table>."""

import uuid

from conftest import admin_connect, as_tenant, unique

ORDER = {"aggregate_type": "order", "aggregate_id": "1001"}


def ok(r, status=200):
    assert r.status == status, r
    return r.body


def test_writers_append_and_readers_read(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    first = ok(pgrst.rpc("append_event", {**ORDER, "event_type": "OrderPlaced", "payload": {"total": 99.5},
                                          "metadata": {"actor": "web"}, "expected_version": 0}, tok))
    assert set(first) == {"event_id", "aggregate_version", "global_position", "recorded_at"}
    assert first["aggregate_version"] == 1
    given = str(uuid.uuid4())
    batch = ok(pgrst.rpc("append_events", {**ORDER, "expected_version": 1, "events": [
        {"event_type": "ItemAdded", "payload": {"sku": "A-7", "qty": 2}, "event_id": given},
        {"event_type": "OrderShipped", "payload": {"carrier": "DHL"}}]}, tok))
    assert [e["aggregate_version"] for e in batch] == [2, 3]
    assert batch[0]["event_id"] == given
    assert [e["global_position"] for e in batch] == [first["global_position"] + 1, first["global_position"] + 2]

    # stable functions by GET, with the arguments in the query string
    events = ok(pgrst.get_rpc("read_stream", ORDER, tok))
    assert [(e["aggregate_version"], e["event_type"], e["tenant_id"]) for e in events] == [
        (1, "OrderPlaced", ta), (2, "ItemAdded", ta), (3, "OrderShipped", ta)]
    assert events[0]["payload"] == {"total": 99.5} and events[0]["actor"] == "web"
    tail = ok(pgrst.get_rpc("read_stream", {**ORDER, "from_version": 2, "max_count": 1, "select": "aggregate_version"}, tok))
    assert tail == [{"aggregate_version": 2}]
    assert ok(pgrst.get_rpc("stream_version", ORDER, tok)) == 3
    assert ok(pgrst.get_rpc("stream_version", {"aggregate_type": "order", "aggregate_id": "none"}, tok)) == 0
    assert ok(pgrst.get_rpc("current_tenant", None, tok)) == ta
    # the same stable functions answer a POST too (supabase-js calls rpc() with POST by default)
    assert ok(pgrst.rpc("stream_version", ORDER, tok)) == 3

    # the feed, page by page, passing the cursor on; arrays as PostgreSQL array literals
    page1 = ok(pgrst.get_rpc("read_all", {"max_count": 2}, tok))
    page2 = ok(pgrst.get_rpc("read_all", {"after": page1[-1]["cursor"], "max_count": 2}, tok))
    assert [e["aggregate_version"] for e in page1 + page2] == [1, 2, 3]
    assert ok(pgrst.get_rpc("read_all", {"after": page2[-1]["cursor"]}, tok)) == []
    shipped = ok(pgrst.get_rpc("read_all", {"event_types": "{OrderShipped,Nothing}", "select": "event_type"}, tok))
    assert shipped == [{"event_type": "OrderShipped"}]
    assert ok(pgrst.get_rpc("read_all", {"aggregate_types": "{customer}"}, tok)) == []

    stats = ok(pgrst.get_rpc("get_event_store_stats", None, tok))
    assert (stats["total_events"], stats["total_streams"]) == (3, 1)
    assert stats["events_by_type"] == {"OrderPlaced": 1, "ItemAdded": 1, "OrderShipped": 1}

    state = ok(pgrst.get_rpc("get_aggregate_state", ORDER, tok))
    assert state["version"] == 3
    assert state["state"] == {"total": 99.5, "sku": "A-7", "qty": 2, "carrier": "DHL"}
    at1 = ok(pgrst.get_rpc("get_aggregate_state", {**ORDER, "at_version": 1}, tok))
    assert (at1["version"], at1["state"]) == (1, {"total": 99.5})
    assert ok(pgrst.rpc("create_snapshot", ORDER, tok)) == 3
    assert ok(pgrst.get_rpc("get_aggregate_state", ORDER, tok))["snapshot_version"] == 3

    lag = ok(pgrst.rpc("feed_lag", None, tok))
    assert lag["held_back_events"] == 0 and lag["blocking_backend"] is None


def test_subscriptions(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    ok(pgrst.rpc("append_events", {"aggregate_type": "order", "aggregate_id": "s1", "events": [
        {"event_type": "OrderPlaced", "payload": {}}, {"event_type": "OrderPaid", "payload": {}},
        {"event_type": "OrderPlaced", "payload": {}}]}, tok))
    start = ok(pgrst.rpc("create_subscription", {"name": "billing", "event_types": ["OrderPlaced"]}, tok))
    assert isinstance(start, str)
    polled = ok(pgrst.get_rpc("poll_subscription", {"name": "billing", "max_count": 10}, tok))
    assert [(e["event_type"], e["aggregate_version"]) for e in polled] == [("OrderPlaced", 1), ("OrderPlaced", 3)]
    # polling does not move the checkpoint; acking does, and never back
    assert len(ok(pgrst.get_rpc("poll_subscription", {"name": "billing"}, tok))) == 2
    assert ok(pgrst.rpc("ack_subscription", {"name": "billing", "cursor": polled[0]["cursor"]}, tok)) is True
    assert [e["aggregate_version"] for e in ok(pgrst.get_rpc("poll_subscription", {"name": "billing"}, tok))] == [3]
    assert ok(pgrst.rpc("ack_subscription", {"name": "billing", "cursor": polled[0]["cursor"]}, tok)) is False
    assert ok(pgrst.rpc("ack_subscription", {"name": "billing", "cursor": polled[1]["cursor"]}, tok)) is True
    assert ok(pgrst.get_rpc("poll_subscription", {"name": "billing"}, tok)) == []
    subs = ok(pgrst.table("subscriptions", "select=name,tenant_id", tok))
    assert subs == [{"name": "billing", "tenant_id": ta}]
    # a function returning void answers 204 without a body
    r = pgrst.rpc("drop_subscription", {"name": "billing"}, tok)
    assert (r.status, r.raw) == (204, "")
    assert ok(pgrst.table("subscriptions", "select=name", tok)) == []


def test_projection_and_worker_status(pgrst, tenants):
    ta, _ = tenants
    tok = pgrst.token(ta)
    name = unique("counts")
    with admin_connect(pgrst.dbname) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION public.ignore_event(e eventstore.event) RETURNS void"
                     " LANGUAGE sql AS $$ SELECT $$")
        as_tenant(conn, ta).execute("SELECT eventstore.register_projection(%s, 'public.ignore_event(eventstore.event)',"
                                    " mode => 'inline')", (name,))
    ok(pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "p1", "event_type": "E", "payload": {}}, tok))
    rows = ok(pgrst.get_rpc("projection_status", None, tok))
    assert [(r["name"], r["mode"], r["parked"], r["last_error"]) for r in rows] == [(name, "inline", 0, None)]
    status = ok(pgrst.rpc("worker_status", None, tok))
    assert status["scope"] == "tenant", status
    # another tenant sees none of it
    assert ok(pgrst.get_rpc("projection_status", None, pgrst.token(tenants[1]))) == []


def test_get_on_a_writing_function_is_refused(pgrst, tenants):
    """GET runs in a read-only transaction: a function that writes answers 405 and writes nothing."""
    ta, _ = tenants
    tok = pgrst.token(ta)
    r = pgrst.get_rpc("create_subscription", {"name": "by_get"}, tok)
    assert r.status == 405 and r.body["code"] == "25006", r
    assert ok(pgrst.table("subscriptions", "select=name", tok)) == []


def test_tables_a_reader_may_select(pgrst, tenants):
    ta, tb = tenants
    tok = pgrst.token(ta)
    for tenant in tenants:
        ok(pgrst.rpc("append_event", {"aggregate_type": "order", "aggregate_id": "t1", "event_type": "Placed",
                                      "payload": {"by": tenant}}, pgrst.token(tenant)))
    events = ok(pgrst.table("events", "select=tenant_id,aggregate_id,payload&aggregate_id=eq.t1", tok))
    assert events == [{"tenant_id": ta, "aggregate_id": "t1", "payload": {"by": ta}}]
    # filters and ordering of PostgREST work on them; another tenant's rows stay out even when asked for
    assert ok(pgrst.table("events", f"select=event_id&tenant_id=eq.{tb}", tok)) == []
    streams = ok(pgrst.table("streams", "select=aggregate_type,aggregate_id,version&aggregate_id=eq.t1", tok))
    assert streams == [{"aggregate_type": "order", "aggregate_id": "t1", "version": 1}]

    with admin_connect(pgrst.dbname) as conn:
        granted = [r["relname"] for r in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace"
            " AND c.relkind IN ('r', 'p') AND has_table_privilege('authenticated', c.oid, 'SELECT')"
            " ORDER BY 1")]
        ungranted = [r["relname"] for r in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace"
            " AND c.relkind IN ('r', 'p') AND NOT has_table_privilege('authenticated', c.oid, 'SELECT')"
            " AND NOT has_any_column_privilege('authenticated', c.oid, 'SELECT') ORDER BY 1")]
    assert {"events", "streams", "snapshots", "subscriptions", "api_request_log"} <= set(granted)
    assert "webhook_endpoints" not in granted and "api_versions" in ungranted
    for table in granted:
        rows = ok(pgrst.table(table, "select=tenant_id", tok))
        assert {r["tenant_id"] for r in rows} <= {ta}, (table, rows)
    # webhook signing secrets stay unreadable: the other columns can be selected
    assert ok(pgrst.table("webhook_endpoints", "select=endpoint_id,url,enabled", tok)) == []
    for query in ("select=secret", ""):
        r = pgrst.table("webhook_endpoints", query, tok)
        assert (r.status, r.body["code"]) == (403, "42501"), r
    # tables that are not the tenant's (the API catalog) are not readable at all
    for table in ungranted:
        r = pgrst.table(table, "", tok)
        assert (r.status, r.body["code"]) == (403, "42501"), (table, r)


def test_openapi_lists_what_authenticated_may_call(pgrst, tenants):
    """PostgREST's root lists the functions the role may execute and the tables it may read."""
    doc = ok(pgrst.request("GET", "/", token=pgrst.token(tenants[0])))
    paths = set(doc["paths"])
    with admin_connect(pgrst.dbname) as conn:
        functions = {f"/rpc/{r['proname']}" for r in conn.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'eventstore'::regnamespace"
            " AND p.prokind = 'f' AND has_function_privilege('authenticated', p.oid, 'EXECUTE')"
            " AND NOT EXISTS (SELECT 1 FROM pg_type t WHERE t.oid = p.prorettype AND t.typname = 'trigger')")}
    for fn in ("append_event", "append_events", "create_snapshot", "read_stream", "stream_version",
               "read_all", "feed_lag", "get_event_store_stats", "get_aggregate_state", "create_subscription",
               "poll_subscription", "ack_subscription", "drop_subscription", "projection_status",
               "worker_status", "route_api_call", "get_active_api_version", "current_tenant"):
        assert f"/rpc/{fn}" in functions, fn
    assert {p for p in paths if p.startswith("/rpc/")} == functions
    for admin_only in ("delete_stream", "grant_access", "define_reducer", "register_api_version", "redact_event"):
        assert f"/rpc/{admin_only}" not in paths
    assert {"/events", "/streams"} <= paths and "/api_versions" not in paths
