"""Appends with generated names, payloads, metadata, ids, expected versions and batches (up to
10,001 events), then every read of what was stored: a value the append accepted must never
make a later read, state, snapshot, feed, subscription or webhook queueing fail with XX000 or
crash. Optionally the tenant first gets an upcaster for the event type (reads then transform
every stored payload), an aggregate with snapshot_every 1 (every append snapshots), and a
webhook endpoint (every append freezes a delivery body).
"""

from hypothesis import example, given
from hypothesis import strategies as st

import strategies as S
from conftest import ADMINS, ROLES, WRITERS, one_example, fuzz_settings, read_everything

UPCAST = '[{"op": "set_default", "path": "upcast", "value": true}, {"op": "rename", "from": "a", "to": "b.c"}]'


def prepare(fz, tenant, admin, aggregate_type, event_type, extras):
    """Definitions that make every later append and read do more work."""
    if "upcaster" in extras:
        fz.call("register_upcaster", "SELECT eventstore.register_upcaster(%s, 1, 2, %s::jsonb)", (event_type, UPCAST),
                role=admin, tenant=tenant, inputs={"event_type": event_type})
    if "snapshots" in extras:
        fz.call("define_aggregate", "SELECT eventstore.define_aggregate(%s, '{}', snapshot_every => 1, keep_snapshots => 2)",
                (aggregate_type,), role=admin, tenant=tenant, inputs={"aggregate_type": aggregate_type})
    if "webhook" in extras:
        fz.call("create_webhook_endpoint", "SELECT * FROM eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook')",
                (), role=admin, tenant=tenant, inputs={})
    if "subscription" in extras:
        fz.call("create_subscription", "SELECT eventstore.create_subscription('fz')", (), role=admin, tenant=tenant,
                inputs={})


EXTRAS = st.sets(st.sampled_from(["upcaster", "snapshots", "webhook", "subscription"]))


@example(aggregate_type="order", aggregate_id="1", event_type="E", payload=S.DEEP_200, metadata=S.j(S.nest("obj", 200, "1")),
         expected_version=None, event_id=None, role="writer", reader="reader", admin="admin",
         extras={"upcaster", "snapshots", "webhook", "subscription"}, again=False)
@fuzz_settings(150)
@given(aggregate_type=st.one_of(S.plain_names, S.names), aggregate_id=st.one_of(S.plain_names, S.names),
       event_type=st.one_of(S.plain_names, S.names), payload=S.jsonb_args(), metadata=st.one_of(S.metadatas(), st.none()),
       expected_version=S.int8s, event_id=S.uuids, role=st.sampled_from(WRITERS), reader=st.sampled_from(ROLES),
       admin=st.sampled_from(ADMINS), extras=EXTRAS, again=st.booleans())
def test_append_event(fz, aggregate_type, aggregate_id, event_type, payload, metadata, expected_version, event_id, role,
                      reader, admin, extras, again):
    with one_example(fz, "append_event") as tenant:
        prepare(fz, tenant, admin, aggregate_type, event_type, extras)
        args = (aggregate_type, aggregate_id, event_type, payload, metadata, expected_version, event_id)
        inputs = dict(zip(["aggregate_type", "aggregate_id", "event_type", "payload", "metadata", "expected_version",
                           "event_id"], args))
        for _ in range(2 if again else 1):
            fz.call("append_event",
                    "SELECT * FROM eventstore.append_event(%s, %s, %s, %s::jsonb, %s::jsonb, %s::bigint, %s::uuid)",
                    args, role=role, tenant=tenant, inputs=inputs)
        read_everything(fz, tenant, reader, aggregate_type, aggregate_id, "fz" if "subscription" in extras else None)


@example(aggregate_type="order", aggregate_id="1", expected_version=None, role="writer", reader="reader", admin="admin",
         extras=set(), again=False,
         events=S.j("[" + ",".join(['{"event_type":"E","payload":{}}'] * 10001) + "]", "10001 x {event_type: E, payload: {}}"))
@example(aggregate_type="order", aggregate_id="1", expected_version=0, role="postgres", reader="postgres", admin="postgres",
         extras={"upcaster", "snapshots"}, again=True,
         events=S.j('[{"event_type":"E","payload":' + S.DEEP_200 + '},{"event_type":"E","payload":{},"metadata":' + S.DEEP_200 + "}]",
                    "[{E, payload nested 200 deep}, {E, metadata nested 200 deep}]"))
@fuzz_settings(120)
@given(aggregate_type=st.one_of(S.plain_names, S.names), aggregate_id=st.one_of(S.plain_names, S.names),
       events=S.batches(), expected_version=S.int8s, role=st.sampled_from(WRITERS), reader=st.sampled_from(ROLES),
       admin=st.sampled_from(ADMINS), extras=EXTRAS, again=st.booleans())
def test_append_events(fz, aggregate_type, aggregate_id, events, expected_version, role, reader, admin, extras, again):
    with one_example(fz, "append_events") as tenant:
        prepare(fz, tenant, admin, aggregate_type, "E", extras)
        inputs = {"aggregate_type": aggregate_type, "aggregate_id": aggregate_id, "events": events,
                  "expected_version": expected_version}
        for _ in range(2 if again else 1):
            fz.call("append_events", "SELECT * FROM eventstore.append_events(%s, %s, %s::jsonb, %s::bigint)",
                    (aggregate_type, aggregate_id, events, expected_version), role=role, tenant=tenant, inputs=inputs)
        read_everything(fz, tenant, reader, aggregate_type, aggregate_id, "fz" if "subscription" in extras else None)
