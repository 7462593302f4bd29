"""Limits, and inputs that must never take the server down.

- JSON nesting is limited when a value is written: payloads and metadata of appends, initial
  states, reducer rules, upcaster and API change transforms, JSON Schemas deeper than
  `eventstore.max_json_depth` (default 64, superuser-only) are refused with 22023 naming the path
  where the limit was passed, and nothing is written.
- Programs (rules and transforms) have at most 256 steps; a path at most 32 segments and 1,024
  bytes.
- A value or program that slipped past the limits (stored while the limit was higher, or put
  straight into a definition table by a superuser) is a 22023 error when used, never a crash,
  and is usable again once the limit allows it.
- Reads go on past one bad stored event: an event that cannot be upcast comes back as stored
  with `metadata.$eventstore_error`; only the state of its own stream fails.
- NULL array elements and cursors beyond the feed's horizon are 22023; a handler gone since it
  was registered is 42883; handlers in pg_temp are refused.

Every call that could reach the JSON engine runs inside `server_survives`: a backend that
crashes restarts every connection of the server, which is the failure these tests guard
against.
"""

import pytest
from psycopg.types.json import Jsonb

from conftest import (admin_connect, append, append_events, define_aggregate, define_reducer, expect_error,
                      feed_unblocked, get_state, read_all, read_stream, server_survives, stream_version, unique)

DEFAULT_MAX_DEPTH = 64
ERROR_KEY = "$eventstore_error"
# the path: 100,000 segments "a.a.a...", built by the server
LONG_PATH = "(SELECT string_agg('a', '.') FROM generate_series(1, 100000))"
BEYOND_HORIZON = "ffffffffffffffff-0000000000000001"


def nested(depth, key="a", leaf=1):
    """An object of exactly `depth` levels: nested(1) is {"a": 1}, nested(2) {"a": {"a": 1}}."""
    value = leaf
    for _ in range(depth):
        value = {key: value}
    return value


def nested_schema(depth):
    """A valid JSON Schema of exactly `depth` levels ({"not": {"not": ... {}}})."""
    schema = {}
    for _ in range(depth - 1):
        schema = {"not": schema}
    return schema


def set_max_depth(conn, depth):
    conn.execute(f"SET eventstore.max_json_depth = {int(depth)}")


TABLES = ("events", "streams", "aggregates", "reducers", "snapshots", "upcasters", "event_schemas",
          "api_changes", "subscriptions", "projections", "webhook_endpoints")


def written(conn):
    """Row counts of every table a refused call could have written to (the superuser sees all
    tenants)."""
    return {t: conn.execute(f"SELECT count(*) AS n FROM eventstore.{t}").fetchone()["n"] for t in TABLES}


def subscription_checkpoint(conn, tenant, name):
    return conn.execute(
        "SELECT checkpoint_xid::text AS xid, checkpoint_position AS position FROM eventstore.subscriptions"
        " WHERE tenant_id = %s AND name = %s", (tenant, name)).fetchone()


def stored_metadata(conn, event_id):
    return conn.execute("SELECT metadata FROM eventstore.events WHERE event_id = %s",
                        (event_id,)).fetchone()["metadata"]


def api_handler(conn):
    """An API handler (payload jsonb) -> jsonb, versions 1.0 and 2.0 and the rpc es_limits at
    2.0 (registering again replaces, so every test may call this)."""
    conn.execute("CREATE OR REPLACE FUNCTION public.es_limits_echo(payload jsonb) RETURNS jsonb LANGUAGE sql AS"
                 " $$ SELECT jsonb_build_object('got', payload) $$")
    conn.execute("SELECT eventstore.register_api_version('1.0', '2024-01-01')")
    conn.execute("SELECT eventstore.register_api_version('2.0', '2024-06-01')")
    conn.execute("SELECT eventstore.register_api_route('es_limits', '2.0',"
                 " 'public.es_limits_echo(jsonb)'::regprocedure)")


def route_call(conn, rpc, payload=None, version=None):
    return conn.execute("SELECT eventstore.route_api_call(%s, %s, %s) AS r",
                        (rpc, Jsonb(payload or {}), version)).fetchone()["r"]


