-- Tenancy: current_tenant(), RLS with SET ROLE, grant_access, privileges.
SET client_min_messages = warning;

CREATE ROLE regress_es_writer;
CREATE ROLE regress_es_reader;
CREATE ROLE regress_es_nobody;
SELECT eventstore.grant_access('regress_es_writer', 'writer');
SELECT eventstore.grant_access('regress_es_reader', 'reader');
SELECT fails($$SELECT eventstore.grant_access('regress_es_reader', 'owner')$$);
SELECT fails($$SELECT eventstore.grant_access('regress_no_such_role', 'reader')$$);

-- the tenant: default, then the setting, then a (dotted) JWT claim as PostgREST sets it
SELECT eventstore.current_tenant();
BEGIN;
SELECT set_config('request.jwt.claims', '{"sub": "u1", "tenant_id": "jwt-tenant", "app_metadata": {"org_id": "org-7"}}', true) IS NOT NULL AS claims_set;
SELECT eventstore.current_tenant();
SET LOCAL eventstore.tenant_claim = 'app_metadata.org_id';
SELECT eventstore.current_tenant();
SET LOCAL eventstore.tenant_id = 'explicit';
SELECT eventstore.current_tenant();
COMMIT;
SELECT eventstore.current_tenant();
SET eventstore.require_tenant = on;
SELECT fails($$SELECT eventstore.current_tenant()$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'X', '{}')$$);
RESET eventstore.require_tenant;
-- the setting prefix is reserved: a typo is an error, not silence
SELECT fails($$SET eventstore.tenant = 'a'$$);

-- two tenants write the same stream name: two independent streams
SET ROLE regress_es_writer;
SET eventstore.tenant_id = 'tenant-a';
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'Placed', '{"by": "a"}');
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'Paid', '{"by": "a"}');
SET eventstore.tenant_id = 'tenant-b';
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'Placed', '{"by": "b"}');

-- tenant b sees only its own rows, through the functions and through the tables
SELECT tenant_id, aggregate_version, payload FROM eventstore.read_stream('order', 'o-1') ORDER BY aggregate_version;
SELECT eventstore.stream_version('order', 'o-1');
SELECT tenant_id, payload FROM eventstore.read_all() ORDER BY cursor;
SELECT tenant_id, aggregate_version, payload FROM eventstore.events ORDER BY global_position;
SELECT tenant_id, version FROM eventstore.streams ORDER BY aggregate_id;
SELECT eventstore.get_event_store_stats() -> 'total_events' AS b_events;
SELECT eventstore.feed_lag() -> 'held_back_events' AS b_held_back;

-- writers cannot touch the tables directly
SELECT fails($$INSERT INTO eventstore.events (global_position, event_id, tenant_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, occurred_at, recorded_at, transaction_id) VALUES (99, gen_random_uuid(), 'tenant-a', 'order', 'o-1', 3, 'Forged', '{}', now(), now(), pg_current_xact_id())$$);
SELECT fails($$UPDATE eventstore.streams SET version = 0$$);
SELECT fails($$DELETE FROM eventstore.streams$$);
-- and writers are not admins
SELECT fails($$SELECT eventstore.delete_stream('order', 'o-1')$$);
RESET ROLE;

-- a webhook endpoint of tenant a: readers see it, but never its signing secret
SET eventstore.tenant_id = 'tenant-a';
SELECT count(*) FROM eventstore.create_webhook_endpoint('https://hooks.example.com/a');

-- a reader reads, under its tenant, and cannot append
SET ROLE regress_es_reader;
SET eventstore.tenant_id = 'tenant-a';
SELECT url FROM eventstore.webhook_endpoints;
SELECT fails($$SELECT secret FROM eventstore.webhook_endpoints$$);
SELECT fails($$SELECT previous_secret FROM eventstore.webhook_endpoints$$);
SELECT tenant_id, aggregate_version, payload FROM eventstore.read_stream('order', 'o-1') ORDER BY aggregate_version;
SELECT count(*) AS a_rows FROM eventstore.events;
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'X', '{}')$$);
RESET ROLE;

-- a role without access sees nothing at all
SET ROLE regress_es_nobody;
SELECT fails($$SELECT * FROM eventstore.read_stream('order', 'o-1')$$);
SELECT fails($$SELECT count(*) FROM eventstore.events$$);
RESET ROLE;
RESET eventstore.tenant_id;

-- what PUBLIC may execute: current_tenant() only
SELECT p.proname
  FROM pg_proc p
 WHERE p.pronamespace = 'eventstore'::regnamespace
   AND has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY 1;
-- every table that holds user data has RLS enabled and forced
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
  FROM pg_class c
 WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind = 'r'
 ORDER BY 1;

DROP OWNED BY regress_es_writer, regress_es_reader, regress_es_nobody;
DROP ROLE regress_es_writer, regress_es_reader, regress_es_nobody;
