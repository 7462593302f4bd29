"""Aggregate state: reducers, snapshots and time travel.

The property that defines correctness: for every version v of a stream, get_aggregate_state
(at_version => v) equals a full replay of the first v events from the initial state, whatever
snapshots exist. It is checked against a model written here (an RFC 7396 merge patch and the few
rule steps the test uses), not against the engine under test.
"""

import copy
import random

import pytest
from psycopg.types.json import Jsonb

from conftest import (append, append_events, create_snapshot, define_aggregate, define_reducer,
                      expect_error, get_state, read_stream, server_now, snapshot_rows, start,
                      stored_events, unique)


# --- an independent model ------------------------------------------------------------------


def merge_patch(target, patch):
    """RFC 7396, section 2, as pseudo-code there says; returns a new value."""
    if isinstance(patch, dict):
        result = dict(target) if isinstance(target, dict) else {}
        for name, value in patch.items():
            if value is None:
                result.pop(name, None)
            else:
                result[name] = merge_patch(result.get(name), value)
        return result
    return copy.deepcopy(patch)


def canonical(value):
    """JSON as jsonb compares it: numbers by value, booleans never equal to numbers, key order
    irrelevant."""
    if isinstance(value, dict):
        return ("object", frozenset((k, canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(canonical(v) for v in value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    return (type(value).__name__, value)


def same_json(a, b):
    return canonical(a) == canonical(b)


def assert_json(actual, expected, what=""):
    assert same_json(actual, expected), f"{what}\n  actual:   {actual!r}\n  expected: {expected!r}"


# --- random payloads -------------------------------------------------------------------------

KEYS = ["a", "b", "c", "d", "e"]
STRINGS = ["x", "y", "", "ø", "日本", "quote\"d", "back\\slash", "line\nbreak"]


def random_value(rng, depth):
    roll = rng.random()
    if roll < 0.18:
        return None
    if roll < 0.33:
        return rng.randint(-1000, 1000)
    if roll < 0.43:
        return rng.randint(-800, 800) / 8  # exactly representable, sometimes whole (2.0)
    if roll < 0.53:
        return rng.choice(STRINGS)
    if roll < 0.60:
        return rng.random() < 0.5
    if roll < 0.72 or depth <= 0:
        # arrays are replaced whole; nulls and objects with null members inside them stay
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))] if depth > 0 else []
    return random_object(rng, depth - 1)


def random_object(rng, depth):
    return {rng.choice(KEYS): random_value(rng, depth) for _ in range(rng.randint(0, 4))}


INITIAL = {"init": {"x": 1, "arr": [1, None, {"k": None}]}, "a": 0, "z": None}

# Rules over paths that the random merge patches never touch (KEYS), so the model stays simple.
COUNTED_RULE = [
    {"op": "increment", "path": "stats.count", "value": 1},
    {"op": "increment", "path": "stats.sum", "from": "amount"},
    {"op": "append", "path": "log", "from": "tag"},
]
NESTED_RULE = [{"op": "merge", "path": "deep.zone", "from": "patch"}]


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def model_reduce(state, event_type, payload, counted_step=1):
    """The state after one event: merge patch by default, the two rules above otherwise."""
    if event_type == "Counted":
        state = copy.deepcopy(state)
        stats = state.setdefault("stats", {})
        stats["count"] = stats["count"] + counted_step if is_number(stats.get("count")) else counted_step
        if "amount" in payload:
            by = payload["amount"]
            stats["sum"] = stats["sum"] + by if is_number(stats.get("sum")) else by
        if "tag" in payload:
            state["log"] = state.get("log", []) + [payload["tag"]]
        return state
    if event_type == "Nested":
        state = copy.deepcopy(state)
        deep = state.setdefault("deep", {})
        deep["zone"] = merge_patch(deep.get("zone"), payload["patch"])
        return state
    return merge_patch(state, payload)


def random_event(rng):
    roll = rng.random()
    if roll < 0.15:
        payload = {"tag": rng.choice(STRINGS + [None, 7])}
        if rng.random() < 0.8:
            payload["amount"] = rng.choice([rng.randint(-50, 50), rng.randint(-40, 40) / 4])
        return {"event_type": "Counted", "payload": payload}
    if roll < 0.25:
        return {"event_type": "Nested", "payload": {"patch": random_object(rng, 2)}}
    return {"event_type": rng.choice(["Patched", "Changed"]), "payload": random_object(rng, 3)}


def replay(initial, events, counted_step=1):
    """[state after 0 events, after 1, ...]."""
    states = [initial]
    for ev in events:
        states.append(model_reduce(states[-1], ev["event_type"], ev["payload"], counted_step))
    return states


def every_version(conn, aggregate_type, aggregate_id, upto):
    """get_aggregate_state at every version 0..upto, in one statement."""
    return conn.execute(
        "SELECT v, s.version, s.state, s.snapshot_version"
        " FROM generate_series(0, %s::bigint) v,"
        " LATERAL eventstore.get_aggregate_state(%s, %s, at_version => v) s ORDER BY v",
        (upto, aggregate_type, aggregate_id),
    ).fetchall()


def check_every_version(conn, aggregate_type, aggregate_id, states, snapshots):
    """Every at_version from 0 to two past the end: the model's state, and the newest snapshot
    at or below it (or none) as the one that served."""
    end = len(states) - 1
    rows = every_version(conn, aggregate_type, aggregate_id, end + 2)
    assert [r["v"] for r in rows] == list(range(end + 3))
    for row in rows:
        v = row["v"]
        if v == 0:
            # no event yet: like a missing stream (not the initial state)
            assert (row["version"], row["state"], row["snapshot_version"]) == (0, None, None)
            continue
        target = min(v, end)
        assert row["version"] == target, f"at_version {v}"
        assert_json(row["state"], states[target], f"state at_version {v}")
        below = [s for s in snapshots if s <= target]
        assert row["snapshot_version"] == (max(below) if below else None), f"snapshot at_version {v}"


# --- the property ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [7, 2024, 31337])
def test_state_at_every_version_equals_a_full_replay(connect, tenant, seed):
    rng = random.Random(seed)
    every, keep = rng.randint(3, 7), 2
    conn = connect(tenant=tenant)
    define_aggregate(conn, "doc", INITIAL, snapshot_every=every, keep_snapshots=keep)
    define_reducer(conn, "doc", "Counted", rule=COUNTED_RULE)
    define_reducer(conn, "doc", "Nested", rule=NESTED_RULE)

    events, states, model_snapshots = [], [INITIAL], []
    while len(events) < 300:
        batch = [random_event(rng) for _ in range(rng.choice([1, 1, 1, 2, 3, 5, 9, 16]))]
        before = len(events)
        if len(batch) == 1 and rng.random() < 0.5:
            append(conn, "doc", "d-1", batch[0]["event_type"], batch[0]["payload"], expected_version=before)
        else:
            append_events(conn, "doc", "d-1", batch, expected_version=before)
        events += batch
        states += replay(states[-1], batch)[1:]
        after = len(events)
        if before // every != after // every:
            model_snapshots.append(after // every * every)  # the last multiple crossed only
        if rng.random() < 0.12:
            assert create_snapshot(conn, "doc", "d-1") == after
            if not model_snapshots or model_snapshots[-1] != after:
                model_snapshots.append(after)
        model_snapshots = model_snapshots[-keep:]

        rows = snapshot_rows(conn, tenant, "doc", "d-1")
        assert [r["version"] for r in rows] == model_snapshots, f"after appending {before + 1}..{after}"
        assert len({r["reducer_hash"] for r in rows}) <= 1
        for r in rows:
            assert_json(r["state"], states[r["version"]], f"snapshot {r['version']}")
        now = get_state(conn, "doc", "d-1")
        assert now["version"] == after
        assert_json(now["state"], states[after], f"current state at {after}")

    assert states == replay(INITIAL, events)
    assert len(stored_events(conn, tenant, "doc", "d-1")) == len(events)
    check_every_version(conn, "doc", "d-1", states, model_snapshots)

    # another connection (its own definition cache) computes the same
    check_every_version(connect(tenant=tenant), "doc", "d-1", states, model_snapshots)

    # a new initial state: every old snapshot is ignored, the state recomputed from it
    hash_before = snapshot_rows(conn, tenant, "doc", "d-1")[-1]["reducer_hash"]
    initial2 = {"fresh": [True, None], "a": {"b": 1.5}}
    define_aggregate(conn, "doc", initial2, snapshot_every=every, keep_snapshots=keep)
    states = replay(initial2, events)
    check_every_version(conn, "doc", "d-1", states, [])
    end = len(events)
    assert create_snapshot(conn, "doc", "d-1") == end
    rows = snapshot_rows(conn, tenant, "doc", "d-1")
    assert rows[-1]["version"] == end and rows[-1]["reducer_hash"] != hash_before
    assert all(r["reducer_hash"] != hash_before for r in rows), "old snapshots are pruned with the new one"
    check_every_version(conn, "doc", "d-1", states, [end])

    # a changed rule: the same again
    define_reducer(conn, "doc", "Counted", rule=[dict(COUNTED_RULE[0], value=10)] + COUNTED_RULE[1:])
    states = replay(initial2, events, counted_step=10)
    check_every_version(conn, "doc", "d-1", states, [])
    create_snapshot(conn, "doc", "d-1")
    check_every_version(connect(tenant=tenant), "doc", "d-1", states, [end])

    # only the snapshot policy changed: the snapshots stay valid
    define_aggregate(conn, "doc", initial2, snapshot_every=every + 1, keep_snapshots=keep)
    check_every_version(conn, "doc", "d-1", states, [end])


def test_model_agrees_with_rfc_7396_appendix_a():
    """The model itself, on the RFC's examples."""
    vectors = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in vectors:
        assert merge_patch(target, patch) == expected
    assert not same_json(True, 1) and same_json(1, 1.0) and not same_json([1, 2], [2, 1])


def test_default_reducer_is_a_merge_patch_of_each_payload(connect, tenant):
    conn = connect(tenant=tenant)
    payloads = [
        {"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
         "tags": ["example", "sample"], "content": "This will be unchanged"},
        {"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": None},
         "tags": ["example"]},
        {"new": {"x": None, "y": {"z": None}}, "list": [None, {"n": None}]},
    ]
    for p in payloads:
        append(conn, "article", "a-1", "Edited", p)
    # an aggregate type nobody defined: initial state {}, no automatic snapshots
    row = get_state(conn, "article", "a-1")
    assert row["aggregate_type"] == "article" and row["aggregate_id"] == "a-1"
    assert row["version"] == 3 and row["snapshot_version"] is None
    assert row["state"] == {
        "title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
        "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890",
        "new": {"y": {}}, "list": [None, {"n": None}],
    }
    assert get_state(conn, "article", "a-1", at_version=1)["state"] == payloads[0]
    assert snapshot_rows(conn, tenant, "article", "a-1") == []
    # create_snapshot works without a definition too
    assert create_snapshot(conn, "article", "a-1") == 3
    assert get_state(conn, "article", "a-1")["snapshot_version"] == 3
    assert create_snapshot(conn, "article", "no-such-stream") == 0


# --- declarative ops ------------------------------------------------------------------------


def rule_state(connect, tenant, rule, payloads, initial=None, event_type="E"):
    """The state after `payloads` (each appended as one `event_type` event) under `rule`."""
    conn = connect(tenant=tenant)
    agg = unique("agg")
    define_aggregate(conn, agg, {} if initial is None else initial)
    define_reducer(conn, agg, event_type, rule=rule)
    for p in payloads:
        append(conn, agg, "1", event_type, p)
    return get_state(conn, agg, "1")["state"]


def test_op_set_from_payload_and_constant(connect, tenant):
    rule = [{"op": "set", "path": "status", "value": "open"},
            {"op": "set", "path": "address.city", "from": "city"},
            {"op": "set", "path": "who", "from": "person"}]
    assert rule_state(connect, tenant, rule, [{"city": "Oslo", "person": {"n": [1]}}], {"a": 1}) == {
        "a": 1, "status": "open", "address": {"city": "Oslo"}, "who": {"n": [1]}}
    # a missing "from" leaves the path alone; a "from" holding null sets null
    assert rule_state(connect, tenant, rule, [{"city": "Oslo"}, {"city": None}]) == {
        "status": "open", "address": {"city": None}}
    # a non-object on the way is replaced by an object
    assert rule_state(connect, tenant, [{"op": "set", "path": "a.b", "value": 1}], [{}], {"a": [1, 2]}) == {
        "a": {"b": 1}}
    # a constant that is an object, or null
    assert rule_state(connect, tenant, [{"op": "set", "path": "o", "value": {"k": None}}], [{}]) == {
        "o": {"k": None}}


def test_op_unset(connect, tenant):
    rule = [{"op": "unset", "path": "a.b"}, {"op": "unset", "path": "missing.path"}]
    assert rule_state(connect, tenant, rule, [{}], {"a": {"b": 1, "c": 2}, "x": 1}) == {"a": {"c": 2}, "x": 1}
    assert rule_state(connect, tenant, rule, [{}], {"a": 3}) == {"a": 3}


def test_op_merge_at_root_and_at_a_path(connect, tenant):
    root = [{"op": "merge", "from": "changes"}]
    assert rule_state(connect, tenant, root, [{"changes": {"b": None, "c": {"d": 1, "e": None}}}],
                      {"a": 1, "b": 2}) == {"a": 1, "c": {"d": 1}}
    path = [{"op": "merge", "path": "profile", "value": {"x": 1, "y": None}}]
    assert rule_state(connect, tenant, path, [{}], {"profile": {"y": 2, "z": 3}}) == {"profile": {"x": 1, "z": 3}}
    created = [{"op": "merge", "path": "p.q", "from": "m"}]
    assert rule_state(connect, tenant, created, [{"m": {"x": None, "y": 1}}, {"m": {"z": [None]}}]) == {
        "p": {"q": {"y": 1, "z": [None]}}}
    # a non-object patch replaces; a null operand removes the path
    assert rule_state(connect, tenant, [{"op": "merge", "path": "p", "from": "m"}],
                      [{"m": [1]}], {"p": {"y": 2}}) == {"p": [1]}
    assert rule_state(connect, tenant, [{"op": "merge", "path": "p", "from": "m"}],
                      [{"m": None}], {"p": 1, "q": 2}) == {"q": 2}


def test_op_append(connect, tenant):
    rule = [{"op": "append", "path": "cart.items", "from": "item"}, {"op": "append", "path": "log", "value": "added"}]
    payloads = [{"item": {"sku": "a"}}, {"item": {"sku": "b", "n": None}}, {}, {"item": None}]
    assert rule_state(connect, tenant, rule, payloads) == {
        "cart": {"items": [{"sku": "a"}, {"sku": "b", "n": None}, None]}, "log": ["added"] * 4}
    # a non-array at the path becomes a new array
    assert rule_state(connect, tenant, rule[:1], [{"item": 1}], {"cart": {"items": "x"}}) == {"cart": {"items": [1]}}


def test_op_remove_by_key(connect, tenant):
    rule = [{"op": "remove", "path": "items", "key": "sku", "from": "sku"}]
    initial = {"items": [{"sku": "a", "n": 1}, {"sku": "b"}, {"sku": "a"}, "a", {"other": "a"}, {"sku": 1}]}
    assert rule_state(connect, tenant, rule, [{"sku": "a"}], initial) == {
        "items": [{"sku": "b"}, "a", {"other": "a"}, {"sku": 1}]}
    # numbers compare by value; a missing "from" does nothing; no array: nothing created
    assert rule_state(connect, tenant, rule, [{"sku": 1.0}, {}], initial)["items"] == initial["items"][:5]
    assert rule_state(connect, tenant, rule, [{"sku": "a"}]) == {}
    constant = [{"op": "remove", "path": "xs", "key": "id", "value": {"k": [1]}}]
    assert rule_state(connect, tenant, constant, [{}], {"xs": [{"id": {"k": [1]}}, {"id": {"k": [2]}}]}) == {
        "xs": [{"id": {"k": [2]}}]}


def test_op_increment_ints_and_floats(connect, tenant):
    rule = [{"op": "increment", "path": "count", "value": 1},
            {"op": "increment", "path": "totals.amount", "from": "amount"},
            {"op": "increment", "path": "ratio", "value": 0.25}]
    payloads = [{"amount": 5}, {"amount": 7}, {}, {"amount": -2}]
    state = rule_state(connect, tenant, rule, payloads)
    assert state == {"count": 4, "totals": {"amount": 10}, "ratio": 1.0}
    assert isinstance(state["count"], int) and isinstance(state["totals"]["amount"], int)
    assert isinstance(state["ratio"], float)
    # a float operand makes a float; a non-number at the path counts as 0; a string operand does nothing
    state = rule_state(connect, tenant, rule[1:2], [{"amount": 1.5}, {"amount": 2}, {"amount": "3"}],
                       {"totals": {"amount": "x"}})
    assert state == {"totals": {"amount": 3.5}}
    assert rule_state(connect, tenant, rule[1:2], [{"amount": 2}], {"totals": {"amount": 40}}) == {
        "totals": {"amount": 42}}


def test_op_delete_makes_the_state_null_from_that_version_on(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "account", {"open": False}, snapshot_every=2)
    define_reducer(conn, "account", "Closed",
                   rule=[{"op": "set", "path": "open", "value": False}, {"op": "$delete"},
                         {"op": "set", "path": "after", "value": True}])
    define_reducer(conn, "account", "Tagged", rule=[{"op": "set", "path": "tag", "from": "tag"}])
    append_events(conn, "account", "a-1", [
        {"event_type": "Opened", "payload": {"open": True}},
        {"event_type": "Deposited", "payload": {"balance": 5}},
    ])
    append_events(conn, "account", "a-1", [
        {"event_type": "Closed", "payload": {}},
        {"event_type": "Deposited", "payload": {"balance": 7}},
        {"event_type": "Tagged", "payload": {"tag": "late"}},
    ])
    rows = {r["v"]: r for r in every_version(conn, "account", "a-1", 6)}
    assert rows[1]["state"] == {"open": True}
    assert rows[2]["state"] == {"open": True, "balance": 5}
    for v in (3, 4, 5, 6):
        assert rows[v]["version"] == min(v, 5) and rows[v]["state"] is None, v
    now = get_state(conn, "account", "a-1")
    assert now["version"] == 5 and now["state"] is None and now["updated_at"] is not None
    # the snapshot after the deletion holds a null state, and serves it
    assert [(r["version"], r["state"]) for r in snapshot_rows(conn, tenant, "account", "a-1")] == [
        (2, {"open": True, "balance": 5}), (4, None)]
    assert now["snapshot_version"] == 4
    # the stream itself is not deleted: it is still read and appended to
    assert len(read_stream(conn, "account", "a-1")) == 5


# --- SQL-function reducers ------------------------------------------------------------------


HANDLER = """
CREATE SCHEMA IF NOT EXISTS app;
CREATE OR REPLACE FUNCTION app.trace(state jsonb, event eventstore.event) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'n', coalesce((state ->> 'n')::int, 0) + (event.payload ->> 'n')::int,
        'seen', coalesce(state -> 'seen', '[]') || jsonb_build_array(jsonb_build_object(
            'type', event.event_type, 'version', event.aggregate_version,
            'schema_version', event.schema_version, 'actor', event.actor,
            'id', event.aggregate_id, 'who', current_user)))
$$;
"""


def test_sql_function_reducer_receives_the_whole_event(connect, tenant):
    conn = connect(tenant=tenant)
    conn.execute(HANDLER)
    define_aggregate(conn, "tally", {"n": 100}, snapshot_every=3)
    define_reducer(conn, "tally", "Added", handler="app.trace(jsonb, eventstore.event)")
    append(conn, "tally", "t-1", "Added", {"n": 1}, metadata={"actor": "ann"})
    append(conn, "tally", "t-1", "Noted", {"note": "merged by default"})
    append_events(conn, "tally", "t-1", [{"event_type": "Added", "payload": {"n": 2}},
                                         {"event_type": "Added", "payload": {"n": 3}, "metadata": {"actor": "bob"}}])
    seen = [{"type": "Added", "version": 1, "schema_version": 1, "actor": "ann", "id": "t-1", "who": "postgres"}]
    row = get_state(conn, "tally", "t-1")
    # the handler replaces the state: it rebuilds it from n and seen, dropping "note"
    assert row["state"] == {"n": 106, "seen": seen + [
        {"type": "Added", "version": 3, "schema_version": 1, "actor": None, "id": "t-1", "who": "postgres"},
        {"type": "Added", "version": 4, "schema_version": 1, "actor": "bob", "id": "t-1", "who": "postgres"}]}
    assert row["version"] == 4 and row["snapshot_version"] == 3
    assert get_state(conn, "tally", "t-1", at_version=2)["state"] == {"n": 101, "seen": seen, "note": "merged by default"}
    assert snapshot_rows(conn, tenant, "tally", "t-1")[0]["state"]["n"] == 103
    stored = conn.execute("SELECT rule, handler::text AS handler FROM eventstore.reducers"
                          " WHERE tenant_id = %s AND aggregate_type = 'tally'", (tenant,)).fetchall()
    assert stored == [{"rule": None, "handler": "app.trace(jsonb,eventstore.event)"}]


BAD_HANDLERS = """
CREATE OR REPLACE FUNCTION app.one_arg(state jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT state';
CREATE OR REPLACE FUNCTION app.swapped(event eventstore.event, state jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT state';
CREATE OR REPLACE FUNCTION app.returns_text(state jsonb, event eventstore.event) RETURNS text
    LANGUAGE sql AS 'SELECT state::text';
CREATE OR REPLACE FUNCTION app.returns_set(state jsonb, event eventstore.event) RETURNS SETOF jsonb
    LANGUAGE sql AS 'SELECT state';
CREATE OR REPLACE PROCEDURE app.a_procedure(state jsonb, event eventstore.event) LANGUAGE sql AS 'SELECT 1';
"""


@pytest.mark.parametrize("handler, message", [
    ("app.one_arg(jsonb)", "handler app.one_arg(jsonb) takes (state jsonb)"),
    ("app.swapped(eventstore.event, jsonb)",
     "handler app.swapped(eventstore.event,jsonb) takes (event eventstore.event, state jsonb)"),
    ("app.returns_text(jsonb, eventstore.event)", "handler app.returns_text(jsonb,eventstore.event) returns text"),
    ("app.returns_set(jsonb, eventstore.event)", "handler app.returns_set(jsonb,eventstore.event) returns a set"),
    ("app.a_procedure(jsonb, eventstore.event)", "handler app.a_procedure(jsonb,eventstore.event) is not a plain function"),
])
def test_handler_with_the_wrong_signature_is_refused(connect, tenant, handler, message):
    conn = connect(tenant=tenant)
    conn.execute(HANDLER + BAD_HANDLERS)
    define_aggregate(conn, "tally")
    err = expect_error("22023", conn, "SELECT eventstore.define_reducer('tally', 'Added', handler => %s::regprocedure)",
                       (handler,))
    assert err.diag.message_primary == message
    assert "(state jsonb, event eventstore.event) RETURNS jsonb" in err.diag.message_hint
    assert conn.execute("SELECT count(*) AS n FROM eventstore.reducers WHERE tenant_id = %s", (tenant,)).fetchone()["n"] == 0


def test_handler_that_does_not_exist(connect, tenant):
    conn = connect(tenant=tenant)
    # the regprocedure cast fails before eventstore is called
    expect_error("42883", conn,
                 "SELECT eventstore.define_reducer('tally', 'Added', handler => 'app.nope(jsonb, eventstore.event)')")
    expect_error("22023", conn, "SELECT eventstore.define_reducer('tally', 'Added', handler => NULL::regprocedure)")


BAD_RULES = [
    ({"op": "set", "path": "a", "value": 1}, "program must be a JSON array of steps, not an object"),
    ([{"op": "sett", "path": "a", "value": 1}], "step 0: unknown op \"sett\""),
    ([{"op": "unset", "path": "a"}, {"op": "rename", "from": "a", "to": "b"}], "step 1: unknown op \"rename\""),
    ([{"path": "a"}], "step 0: \"op\" is missing"),
    ([{"op": "set", "path": "a"}], "step 0: \"set\" needs \"from\" or \"value\""),
    ([{"op": "increment", "path": "a", "from": "b", "value": 1}],
     "step 0: \"increment\" takes \"from\" or \"value\", not both"),
    ([{"op": "set", "value": 1}], "step 0: \"set\" needs \"path\""),
    ([{"op": "set", "path": 1, "value": 1}], "step 0: \"path\" must be a string, not a number"),
    ([{"op": "merge", "path": ["a"], "value": {}}], "step 0: \"path\" must be a string, not an array"),
    ([{"op": "append", "path": "a", "from": 3}], "step 0: \"from\" must be a string, not a number"),
    ([{"op": "unset", "path": "a..b"}], "step 0: \"path\" has an empty segment in \"a..b\""),
    ([{"op": "remove", "path": "a", "value": 1}], "step 0: \"remove\" needs \"key\""),
    ([{"op": "remove", "path": "a", "key": 1, "value": 1}], "step 0: \"key\" must be a string, not a number"),
    ([{"op": "$delete", "path": "a"}], "step 0: unknown key \"path\" in a \"$delete\" step (it takes only \"op\")"),
]


def test_invalid_rules_are_refused_at_definition_and_nothing_is_stored(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc")
    define_reducer(conn, "acc", "E", rule=[{"op": "set", "path": "kept", "value": True}])
    append(conn, "acc", "1", "E", {"x": 1})
    for rule, message in BAD_RULES:
        err = expect_error("22023", conn, "SELECT eventstore.define_reducer('acc', 'E', rule => %s)", (Jsonb(rule),))
        assert err.diag.message_primary == f"invalid reducer rule: {message}", rule
        err = expect_error("22023", conn, "SELECT eventstore.define_reducer('acc', 'Other', rule => %s)", (Jsonb(rule),))
    expect_error("22023", conn, "SELECT eventstore.define_reducer('acc', 'E', rule => NULL::jsonb)")
    rows = conn.execute("SELECT event_type, rule FROM eventstore.reducers WHERE tenant_id = %s", (tenant,)).fetchall()
    assert rows == [{"event_type": "E", "rule": [{"op": "set", "path": "kept", "value": True}]}]
    assert get_state(conn, "acc", "1")["state"] == {"kept": True}


def test_invalid_aggregate_definitions(connect, tenant):
    conn = connect(tenant=tenant)
    for sql, message in [
        ("SELECT eventstore.define_aggregate('a', '{}', snapshot_every => 0)", "snapshot_every must be 1 or more"),
        ("SELECT eventstore.define_aggregate('a', '{}', keep_snapshots => -1)", "keep_snapshots must be 1 or more"),
        ("SELECT eventstore.define_aggregate('a', NULL)", "initial_state must not be null"),
        ("SELECT eventstore.define_aggregate('', '{}')", "aggregate_type must not be empty"),
        ("SELECT eventstore.define_reducer('a', '', rule => '[]')", "event_type must not be empty"),
        ("SELECT eventstore.get_aggregate_state('a', '1', at_version => -1)", "at_version must not be negative"),
    ]:
        assert expect_error("22023", conn, sql).diag.message_primary == message
    n = conn.execute("SELECT count(*) AS n FROM eventstore.aggregates WHERE tenant_id = %s", (tenant,)).fetchone()["n"]
    assert n == 0


def test_definitions_reach_other_connections_and_rollbacks_leave_none(connect, tenant):
    a, b = connect(tenant=tenant), connect(tenant=tenant)
    append(a, "acc", "1", "E", {"x": 1})
    assert get_state(a, "acc", "1")["state"] == {"x": 1}  # a's cache now holds the defaults
    define_reducer(b, "acc", "E", rule=[{"op": "increment", "path": "n", "value": 1}])
    assert get_state(a, "acc", "1")["state"] == {"n": 1}
    # a definition rolled back is gone, in the connection that made it too
    a.execute("BEGIN")
    define_reducer(a, "acc", "E", rule=[{"op": "set", "path": "tx", "value": True}])
    define_aggregate(a, "acc", {"from_tx": 1})
    assert get_state(a, "acc", "1")["state"] == {"from_tx": 1, "tx": True}
    a.execute("ROLLBACK")
    assert get_state(a, "acc", "1")["state"] == {"n": 1}
    assert get_state(b, "acc", "1")["state"] == {"n": 1}


# --- snapshots ------------------------------------------------------------------------------


def test_snapshots_are_taken_inside_the_appending_transaction(connect, tenant):
    writer, other = connect(tenant=tenant), connect(tenant=tenant)
    define_aggregate(writer, "acc", {"n": 0}, snapshot_every=3, keep_snapshots=5)
    define_reducer(writer, "acc", "Inc", rule=[{"op": "increment", "path": "n", "from": "by"}])
    append_events(writer, "acc", "1", [{"event_type": "Inc", "payload": {"by": 1}}] * 2)
    assert snapshot_rows(writer, tenant, "acc", "1") == []

    writer.execute("BEGIN")
    append(writer, "acc", "1", "Inc", {"by": 10})
    assert [(r["version"], r["state"]) for r in snapshot_rows(writer, tenant, "acc", "1")] == [(3, {"n": 12})]
    assert snapshot_rows(other, tenant, "acc", "1") == [], "not before the commit"
    writer.execute("ROLLBACK")
    assert snapshot_rows(writer, tenant, "acc", "1") == [], "a rolled-back append leaves no snapshot"
    assert get_state(writer, "acc", "1")["version"] == 2

    writer.execute("BEGIN")
    append(writer, "acc", "1", "Inc", {"by": 100})
    writer.execute("COMMIT")
    assert [(r["version"], r["state"]) for r in snapshot_rows(other, tenant, "acc", "1")] == [(3, {"n": 102})]
    assert get_state(other, "acc", "1")["snapshot_version"] == 3

    # a batch that crosses several multiples (6, 9, 12) snapshots only the last one
    append_events(writer, "acc", "1", [{"event_type": "Inc", "payload": {"by": 1}}] * 10)
    assert [(r["version"], r["state"]) for r in snapshot_rows(writer, tenant, "acc", "1")] == [
        (3, {"n": 102}), (12, {"n": 111})]
    row = get_state(writer, "acc", "1")
    assert (row["version"], row["state"], row["snapshot_version"]) == (13, {"n": 112}, 12)
    # reaching a multiple exactly
    append_events(writer, "acc", "1", [{"event_type": "Inc", "payload": {"by": 1}}] * 2)
    assert [r["version"] for r in snapshot_rows(writer, tenant, "acc", "1")] == [3, 12, 15]
    assert get_state(writer, "acc", "1")["snapshot_version"] == 15


def test_only_the_newest_snapshots_are_kept(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc", {"n": 0}, snapshot_every=3, keep_snapshots=2)
    for i in range(1, 17):
        append(conn, "acc", "1", "Set", {"n": i})
    assert [(r["version"], r["state"]) for r in snapshot_rows(conn, tenant, "acc", "1")] == [
        (12, {"n": 12}), (15, {"n": 15})]
    # which snapshot served each version
    served = {v: get_state(conn, "acc", "1", at_version=v) for v in (2, 11, 12, 14, 15, 16)}
    assert {v: r["snapshot_version"] for v, r in served.items()} == {2: None, 11: None, 12: 12, 14: 12, 15: 15, 16: 15}
    assert {v: r["state"] for v, r in served.items()} == {v: {"n": v} for v in served}
    # the updated_at of a state served exactly from a snapshot is its event's recorded_at
    recorded = {e["aggregate_version"]: e["recorded_at"] for e in stored_events(conn, tenant, "acc", "1")}
    assert all(served[v]["updated_at"] == recorded[v] for v in served)
    # create_snapshot at any version counts against keep_snapshots too
    append(conn, "acc", "1", "Set", {"n": 17})
    assert create_snapshot(conn, "acc", "1") == 17
    assert [r["version"] for r in snapshot_rows(conn, tenant, "acc", "1")] == [15, 17]
    # a smaller keep_snapshots applies with the next snapshot
    define_aggregate(conn, "acc", {"n": 0}, snapshot_every=3, keep_snapshots=1)
    append(conn, "acc", "1", "Set", {"n": 18})
    assert [r["version"] for r in snapshot_rows(conn, tenant, "acc", "1")] == [18]


@pytest.mark.parametrize("change", ["reducer", "initial_state", "new_reducer"])
def test_changed_definitions_make_old_snapshots_ignored(connect, tenant, change):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc", {"n": 0}, snapshot_every=4, keep_snapshots=3)
    define_reducer(conn, "acc", "Inc", rule=[{"op": "increment", "path": "n", "from": "by"}])
    append_events(conn, "acc", "1", [{"event_type": "Inc", "payload": {"by": 1}}] * 5)
    append_events(conn, "acc", "1", [{"event_type": "Inc", "payload": {"by": 1}}] * 4)
    old = snapshot_rows(conn, tenant, "acc", "1")
    assert [(r["version"], r["state"]) for r in old] == [(4, {"n": 4}), (8, {"n": 8})]
    assert get_state(conn, "acc", "1")["snapshot_version"] == 8

    if change == "reducer":
        define_reducer(conn, "acc", "Inc", rule=[{"op": "increment", "path": "n", "value": 2}])
        expected = lambda v: {"n": 2 * v}  # noqa: E731
    elif change == "initial_state":
        define_aggregate(conn, "acc", {"n": 1000}, snapshot_every=4, keep_snapshots=3)
        expected = lambda v: {"n": 1000 + v}  # noqa: E731
    else:
        define_reducer(conn, "acc", "Other", rule=[])
        expected = lambda v: {"n": v}  # noqa: E731

    for v in range(1, 10):
        row = get_state(conn, "acc", "1", at_version=v)
        assert (row["state"], row["snapshot_version"]) == (expected(v), None), v
    assert snapshot_rows(conn, tenant, "acc", "1") == old, "kept until the next snapshot, but unused"
    # the next snapshot is made with the new definitions, and the old ones go
    append_events(conn, "acc", "1", [{"event_type": "Inc", "payload": {"by": 1}}] * 3)
    new = snapshot_rows(conn, tenant, "acc", "1")
    assert [(r["version"], r["state"]) for r in new] == [(12, expected(12))]
    assert new[0]["reducer_hash"] != old[0]["reducer_hash"]
    assert get_state(conn, "acc", "1")["snapshot_version"] == 12
    assert get_state(conn, "acc", "1", at_version=11)["snapshot_version"] is None


def test_snapshot_policy_changes_keep_snapshots_valid(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc", {}, snapshot_every=2)
    append_events(conn, "acc", "1", [{"event_type": "E", "payload": {"i": i}} for i in range(5)])
    hash_before = snapshot_rows(conn, tenant, "acc", "1")[0]["reducer_hash"]
    define_aggregate(conn, "acc", {}, snapshot_every=50, keep_snapshots=7)
    row = get_state(conn, "acc", "1")
    assert (row["state"], row["snapshot_version"]) == ({"i": 4}, 4)
    assert create_snapshot(conn, "acc", "1") == 5
    assert {r["reducer_hash"] for r in snapshot_rows(conn, tenant, "acc", "1")} == {hash_before}


def test_concurrent_appends_snapshot_consistently(connect, tenant):
    """Writers racing on one stream serialize; every snapshot equals a replay."""
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc", {"n": 0}, snapshot_every=3, keep_snapshots=50)
    define_reducer(conn, "acc", "Inc", rule=[{"op": "increment", "path": "n", "value": 1},
                                             {"op": "append", "path": "who", "from": "w"}])

    def writer(w):
        c = connect(tenant=tenant)
        for _ in range(10):
            append_events(c, "acc", "1", [{"event_type": "Inc", "payload": {"w": w}}] * (1 + w % 3))

    for worker in [start(writer, w) for w in range(4)]:
        worker.join_result()
    events = stored_events(conn, tenant, "acc", "1")
    assert len(events) == 10 * (1 + 2 + 3 + 1)
    who = [e["payload"]["w"] for e in events]
    for r in snapshot_rows(conn, tenant, "acc", "1"):
        assert r["state"] == {"n": r["version"], "who": who[:r["version"]]}, r["version"]
    assert get_state(conn, "acc", "1")["state"] == {"n": len(events), "who": who}


# --- time travel ----------------------------------------------------------------------------


def test_time_travel_by_version_and_by_time(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc", {"log": []}, snapshot_every=2)
    define_reducer(conn, "acc", "E", rule=[{"op": "append", "path": "log", "from": "i"}])
    moments = [server_now(conn)]  # before the first commit
    recorded = []
    for i in range(1, 6):
        recorded.append(append(conn, "acc", "1", "E", {"i": i})["recorded_at"])
        moments.append(server_now(conn))  # between this commit and the next
    log = lambda v: {"log": list(range(1, v + 1))}  # noqa: E731

    for v, t in enumerate(moments):
        row = get_state(conn, "acc", "1", as_of=t)
        if v == 0:
            assert (row["version"], row["state"], row["updated_at"]) == (0, None, None)
        else:
            assert (row["version"], row["state"]) == (v, log(v)), v
            assert row["updated_at"] == recorded[v - 1]
    # an event's own recorded_at includes it
    for v, t in enumerate(recorded, start=1):
        assert get_state(conn, "acc", "1", as_of=t)["version"] == v
    # both together: the earlier of the two
    assert get_state(conn, "acc", "1", at_version=2, as_of=moments[4])["version"] == 2
    assert get_state(conn, "acc", "1", at_version=4, as_of=moments[1])["version"] == 1
    assert get_state(conn, "acc", "1", at_version=5, as_of=moments[3])["state"] == log(3)
    # a snapshot serves time travel too
    assert get_state(conn, "acc", "1", as_of=moments[3])["snapshot_version"] == 2
    # beyond the end: the current version
    row = get_state(conn, "acc", "1", at_version=99)
    assert (row["version"], row["state"], row["snapshot_version"]) == (5, log(5), 4)
    assert get_state(conn, "acc", "1", as_of=server_now(conn))["version"] == 5
    assert get_state(conn, "acc", "1", at_version=0)["state"] is None


def test_a_missing_stream_is_version_0_and_null(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc", {"n": 0})
    for kwargs in ({}, {"at_version": 5}, {"as_of": server_now(conn)}):
        row = get_state(conn, "acc", "missing", **kwargs)
        assert row == {"aggregate_type": "acc", "aggregate_id": "missing", "version": 0, "state": None,
                       "updated_at": None, "snapshot_version": None}
    row = get_state(conn, "never-defined", "missing")
    assert (row["version"], row["state"]) == (0, None)
    assert create_snapshot(conn, "acc", "missing") == 0


def test_soft_deleted_stream_state_starts_over(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc", {"n": 0}, snapshot_every=2)
    append_events(conn, "acc", "1", [{"event_type": "E", "payload": {"a": 1}}] * 3)
    assert conn.execute("SELECT eventstore.delete_stream('acc', '1') AS d").fetchone()["d"]
    assert (get_state(conn, "acc", "1")["version"], get_state(conn, "acc", "1")["state"]) == (0, None)
    append(conn, "acc", "1", "E", {"b": 2})
    row = get_state(conn, "acc", "1")
    assert (row["version"], row["state"], row["snapshot_version"]) == (4, {"n": 0, "b": 2}, 4)
    assert get_state(conn, "acc", "1", at_version=3)["state"] is None, "hidden events stay hidden"


# --- tenancy of definitions ---------------------------------------------------------------


def test_aggregate_and_reducer_definitions_are_per_tenant(connect):
    ta, tb = unique("ta"), unique("tb")
    a, b = connect(tenant=ta), connect(tenant=tb)
    define_aggregate(a, "acc", {"from": "a"}, snapshot_every=1, keep_snapshots=1)
    define_reducer(a, "acc", "E", rule=[{"op": "increment", "path": "n", "value": 1}])
    for conn in (a, b):
        append(conn, "acc", "1", "E", {"x": 1})
        append(conn, "acc", "1", "E", {"x": 2})
    assert get_state(a, "acc", "1")["state"] == {"from": "a", "n": 2}
    row = get_state(b, "acc", "1")
    assert (row["state"], row["snapshot_version"]) == ({"x": 2}, None)
    assert snapshot_rows(a, tb, "acc", "1") == []
    assert [r["version"] for r in snapshot_rows(a, ta, "acc", "1")] == [2]
    # and defining the same names in b changes nothing in a
    define_aggregate(b, "acc", {"from": "b"})
    define_reducer(b, "acc", "E", rule=[{"op": "$delete"}])
    assert get_state(a, "acc", "1")["state"] == {"from": "a", "n": 2}
    assert get_state(b, "acc", "1")["state"] is None


# --- numbers --------------------------------------------------------------------------------


def test_state_keeps_numbers_exactly_as_jsonb_does(connect, tenant):
    """A full replay of merge patches keeps every jsonb number as it is; so must the state."""
    conn = connect(tenant=tenant)
    payload = '{"big": 12345678901234567890123, "dec": 0.1000000000000000000001, "i": 9007199254740993}'
    conn.execute("SELECT eventstore.append_event('num', '1', 'Set', %s::jsonb)", (payload,))
    same = conn.execute(
        "SELECT s.state = %s::jsonb AS same, s.state::text AS state"
        " FROM eventstore.get_aggregate_state('num', '1') s", (payload,)).fetchone()
    assert same["same"], f"state {same['state']} differs from the only payload {payload}"


def test_state_of_numbers_beyond_double_range(connect, tenant):
    """jsonb accepts 1e400; computing a state over it must not fail."""
    conn = connect(tenant=tenant)
    conn.execute("SELECT eventstore.append_event('num', '2', 'Set', '{\"huge\": 1e400, \"k\": 1}')")
    row = conn.execute("SELECT s.state = '{\"huge\": 1e400, \"k\": 1}'::jsonb AS same"
                       " FROM eventstore.get_aggregate_state('num', '2') s").fetchone()
    assert row["same"]