# --- definitions of every kind, for the parametrized tests -----------------------------------
# Each writes one definition holding `doc` (a JSON document); `tag` keeps the definitions of one
# test apart (an upcaster step or a schema version cannot be registered twice).


def define_initial_state(conn, doc, tag):
    conn.execute("SELECT eventstore.define_aggregate(%s, %s)", (f"agg_{tag}", Jsonb(doc)))


def define_rule(conn, doc, tag):
    conn.execute("SELECT eventstore.define_reducer('acc', %s, rule => %s)", (f"E_{tag}", Jsonb(doc)))


def define_transform(conn, doc, tag):
    conn.execute("SELECT eventstore.register_upcaster(%s, 1, 2, %s)", (f"E_{tag}", Jsonb(doc)))


def define_request_transform(conn, doc, tag):
    api_handler(conn)
    conn.execute("SELECT eventstore.register_api_change('2.0', 'es_limits', %s, request_transform => %s)",
                 (f"change {tag}", Jsonb(doc)))


def define_response_transform(conn, doc, tag):
    api_handler(conn)
    conn.execute("SELECT eventstore.register_api_change('2.0', 'es_limits', %s, response_transform => %s)",
                 (f"change {tag}", Jsonb(doc)))


def define_schema(conn, doc, tag):
    conn.execute("SELECT eventstore.register_event_schema(%s, 1, %s)", (f"E_{tag}", Jsonb(doc)))


def sql_of(define, doc, tag):
    """The statement `define` would run, for expect_error."""
    statements = []

    class Recorder:
        def execute(self, sql, params=None):
            statements.append((sql, params))
    define(Recorder(), doc, tag)
    return statements[-1]


# (argument, writer, a document of exactly `depth` levels)
DEEP_DEFINITIONS = [
    ("initial_state", define_initial_state, lambda depth: nested(depth)),
    ("rule", define_rule, lambda depth: [{"op": "set", "path": "x", "value": nested(depth - 2)}]),
    ("transform", define_transform, lambda depth: [{"op": "set_default", "path": "x", "value": nested(depth - 2)}]),
    ("request_transform", define_request_transform,
     lambda depth: [{"op": "set_default", "path": "x", "value": nested(depth - 2)}]),
    ("response_transform", define_response_transform,
     lambda depth: [{"op": "set_default", "path": "x", "value": nested(depth - 2)}]),
    ("json_schema", define_schema, nested_schema),
]

# (argument, writer, a step that does nothing much, a step with the path P, more steps with P)
PROGRAMS = [
    ("rule", define_rule, {"op": "unset", "path": "a"},
     lambda p: [{"op": "set", "path": p, "value": 1}],
     lambda p: [[{"op": "set", "path": "x", "from": p}], [{"op": "remove", "path": p, "key": "id", "value": 1}]]),
    ("transform", define_transform, {"op": "remove", "path": "a"},
     lambda p: [{"op": "set_default", "path": p, "value": 1}],
     lambda p: [[{"op": "rename", "from": p, "to": "x"}], [{"op": "rename", "from": "x", "to": p}]]),
    ("request_transform", define_request_transform, {"op": "remove", "path": "a"},
     lambda p: [{"op": "set_default", "path": p, "value": 1}],
     lambda p: [[{"op": "move", "from": p, "to": "x"}], [{"op": "wrap", "path": p, "into": "x"}]]),
    ("response_transform", define_response_transform, {"op": "remove", "path": "a"},
     lambda p: [{"op": "set_default", "path": p, "value": 1}],
     lambda p: [[{"op": "map_values", "path": p, "map": {"a": "b"}}], [{"op": "remove", "path": p}]]),
]


# --- depth, checked when written -------------------------------------------------------------


