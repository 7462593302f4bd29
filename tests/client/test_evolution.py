"""Event schema evolution: JSON Schemas validate appends, upcasters reshape old events on read."""

from psycopg.types.json import Jsonb

from conftest import (append, append_events, create_snapshot, define_aggregate, define_reducer,
                      expect_error, follow, get_state, read_stream, snapshot_rows, stored_events,
                      stream_version, unique)

ORDER_V1 = {"type": "object", "required": ["customer_name"],
            "properties": {"customer_name": {"type": "string"}, "total": {"type": "number"}}}
ORDER_V2 = {"type": "object", "required": ["customer"],
            "properties": {"customer": {"type": "object", "required": ["name"],
                                        "properties": {"name": {"type": "string"}}},
                           "total": {"type": "number"}}}


def register_schema(conn, event_type, version, schema):
    conn.execute("SELECT eventstore.register_event_schema(%s, %s, %s)", (event_type, version, Jsonb(schema)))


def register_upcaster(conn, event_type, from_version, to_version, transform):
    conn.execute("SELECT eventstore.register_upcaster(%s, %s, %s, %s)",
                 (event_type, from_version, to_version, Jsonb(transform)))


def event_count(conn, tenant):
    return conn.execute("SELECT count(*) AS n FROM eventstore.events WHERE tenant_id = %s", (tenant,)).fetchone()["n"]


# --- schemas --------------------------------------------------------------------------------


def test_schema_validates_append_event(connect, tenant):
    conn = connect(tenant=tenant)
    register_schema(conn, "OrderPlaced", 1, ORDER_V1)
    err = expect_error("23514", conn, "SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', %s)",
                       (Jsonb({"customer_name": 7, "total": "12"}),))
    assert err.diag.message_primary == "payload does not match the JSON Schema of OrderPlaced version 1"
    detail = err.diag.message_detail
    assert "/customer_name: 7 is not of type \"string\"" in detail
    assert "/total: \"12\" is not of type \"number\"" in detail
    err = expect_error("23514", conn, "SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', '{}')")
    assert err.diag.message_detail == "/: \"customer_name\" is a required property"
    assert stream_version(conn, "order", "o-1") == 0 and event_count(conn, tenant) == 0

    append(conn, "order", "o-1", "OrderPlaced", {"customer_name": "Ann", "total": 12})
    # other event types are not validated
    append(conn, "order", "o-1", "Whatever", {"customer_name": 7})
    assert [(e["event_type"], e["schema_version"]) for e in stored_events(conn, tenant, "order", "o-1")] == [
        ("OrderPlaced", 1), ("Whatever", 1)]


def test_schema_validates_every_element_of_a_batch(connect, tenant):
    conn = connect(tenant=tenant)
    register_schema(conn, "OrderPlaced", 1, ORDER_V1)
    append(conn, "order", "o-1", "OrderPlaced", {"customer_name": "Ann"})
    batch = [{"event_type": "OrderPlaced", "payload": {"customer_name": "Bob"}},
             {"event_type": "Noted", "payload": {}},
             {"event_type": "OrderPlaced", "payload": {"customer_name": None}}]
    err = expect_error("23514", conn, "SELECT * FROM eventstore.append_events('order', 'o-1', %s)", (Jsonb(batch),))
    assert err.diag.message_primary == "events[2].payload does not match the JSON Schema of OrderPlaced version 1"
    assert err.diag.message_detail == "/customer_name: null is not of type \"string\""
    assert stream_version(conn, "order", "o-1") == 1 and event_count(conn, tenant) == 1
    batch[2]["payload"]["customer_name"] = "Cy"
    assert [r["aggregate_version"] for r in append_events(conn, "order", "o-1", batch)] == [2, 3, 4]


