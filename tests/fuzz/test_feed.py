"""The feed and what follows it: read_all and read_stream with bogus and nudged cursors,
extreme counts and versions, filter arrays with NULLs; subscriptions created, polled, acked
and dropped with odd names, filters, start points and cursors; stream deletion; redaction by
event id and by JSON path.
"""

from hypothesis import given
from hypothesis import strategies as st

import strategies as S
from conftest import ADMINS, ROLES, WRITERS, one_example, fuzz_settings

SEED_EVENTS = ('[{"event_type":"OrderPlaced","payload":{"customer":{"email":"ann@example.com"},"total":1}},'
               '{"event_type":"OrderPaid","payload":{"amount":1e400,"customer":{"email":"bob@example.com"}}},'
               '{"event_type":"OrderPlaced","payload":{"deep":' + S.nest("obj", 60, "1") + "}}]")


def seed(fz, tenant, writer):
    fz.call("append_events", "SELECT * FROM eventstore.append_events('order', '1', %s::jsonb)", (SEED_EVENTS,),
            role=writer, tenant=tenant, inputs={"events": S.j(SEED_EVENTS, "3 events in order/1")})
    rows = fz.admin_sql(
        "SELECT event_id::text AS id, lpad(to_hex(transaction_id::text::bigint), 16, '0') || '-'"
        " || lpad(to_hex(global_position), 16, '0') AS cursor FROM eventstore.events WHERE tenant_id = %s"
        " ORDER BY global_position", (tenant,))
    return [r["id"] for r in rows], [r["cursor"] for r in rows]


@fuzz_settings(150)
@given(data=st.data(), role=st.sampled_from(ROLES), writer=st.sampled_from(WRITERS))
def test_reads(fz, data, role, writer):
    with one_example(fz, "reads") as tenant:
        _, cursors = seed(fz, tenant, writer)
        after = data.draw(S.cursors(cursors), label="after")
        max_count = data.draw(S.int4s, label="max_count")
        event_types = data.draw(S.text_arrays, label="event_types")
        aggregate_types = data.draw(S.text_arrays, label="aggregate_types")
        fz.call("read_all", "SELECT * FROM eventstore.read_all(%s, %s::int, %s::text[], %s::text[])",
                (after, max_count, event_types, aggregate_types), role=role, tenant=tenant,
                inputs={"after": after, "max_count": max_count, "event_types": event_types,
                        "aggregate_types": aggregate_types})
        at, ai = data.draw(st.sampled_from(["order", None, ""]), label="aggregate_type"), data.draw(
            st.one_of(st.just("1"), S.names), label="aggregate_id")
        from_version, count = data.draw(S.int8s, label="from_version"), data.draw(S.int4s, label="max_count")
        fz.call("read_stream", "SELECT * FROM eventstore.read_stream(%s, %s, %s::bigint, %s::int)",
                (at, ai, from_version, count), role=role, tenant=tenant,
                inputs={"aggregate_type": at, "aggregate_id": ai, "from_version": from_version, "max_count": count})
        fz.call("get_aggregate_state", "SELECT * FROM eventstore.get_aggregate_state(%s, %s, %s::bigint, %s::timestamptz)",
                (at, ai, from_version, data.draw(S.timestamps, label="as_of")), role=role, tenant=tenant,
                inputs={"aggregate_type": at, "aggregate_id": ai, "at_version": from_version})