def test_payload_and_metadata_deeper_than_the_limit_are_refused_when_appended(connect, tenant):
    conn = connect(tenant=tenant)
    with server_survives(connect, tenant=tenant):
        # exactly at the limit: accepted, and read back as written
        at_limit = nested(DEFAULT_MAX_DEPTH)
        append(conn, "s", "ok", "E", at_limit, metadata=nested(DEFAULT_MAX_DEPTH, key="m"))
        append_events(conn, "s", "ok", [{"event_type": "E", "payload": at_limit,
                                         "metadata": nested(DEFAULT_MAX_DEPTH, key="m")}])
        assert [r["payload"] for r in read_stream(conn, "s", "ok")] == [at_limit, at_limit]

        before = written(conn)
        for depth in (DEFAULT_MAX_DEPTH + 1, 200):
            err = expect_error("22023", conn, "SELECT * FROM eventstore.append_event('s', 'deep', 'E', %s)",
                               (Jsonb(nested(depth)),))
            assert err.diag.message_primary == "payload is nested too deeply"
            assert err.diag.message_detail.startswith("payload.a.a.a")
            assert err.diag.message_detail.endswith(
                f"is at depth {DEFAULT_MAX_DEPTH + 1}; eventstore.max_json_depth is {DEFAULT_MAX_DEPTH}")

            err = expect_error("22023", conn, "SELECT * FROM eventstore.append_event('s', 'deep', 'E', '{}', %s)",
                               (Jsonb(nested(depth, key="m")),))
            assert err.diag.message_primary == "metadata is nested too deeply"
            assert err.diag.message_detail.startswith("metadata.m.m.m")

            # a batch: all or nothing, the element named
            for element, key in (({"event_type": "E", "payload": nested(depth)}, "payload"),
                                 ({"event_type": "E", "payload": {}, "metadata": nested(depth)}, "metadata")):
                err = expect_error("22023", conn, "SELECT * FROM eventstore.append_events('s', 'deep', %s)",
                                   (Jsonb([{"event_type": "E", "payload": {}}, element]),))
                assert err.diag.message_primary == f"events[1].{key} is nested too deeply"
                assert err.diag.message_detail.startswith(f"events[1].{key}.a.a")
                assert err.diag.message_detail.endswith(f"eventstore.max_json_depth is {DEFAULT_MAX_DEPTH}")
        assert written(conn) == before
        assert stream_version(conn, "s", "deep") == 0


def test_the_depth_error_names_the_path_where_the_limit_was_passed(connect, tenant):
    conn = connect(tenant=tenant)
    set_max_depth(conn, 3)  # the superuser may lower (and raise) it for the session
    with server_survives(connect, tenant=tenant):
        before = written(conn)
        err = expect_error("22023", conn, "SELECT * FROM eventstore.append_event('s', '1', 'E', %s)",
                           (Jsonb({"a": {"b": [{"c": 1}]}}),))
        assert err.diag.message_primary == "payload is nested too deeply"
        assert err.diag.message_detail == "payload.a.b[0] is at depth 4; eventstore.max_json_depth is 3"
        err = expect_error("22023", conn, "SELECT * FROM eventstore.append_event('s', '1', 'E', '{}', %s)",
                           (Jsonb({"x": [[[1]]]}),))
        assert err.diag.message_detail == "metadata.x[0][0] is at depth 4; eventstore.max_json_depth is 3"
        err = expect_error("22023", conn, "SELECT * FROM eventstore.append_events('s', '1', %s)",
                           (Jsonb([{"event_type": "E", "payload": {}},
                                   {"event_type": "E", "payload": {"x": [1, 2, 3, [[{}]]]}}]),))
        assert err.diag.message_detail == "events[1].payload.x[3][0] is at depth 4; eventstore.max_json_depth is 3"
        assert written(conn) == before
        # depth 3 is within the limit
        append(conn, "s", "1", "E", {"a": {"b": [1]}}, metadata={"x": [[1]]})
        assert stream_version(conn, "s", "1") == 1


@pytest.mark.parametrize("argument, define, document", DEEP_DEFINITIONS, ids=[d[0] for d in DEEP_DEFINITIONS])
def test_definitions_deeper_than_the_limit_are_refused_and_nothing_is_written(connect, tenant, argument, define,
                                                                              document):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc")
    with server_survives(connect, tenant=tenant):
        define(conn, document(DEFAULT_MAX_DEPTH), unique("ok"))  # exactly at the limit
        before = written(conn)
        for depth in (DEFAULT_MAX_DEPTH + 1, 200):
            err = expect_error("22023", conn, *sql_of(define, document(depth), unique("deep")))
            assert err.diag.message_primary.endswith("is nested too deeply"), err.diag.message_primary
            assert argument in err.diag.message_primary
            assert err.diag.message_detail.endswith(
                f"is at depth {DEFAULT_MAX_DEPTH + 1}; eventstore.max_json_depth is {DEFAULT_MAX_DEPTH}")
        assert written(conn) == before


