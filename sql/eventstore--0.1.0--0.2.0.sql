\echo Use "ALTER EXTENSION eventstore UPDATE" to load this file. \quit
-- eventstore 0.1.0 -> 0.2.0: every schema change of 0.2.0, so that an updated 0.1.0 install ends
-- up with exactly the catalog of a fresh 0.2.0 install (tests/upgrade checks this).

-- Reducer handlers run as the role that defined them (0.1.0: as whoever asked for the state).
-- 0.1.0 did not record who defined them: they get the extension's owner.
ALTER TABLE eventstore.reducers ADD COLUMN run_as oid;
UPDATE eventstore.reducers
   SET run_as = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'eventstore');

-- Every sequence is dumped with its table, so that a restored database goes on numbering past
-- the restored rows (0.1.0 missed these two: a redaction after a restore failed with 23505).
SELECT pg_catalog.pg_extension_config_dump('eventstore.redactions_redaction_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.webhook_attempts_attempt_id_seq', '');

-- Roles pinned to one tenant: grant_access(role, access, tenant => ...).
CREATE TABLE eventstore.pinned_roles (
    role_id    oid         PRIMARY KEY,
    tenant_id  text        NOT NULL,
    pinned_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    pinned_by  text        NOT NULL DEFAULT current_user
);
SELECT pg_catalog.pg_extension_config_dump('eventstore.pinned_roles', '');

-- grant_access takes the tenant to pin to; whoever could run the old one can run the new one.
SELECT pg_catalog.set_config('eventstore_update.grantees', coalesce((
    SELECT string_agg(a.grantee::regrole::text, ',')
    FROM pg_catalog.pg_proc p, aclexplode(p.proacl) a
    WHERE p.oid = 'eventstore.grant_access(name, text)'::regprocedure AND a.privilege_type = 'EXECUTE'
      AND a.grantee <> 0 AND a.grantee <> p.proowner), ''), true);
DROP FUNCTION eventstore.grant_access(name, text);
CREATE FUNCTION eventstore.grant_access(role name, access text, tenant text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    levels text[];
    fn regprocedure;
    tbl regclass;
    pinned text;
BEGIN
    levels := CASE access
        WHEN 'reader' THEN ARRAY['reader']
        WHEN 'writer' THEN ARRAY['reader', 'writer']
        WHEN 'admin'  THEN ARRAY['reader', 'writer', 'admin']
    END;
    IF levels IS NULL THEN
        RAISE EXCEPTION 'invalid access level %', coalesce(quote_literal(access), 'NULL')
            USING ERRCODE = '22023', HINT = 'Use ''reader'', ''writer'' or ''admin''.';
    END IF;
    IF role IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role) THEN
        RAISE EXCEPTION 'role % does not exist', coalesce(quote_ident(role), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF tenant IS NOT NULL THEN
        IF btrim(tenant) = '' OR char_length(tenant) > 255 THEN
            RAISE EXCEPTION 'tenant must be a non-empty name of at most 255 characters'
                USING ERRCODE = '22023';
        END IF;
        SELECT p.tenant_id INTO pinned FROM eventstore.pinned_roles p
         WHERE p.role_id = (SELECT r.oid FROM pg_roles r WHERE r.rolname = role);
        IF pinned IS NOT NULL AND pinned <> tenant THEN
            RAISE EXCEPTION 'role % is pinned to another tenant already', quote_ident(role)
                USING ERRCODE = '22023', DETAIL = format('it is pinned to %L', pinned),
                      HINT = 'A role acts for one tenant: create a role per tenant.';
        END IF;
        -- for the session whose session or current user this role is, the tenant is this one
        INSERT INTO eventstore.pinned_roles (role_id, tenant_id, pinned_by)
        SELECT r.oid, tenant, session_user FROM pg_roles r WHERE r.rolname = role
        ON CONFLICT (role_id) DO NOTHING;
    END IF;

    EXECUTE format('GRANT USAGE ON SCHEMA eventstore TO %I', role);
    -- direct reads of every tenant-scoped table, under its RLS policies; webhook signing
    -- secrets stay unreadable (whoever reads them can forge webhooks)
    FOR tbl IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind IN ('r', 'p')
          AND c.relrowsecurity AND c.relname <> 'webhook_endpoints'
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO %I', tbl, role);
    END LOOP;
    EXECUTE format('GRANT SELECT (endpoint_id, tenant_id, url, description, event_types, aggregate_types,
                           previous_secret_until, retry_schedule, rate_limit_per_second, enabled,
                           disabled_reason, disabled_at, created_at, updated_at)
                    ON eventstore.webhook_endpoints TO %I', role);
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'eventstore'::regnamespace
          AND p.proname = ANY (
              SELECT unnest(eventstore._access_functions(l)) FROM unnest(levels) AS l)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, role);
    END LOOP;
    -- the Message DB façade: its functions act with the caller's rights (write_message through
    -- eventstore._write_message, granted to writers above), its view is under RLS
    EXECUTE format('GRANT USAGE ON SCHEMA message_store TO %I', role);
    EXECUTE format('GRANT SELECT ON message_store.messages TO %I', role);
