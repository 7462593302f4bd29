"""Aggregate state: generated aggregate definitions (initial states, snapshot settings),
reducer rules (known and unknown ops, 300 steps, paths of up to 100,000 segments, deep
operands) and handlers (raising, returning NULL, scalars, deep values, wrong signatures), then
appends that run them (with snapshots inside the append) and every way to read the state back
(at_version and as_of included).
"""

from hypothesis import example, given
from hypothesis import strategies as st

import strategies as S
from conftest import ADMINS, REDUCER_HANDLERS, ROLES, WRITERS, one_example, fuzz_settings

AT = "acc"
reducers = st.one_of(S.programs("reducer").map(lambda p: ("rule", p)),
                     st.sampled_from(REDUCER_HANDLERS).map(lambda h: ("handler", h)))


# the reproductions of the issue that made this layer: a 100,000-segment path in a rule, with
# and without a snapshot inside the append; a payload nested 200 deep
@example(initial_state=None, snapshot_every=1, keep_snapshots=None, batch=False, at_version=None, as_of=None,
         defs=[("Deposited", ("rule", S.j('[{"op":"set","path":' + S.LONG_PATH + ',"value":1}]', "[{op: set, path: 100,000 segments, value: 1}]")))],
         payloads=[("Deposited", S.j('{"x":1}'))], admin="postgres", writer="postgres", reader="postgres")
@example(initial_state=None, snapshot_every=None, keep_snapshots=None, batch=False, at_version=None, as_of=None,
         defs=[("Deposited", ("rule", S.j('[{"op":"increment","path":' + S.LONG_PATH + ',"from":"x"}]', "[{op: increment, path: 100,000 segments, from: x}]")))],
         payloads=[("Deposited", S.j('{"x":1}')), ("Other", S.DEEP_200)], admin="admin", writer="writer", reader="reader")
@fuzz_settings(250)
@given(initial_state=st.one_of(st.none(), S.jsonb_args()), snapshot_every=S.small_int4s, keep_snapshots=S.small_int4s,
       defs=st.lists(st.tuples(st.sampled_from(["Deposited", "Closed", "Other"]), reducers), min_size=1, max_size=3),
       payloads=st.lists(st.tuples(st.sampled_from(["Deposited", "Closed", "Other", "Unruled"]), S.objects),
                         min_size=1, max_size=4),
       batch=st.booleans(), at_version=S.int8s, as_of=S.timestamps, admin=st.sampled_from(ADMINS),
       writer=st.sampled_from(WRITERS), reader=st.sampled_from(ROLES))
def test_reducers(fz, initial_state, snapshot_every, keep_snapshots, defs, payloads, batch, at_version, as_of, admin,
                  writer, reader):
    with one_example(fz, "reducers") as tenant:
        def call(fn, sql, params, role, **inputs):
            return fz.call(fn, sql, params, role=role, tenant=tenant, inputs=inputs)

        if initial_state is not None or snapshot_every is not None:
            call("define_aggregate", "SELECT eventstore.define_aggregate(%s, coalesce(%s::jsonb, '{}'), %s::int, %s::int)",
                 (AT, initial_state, snapshot_every, keep_snapshots), admin, aggregate_type=AT,
                 initial_state=initial_state, snapshot_every=snapshot_every, keep_snapshots=keep_snapshots)
        for event_type, (kind, body) in defs:
            if kind == "rule":
                call("define_reducer", "SELECT eventstore.define_reducer(%s, %s, rule => %s::jsonb)", (AT, event_type, body),
                     admin, aggregate_type=AT, event_type=event_type, rule=body)
            else:
                call("define_reducer", "SELECT eventstore.define_reducer(%s, %s, handler => %s::regprocedure)",
                     (AT, event_type, body), admin, aggregate_type=AT, event_type=event_type, handler=body)
        if batch:
            events = S.j("[" + ",".join(f'{{"event_type":"{t}","payload":{p}}}' for t, p in payloads) + "]",
                         "[" + ", ".join(f"{t}: {p.desc}" for t, p in payloads) + "]")
            call("append_events", "SELECT * FROM eventstore.append_events(%s, 'a1', %s::jsonb)", (AT, events), writer,
                 aggregate_type=AT, aggregate_id="a1", events=events)
        else:
            for t, p in payloads:
                call("append_event", "SELECT * FROM eventstore.append_event(%s, 'a1', %s, %s::jsonb)", (AT, t, p), writer,
                     aggregate_type=AT, aggregate_id="a1", event_type=t, payload=p)
        call("get_aggregate_state", "SELECT * FROM eventstore.get_aggregate_state(%s, 'a1')", (AT,), reader,
             aggregate_type=AT, aggregate_id="a1")
        call("get_aggregate_state", "SELECT * FROM eventstore.get_aggregate_state(%s, 'a1', %s::bigint, %s::timestamptz)",
             (AT, at_version, as_of), reader, aggregate_type=AT, aggregate_id="a1", at_version=at_version, as_of=as_of)
        if reader != "reader":
            call("create_snapshot", "SELECT eventstore.create_snapshot(%s, 'a1')", (AT,), reader, aggregate_type=AT,
                 aggregate_id="a1")
            call("get_aggregate_state", "SELECT * FROM eventstore.get_aggregate_state(%s, 'a1')", (AT,), reader,
                 aggregate_type=AT, aggregate_id="a1")
        call("read_stream", "SELECT * FROM eventstore.read_stream(%s, 'a1')", (AT,), reader, aggregate_type=AT,
             aggregate_id="a1")