# --- program size ----------------------------------------------------------------------------


@pytest.mark.parametrize("argument, define, filler, with_path, more_with_path", PROGRAMS,
                         ids=[p[0] for p in PROGRAMS])
def test_programs_have_at_most_256_steps_and_paths_of_32_segments_and_1024_bytes(
        connect, tenant, argument, define, filler, with_path, more_with_path):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc")
    if define in (define_request_transform, define_response_transform):
        api_handler(conn)
    with server_survives(connect, tenant=tenant):
        # at the limits: accepted
        define(conn, [filler] * 256, unique("ok"))
        define(conn, with_path(".".join(["a"] * 32)), unique("ok"))
        define(conn, with_path("é" * 512), unique("ok"))  # 1,024 bytes (512 characters)
        for program in more_with_path(".".join(["b"] * 32)):
            define(conn, program, unique("ok"))

        before = written(conn)
        refused = [([filler] * 257, "at most 256 steps"),
                   (with_path(".".join(["a"] * 33)), "at most 32 segments"),
                   (with_path("é" * 512 + "a"), "at most 1024 bytes"),
                   (with_path(".".join(["x" * 40] * 30)), "at most 1024 bytes"),
                   ] + [(program, "at most 32 segments") for program in more_with_path(".".join(["b"] * 33))]
        for program, why in refused:
            err = expect_error("22023", conn, *sql_of(define, program, unique("big")))
            assert why in err.diag.message_primary, err.diag.message_primary
        assert written(conn) == before


@pytest.mark.parametrize("argument", ["rule", "transform", "request_transform", "response_transform"])
def test_the_100000_segment_path_is_refused_when_defined(connect, tenant, argument):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "acc")
    api_handler(conn)
    sql = {
        "rule": "SELECT eventstore.define_reducer('acc', 'E',"
                f" rule => jsonb_build_array(jsonb_build_object('op', 'set', 'path', {LONG_PATH}, 'value', 1)))",
        "transform": "SELECT eventstore.register_upcaster('E', 1, 2,"
                     f" jsonb_build_array(jsonb_build_object('op', 'set_default', 'path', {LONG_PATH}, 'value', 1)))",
        "request_transform": "SELECT eventstore.register_api_change('2.0', 'es_limits', 'long path',"
                             " request_transform => jsonb_build_array(jsonb_build_object('op', 'set_default',"
                             f" 'path', {LONG_PATH}, 'value', 1)))",
        "response_transform": "SELECT eventstore.register_api_change('2.0', 'es_limits', 'long path',"
                              " response_transform => jsonb_build_array(jsonb_build_object('op', 'set_default',"
                              f" 'path', {LONG_PATH}, 'value', 1)))",
    }[argument]
    with server_survives(connect, tenant=tenant):
        before = written(conn)
        err = expect_error("22023", conn, sql)
        message = err.diag.message_primary
        assert "at most 32 segments" in message or "at most 1024 bytes" in message, message
        assert written(conn) == before


# --- the setting -----------------------------------------------------------------------------


def test_max_json_depth_is_a_superuser_setting(connect, database, tenant):
    role = unique("es_limits_app")
    with admin_connect(database) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute("SELECT eventstore.grant_access(%s, 'admin')", (role,))
    try:
        app = connect(user=role, tenant=tenant)
        assert app.execute("SHOW eventstore.max_json_depth").fetchone()["eventstore.max_json_depth"] == "64"
        expect_error("42501", app, "SET eventstore.max_json_depth = 100")
        expect_error("42501", app, "SELECT set_config('eventstore.max_json_depth', '100', false)")
        with app.transaction(force_rollback=True):
            expect_error("42501", app, "SET LOCAL eventstore.max_json_depth = 1000")
        # and so the application's appends stay within the default
        expect_error("22023", app, "SELECT * FROM eventstore.append_event('s', '1', 'E', %s)",
                     (Jsonb(nested(DEFAULT_MAX_DEPTH + 1)),))
        assert app.execute("SHOW eventstore.max_json_depth").fetchone()["eventstore.max_json_depth"] == "64"

        su = connect(tenant=tenant)
        for value in (1, 100, 1000):
            set_max_depth(su, value)
            assert su.execute("SHOW eventstore.max_json_depth").fetchone()["eventstore.max_json_depth"] == str(value)
        for value in (0, -1, 1001):
            expect_error("22023", su, f"SET eventstore.max_json_depth = {value}")
    finally:
        with admin_connect(database) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