def test_events_get_the_newest_schema_version_unless_given(connect, tenant):
    conn = connect(tenant=tenant)
    register_schema(conn, "OrderPlaced", 1, ORDER_V1)
    append(conn, "order", "o-1", "OrderPlaced", {"customer_name": "Ann"})
    register_schema(conn, "OrderPlaced", 2, ORDER_V2)
    # now a v1 payload fails: v2 is the default
    expect_error("23514", conn, "SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', %s)",
                 (Jsonb({"customer_name": "Ann"}),))
    append(conn, "order", "o-1", "OrderPlaced", {"customer": {"name": "Bob"}})
    append_events(conn, "order", "o-1", [
        {"event_type": "OrderPlaced", "schema_version": 1, "payload": {"customer_name": "Cy"}},
        {"event_type": "OrderPlaced", "payload": {"customer": {"name": "Di"}}},
        {"event_type": "OrderPlaced", "schema_version": 2, "payload": {"customer": {"name": "Ed"}}},
    ])
    # the element's version is the one validated against
    err = expect_error("23514", conn, "SELECT * FROM eventstore.append_events('order', 'o-1', %s)",
                       (Jsonb([{"event_type": "OrderPlaced", "schema_version": 1,
                                "payload": {"customer": {"name": "F"}}}]),))
    assert err.diag.message_primary == "events[0].payload does not match the JSON Schema of OrderPlaced version 1"
    # a version that is not registered, for a type that has schemas
    err = expect_error("22023", conn, "SELECT * FROM eventstore.append_events('order', 'o-1', %s)",
                       (Jsonb([{"event_type": "OrderPlaced", "schema_version": 3,
                                "payload": {"customer": {"name": "G"}}}]),))
    assert err.diag.message_primary == "schema version 3 of event type OrderPlaced is not registered"
    assert err.diag.message_detail == "registered versions: 1, 2"
    assert [e["schema_version"] for e in stored_events(conn, tenant, "order", "o-1")] == [1, 2, 1, 2, 2]
    # without schemas, any version given is kept, and the default is 1
    append_events(conn, "note", "n-1", [{"event_type": "Noted", "schema_version": 5, "payload": {}},
                                        {"event_type": "Noted", "payload": {}}])
    assert [e["schema_version"] for e in stored_events(conn, tenant, "note", "n-1")] == [5, 1]


def test_schema_registration_rules(connect, tenant):
    conn = connect(tenant=tenant)
    register_schema(conn, "OrderPlaced", 1, ORDER_V1)
    # the identical schema again (key order does not matter): a no-op
    register_schema(conn, "OrderPlaced", 1, dict(reversed(list(ORDER_V1.items()))))
    err = expect_error("22023", conn, "SELECT eventstore.register_event_schema('OrderPlaced', 1, %s)",
                       (Jsonb(ORDER_V2),))
    assert err.diag.message_primary == "schema version 1 of event type OrderPlaced is registered already"
    err = expect_error("22023", conn, "SELECT eventstore.register_event_schema('OrderPlaced', 2, %s)",
                       (Jsonb({"type": "nope"}),))
    assert err.diag.message_primary == "json_schema is not a valid JSON Schema"
    expect_error("22023", conn, "SELECT eventstore.register_event_schema('OrderPlaced', 2, %s)",
                 (Jsonb({"properties": {"a": {"minimum": "zero"}}}),))
    for sql in ["SELECT eventstore.register_event_schema('OrderPlaced', 0, '{}')",
                "SELECT eventstore.register_event_schema('OrderPlaced', NULL, '{}')",
                "SELECT eventstore.register_event_schema('OrderPlaced', 2, NULL)",
                "SELECT eventstore.register_event_schema('', 2, '{}')"]:
        expect_error("22023", conn, sql)
    rows = conn.execute("SELECT event_type, schema_version, json_schema FROM eventstore.event_schemas"
                        " WHERE tenant_id = %s", (tenant,)).fetchall()
    assert rows == [{"event_type": "OrderPlaced", "schema_version": 1, "json_schema": ORDER_V1}]