END
$$;
COMMENT ON FUNCTION eventstore.grant_access(name, text, text) IS
    'Grant a role reader, writer or admin access to eventstore in one call; with a tenant, pin the role to it.';
REVOKE EXECUTE ON FUNCTION eventstore.grant_access(name, text, text) FROM PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOR r IN SELECT g FROM unnest(string_to_array(current_setting('eventstore_update.grantees'), ',')) AS g LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION eventstore.grant_access(name, text, text) TO %s', r);
    END LOOP;
END
$$;

-- The per-database secret behind each tenant's notification channel
-- (eventstore.notification_channel()): read by the extension only. Registered for dumps
-- without its row: a restored database makes a secret of its own (and new channel names).
CREATE TABLE eventstore.secrets (
    name    text  PRIMARY KEY,
    secret  bytea NOT NULL
);
-- gen_random_uuid() draws from pg_strong_random(): two of them are 244 random bits
INSERT INTO eventstore.secrets (name, secret)
VALUES ('notification_channel', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
SELECT pg_catalog.pg_extension_config_dump('eventstore.secrets', 'WHERE false');

-- Each tenant's own notification channel; readers may ask for theirs.
CREATE  FUNCTION "notification_channel"() RETURNS TEXT /* Result < String, ErrorReport > */
STRICT STABLE SECURITY DEFINER PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'notification_channel_wrapper';
REVOKE EXECUTE ON FUNCTION eventstore.notification_channel() FROM PUBLIC;
-- Which functions each access level may execute; each level includes the ones below it.
CREATE OR REPLACE FUNCTION eventstore._access_functions(access text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE access
        WHEN 'reader' THEN ARRAY[
            'current_tenant', 'read_stream', 'stream_version', 'read_all', 'feed_lag',
            'get_event_store_stats', 'get_aggregate_state', 'create_subscription',
            'poll_subscription', 'ack_subscription', 'drop_subscription', 'projection_status',
            'worker_status', 'route_api_call', 'get_active_api_version', 'notification_channel',
            '_position_horizon']
        WHEN 'writer' THEN ARRAY[
            'append_event', 'append_events', 'create_snapshot', '_write_message']
        WHEN 'admin' THEN ARRAY[
            'delete_stream', 'grant_access', 'define_aggregate', 'define_reducer',
            'register_event_schema', 'register_upcaster', 'redact_event', 'redact_subject',
            'register_projection', 'rebuild_projection', 'replay_parked_events', 'drop_projection',
            'create_webhook_endpoint', 'queue_event_for_webhooks', 'rotate_webhook_secret',
            'retry_webhook_delivery', 'recover_webhook_endpoint', 'enable_webhook_endpoint',
            'disable_webhook_endpoint', 'get_webhook_delivery_stats', 'register_api_version',
            'register_api_route', 'register_api_change', 'deprecate_api_version', 'switch_api_version',
            'get_api_usage']
    END
$$;

-- roles granted reader access under 0.1.0 get the new reader function
DO $$
DECLARE
    r text;
BEGIN
    FOR r IN
        SELECT a.grantee::regrole::text
        FROM pg_catalog.pg_proc p, aclexplode(p.proacl) a
        WHERE p.oid = 'eventstore.read_all(text, integer, text[], text[])'::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION eventstore.notification_channel() TO %s', r);
    END LOOP;
END
$$;
