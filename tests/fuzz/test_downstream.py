"""Downstream of the log: projections registered with every kind of handler, filter and mode
(inline ones then run inside generated appends), rebuilt, replayed and dropped; webhook
endpoints created with odd URLs (only loopback port 9 or unresolvable names: nothing is ever
delivered anywhere), filters, retry schedules and rate limits, then fed by generated appends
(whose delivery bodies are frozen at queue time), rotated, retried, recovered, enabled and
disabled; sign_webhook with odd secrets, ids, timestamps and bodies.
"""

from hypothesis import given
from hypothesis import strategies as st

import strategies as S
from conftest import ADMINS, PROJECTION_HANDLERS, RESET_HANDLERS, ROLES, WRITERS, one_example, fuzz_settings

MODES = st.sampled_from(["inline", "async", "inline", None, "", "INLINE", "sync"])


@fuzz_settings(150)
@given(data=st.data(), admin=st.sampled_from(ADMINS), writer=st.sampled_from(WRITERS), reader=st.sampled_from(ROLES))
def test_projections(fz, data, admin, writer, reader):
    with one_example(fz, "projections") as tenant:
        name = data.draw(st.one_of(st.just("p"), S.names), label="name")
        handler = data.draw(st.sampled_from(PROJECTION_HANDLERS + [None]), label="handler")
        event_types = data.draw(S.text_arrays, label="event_types")
        mode = data.draw(MODES, label="mode")
        reset = data.draw(st.sampled_from([None] + RESET_HANDLERS), label="reset")
        fz.call("register_projection",
                "SELECT eventstore.register_projection(%s, %s::regprocedure, %s::text[], %s, %s::regprocedure)",
                (name, handler, event_types, mode, reset), role=admin, tenant=tenant,
                inputs={"name": name, "handler": handler, "event_types": event_types, "mode": mode, "reset": reset})
        for _ in range(data.draw(st.integers(1, 3), label="appends")):
            et = data.draw(st.one_of(st.sampled_from(["OrderPlaced", "a"]), S.plain_names), label="event_type")
            p = data.draw(S.objects, label="payload")
            fz.call("append_event", "SELECT * FROM eventstore.append_event('order', '1', %s, %s::jsonb)", (et, p),
                    role=writer, tenant=tenant, inputs={"event_type": et, "payload": p})
        for op in data.draw(st.lists(st.sampled_from(["rebuild_projection", "replay_parked_events", "drop_projection"]),
                                     max_size=3), label="operations"):
            fz.call(op, f"SELECT eventstore.{op}(%s)", (name,), role=admin, tenant=tenant, inputs={"name": name})
        fz.call("projection_status", "SELECT * FROM eventstore.projection_status()", (), role=reader, tenant=tenant, inputs={})
        fz.call("worker_status", "SELECT eventstore.worker_status()", (), role=reader, tenant=tenant, inputs={})


