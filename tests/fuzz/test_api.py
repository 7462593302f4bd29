"""API versioning: generated versions (odd strings, extreme dates, odd minimum client
versions), routes to every kind of handler, Stripe-style changes with request and response
transforms (known and unknown ops, 300 steps, long paths), deprecations and switches; then
route_api_call with generated rpc names, payloads, requested versions and PostgREST request
headers and JWT claims (valid, odd and not JSON at all), and get_api_usage over extreme days.

The API catalog is global to the database, so every example starts from an empty one.
"""

from hypothesis import example, given
from hypothesis import strategies as st

import strategies as S
from conftest import ADMINS, ROLES, ROUTE_HANDLERS, one_example, fuzz_settings

CLEAN = """
DELETE FROM eventstore.api_changes; DELETE FROM eventstore.api_routes; DELETE FROM eventstore.active_api_version;
DELETE FROM eventstore.api_deployments; DELETE FROM eventstore.api_versions;
-- a function change: every backend's definition caches start over
CREATE OR REPLACE FUNCTION fz.bump() RETURNS void LANGUAGE sql AS 'SELECT';
"""

VERSION_NAMES = ["2024-01-01", "2024-06-01", "1.0.0", "1.10.0", "1.9.9", "", " ", "v", "2024-01-01.1", "1.2.3.4.5",
                 "999999999999999999999.0.0", "-1", "a.b.c", "0.0.0-rc.1+build", "é", "x" * 300, "x" * 10000, None]
# each argument: a value that passes (so that the call gets further) or an odd one
versions = S.mostly(st.sampled_from(["2024-01-01", "2024-06-01", "1.10.0", "2.0.0"]),
                     st.sampled_from(VERSION_NAMES).map(lambda v: S.j(v, f"{v[:10]!r}…[{len(v)}]") if v and len(v) > 60 else v))
CLIENT_VERSIONS = S.mostly(st.sampled_from([None, "1.0.0", "1.10.0"]),
                            st.sampled_from(["", "1", "1.2.3.4", "99999999999999999999999.0.0", "-1.-1.-1", "a.b.c",
                                             "1.0.0-beta", "v1.0.0", "1..0"]))
DOCS = S.mostly(st.sampled_from([None, "https://docs.invalid/v"]),
                 st.sampled_from(["", "javascript:alert(1)", "x" * 10000, "http://127.0.0.1:9/\r\nSet-Cookie: a=b"]))
WHEN = S.mostly(st.sampled_from([None, "2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z"]), S.timestamps)
RPCS = S.mostly(st.just("get_order"), S.names)


def headers(version):
    return st.sampled_from([
        None, "{}", S.dumps({"x-api-version": version}) if version else "{}",
        S.dumps({"accept": f"application/vnd.app.{version}+json"}) if version else '{"accept":"*/*"}',
        '{"x-app-version":"1.9.9"}', '{"x-app-version":"99999999999999999999999.0.0"}', '{"x-app-version":""}',
        '{"x-api-version":1}', '{"x-api-version":null}', '{"x-api-version":["a"]}', "not json", "[]", '"x"', "",
        '{"accept":"application/vnd.' + "a" * 100000 + '+json"}', '{"accept":"application/vnd..+json"}',
        '{"x-app-name":' + S.dumps("n" * 100000) + ',"x-client-region":"\\u202e"}',
        S.nest("obj", 200, "1", "x-api-version"), '{"x-api-version":"' + "9" * 10000 + '"}'])


CLAIMS = st.sampled_from([None, '{"sub":"u"}', "not json", '{"sub":1e400}', '{"sub":' + S.nest("obj", 200, "1") + "}", "[]",
                          '{"sub":"' + "s" * 100000 + '"}', '{"tenant_id":{"a":1}}'])