# --- values that slipped past the limits -----------------------------------------------------


def test_an_event_stored_under_a_higher_limit_is_an_error_on_use_and_readable_again(connect, tenant):
    conn = connect(tenant=tenant)
    deep = nested(60)
    append(conn, "acct", "deep", "E", deep)
    append(conn, "acct", "flat", "E", {"n": 1})
    with server_survives(connect, tenant=tenant):
        low = connect(tenant=tenant)
        set_max_depth(low, 10)
        expect_error("22023", low, "SELECT * FROM eventstore.get_aggregate_state('acct', 'deep')")
        expect_error("22023", low, "SELECT eventstore.create_snapshot('acct', 'deep')")
        # the tenant's other streams are not affected, and the event itself reads back as stored
        assert get_state(low, "acct", "flat")["state"] == {"n": 1}
        assert [r["payload"] for r in read_stream(low, "acct", "deep")] == [deep]
        expect_error("22023", low, "SELECT * FROM eventstore.append_event('acct', 'flat', 'E', %s)",
                     (Jsonb(nested(11)),))
        low.execute("RESET eventstore.max_json_depth")
        row = get_state(low, "acct", "deep")
        assert (row["version"], row["state"]) == (1, deep)


def test_a_rule_with_a_100000_segment_path_stored_by_a_superuser_is_an_error_not_a_crash(connect, tenant):
    admin = connect(tenant=tenant)
    define_aggregate(admin, "acc")
    append(admin, "acc", "1", "E", {"x": 1})
    admin.execute("INSERT INTO eventstore.reducers (tenant_id, aggregate_type, event_type, rule) SELECT %s, 'acc', 'E',"
                  f" jsonb_build_array(jsonb_build_object('op', 'set', 'path', {LONG_PATH}, 'value', 1))", (tenant,))
    with server_survives(connect, tenant=tenant):
        fresh = connect(tenant=tenant)  # no definitions cached
        expect_error("22023", fresh, "SELECT * FROM eventstore.get_aggregate_state('acc', '1')")
        expect_error("22023", fresh, "SELECT eventstore.create_snapshot('acc', '1')")


def test_a_stored_100000_segment_rule_fails_an_append_that_snapshots_with_22023(connect, tenant):
    admin = connect(tenant=tenant)
    define_aggregate(admin, "acc", snapshot_every=1)
    admin.execute("INSERT INTO eventstore.reducers (tenant_id, aggregate_type, event_type, rule) SELECT %s, 'acc', 'E',"
                  f" jsonb_build_array(jsonb_build_object('op', 'set', 'path', {LONG_PATH}, 'value', 1))", (tenant,))
    with server_survives(connect, tenant=tenant):
        fresh = connect(tenant=tenant)
        before = written(fresh)
        expect_error("22023", fresh, "SELECT * FROM eventstore.append_event('acc', '1', 'E', '{\"x\": 1}')")
        expect_error("22023", fresh, "SELECT * FROM eventstore.append_events('acc', '1', %s)",
                     (Jsonb([{"event_type": "E", "payload": {"x": 1}}]),))
        assert written(fresh) == before
        assert stream_version(fresh, "acc", "1") == 0


def test_an_upcaster_with_a_100000_segment_path_stored_by_a_superuser_is_an_error_not_a_crash(connect, tenant):
    """The events it would upcast read back as stored, saying why; the state is 22023."""
    admin = connect(tenant=tenant)
    e1 = append(admin, "s", "1", "E", {"x": 1})
    e2 = append(admin, "s", "1", "Other", {"y": 2})
    admin.execute("INSERT INTO eventstore.upcasters (tenant_id, event_type, from_version, to_version, transform)"
                  " SELECT %s, 'E', 1, 2,"
                  f" jsonb_build_array(jsonb_build_object('op', 'set_default', 'path', {LONG_PATH}, 'value', 1))",
                  (tenant,))
    with server_survives(connect, tenant=tenant):
        fresh = connect(tenant=tenant)  # no definitions cached
        feed_unblocked(fresh)
        for rows in (read_stream(fresh, "s", "1"), read_all(fresh)):
            assert [(r["event_id"], r["schema_version"], r["payload"]) for r in rows] == [
                (e1["event_id"], 1, {"x": 1}), (e2["event_id"], 1, {"y": 2})]
            error = rows[0]["metadata"].pop(ERROR_KEY)
            assert isinstance(error, str) and "at most 32 segments" in error, error
            assert rows[0]["metadata"] == {} and rows[1]["metadata"] == {}
        expect_error("22023", fresh, "SELECT * FROM eventstore.get_aggregate_state('s', '1')")