@fuzz_settings(150)
@given(data=st.data(), role=st.sampled_from(ROLES), writer=st.sampled_from(WRITERS))
def test_subscriptions(fz, data, role, writer):
    with one_example(fz, "subscriptions") as tenant:
        name = data.draw(st.one_of(st.just("s"), S.names), label="name")
        event_types = data.draw(S.text_arrays, label="event_types")
        aggregate_types = data.draw(S.text_arrays, label="aggregate_types")
        start_from = data.draw(st.sampled_from(["beginning", "end", None, "", "BEGINNING", "0000000000000000-0000000000000000", "x" * 300]),
                               label="start_from")
        inputs = {"name": name, "event_types": event_types, "aggregate_types": aggregate_types, "start_from": start_from}
        fz.call("create_subscription", "SELECT eventstore.create_subscription(%s, %s::text[], %s::text[], %s)",
                (name, event_types, aggregate_types, start_from), role=role, tenant=tenant, inputs=inputs)
        _, cursors = seed(fz, tenant, writer)
        for _ in range(data.draw(st.integers(1, 3), label="rounds")):
            count = data.draw(S.int4s, label="max_count")
            fz.call("poll_subscription", "SELECT * FROM eventstore.poll_subscription(%s, %s::int)", (name, count),
                    role=role, tenant=tenant, inputs={"name": name, "max_count": count})
            cursor = data.draw(S.cursors(cursors), label="cursor")
            fz.call("ack_subscription", "SELECT eventstore.ack_subscription(%s, %s)", (name, cursor), role=role,
                    tenant=tenant, inputs={"name": name, "cursor": cursor})
        if data.draw(st.booleans(), label="drop"):
            fz.call("drop_subscription", "SELECT eventstore.drop_subscription(%s)", (name,), role=role, tenant=tenant,
                    inputs={"name": name})
        fz.call("create_subscription", "SELECT eventstore.create_subscription(%s)", (name,), role=role, tenant=tenant,
                inputs={"name": name})


@fuzz_settings(120)
@given(data=st.data(), admin=st.sampled_from(ADMINS), writer=st.sampled_from(WRITERS), reader=st.sampled_from(ROLES))
def test_delete_and_redact(fz, data, admin, writer, reader):
    with one_example(fz, "delete and redact") as tenant:
        ids, _ = seed(fz, tenant, writer)
        for _ in range(data.draw(st.integers(1, 3), label="operations")):
            op = data.draw(st.sampled_from(["delete", "redact_event", "redact_subject", "append"]), label="operation")
            if op == "delete":
                at = data.draw(st.sampled_from(["order", None, ""]), label="aggregate_type")
                ai = data.draw(st.one_of(st.just("1"), S.names), label="aggregate_id")
                hard = data.draw(S.bools, label="hard")
                fz.call("delete_stream", "SELECT eventstore.delete_stream(%s, %s, %s::boolean)", (at, ai, hard),
                        role=admin, tenant=tenant, inputs={"aggregate_type": at, "aggregate_id": ai, "hard": hard})
            elif op == "redact_event":
                eid = data.draw(st.one_of(st.sampled_from(ids), S.uuids), label="event_id")
                reason = data.draw(S.names, label="reason")
                fz.call("redact_event", "SELECT eventstore.redact_event(%s::uuid, %s)", (eid, reason), role=admin,
                        tenant=tenant, inputs={"event_id": eid, "reason": reason})
            elif op == "redact_subject":
                path = data.draw(st.one_of(st.sampled_from(["customer.email", "deep"]), S.path_texts, S.names), label="json_path")
                value = data.draw(st.one_of(st.sampled_from(["ann@example.com", "1e400", "1", "", None]), S.names), label="value")
                reason = data.draw(S.names, label="reason")
                fz.call("redact_subject", "SELECT eventstore.redact_subject(%s, %s, %s)", (path, value, reason),
                        role=admin, tenant=tenant, inputs={"json_path": path, "value": value, "reason": reason})
            else:
                p = data.draw(S.objects, label="payload")
                fz.call("append_event", "SELECT * FROM eventstore.append_event('order', '1', 'OrderPlaced', %s::jsonb)",
                        (p,), role=writer, tenant=tenant, inputs={"payload": p})
        fz.call("read_stream", "SELECT * FROM eventstore.read_stream('order', '1')", (), role=reader, tenant=tenant,
                inputs={})
        fz.call("get_aggregate_state", "SELECT * FROM eventstore.get_aggregate_state('order', '1')", (), role=reader,
                tenant=tenant, inputs={})
        fz.call("read_all", "SELECT * FROM eventstore.read_all()", (), role=reader, tenant=tenant, inputs={})