def test_a_schema_registered_elsewhere_applies_at_once(connect, tenant):
    a, b = connect(tenant=tenant), connect(tenant=tenant)
    append(a, "order", "o-1", "OrderPlaced", {"anything": 1})  # a has looked: no schemas
    register_schema(b, "OrderPlaced", 1, ORDER_V1)
    expect_error("23514", a, "SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', '{\"anything\": 1}')")
    # one rolled back is gone
    b.execute("BEGIN")
    register_schema(b, "Other", 1, {"type": "object", "required": ["x"]})
    expect_error("23514", b, "SELECT eventstore.append_event('order', 'o-1', 'Other', '{}')")
    b.execute("ROLLBACK")
    append(b, "order", "o-1", "Other", {})


# --- upcasters ------------------------------------------------------------------------------


V1_TO_V2 = [{"op": "rename", "from": "customer_name", "to": "customer.name"},
            {"op": "move", "from": "customer_email", "to": "customer.email"}]
V2_TO_V3 = [{"op": "wrap", "path": "total", "into": "amount"},
            {"op": "set_default", "path": "total.currency", "value": "EUR"},
            {"op": "map_values", "path": "status", "map": {"new": "pending"}},
            {"op": "remove", "path": "legacy"}]


def test_upcasters_chain_on_every_read_and_never_touch_the_stored_rows(connect, tenant):
    conn = connect(tenant=tenant)
    register_schema(conn, "OrderPlaced", 1, ORDER_V1)
    v1 = {"customer_name": "Ann", "customer_email": "ann@x", "total": 12, "status": "new", "legacy": True}
    append(conn, "order", "o-1", "OrderPlaced", v1, metadata={"source": "v1"})
    register_schema(conn, "OrderPlaced", 2, ORDER_V2)
    v2 = {"customer": {"name": "Bob"}, "total": 5, "status": "paid"}
    append(conn, "order", "o-1", "OrderPlaced", v2)
    v3 = {"customer": {"name": "Cy"}, "total": {"amount": 1, "currency": "NOK"}, "status": "new"}
    register_schema(conn, "OrderPlaced", 3, {"type": "object", "required": ["total"],
                                             "properties": {"total": {"type": "object"}}})
    append_events(conn, "order", "o-1", [{"event_type": "OrderPlaced", "payload": v3},
                                         {"event_type": "Shipped", "payload": {"status": "new"}}])

    register_upcaster(conn, "OrderPlaced", 1, 2, V1_TO_V2)
    register_upcaster(conn, "OrderPlaced", 2, 3, V2_TO_V3)
    expected = [
        (3, {"customer": {"name": "Ann", "email": "ann@x"}, "total": {"amount": 12, "currency": "EUR"},
             "status": "pending"}),
        (3, {"customer": {"name": "Bob"}, "total": {"amount": 5, "currency": "EUR"}, "status": "paid"}),
        (3, v3),
        (1, {"status": "new"}),  # another event type: untouched
    ]
    got = [(e["schema_version"], e["payload"]) for e in read_stream(conn, "order", "o-1")]
    assert got == expected
    rows, _ = follow(conn, aggregate_types=["order"])
    assert [(e["schema_version"], e["payload"]) for e in rows] == expected
    assert read_stream(conn, "order", "o-1")[0]["metadata"] == {"source": "v1"}
    # from_version/max_count reads upcast too
    assert [(e["schema_version"], e["payload"]) for e in read_stream(conn, "order", "o-1", 2, 1)] == expected[1:2]

    # the stored rows keep what was written
    stored = stored_events(conn, tenant, "order", "o-1")
    assert [(e["schema_version"], e["payload"]) for e in stored] == [(1, v1), (2, v2), (3, v3), (1, {"status": "new"})]

    # reducers see upcast payloads
    define_reducer(conn, "order", "OrderPlaced", rule=[
        {"op": "append", "path": "customers", "from": "customer.name"},
        {"op": "increment", "path": "sum", "from": "total.amount"},
        {"op": "set", "path": "currency", "from": "total.currency"},
        {"op": "set", "path": "legacy", "from": "legacy"}])
    row = get_state(conn, "order", "o-1")
    assert row["state"] == {"customers": ["Ann", "Bob", "Cy"], "sum": 18, "currency": "NOK", "status": "new"}
    assert get_state(conn, "order", "o-1", at_version=1)["state"] == {
        "customers": ["Ann"], "sum": 12, "currency": "EUR"}


