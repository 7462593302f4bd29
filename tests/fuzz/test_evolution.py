"""Event schema evolution: pathological JSON Schemas (deep, $ref loops, remote and broken refs,
huge and hostile patterns, extreme numbers, odd keywords) registered and then validated
against generated payloads; upcaster transforms (known and unknown ops, 300 steps, long paths,
chains and overlaps) registered and then applied by every read.
"""

from hypothesis import example, given
from hypothesis import strategies as st

import strategies as S
from conftest import ADMINS, ROLES, WRITERS, one_example, fuzz_settings, read_everything

ET = "Deposited"


@fuzz_settings(250)
@given(schema=S.schemas(), version=st.sampled_from([1, 2, 1, 0, -1, 2**31 - 1, None]), payloads=st.lists(S.schema_payloads(), min_size=1, max_size=3),
       explicit_version=st.booleans(), again=st.one_of(st.none(), S.schemas()), admin=st.sampled_from(ADMINS),
       writer=st.sampled_from(WRITERS), reader=st.sampled_from(ROLES))
def test_event_schemas(fz, schema, version, payloads, explicit_version, again, admin, writer, reader):
    with one_example(fz, "register_event_schema") as tenant:
        fz.call("register_event_schema", "SELECT eventstore.register_event_schema(%s, %s::int, %s::jsonb)",
                (ET, version, schema), role=admin, tenant=tenant,
                inputs={"event_type": ET, "schema_version": version, "json_schema": schema})
        if again is not None:
            # the same version again (a no-op or refused) or a second version
            fz.call("register_event_schema", "SELECT eventstore.register_event_schema(%s, %s::int, %s::jsonb)",
                    (ET, version, again), role=admin, tenant=tenant,
                    inputs={"event_type": ET, "schema_version": version, "json_schema": again})
        for p in payloads:
            fz.call("append_event", "SELECT * FROM eventstore.append_event('acc', 'a1', %s, %s::jsonb)", (ET, p),
                    role=writer, tenant=tenant, inputs={"event_type": ET, "payload": p})
        if explicit_version:
            events = S.j("[" + ",".join(f'{{"event_type":"{ET}","payload":{p},"schema_version":{version if version is not None else "null"}}}'
                                        for p in payloads) + "]", "[" + ", ".join(p.desc for p in payloads) + f"] at schema_version {version}")
            fz.call("append_events", "SELECT * FROM eventstore.append_events('acc', 'a1', %s::jsonb)", (events,),
                    role=writer, tenant=tenant, inputs={"events": events})
        read_everything(fz, tenant, reader, "acc", "a1")


# reproductions: an upcaster with a 100,000-segment path; a payload nested 200 deep under an
# upcaster (every read of the tenant's feed goes through it)
@example(chain=[(1, 2, S.j('[{"op":"set_default","path":' + S.LONG_PATH + ',"value":1}]', "[{op: set_default, path: 100,000 segments}]"))],
         payloads=[S.j('{"a":1}'), S.j('{"a":1}')], schema_version=None, subscription=True, admin="postgres",
         writer="postgres", reader="reader")
@example(chain=[(1, 2, S.j('[{"op":"set_default","path":"x","value":1}]', "[{op: set_default, path: x}]"))],
         payloads=[S.DEEP_200, S.j('{"a":1}')], schema_version=1, subscription=True, admin="admin", writer="writer",
         reader="reader")
@fuzz_settings(250)
@given(chain=st.lists(st.tuples(st.sampled_from([1, 2, 3, 1, 0, -1, 2**31 - 1]), st.sampled_from([2, 3, 4, 1, 2**31 - 1, -1]),
                                S.programs("transform")), min_size=1, max_size=3),
       payloads=st.lists(S.objects, min_size=1, max_size=3), schema_version=st.sampled_from([None, 1, 2, 3]),
       subscription=st.booleans(), admin=st.sampled_from(ADMINS), writer=st.sampled_from(WRITERS),
       reader=st.sampled_from(ROLES))
def test_upcasters(fz, chain, payloads, schema_version, subscription, admin, writer, reader):
    with one_example(fz, "register_upcaster") as tenant:
        if subscription:
            fz.call("create_subscription", "SELECT eventstore.create_subscription('fz')", (), role=reader if reader != "postgres" else admin,
                    tenant=tenant, inputs={})
        # events stored before the upcasters exist, and after
        fz.call("append_event", "SELECT * FROM eventstore.append_event('acc', 'a1', %s, %s::jsonb)", (ET, payloads[0]),
                role=writer, tenant=tenant, inputs={"event_type": ET, "payload": payloads[0]})
        for frm, to, transform in chain:
            fz.call("register_upcaster", "SELECT eventstore.register_upcaster(%s, %s::int, %s::int, %s::jsonb)",
                    (ET, frm, to, transform), role=admin, tenant=tenant,
                    inputs={"event_type": ET, "from_version": frm, "to_version": to, "transform": transform})
        for p in payloads[1:]:
            sv = "null" if schema_version is None else str(schema_version)
            events = S.j(f'[{{"event_type":"{ET}","payload":{p},"schema_version":{sv}}}]', f"[{p.desc} at schema_version {sv}]")
            fz.call("append_events", "SELECT * FROM eventstore.append_events('acc', 'a1', %s::jsonb)", (events,),
                    role=writer, tenant=tenant, inputs={"events": events})
        read_everything(fz, tenant, reader, "acc", "a1", "fz" if subscription else None)
