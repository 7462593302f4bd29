"""Who a call acts for: generated eventstore.tenant_id values (empty, 256 characters, unicode,
quotes), PostgREST JWT claims (valid, odd, deep, not JSON), tenant_claim paths and
require_tenant, as the superuser and as each granted role; grant_access with odd roles and
levels. The tenant's data is then written and read through the usual functions.
"""

from hypothesis import example, given
from hypothesis import strategies as st

import strategies as S
from conftest import ROLES, one_example, fuzz_settings

CLAIMS = st.one_of(
    st.sampled_from([None, '{"tenant_id":"acme"}', '{"tenant_id":""}', '{"tenant_id":1}', '{"tenant_id":null}',
                     '{"tenant_id":{"a":1}}', '{"tenant_id":["a"]}', '{"app_metadata":{"org_id":"acme"}}',
                     '{"tenant_id":"' + "t" * 100000 + '"}', "not json", "", "[]", '"x"', '{"tenant_id":1e400}',
                     '{"app_metadata":' + S.nest("obj", 300, '"deep"', "org_id") + "}"]),
    S.json_values(top_object=True))
CLAIM_PATHS = st.sampled_from([None, "tenant_id", "app_metadata.org_id", "", ".", "a..b", "app_metadata.org_id.org_id",
                               ".".join(["org_id"] * 300), "x" * 10000])


# a tenant of 100,000 characters, from the JWT claims and from the setting
@example(tenant=None, claims='{"tenant_id":"' + "t" * 100000 + '"}', claim_path=None, require=None, role="writer",
         payload=S.j('{"a":1}'))
@example(tenant="y" * 100000, claims=None, claim_path=None, require=None, role="postgres", payload=S.j('{"a":1}'))
@fuzz_settings(200)
@given(tenant=st.one_of(st.none(), S.names), claims=CLAIMS, claim_path=CLAIM_PATHS, require=st.sampled_from([None, "on", "off", "maybe"]),
       role=st.sampled_from(ROLES), payload=S.objects)
def test_tenant_resolution(fz, tenant, claims, claim_path, require, role, payload):
    with one_example(fz, "tenancy"):
        settings = {}
        if claims is not None:
            settings["request.jwt.claims"] = claims
        if claim_path is not None:
            settings["eventstore.tenant_claim"] = claim_path
        if require is not None:
            settings["eventstore.require_tenant"] = require
        shown = {"tenant": tenant, **{k: (S.j(v, repr(v[:40]) + f"…[{len(v)}]") if len(v) > 60 else v) for k, v in settings.items()}}

        def call(fn, sql, params=(), **inputs):
            return fz.call(fn, sql, params, role=role, tenant=tenant, settings=settings, inputs={**shown, **inputs})

        call("current_tenant", "SELECT eventstore.current_tenant()")
        if role != "reader":
            call("append_event", "SELECT * FROM eventstore.append_event('order', '1', 'OrderPlaced', %s::jsonb)", (payload,),
                 payload=payload)
        call("read_all", "SELECT * FROM eventstore.read_all(NULL, 10)")
        call("read_stream", "SELECT * FROM eventstore.read_stream('order', '1')")
        call("get_aggregate_state", "SELECT * FROM eventstore.get_aggregate_state('order', '1')")
        call("get_event_store_stats", "SELECT eventstore.get_event_store_stats()")
        call("feed_lag", "SELECT eventstore.feed_lag()")
        call("create_subscription", "SELECT eventstore.create_subscription('s')")
        call("route_api_call", "SELECT eventstore.route_api_call('nothing', '{}')")


@fuzz_settings(60)
@given(grantee=st.one_of(st.sampled_from(["reader", "writer", "no_such_role", "postgres"]), S.names),
       access=st.sampled_from(["reader", "writer", "admin", "", "READER", "superuser", None, "admin ", "a" * 1000]),
       role=st.sampled_from(["postgres", "admin", "writer"]))
def test_grant_access(fz, grantee, access, role):
    with one_example(fz, "grant_access") as tenant:
        # "reader"/"writer" stand for the module's spare role; PUBLIC is never granted anything
        g = fz.roles["spare"] if grantee in ("reader", "writer") else grantee
        if isinstance(g, str) and g.lower() == "public":
            g = "no_such_role"
        fz.call("grant_access", "SELECT eventstore.grant_access(%s, %s)", (g, access), role=role, tenant=tenant,
                inputs={"role": g, "access": access})