def test_handler_reducers_see_upcast_events(connect, tenant):
    conn = connect(tenant=tenant)
    conn.execute("""
        CREATE SCHEMA IF NOT EXISTS app;
        CREATE OR REPLACE FUNCTION app.collect(state jsonb, event eventstore.event) RETURNS jsonb
        LANGUAGE sql AS $$
            SELECT jsonb_build_object('seen', coalesce(state -> 'seen', '[]') || jsonb_build_array(
                jsonb_build_object('v', event.schema_version, 'payload', event.payload)))
        $$""")
    append(conn, "order", "o-1", "OrderPlaced", {"customer_name": "Ann"})
    register_upcaster(conn, "OrderPlaced", 1, 2, V1_TO_V2)
    define_reducer(conn, "order", "OrderPlaced", handler="app.collect(jsonb, eventstore.event)")
    assert get_state(conn, "order", "o-1")["state"] == {"seen": [{"v": 2, "payload": {"customer": {"name": "Ann"}}}]}


def test_registering_an_upcaster_makes_old_snapshots_ignored(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "order", {}, snapshot_every=2)
    append_events(conn, "order", "o-1", [{"event_type": "OrderPlaced", "payload": {"customer_name": "Ann"}}] * 2)
    old = snapshot_rows(conn, tenant, "order", "o-1")
    assert [(r["version"], r["state"]) for r in old] == [(2, {"customer_name": "Ann"})]
    register_upcaster(conn, "OrderPlaced", 1, 2, V1_TO_V2)
    row = get_state(conn, "order", "o-1")
    assert (row["state"], row["snapshot_version"]) == ({"customer": {"name": "Ann"}}, None)
    assert create_snapshot(conn, "order", "o-1") == 2
    new = snapshot_rows(conn, tenant, "order", "o-1")
    assert [(r["version"], r["state"]) for r in new] == [(2, {"customer": {"name": "Ann"}})]
    assert new[0]["reducer_hash"] != old[0]["reducer_hash"]


def test_upcaster_registration_rules(connect, tenant):
    conn = connect(tenant=tenant)
    register_upcaster(conn, "OrderPlaced", 1, 2, V1_TO_V2)
    register_upcaster(conn, "OrderPlaced", 2, 3, V2_TO_V3)
    register_upcaster(conn, "OrderPlaced", 2, 3, V2_TO_V3)  # the same step again: a no-op
    for (f, t, transform), registered in [((1, 3, []), "1->2"), ((2, 4, []), "2->3"), ((1, 2, []), "1->2"),
                                          ((2, 3, V1_TO_V2), "2->3")]:
        err = expect_error("22023", conn, "SELECT eventstore.register_upcaster('OrderPlaced', %s, %s, %s)",
                           (f, t, Jsonb(transform)))
        assert err.diag.message_primary == f"upcaster {f}->{t} of event type OrderPlaced overlaps the chain"
        assert err.diag.message_detail == f"an upcaster {registered} is registered already"
    for f, t, transform, message in [
        (3, 3, [], "to_version must be greater than from_version"),
        (4, 3, [], "to_version must be greater than from_version"),
        (0, 1, [], "from_version must be 1 or more"),
        (3, 4, [{"op": "set", "path": "a", "value": 1}], "invalid transform: step 0: unknown op \"set\""),
        (3, 4, [{"op": "rename", "from": "a"}], "invalid transform: step 0: \"rename\" needs \"to\""),
        (3, 4, [{"op": "remove", "path": 5}], "invalid transform: step 0: \"path\" must be a string, not a number"),
        (3, 4, {"op": "remove", "path": "a"}, "invalid transform: program must be a JSON array of steps, not an object"),
    ]:
        err = expect_error("22023", conn, "SELECT eventstore.register_upcaster('OrderPlaced', %s, %s, %s)",
                           (f, t, Jsonb(transform)))
        assert err.diag.message_primary == message
    rows = conn.execute("SELECT from_version, to_version FROM eventstore.upcasters WHERE tenant_id = %s"
                        " ORDER BY from_version", (tenant,)).fetchall()
    assert [(r["from_version"], r["to_version"]) for r in rows] == [(1, 2), (2, 3)]
    # a step that continues the chain is fine, and so is one of another event type
    register_upcaster(conn, "OrderPlaced", 3, 5, [])
    register_upcaster(conn, "Other", 1, 3, [])


