"""Every public function with generated arguments of its own types: NULLs in every position,
odd names, deep and wide JSON, extreme numbers, arrays with NULLs, bogus ids and cursors, the
defaults left out or given. Signatures are read from pg_proc, so a new overload or argument is
fuzzed without changes here; functions that appear in the schemas but not in PUBLIC_FUNCTIONS
are fuzzed too (test_functions_outside_the_list).

Each example runs in a fresh tenant, half of them seeded first with two events, a subscription
and a webhook endpoint (so that ids, cursors and names that exist can be drawn), as the
superuser or as a role granted admin, writer or reader access.
"""

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

import strategies as S
from conftest import ALL_HANDLERS, one_example, fuzz_settings

# The SQL surface the README documents (0.1.0). Overloads are all fuzzed.
PUBLIC_FUNCTIONS = [
    "current_tenant", "append_event", "append_events", "read_stream", "stream_version", "read_all", "feed_lag",
    "get_event_store_stats", "delete_stream", "define_aggregate", "define_reducer", "get_aggregate_state",
    "create_snapshot", "register_event_schema", "register_upcaster", "redact_event", "redact_subject",
    "create_subscription", "poll_subscription", "ack_subscription", "drop_subscription", "register_projection",
    "rebuild_projection", "drop_projection", "replay_parked_events", "projection_status", "worker_status",
    "create_webhook_endpoint", "queue_event_for_webhooks", "rotate_webhook_secret", "retry_webhook_delivery",
    "recover_webhook_endpoint", "enable_webhook_endpoint", "disable_webhook_endpoint", "get_webhook_delivery_stats",
    "sign_webhook", "register_api_version", "register_api_route", "register_api_change", "deprecate_api_version",
    "switch_api_version", "get_active_api_version", "route_api_call", "get_api_usage", "grant_access",
]
SCHEMAS = ("eventstore", "message_store")

ROLE_CHOICE = st.sampled_from(["postgres", "admin", "postgres", "writer", "reader"])


def signatures(fz):
    """(schema, name, [(arg name, type)], required count) of every callable function."""
    rows = fz.admin_sql(
        """SELECT n.nspname AS schema, p.proname AS name, p.pronargs AS nargs, p.pronargdefaults AS ndefaults,
                  coalesce(p.proargnames[1:p.pronargs], '{}') AS argnames,
                  ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, i) ORDER BY i) AS types
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = ANY(%s) AND p.prokind = 'f' AND p.prorettype <> 'trigger'::regtype
             AND left(p.proname, 1) <> '_'
           ORDER BY 1, 2, p.oid""", (list(SCHEMAS),))
    out = []
    for r in rows:
        names = list(r["argnames"]) + [f"${i + 1}" for i in range(len(r["argnames"]), r["nargs"])]
        out.append((r["schema"], r["name"], list(zip(names, r["types"])), r["nargs"] - r["ndefaults"]))
    return out


class Catalog(list):
    def __repr__(self):
        return f"<{len(self)} functions>"


@pytest.fixture(scope="module")
def catalog(fz):
    return Catalog(signatures(fz))


ACCESS = st.sampled_from(["reader", "writer", "admin", "", "READER", "superuser", None, "admin "])
MODES = st.sampled_from(["async", "inline", "", "INLINE", "sync", None, "a" * 300])
START_FROM = st.sampled_from(["beginning", "end", "", "BEGINNING", None, "now", "0000000000000000-0000000000000000"])
VERSIONS = st.sampled_from(["2024-01-01", "1.0.0", "1.10.0", "", " ", "v", "1", "1.2.3.4.5", "999999999999999999999.0.0",
                            "-1", "a.b.c", "0.0.0-rc.1+build", "é", "x" * 300, None])