@fuzz_settings(250)
@given(data=st.data(), admin=st.sampled_from(ADMINS), caller=st.sampled_from(ROLES))
def test_api_versioning(fz, data, admin, caller):
    with one_example(fz, "api versioning") as tenant:
        fz.admin_sql(CLEAN)
        registered = []
        for _ in range(data.draw(st.integers(1, 3), label="versions")):
            v = data.draw(versions if registered else versions.filter(lambda v: v is not None), label="version")
            args = {"version": v, "released_at": data.draw(WHEN, label="released_at"),
                    "min_client_version": data.draw(CLIENT_VERSIONS, label="min_client_version"),
                    "docs_url": data.draw(DOCS, label="docs_url")}
            status, _ = fz.call("register_api_version",
                                "SELECT eventstore.register_api_version(%s, coalesce(%s::timestamptz, now()), %s, %s)",
                                tuple(args.values()), role=admin, tenant=tenant, inputs=args)
            if status == "ok":
                registered.append(v)
        some_version = S.mostly(st.sampled_from(registered or [None]), versions, 3)
        for _ in range(data.draw(st.integers(1, 2), label="routes")):
            args = {"rpc_name": data.draw(RPCS, label="rpc_name"), "version": data.draw(some_version, label="version"),
                    "handler": data.draw(S.mostly(st.sampled_from(ROUTE_HANDLERS[:2]), st.sampled_from(ROUTE_HANDLERS + [None]), 2),
                                         label="handler")}
            fz.call("register_api_route", "SELECT eventstore.register_api_route(%s, %s, %s::regprocedure)",
                    tuple(args.values()), role=admin, tenant=tenant, inputs=args)
        for _ in range(data.draw(st.integers(0, 2), label="changes")):
            args = {"version": data.draw(some_version, label="version"), "rpc_name": data.draw(RPCS, label="rpc_name"),
                    "description": data.draw(S.mostly(st.just("changed"), S.names), label="description"),
                    "request_transform": data.draw(st.one_of(st.none(), S.programs("transform")), label="request_transform"),
                    "response_transform": data.draw(st.one_of(st.none(), S.programs("transform")), label="response_transform")}
            fz.call("register_api_change", "SELECT eventstore.register_api_change(%s, %s, %s, %s::jsonb, %s::jsonb)",
                    tuple(args.values()), role=admin, tenant=tenant, inputs=args)
        if data.draw(st.booleans(), label="deprecate"):
            args = {"version": data.draw(some_version, label="version"),
                    "deprecated_at": data.draw(WHEN, label="deprecated_at"),
                    "sunset_at": data.draw(WHEN, label="sunset_at"), "docs_url": data.draw(DOCS, label="docs_url")}
            fz.call("deprecate_api_version",
                    "SELECT eventstore.deprecate_api_version(%s, coalesce(%s::timestamptz, now()), %s::timestamptz, %s)",
                    tuple(args.values()), role=admin, tenant=tenant, inputs=args)
        if data.draw(st.booleans(), label="switch"):
            args = {"new_version": data.draw(some_version, label="new_version"),
                    "fallback_version": data.draw(some_version, label="fallback_version")}
            fz.call("switch_api_version", "SELECT eventstore.switch_api_version(%s, %s)", tuple(args.values()),
                    role=admin, tenant=tenant, inputs=args)
        fz.call("get_active_api_version", "SELECT eventstore.get_active_api_version()", (), role=caller, tenant=tenant,
                inputs={})
        for _ in range(data.draw(st.integers(1, 3), label="calls")):
            version = data.draw(some_version, label="requested_version")
            args = {"name": data.draw(RPCS, label="name"), "payload": data.draw(S.jsonb_args(), label="payload"),
                    "requested_version": version}
            settings = {}
            h = data.draw(headers(data.draw(some_version, label="header version")), label="request.headers")
            if h is not None:
                settings["request.headers"] = h
            c = data.draw(CLAIMS, label="request.jwt.claims")
            if c is not None:
                settings["request.jwt.claims"] = c
            fz.call("route_api_call", "SELECT eventstore.route_api_call(%s, %s::jsonb, %s),"
                    " current_setting('response.status', true) AS status, current_setting('response.headers', true) AS headers",
                    tuple(args.values()), role=caller, tenant=tenant, settings=settings,
                    inputs={**args, **{k: (S.j(v, repr(v[:40]) + f"…[{len(v)}]") if len(v) > 60 else v) for k, v in settings.items()}})
        if caller in ADMINS:
            since, until = data.draw(S.dates, label="since"), data.draw(S.dates, label="until")
            fz.call("get_api_usage", "SELECT * FROM eventstore.get_api_usage(%s::date, %s::date)", (since, until),
                    role=caller, tenant=tenant, inputs={"since": since, "until": until})


# a reproduction: a response transform with a 100,000-segment path (run for every caller of the
# older version)
@example(request_transform=None, handler="fz.a_wrap(jsonb)", payload=S.j('{"id":7}'), caller="reader",
         response_transform=S.j('[{"op":"rename","from":' + S.LONG_PATH + ',"to":"x"}]', "[{op: rename, from: 100,000 segments, to: x}]"))
@example(request_transform=S.j('[{"op":"set_default","path":' + S.LONG_PATH + ',"value":1}]', "[{op: set_default, path: 100,000 segments}]"),
         handler="fz.a_echo(jsonb)", payload=S.DEEP_200, caller="postgres", response_transform=None)
@fuzz_settings(150)
@given(request_transform=st.one_of(st.none(), S.programs("transform")), response_transform=st.one_of(st.none(), S.programs("transform")),
       handler=S.mostly(st.sampled_from(ROUTE_HANDLERS[:2]), st.sampled_from(ROUTE_HANDLERS), 2), payload=S.jsonb_args(),
       caller=st.sampled_from(ROLES))
def test_api_change_transforms(fz, request_transform, response_transform, handler, payload, caller):
    """Transforms that actually run: version 2.0.0 is served by a handler, 1.0.0 is reached
    through the change, and the call asks for 1.0.0."""
    with one_example(fz, "api change transforms") as tenant:
        fz.admin_sql(CLEAN)
        fz.admin_sql("SELECT eventstore.register_api_version('1.0.0'), eventstore.register_api_version('2.0.0')")
        fz.history.append("versions 1.0.0 and 2.0.0")
        fz.call("register_api_route", "SELECT eventstore.register_api_route('get_order', '2.0.0', %s::regprocedure)",
                (handler,), role="postgres", tenant=tenant, inputs={"rpc_name": "get_order", "version": "2.0.0",
                                                                    "handler": handler})
        fz.call("register_api_change", "SELECT eventstore.register_api_change('2.0.0', 'get_order', 'changed', %s::jsonb, %s::jsonb)",
                (request_transform, response_transform), role="postgres", tenant=tenant,
                inputs={"request_transform": request_transform, "response_transform": response_transform})
        for version in ("1.0.0", "2.0.0", None):
            fz.call("route_api_call", "SELECT eventstore.route_api_call('get_order', %s::jsonb, %s)", (payload, version),
                    role=caller, tenant=tenant, inputs={"payload": payload, "requested_version": version})