def test_a_gap_in_the_chain_stops_the_upcast(connect, tenant):
    conn = connect(tenant=tenant)
    register_upcaster(conn, "E", 1, 2, [{"op": "set_default", "path": "v2", "value": True}])
    register_upcaster(conn, "E", 3, 4, [{"op": "set_default", "path": "v4", "value": True}])
    append_events(conn, "s", "1", [{"event_type": "E", "payload": {}},
                                   {"event_type": "E", "schema_version": 3, "payload": {}}])
    got = [(e["schema_version"], e["payload"]) for e in read_stream(conn, "s", "1")]
    assert got == [(2, {"v2": True}), (4, {"v4": True})]


# --- tenancy --------------------------------------------------------------------------------


def test_schemas_and_upcasters_are_per_tenant(connect):
    ta, tb = unique("ta"), unique("tb")
    a, b = connect(tenant=ta), connect(tenant=tb)
    register_schema(a, "OrderPlaced", 1, ORDER_V1)
    register_schema(a, "OrderPlaced", 2, ORDER_V2)
    register_upcaster(a, "OrderPlaced", 1, 2, V1_TO_V2)
    # tenant b: no validation, no version assigned, no upcasting
    append(b, "order", "o-1", "OrderPlaced", {"customer_name": 1})
    append_events(b, "order", "o-1", [{"event_type": "OrderPlaced", "schema_version": 9, "payload": {}}])
    assert [(e["schema_version"], e["payload"]) for e in read_stream(b, "order", "o-1")] == [
        (1, {"customer_name": 1}), (9, {})]
    assert get_state(b, "order", "o-1")["state"] == {"customer_name": 1}
    # tenant b registers a different schema 1 without conflict, and a's stay as they are
    register_schema(b, "OrderPlaced", 1, {"type": "object", "required": ["b"]})
    register_upcaster(b, "OrderPlaced", 1, 5, [])
    expect_error("23514", a, "SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', '{}')")
    append_events(a, "order", "o-1", [{"event_type": "OrderPlaced", "schema_version": 1,
                                       "payload": {"customer_name": "Ann"}}])
    assert [(e["schema_version"], e["payload"]) for e in read_stream(a, "order", "o-1")] == [
        (2, {"customer": {"name": "Ann"}})]
    expect_error("23514", b, "SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', '{\"customer_name\": \"x\"}')")
    assert [e["schema_version"] for e in read_stream(b, "order", "o-1")] == [5, 9]


# --- numbers --------------------------------------------------------------------------------


def test_upcasting_keeps_numbers_exactly(connect, tenant):
    """Only the steps of the transform may change a payload; the numbers in it stay as stored."""
    conn = connect(tenant=tenant)
    register_upcaster(conn, "E", 1, 2, [{"op": "set_default", "path": "v2", "value": True}])
    payload = '{"big": 12345678901234567890123, "dec": 0.1000000000000000000001}'
    conn.execute("SELECT eventstore.append_event('s', '1', 'E', %s::jsonb)", (payload,))
    row = conn.execute("SELECT payload = %s::jsonb || '{\"v2\": true}' AS same, payload::text AS p"
                       " FROM eventstore.read_stream('s', '1')", (payload,)).fetchone()
    assert row["same"], row["p"]


def test_validation_accepts_every_jsonb_number(connect, tenant):
    """jsonb accepts 1e400; a payload holding it matches {"type": "object"}."""
    conn = connect(tenant=tenant)
    register_schema(conn, "E", 1, {"type": "object"})
    conn.execute("SELECT eventstore.append_event('s', '2', 'E', '{\"huge\": 1e400}')")
    assert stream_version(conn, "s", "2") == 1
