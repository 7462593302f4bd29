-- eventstore: row-level security, policies and privileges. Loaded last.

-- Every table that holds user data: RLS enabled and forced, rows visible to their tenant only.
-- Writes go through the SECURITY DEFINER functions, which filter by tenant themselves.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['streams', 'events', 'aggregates', 'reducers', 'snapshots',
                             'event_schemas', 'upcasters', 'redactions', 'subscriptions',
                             'subscription_members',
                             'projections', 'parked_events', 'webhook_endpoints',
                             'webhook_deliveries', 'webhook_attempts', 'api_request_log',
                             'api_version_usage']
    LOOP
        EXECUTE format('ALTER TABLE eventstore.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE eventstore.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON eventstore.%I FOR SELECT
                          USING (tenant_id = (SELECT eventstore.current_tenant()))', t || '_tenant_select', t);
    END LOOP;
END
$$;

-- Which functions each access level may execute; each level includes the ones below it.
CREATE FUNCTION eventstore._access_functions(access text) RETURNS text[]
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

-- Secure by default: nothing but current_tenant() (used by the RLS policies) and the pure
-- sign_webhook() is PUBLIC.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA eventstore FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore.current_tenant() TO PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore.sign_webhook(text, text, bigint, text) TO PUBLIC;