@pytest.mark.parametrize("column", ["request_transform", "response_transform"])
def test_an_api_change_with_a_100000_segment_path_stored_by_a_superuser_is_an_error_not_a_crash(connect, column):
    admin = connect()
    api_handler(admin)
    rpc = unique("es_limits_rpc")
    admin.execute("SELECT eventstore.register_api_route(%s, '2.0', 'public.es_limits_echo(jsonb)'::regprocedure)",
                  (rpc,))
    assert route_call(connect(), rpc, {"n": 1}, "1.0")["data"] == {"got": {"n": 1}}
    admin.execute(f"INSERT INTO eventstore.api_changes (version, rpc_name, description, {column})"
                  " SELECT '2.0', %s, 'a path of 100,000 segments',"
                  f" jsonb_build_array(jsonb_build_object('op', 'set_default', 'path', {LONG_PATH}, 'value', 1))",
                  (rpc,))
    try:
        with server_survives(connect):
            fresh = connect()
            expect_error("22023", fresh, "SELECT eventstore.route_api_call(%s, '{\"n\": 1}', '1.0')", (rpc,))
            # another tenant's call of the same rpc: the same error, not a crash
            expect_error("22023", connect(tenant=unique("t")),
                         "SELECT eventstore.route_api_call(%s, '{\"n\": 1}', '1.0')", (rpc,))
    finally:
        admin.execute("DELETE FROM eventstore.api_changes WHERE rpc_name = %s", (rpc,))
    assert route_call(connect(), rpc, {"n": 1}, "1.0")["data"] == {"got": {"n": 1}}


# --- reads that one bad event cannot stop ----------------------------------------------------


def test_reads_go_on_past_an_event_too_deep_to_upcast(connect, tenant):
    writer = connect(tenant=tenant)
    writer.execute("SELECT eventstore.register_upcaster('E', 1, 2, %s)",
                   (Jsonb([{"op": "set_default", "path": "v2", "value": True}]),))
    set_max_depth(writer, 300)  # as if stored while the limit was higher (or by 0.1.0)
    deep = nested(200)
    e1 = append(writer, "s", "good", "E", {"n": 1})
    e2 = append(writer, "s", "bad", "E", deep, metadata={"actor": "w", "note": "deep"})
    e3 = append(writer, "s", "good", "E", {"n": 3})
    bad_metadata = stored_metadata(writer, e2["event_id"])

    def check(rows, bad_readable):
        assert [r["event_id"] for r in rows] == [e1["event_id"], e2["event_id"], e3["event_id"]]
        for r, n in ((rows[0], 1), (rows[2], 3)):
            assert (r["schema_version"], r["payload"]) == (2, {"n": n, "v2": True})
            assert ERROR_KEY not in r["metadata"]
        bad = rows[1]
        if bad_readable:
            assert (bad["schema_version"], bad["payload"], bad["metadata"]) == (2, {**deep, "v2": True}, bad_metadata)
        else:
            # as stored, with why it could not be upcast
            assert (bad["schema_version"], bad["payload"]) == (1, deep)
            error = bad["metadata"].pop(ERROR_KEY)
            assert isinstance(error, str) and error.strip(), bad["metadata"]
            assert bad["metadata"] == bad_metadata

    with server_survives(connect, tenant=tenant):
        reader = connect(tenant=tenant)  # the default limit, 64
        feed_unblocked(reader)
        check(read_all(reader), bad_readable=False)
        check(read_all(reader, event_types=["E"], aggregate_types=["s"]), bad_readable=False)
        good = read_stream(reader, "s", "good")
        check(good[:1] + read_stream(reader, "s", "bad") + good[1:], bad_readable=False)

        reader.execute("SELECT eventstore.create_subscription('sub')")
        polled = reader.execute("SELECT * FROM eventstore.poll_subscription('sub', 100)").fetchall()
        check(polled, bad_readable=False)
        assert reader.execute("SELECT eventstore.ack_subscription('sub', %s) AS moved",
                              (polled[-1]["cursor"],)).fetchone()["moved"] is True

        # the state fails for the stream that holds the event, and only for it
        expect_error("22023", reader, "SELECT * FROM eventstore.get_aggregate_state('s', 'bad')")
        assert get_state(reader, "s", "good")["state"] == {"n": 3, "v2": True}

        # readable again once the limit allows it
        set_max_depth(reader, 300)
        check(read_all(reader), bad_readable=True)
        row = get_state(reader, "s", "bad")
        assert (row["version"], row["state"]) == (1, {**deep, "v2": True})