@fuzz_settings(150)
@given(data=st.data(), admin=st.sampled_from(ADMINS), writer=st.sampled_from(WRITERS))
def test_webhooks(fz, data, admin, writer):
    with one_example(fz, "webhooks") as tenant:
        url = data.draw(st.one_of(st.just("http://127.0.0.1:9/hook"), S.urls), label="url")
        args = {
            "url": url,
            "event_types": data.draw(S.text_arrays, label="event_types"),
            "aggregate_types": data.draw(S.text_arrays, label="aggregate_types"),
            "description": data.draw(S.names, label="description"),
            "retry_schedule": data.draw(S.int_arrays, label="retry_schedule"),
            "rate_limit_per_second": data.draw(S.int4s, label="rate_limit_per_second"),
        }
        status, rows = fz.call("create_webhook_endpoint",
                               "SELECT * FROM eventstore.create_webhook_endpoint(%s, %s::text[], %s::text[], %s, %s::int[], %s::int)",
                               tuple(args.values()), role=admin, tenant=tenant, inputs=args)
        endpoint = rows[0]["endpoint_id"] if status == "ok" and rows else None
        if endpoint is None:
            # a plain endpoint, so that the rest has something to work on
            status, rows = fz.call("create_webhook_endpoint",
                                   "SELECT * FROM eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook')", (),
                                   role=admin, tenant=tenant, inputs={})
            endpoint = rows[0]["endpoint_id"] if status == "ok" and rows else None
        for _ in range(data.draw(st.integers(1, 2), label="appends")):
            p = data.draw(S.objects, label="payload")
            m = data.draw(st.one_of(st.none(), S.metadatas()), label="metadata")
            fz.call("append_event", "SELECT * FROM eventstore.append_event('order', '1', 'OrderPlaced', %s::jsonb, %s::jsonb)",
                    (p, m), role=writer, tenant=tenant, inputs={"payload": p, "metadata": m})
        events = [r["id"] for r in fz.admin_sql(
            "SELECT event_id::text AS id FROM eventstore.events WHERE tenant_id = %s", (tenant,))]
        deliveries = [r["id"] for r in fz.admin_sql(
            "SELECT delivery_id::text AS id FROM eventstore.webhook_deliveries WHERE tenant_id = %s", (tenant,))]
        ep = data.draw(st.one_of(st.just(str(endpoint) if endpoint else None), S.uuids), label="endpoint_id")
        for op in data.draw(st.lists(st.sampled_from(["queue", "rotate", "retry", "recover", "enable", "disable", "stats"]),
                                     min_size=1, max_size=4), label="operations"):
            if op == "queue":
                eid = data.draw(st.one_of(st.sampled_from(events or [None]), S.uuids), label="event_id")
                fz.call("queue_event_for_webhooks", "SELECT eventstore.queue_event_for_webhooks(%s::uuid)", (eid,),
                        role=admin, tenant=tenant, inputs={"event_id": eid})
            elif op == "rotate":
                grace = data.draw(S.intervals, label="grace")
                fz.call("rotate_webhook_secret", "SELECT eventstore.rotate_webhook_secret(%s::uuid, %s::interval)",
                        (ep, grace), role=admin, tenant=tenant, inputs={"endpoint_id": ep, "grace": grace})
            elif op == "retry":
                did = data.draw(st.one_of(st.sampled_from(deliveries or [None]), S.uuids), label="delivery_id")
                fz.call("retry_webhook_delivery", "SELECT eventstore.retry_webhook_delivery(%s::uuid)", (did,),
                        role=admin, tenant=tenant, inputs={"delivery_id": did})
            elif op == "recover":
                since = data.draw(S.timestamps, label="since")
                fz.call("recover_webhook_endpoint", "SELECT eventstore.recover_webhook_endpoint(%s::uuid, %s::timestamptz)",
                        (ep, since), role=admin, tenant=tenant, inputs={"endpoint_id": ep, "since": since})
            elif op == "enable":
                fz.call("enable_webhook_endpoint", "SELECT eventstore.enable_webhook_endpoint(%s::uuid)", (ep,),
                        role=admin, tenant=tenant, inputs={"endpoint_id": ep})
            elif op == "disable":
                reason = data.draw(S.names, label="reason")
                fz.call("disable_webhook_endpoint", "SELECT eventstore.disable_webhook_endpoint(%s::uuid, %s)",
                        (ep, reason), role=admin, tenant=tenant, inputs={"endpoint_id": ep, "reason": reason})
            else:
                since = data.draw(S.timestamps, label="since")
                fz.call("get_webhook_delivery_stats", "SELECT eventstore.get_webhook_delivery_stats(%s::timestamptz)",
                        (since,), role=admin, tenant=tenant, inputs={"since": since})


@fuzz_settings(80)
@given(secret=st.one_of(st.sampled_from(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!!", "", "whsec_" + "A" * 100000,
                                         "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "whsec_====",
                                         "whsec_\u00e9\u00e9"]), S.names),
       msg_id=S.names, ts=S.int8s, body=st.one_of(S.names, S.json_values()), role=st.sampled_from(ROLES))
def test_sign_webhook(fz, secret, msg_id, ts, body, role):
    with one_example(fz, "sign_webhook") as tenant:
        fz.call("sign_webhook", "SELECT eventstore.sign_webhook(%s, %s, %s::bigint, %s)", (secret, msg_id, ts, body),
                role=role, tenant=tenant, inputs={"secret": S.j(secret, repr(secret[:40])) if secret else secret,
                                                  "msg_id": msg_id, "ts": ts, "body": body})
