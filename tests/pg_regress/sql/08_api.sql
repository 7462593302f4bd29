-- API versioning: versions, routes, changes, deprecation, the hot switch, route_api_call and
-- usage.
SET client_min_messages = warning;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
-- a call as PostgREST makes it: request headers in, status and response headers out; the
-- envelope without the fields that change on every call
CREATE FUNCTION pg_temp.call(rpc text, payload jsonb DEFAULT '{}', version text DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS TABLE (status text, answer jsonb, response_headers jsonb) LANGUAGE plpgsql AS $f$
DECLARE r jsonb;
BEGIN
    PERFORM set_config('request.headers', coalesce(headers::text, ''), true);
    r := eventstore.route_api_call(rpc, payload, version);
    RETURN QUERY SELECT coalesce(nullif(current_setting('response.status', true), ''), '200'),
        r #- '{meta,request_id}' #- '{meta,timestamp}' #- '{meta,processing_ms}',
        nullif(current_setting('response.headers', true), '')::jsonb;
END
$f$;

-- handlers: (payload jsonb) -> jsonb
CREATE SCHEMA api;
CREATE FUNCTION api.get_user_v1(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('name', payload->>'id' || ' (v1)', 'served_by', 'v1') $$;
CREATE FUNCTION api.get_user_v2(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('full_name', 'user ' || coalesce(payload->>'user_id', '?'),
                              'status', 'enabled', 'served_by', 'v2') $$;
CREATE TABLE api.audit (note text);
CREATE FUNCTION api.fail(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO api.audit VALUES ('written before the error');
    RAISE EXCEPTION 'order % cannot be cancelled', payload->>'id' USING DETAIL = 'it shipped', HINT = 'refund it';
END $$;
CREATE FUNCTION api.whoami(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT to_jsonb(current_user::text) $$;
CREATE FUNCTION api.takes_text(payload text) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE FUNCTION api.returns_text(payload jsonb) RETURNS text LANGUAGE sql AS $$ SELECT '' $$;
CREATE FUNCTION api.returns_set(payload jsonb) RETURNS SETOF jsonb LANGUAGE sql AS $$ SELECT payload $$;
CREATE PROCEDURE api.proc(payload jsonb) LANGUAGE sql AS $$ SELECT 1 $$;

-- no version yet: nothing is active
SELECT * FROM pg_temp.call('get_user');

-- versions: the first one becomes active; bad input is refused (22023)
SELECT eventstore.register_api_version('1.0', '2024-01-01', docs_url => 'https://docs.example.com/api/v1');
SELECT eventstore.register_api_version('1.9.9', '2024-03-01');
SELECT eventstore.register_api_version('1.10.0', '2024-05-01', min_client_version => '1.10.0');
SELECT eventstore.register_api_version('2.0', '2024-06-01');
SELECT fails($$SELECT eventstore.register_api_version('latest')$$);
SELECT fails($$SELECT eventstore.register_api_version(NULL)$$);
SELECT fails($$SELECT eventstore.register_api_version('v2')$$);
SELECT fails($$SELECT eventstore.register_api_version('3', min_client_version => '1.x')$$);
SELECT fails($$SELECT eventstore.register_api_version('3', docs_url => 'docs.example.com')$$);
SELECT fails($$SELECT eventstore.register_api_version('3', docs_url => 'https://x.example/a b')$$);
SELECT fails($$SELECT eventstore.register_api_version('3', released_at => 'infinity')$$);
SELECT version, status, released_at, min_client_version, docs_url FROM eventstore.api_versions ORDER BY released_at;
SELECT from_version, to_version, deployed_by, reason FROM eventstore.api_deployments ORDER BY deployment_id;

-- routes: the version must exist (P0002), the handler must be (jsonb) -> jsonb (22023)
SELECT eventstore.register_api_route('get_user', '1.9.9', 'api.get_user_v1(jsonb)');
SELECT eventstore.register_api_route('get_user', '2.0', 'api.get_user_v2(jsonb)');
SELECT eventstore.register_api_route('cancel_order', '1.0', 'api.fail(jsonb)');
SELECT eventstore.register_api_route('whoami', '1.0', 'api.whoami(jsonb)');
SELECT fails($$SELECT eventstore.register_api_route('get_user', '3.0', 'api.get_user_v2(jsonb)')$$);
SELECT fails($$SELECT eventstore.register_api_route('x', '2.0', 'api.takes_text(text)')$$);
SELECT fails($$SELECT eventstore.register_api_route('x', '2.0', 'api.returns_text(jsonb)')$$);
SELECT fails($$SELECT eventstore.register_api_route('x', '2.0', 'api.returns_set(jsonb)')$$);
SELECT fails($$SELECT eventstore.register_api_route('x', '2.0', 'api.proc(jsonb)')$$);
SELECT fails($$SELECT eventstore.register_api_route('x', '2.0', NULL)$$);
SELECT fails($$SELECT eventstore.register_api_route('', '2.0', 'api.whoami(jsonb)')$$);

-- changes (Stripe style): what changed at 2.0, so that 1.10.0 callers get the 1.x shape from
-- the 2.0 handler
SELECT eventstore.register_api_change('2.0', 'get_user', 'id became user_id',
    request_transform => '[{"op": "rename", "from": "id", "to": "user_id"}]');
SELECT eventstore.register_api_change('2.0', 'get_user', 'name became full_name; status values renamed',
    response_transform => '[{"op": "rename", "from": "full_name", "to": "name"},
                            {"op": "map_values", "path": "status", "map": {"enabled": "active"}}]');
SELECT fails($$SELECT eventstore.register_api_change('3.0', 'get_user', 'x')$$);
SELECT fails($$SELECT eventstore.register_api_change('2.0', 'no_such_rpc', 'x')$$);
SELECT fails($$SELECT eventstore.register_api_change('2.0', 'whoami', 'x')$$);
SELECT fails($$SELECT eventstore.register_api_change('2.0', 'get_user', '')$$);
SELECT fails($$SELECT eventstore.register_api_change('2.0', 'get_user', 'x', '[{"op": "rename", "from": "a"}]')$$);
SELECT fails($$SELECT eventstore.register_api_change('2.0', 'get_user', 'x', response_transform => '{"op": "remove"}')$$);
SELECT version, rpc_name, description FROM eventstore.api_changes ORDER BY change_id;

-- version resolution: argument, x-api-version, Accept, then the active version (1.0)
SELECT * FROM pg_temp.call('get_user', '{"user_id": 7}', '2.0');
SELECT * FROM pg_temp.call('get_user', '{"user_id": 7}', 'v2', '{"x-api-version": "1.9.9"}');
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', NULL, '{"x-api-version": "1.9.9", "accept": "application/vnd.acme.v2+json"}');
SELECT * FROM pg_temp.call('get_user', '{"user_id": 7}', NULL, '{"accept": "application/vnd.acme.2.0+json, application/json;q=0.5"}');
SELECT * FROM pg_temp.call('whoami', '{}', NULL, '{"accept": "application/vnd.pgrst.object+json"}');
-- 1.10.0 has no handler of its own: the 2.0 handler answers through the 2.0 changes
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.10.0');
-- an rpc unchanged since 1.0 answers at 2.0 with its 1.0 handler
SELECT * FROM pg_temp.call('whoami', '{}', '2');

-- statuses: 400 unknown version, 404 unknown rpc, 400 bad payload or name, 500 handler error
SELECT * FROM pg_temp.call('get_user', '{}', '3.1');
SELECT * FROM pg_temp.call('get_user', '{}', NULL, '{"x-api-version": "banana"}');
SELECT * FROM pg_temp.call('get_user', '{}', NULL, '{"accept": "application/vnd.acme.v7+json"}');
SELECT * FROM pg_temp.call('get_users', '{}', '2.0');
SELECT * FROM pg_temp.call('get_user', '[1, 2]', '2.0');
SELECT * FROM pg_temp.call('get_user', '"text"', '2.0');
SELECT * FROM pg_temp.call('get_user', NULL, '2.0');
SELECT * FROM pg_temp.call('', '{}', '2.0');
SELECT * FROM pg_temp.call(NULL, '{}', '2.0');
SELECT * FROM pg_temp.call('cancel_order', '{"id": 42}');
-- the handler's work was rolled back to its savepoint; the call itself is logged
SELECT count(*) AS audit_rows FROM api.audit;

-- client compatibility: 1.10.0 needs app 1.10.0 (which is above 1.9.9); older apps fall back to
-- the newest version they meet, 1.9.9
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.10.0', '{"x-app-version": "1.9.9"}');
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.10.0', '{"x-app-version": "1.10.0"}');
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.10.0', '{"x-app-version": "2.0.0"}');
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.10.0', '{"x-app-version": "two"}');

-- deprecation: headers appended to what is there, the same facts in meta.deprecation
SELECT fails($$SELECT eventstore.deprecate_api_version('1.9.9', '2025-01-01', '2024-12-31')$$);
SELECT fails($$SELECT eventstore.deprecate_api_version('9.9', '2025-01-01')$$);
SELECT fails($$SELECT eventstore.deprecate_api_version('1.0', '2025-01-01', '2025-06-01')$$);
SELECT eventstore.deprecate_api_version('1.9.9', '2025-01-01', '2999-01-01', 'https://docs.example.com/migrate');
BEGIN;
SELECT set_config('response.headers', '[{"Cache-Control": "no-store"}]', true) IS NOT NULL AS earlier_header;
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.9.9');
COMMIT;
-- a client that falls back to a deprecated version gets its headers too
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.10.0', '{"x-app-version": "1.0.0"}');

-- the hot switch: admin only, refuses unknown and sunset versions (22023), audited; the
-- version that was active becomes the fallback unless one is given
SELECT eventstore.switch_api_version('2.0') - 'switched_at' - 'deployment_id';
SELECT * FROM pg_temp.call('get_user', '{"user_id": 8}');
SELECT fails($$SELECT eventstore.switch_api_version('4.0')$$);
SELECT fails($$SELECT eventstore.switch_api_version('2.0', '2.0')$$);
SELECT fails($$SELECT eventstore.switch_api_version('2.0', '7')$$);
SELECT fails($$SELECT eventstore.switch_api_version(NULL)$$);
SELECT eventstore.switch_api_version('2.0', 'v1.9.9') - 'switched_at' - 'deployment_id';

-- sunset: from sunset_at on a version answers 410 (headers and docs link included), and can no
-- longer be switched to
SELECT eventstore.deprecate_api_version('1.0', '2020-01-01', '2020-06-01') - 'released_at';
SELECT * FROM pg_temp.call('whoami', '{}', '1.0');
SELECT fails($$SELECT eventstore.switch_api_version('1.0')$$);
SELECT fails($$SELECT eventstore.switch_api_version('1.10.0', '1.0')$$);
SELECT version, status, deprecated_at, sunset_at FROM eventstore.api_versions ORDER BY released_at;
-- the table keeps sunset at or after deprecation whoever writes it
SELECT split_part(fails($$UPDATE eventstore.api_versions SET sunset_at = '2019-01-01' WHERE version = '1.0'$$), ' (', 1);
-- no version a client meets: the minimum comes back
SELECT eventstore.register_api_version('1.9.9', '2024-03-01', min_client_version => '1.5.0');
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.10.0', '{"x-app-version": "1.0.0"}');
SELECT * FROM pg_temp.call('get_user', '{"id": 7}', '1.10.0', '{"x-app-version": "1.5.0"}');
-- a handler may answer with a status of its own; a handler that was dropped answers 500
CREATE FUNCTION api.create_thing(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('response.status', '201', true);
    RETURN '{"created": true}';
END $$;
CREATE FUNCTION api.gone(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
SELECT eventstore.register_api_route('create_thing', '2.0', 'api.create_thing(jsonb)');
SELECT eventstore.register_api_route('gone', '2.0', 'api.gone(jsonb)');
DROP FUNCTION api.gone(jsonb);
SELECT * FROM pg_temp.call('create_thing', '{}', '2.0');
SELECT status, answer #- '{error,details,handler_oid}' AS answer FROM pg_temp.call('gone', '{}', '2.0');
SELECT eventstore.get_active_api_version() - 'updated_at';
SELECT from_version, to_version, from_fallback, to_fallback, deployed_by, reason FROM eventstore.api_deployments ORDER BY deployment_id;

-- every call is logged once: request, resolution, outcome, client
SELECT rpc_name, requested_version, version, version_source, fallback_from, status, error_code,
       role, client_version, day = (now() AT TIME ZONE 'UTC')::date AS today, duration_ms >= 0 AS timed
  FROM eventstore.api_request_log ORDER BY requested_at, request_id;
SELECT count(*) FILTER (WHERE request_id::text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$') AS uuid_v7,
       count(DISTINCT request_id) AS distinct_ids, count(*) AS calls
  FROM eventstore.api_request_log;

-- usage per day, version and rpc, equal to the log
SELECT version, rpc_name, calls, errors, avg_ms >= 0 AS avg, p95_ms >= avg_ms AS p95
  FROM eventstore.get_api_usage(current_date - 1, current_date + 1) ORDER BY version NULLS FIRST, rpc_name NULLS FIRST;
SELECT (SELECT sum(calls) FROM eventstore.get_api_usage(NULL, NULL)) = (SELECT count(*) FROM eventstore.api_request_log) AS usage_is_the_log;
SELECT fails($$SELECT * FROM eventstore.get_api_usage('2024-02-01', '2024-01-01')$$);
-- a day that is over is rolled up the first time it is asked for, and answers the same after
-- its log rows are gone
INSERT INTO eventstore.api_request_log (request_id, tenant_id, requested_at, day, rpc_name, version, version_source, status, duration_ms, role)
SELECT gen_random_uuid(), 'default', '2024-03-01 12:00+00', '2024-03-01', 'get_user', '2.0', 'active',
       CASE WHEN i % 10 = 0 THEN 500 ELSE 200 END, i, 'postgres'
  FROM generate_series(1, 100) AS i;
SELECT * FROM eventstore.get_api_usage('2024-03-01', '2024-03-01');
SELECT tenant_id, day, version, rpc_name, calls, errors, avg_ms, p95_ms FROM eventstore.api_version_usage ORDER BY day;
DELETE FROM eventstore.api_request_log WHERE day = '2024-03-01';
SELECT * FROM eventstore.get_api_usage('2024-03-01', '2024-03-01');

-- access: readers call, admins deploy; log and usage are per tenant under RLS
CREATE ROLE regress_api_reader;
CREATE ROLE regress_api_admin;
SELECT eventstore.grant_access('regress_api_reader', 'reader');
SELECT eventstore.grant_access('regress_api_admin', 'admin');
GRANT USAGE ON SCHEMA api TO regress_api_reader;
SET ROLE regress_api_reader;
SET eventstore.tenant_id = 'tenant-r';
-- handlers run as the caller, who needs EXECUTE on them (PUBLIC has it here)
SELECT * FROM pg_temp.call('whoami', '{}', '2.0');
SELECT eventstore.get_active_api_version() ->> 'current_version' AS current;
SELECT fails($$SELECT eventstore.switch_api_version('1.10.0')$$);
SELECT fails($$SELECT eventstore.register_api_version('5.0')$$);
SELECT fails($$SELECT * FROM eventstore.get_api_usage(NULL, NULL)$$);
SELECT fails($$INSERT INTO eventstore.api_request_log (request_id, tenant_id, requested_at, day, version_source, status, duration_ms, role) VALUES (gen_random_uuid(), 'tenant-r', now(), current_date, 'active', 200, 0, 'x')$$);
SELECT tenant_id, rpc_name, role FROM eventstore.api_request_log;
SELECT fails($$SELECT count(*) FROM eventstore.api_versions$$);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION api.whoami(jsonb) FROM PUBLIC;
SET ROLE regress_api_reader;
SELECT * FROM pg_temp.call('whoami', '{}', '2.0');
RESET ROLE;
SET ROLE regress_api_admin;
SELECT eventstore.switch_api_version('1.10.0') ->> 'current_version' AS switched_to;
SELECT rpc_name, version, calls, errors FROM eventstore.get_api_usage(NULL, NULL) ORDER BY version, rpc_name;
RESET ROLE;
RESET eventstore.tenant_id;
SELECT to_version, deployed_by FROM eventstore.api_deployments ORDER BY deployment_id DESC LIMIT 1;

DROP OWNED BY regress_api_reader, regress_api_admin;
DROP ROLE regress_api_reader, regress_api_admin;