# --- bad input -------------------------------------------------------------------------------

NULL_ELEMENTS = [
    ("read_all event_types", "event_types", "SELECT * FROM eventstore.read_all(event_types => ARRAY[NULL]::text[])"),
    ("read_all aggregate_types", "aggregate_types",
     "SELECT * FROM eventstore.read_all(aggregate_types => ARRAY['order', NULL]::text[])"),
    ("create_subscription event_types", "event_types",
     "SELECT eventstore.create_subscription('s_null', event_types => ARRAY[NULL]::text[])"),
    ("create_subscription aggregate_types", "aggregate_types",
     "SELECT eventstore.create_subscription('s_null', aggregate_types => ARRAY['order', NULL]::text[])"),
    ("create_webhook_endpoint event_types", "event_types",
     "SELECT * FROM eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook', event_types => ARRAY[NULL]::text[])"),
    ("create_webhook_endpoint aggregate_types", "aggregate_types",
     "SELECT * FROM eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook',"
     " aggregate_types => ARRAY['order', NULL]::text[])"),
    ("create_webhook_endpoint retry_schedule", "retry_schedule",
     "SELECT * FROM eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook',"
     " retry_schedule => ARRAY[NULL]::int[])"),
    ("create_webhook_endpoint retry_schedule with a null among numbers", "retry_schedule",
     "SELECT * FROM eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook',"
     " retry_schedule => ARRAY[0, NULL, 5])"),
    ("register_projection event_types", "event_types",
     "SELECT eventstore.register_projection('p_null', 'public.es_limits_noop(eventstore.event)'::regprocedure,"
     " event_types => ARRAY[NULL]::text[], mode => 'inline')"),
]


@pytest.mark.parametrize("what, argument, sql", NULL_ELEMENTS, ids=[n[0] for n in NULL_ELEMENTS])
def test_a_null_array_element_is_an_invalid_argument(connect, tenant, what, argument, sql):
    conn = connect(tenant=tenant)
    conn.execute("CREATE OR REPLACE FUNCTION public.es_limits_noop(e eventstore.event) RETURNS void"
                 " LANGUAGE sql AS 'SELECT'")
    append(conn, "order", "1", "Placed")
    with server_survives(connect, tenant=tenant):
        before = written(conn)
        err = expect_error("22023", conn, sql)
        assert argument in err.diag.message_primary, err.diag.message_primary
        assert written(conn) == before


def test_ack_beyond_the_feed_horizon_is_refused_and_the_checkpoint_stays(connect, tenant):
    conn = connect(tenant=tenant)
    conn.execute("SELECT eventstore.create_subscription('billing')")
    e1 = append(conn, "order", "1", "Placed")
    feed_unblocked(conn)
    first = conn.execute("SELECT * FROM eventstore.poll_subscription('billing')").fetchall()
    assert [r["event_id"] for r in first] == [e1["event_id"]]
    checkpoint = subscription_checkpoint(conn, tenant, "billing")
    with server_survives(connect, tenant=tenant):
        for cursor in (BEYOND_HORIZON, "ffffffffffffffff-ffffffffffffffff", "7fffffffffffffff-0000000000000000"):
            expect_error("22023", conn, "SELECT eventstore.ack_subscription('billing', %s)", (cursor,))
            assert subscription_checkpoint(conn, tenant, "billing") == checkpoint
    # nothing was skipped: the event and a later one still come
    e2 = append(conn, "order", "1", "Shipped")
    feed_unblocked(conn)
    polled = conn.execute("SELECT * FROM eventstore.poll_subscription('billing')").fetchall()
    assert [r["event_id"] for r in polled] == [e1["event_id"], e2["event_id"]]
    assert conn.execute("SELECT eventstore.ack_subscription('billing', %s) AS moved",
                        (polled[-1]["cursor"],)).fetchone()["moved"] is True