SECRETS = st.sampled_from(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!!", "", "plain", "whsec_" + "A" * 10000, None])


def _known(fz, kind, tenant):
    q = {
        "event_id": "SELECT event_id::text AS v FROM eventstore.events WHERE tenant_id = %s ORDER BY global_position",
        "endpoint_id": "SELECT endpoint_id::text AS v FROM eventstore.webhook_endpoints WHERE tenant_id = %s",
        "delivery_id": "SELECT delivery_id::text AS v FROM eventstore.webhook_deliveries WHERE tenant_id = %s",
        "cursor": "SELECT lpad(to_hex(transaction_id::text::bigint), 16, '0') || '-' || lpad(to_hex(global_position), 16, '0') AS v"
                  " FROM eventstore.events WHERE tenant_id = %s ORDER BY global_position",
    }[kind]
    return [r["v"] for r in fz.admin_sql(q, (tenant,))]


def seed(fz, tenant):
    """Two events in stream order/1, a subscription and a webhook endpoint of `tenant`."""
    c = fz.conn("postgres")
    with c.transaction():
        c.execute("SELECT set_config('eventstore.tenant_id', %s, true)", (tenant,))
        try:
            with c.transaction():
                c.execute("SELECT eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook')")
        except psycopg.Error:
            pass   # loopback is not allowed in this cluster: no endpoint
        c.execute("SELECT eventstore.append_event('order', '1', 'OrderPlaced', '{\"customer\": \"42\", \"total\": 99.5}')")
        c.execute("SELECT eventstore.append_event('order', '1', 'OrderPaid', '{\"amount\": 1}')")
        c.execute("SELECT eventstore.create_subscription('s')")


def arg_strategy(fz, data, tenant, name, typ):
    """The strategy for one argument, by its name (what it means) and its type."""
    n = name.lower()
    known = lambda kind: st.sampled_from(_known(fz, kind, tenant) or [None])  # noqa: E731
    by_name = None
    if n in ("after", "cursor"):
        by_name = S.cursors(_known(fz, "cursor", tenant))
    elif n == "url":
        by_name = S.urls
    elif n in ("handler", "reset"):
        by_name = st.sampled_from(ALL_HANDLERS + [None])
    elif n in ("rule",):
        by_name = S.programs("reducer")
    elif n in ("transform", "request_transform", "response_transform"):
        by_name = S.programs("transform")
    elif n == "json_schema":
        by_name = S.schemas()
    elif n == "events":
        by_name = S.batches()
    elif n in ("event_id", "endpoint_id", "delivery_id"):
        by_name = st.one_of(known(n), S.uuids)
    elif n == "json_path":
        by_name = st.one_of(S.path_texts, S.names)
    elif n == "role":
        by_name = st.sampled_from([fz.roles["spare"], "postgres", "no_such_role", "", None, "a" * 64, '"quoted"'])
    elif n == "access":
        by_name = ACCESS
    elif n == "mode":
        by_name = MODES
    elif n == "start_from":
        by_name = START_FROM
    elif n in ("version", "new_version", "fallback_version", "requested_version", "min_client_version"):
        by_name = VERSIONS
    elif n == "secret":
        by_name = SECRETS
    elif n in ("aggregate_type", "aggregate_id", "event_type", "name", "rpc_name"):
        by_name = st.one_of(st.sampled_from(["order", "1", "OrderPlaced", "s"]), S.maybe_names) if n != "rpc_name" else S.maybe_names
    base = type_strategy(typ)
    if n == "role":
        # a grant to PUBLIC would give every role of the module every level
        return st.one_of(by_name, base.filter(_not_public))
    return st.one_of(by_name, base) if by_name is not None else base


def _not_public(v):
    return not (isinstance(v, str) and v.strip().lower() == "public")


def type_strategy(typ):
    return {
        "text": S.maybe_names, "name": S.maybe_names, "character varying": S.maybe_names,
        "jsonb": S.jsonb_args(), "json": S.jsonb_args(),
        "integer": S.int4s, "bigint": S.int8s, "smallint": st.sampled_from([None, 0, -1, 32767, -32768]),
        "boolean": S.bools, "uuid": S.uuids, "timestamp with time zone": S.timestamps,
        "timestamp without time zone": S.timestamps, "date": S.dates, "interval": S.intervals,
        "regprocedure": st.sampled_from(ALL_HANDLERS + [None]),
        "text[]": S.text_arrays, "integer[]": S.int_arrays, "bigint[]": S.int_arrays,
        "double precision": st.sampled_from([None, 0.0, -0.0, 1e308, -1e308, 5e-324]),
        "numeric": st.sampled_from([None, 0, 10**1000]),
    }.get(typ, st.none())


def fuzz_one(fz, data, schema, name, args, required, role, tenant):
    k = data.draw(st.integers(required, len(args)), label="number of arguments")
    values = []
    for argname, typ in args[:k]:
        values.append(data.draw(arg_strategy(fz, data, tenant, argname, typ), label=argname))
    query = sql.SQL("SELECT * FROM {}.{}({})").format(
        sql.Identifier(schema), sql.Identifier(name),
        sql.SQL(", ").join(sql.SQL("%s::" + typ) for _, typ in args[:k]))
    inputs = {argname: v for (argname, _), v in zip(args[:k], values)}
    label = name if schema == "eventstore" else f"{schema}.{name}"
    return fz.call(label, query, values, role=role, tenant=tenant, inputs=inputs)


def run_function(fz, catalog, data, schema, name):
    overloads = [(a, r) for s, n, a, r in catalog if s == schema and n == name]
    assert overloads, f"{schema}.{name} does not exist"
    args, required = data.draw(st.sampled_from(overloads), label="overload")
    role = data.draw(ROLE_CHOICE, label="role")
    with one_example(fz, f"{schema}.{name}") as tenant:
        if data.draw(st.booleans(), label="seeded"):
            seed(fz, tenant)
            fz.history.append("seed: endpoint http://127.0.0.1:9/hook, 2 events in order/1, subscription s")
        fuzz_one(fz, data, schema, name, args, required, role, tenant)


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
@fuzz_settings(50)
@given(data=st.data())
def test_function(fz, catalog, name, data):
    run_function(fz, catalog, data, "eventstore", name)


@fuzz_settings(10)
@given(data=st.data())
def test_functions_outside_the_list(fz, catalog, data):
    """Functions of the schemas that PUBLIC_FUNCTIONS does not name (new ones): each gets the
    same treatment, by its argument types."""
    extra = sorted({(s, n) for s, n, _, _ in catalog if not (s == "eventstore" and n in PUBLIC_FUNCTIONS)})
    for schema, name in extra:
        run_function(fz, catalog, data, schema, name)