def test_handlers_in_pg_temp_are_refused(connect, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "tally")
    conn.execute("CREATE FUNCTION pg_temp.es_reduce(state jsonb, event eventstore.event) RETURNS jsonb"
                 " LANGUAGE sql AS 'SELECT state'")
    conn.execute("CREATE FUNCTION pg_temp.es_project(e eventstore.event) RETURNS void LANGUAGE sql AS 'SELECT'")
    with server_survives(connect, tenant=tenant):
        before = written(conn)
        expect_error("22023", conn, "SELECT eventstore.define_reducer('tally', 'Added',"
                                    " handler => 'pg_temp.es_reduce(jsonb, eventstore.event)'::regprocedure)")
        expect_error("22023", conn, "SELECT eventstore.register_projection('p_temp',"
                                    " 'pg_temp.es_project(eventstore.event)'::regprocedure, mode => 'inline')")
        assert written(conn) == before


def test_a_dropped_reducer_handler_is_42883_never_the_default_merge(connect, tenant):
    conn = connect(tenant=tenant)
    fn = unique("es_count")
    conn.execute(f"CREATE FUNCTION public.{fn}(state jsonb, event eventstore.event) RETURNS jsonb LANGUAGE sql AS"
                 " $$ SELECT jsonb_build_object('count', coalesce((state ->> 'count')::int, 0) + 1) $$")
    define_aggregate(conn, "tally")
    define_reducer(conn, "tally", "Added", handler=f"public.{fn}(jsonb, eventstore.event)")
    append(conn, "tally", "1", "Added", {"n": 1})
    append(conn, "tally", "1", "Added", {"n": 2})
    append(conn, "tally", "2", "Other", {"n": 3})
    assert get_state(conn, "tally", "1")["state"] == {"count": 2}
    conn.execute(f"DROP FUNCTION public.{fn}(jsonb, eventstore.event)")
    with server_survives(connect, tenant=tenant):
        for session in (conn, connect(tenant=tenant)):  # with the handler's plan kept, and without
            expect_error("42883", session, "SELECT * FROM eventstore.get_aggregate_state('tally', '1')")
            # a stream without events of that type does not need the handler
            assert get_state(session, "tally", "2")["state"] == {"n": 3}


def test_a_dropped_inline_projection_handler_fails_the_append_with_42883(connect, tenant):
    conn = connect(tenant=tenant)
    name = unique("p")
    conn.execute(f"CREATE TABLE public.{name}_seen (event_id uuid)")
    conn.execute(f"CREATE FUNCTION public.{name}_apply(e eventstore.event) RETURNS void LANGUAGE sql AS"
                 f" $$ INSERT INTO public.{name}_seen VALUES (e.event_id) $$")
    conn.execute("SELECT eventstore.register_projection(%s, %s::regprocedure, ARRAY['Deposited'], 'inline')",
                 (name, f"public.{name}_apply(eventstore.event)"))
    append(conn, "account", "1", "Deposited", {"amount": 1})
    assert conn.execute(f"SELECT count(*) AS n FROM public.{name}_seen").fetchone()["n"] == 1
    conn.execute(f"DROP FUNCTION public.{name}_apply(eventstore.event)")
    with server_survives(connect, tenant=tenant):
        for version, session in enumerate((conn, connect(tenant=tenant)), start=1):
            before = written(session)
            expect_error("42883", session, "SELECT * FROM eventstore.append_event('account', '1', 'Deposited', '{}')")
            assert written(session) == before
            assert stream_version(session, "account", "1") == version
            # events the projection does not ask for append as usual
            append(session, "account", "1", "Noted", {})
    assert stream_version(conn, "account", "1") == 3
