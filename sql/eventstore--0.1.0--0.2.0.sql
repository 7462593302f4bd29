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

-- Webhook deliveries are queued by the append itself, from the tenant's cached endpoints and
-- with a kept plan (0.1.0: a statement trigger over the transition table, planned on every
-- append once any endpoint existed). Events inserted around the API are queued with
-- queue_event_for_webhooks().
DROP TRIGGER events_queue_webhooks ON eventstore.events;
DROP FUNCTION eventstore._queue_webhooks();

-- Consumer groups (0.2.0): a subscription's members split its streams, each with a checkpoint.
ALTER TABLE eventstore.subscriptions ADD COLUMN consumer_group_size int NOT NULL DEFAULT 1;

-- The checkpoints of consumer group members 1 .. size - 1 of a subscription.
CREATE TABLE eventstore.subscription_members (
    tenant_id            text        NOT NULL,
    name                 text        NOT NULL,
    member               int         NOT NULL,
    checkpoint_xid       xid8        NOT NULL DEFAULT '0',
    checkpoint_position  bigint      NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, name, member),
    FOREIGN KEY (tenant_id, name) REFERENCES eventstore.subscriptions (tenant_id, name) ON DELETE CASCADE
);
SELECT pg_catalog.pg_extension_config_dump('eventstore.subscription_members', '');
ALTER TABLE eventstore.subscription_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.subscription_members FORCE ROW LEVEL SECURITY;
CREATE POLICY subscription_members_tenant_select ON eventstore.subscription_members FOR SELECT
    USING (tenant_id = (SELECT eventstore.current_tenant()));

-- create_subscription, poll_subscription and ack_subscription take the group's size and member;
-- whoever could run the old ones can run the new ones (and read the members' checkpoints).
SELECT pg_catalog.set_config('eventstore_update.subscribers', coalesce((
    SELECT string_agg(a.grantee::regrole::text, ',')
    FROM pg_catalog.pg_proc p, aclexplode(p.proacl) a
    WHERE p.oid = 'eventstore.poll_subscription(text, integer)'::regprocedure AND a.privilege_type = 'EXECUTE'
      AND a.grantee <> 0 AND a.grantee <> p.proowner), ''), true);
DROP FUNCTION eventstore.create_subscription(text, text[], text[], text);
DROP FUNCTION eventstore.poll_subscription(text, integer);
DROP FUNCTION eventstore.ack_subscription(text, text);
CREATE  FUNCTION "create_subscription"(
	"name" TEXT, /* Option < & str > */
	"event_types" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"aggregate_types" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"start_from" TEXT DEFAULT 'beginning', /* Option < & str > */
	"consumer_group_size" INT DEFAULT 1 /* Option < i32 > */
) RETURNS TEXT /* Result < String, ErrorReport > */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_group_subscription_wrapper';
CREATE  FUNCTION "poll_subscription"(
	"name" TEXT, /* Option < & str > */
	"max_count" INT DEFAULT 100, /* Option < i32 > */
	"member" INT DEFAULT 0 /* Option < i32 > */
) RETURNS SETOF eventstore.feed_event /* FeedRow */
STABLE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'poll_group_subscription_wrapper';
CREATE  FUNCTION "ack_subscription"(
	"name" TEXT, /* Option < & str > */
	"cursor" TEXT, /* Option < & str > */
	"member" INT DEFAULT 0 /* Option < i32 > */
) RETURNS bool /* Result < bool, ErrorReport > */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'ack_group_subscription_wrapper';
REVOKE EXECUTE ON FUNCTION eventstore.create_subscription(text, text[], text[], text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION eventstore.poll_subscription(text, integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION eventstore.ack_subscription(text, text, integer) FROM PUBLIC;

-- The Rust half of the Message DB façade.
CREATE  FUNCTION "_position_horizon"() RETURNS bigint /* Result < i64, ErrorReport > */
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_position_horizon_wrapper';
CREATE  FUNCTION "_write_message"(
	"id" uuid, /* Option < PgUuid > */
	"stream_name" TEXT, /* Option < & str > */
	"message_type" TEXT, /* Option < & str > */
	"data" jsonb, /* Option < RawJsonb > */
	"metadata" jsonb, /* Option < RawJsonb > */
	"expected_version" bigint /* Option < i64 > */
) RETURNS bigint /* Result < i64, ErrorReport > */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_write_message_wrapper';
REVOKE EXECUTE ON FUNCTION eventstore._position_horizon() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION eventstore._write_message(uuid, text, text, jsonb, jsonb, bigint) FROM PUBLIC;

-- eventstore: the Message DB 1.3 façade, schema message_store, over the same log.
-- Stream `account-123` is aggregate type `account`, aggregate id `123`; a message's position is
-- aggregate_version - 1, its global position the event's, its id the event's event_id.
-- Everything acts in eventstore.current_tenant(). The readers run with the caller's rights
-- (row-level security of eventstore.events applies to them, and a condition runs as the
-- caller); write_message appends through eventstore's own append path.

CREATE SCHEMA message_store;
COMMENT ON SCHEMA message_store IS 'Message DB 1.3 compatible functions over the eventstore log.';

CREATE TYPE message_store.message AS (
    id varchar,
    stream_name varchar,
    type varchar,
    position bigint,
    global_position bigint,
    data varchar,
    metadata varchar,
    time timestamp
);

-- Category reads: a category is an aggregate type, read in global position order.
CREATE INDEX events_category_idx ON eventstore.events (tenant_id, aggregate_type, global_position);

-- Message DB's table, as a view of the current tenant's events with its column names. Run with
-- the caller's rights, so that row-level security of eventstore.events applies; the explicit
-- tenant filter holds for roles that bypass it, and the barrier keeps leaky conditions outside.
CREATE VIEW message_store.messages WITH (security_barrier = true, security_invoker = true) AS
SELECT e.global_position,
       e.aggregate_version - 1 AS position,
       (e.recorded_at AT TIME ZONE 'UTC') AS time,
       e.aggregate_type || '-' || e.aggregate_id AS stream_name,
       e.event_type AS type,
       e.payload AS data,
       nullif(e.metadata, '{}'::jsonb) AS metadata,
       e.event_id AS id
  FROM eventstore.events e
 WHERE e.tenant_id = (SELECT eventstore.current_tenant());
COMMENT ON VIEW message_store.messages IS 'The current tenant''s events with Message DB''s column names.';

-- Stream name helpers, as Message DB defines them.
CREATE FUNCTION message_store.hash_64(value varchar) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.left('x' || pg_catalog.md5(hash_64.value), 17)::bit(64)::bigint
$$;

CREATE FUNCTION message_store.category(stream_name varchar) RETURNS varchar
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.split_part(category.stream_name, '-', 1)::varchar
$$;

CREATE FUNCTION message_store.id(stream_name varchar) RETURNS varchar
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN pg_catalog.strpos(id.stream_name, '-') = 0 THEN NULL
                ELSE pg_catalog.substr(id.stream_name, pg_catalog.strpos(id.stream_name, '-') + 1) END::varchar
$$;

CREATE FUNCTION message_store.cardinal_id(stream_name varchar) RETURNS varchar
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.split_part(message_store.id(cardinal_id.stream_name), '+', 1)::varchar
$$;

-- as in Message DB, NULL counts as a category
CREATE FUNCTION message_store.is_category(stream_name varchar) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(pg_catalog.strpos(is_category.stream_name, '-') = 0, true)
$$;

CREATE FUNCTION message_store.message_store_version() RETURNS varchar
LANGUAGE sql VOLATILE AS $$
    SELECT '1.3.0'::varchar
$$;

-- Message DB's writers serialize on this lock; eventstore's never take it (kept for callers
-- that take it themselves).
CREATE FUNCTION message_store.acquire_lock(stream_name varchar) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    _category_name_hash bigint;
BEGIN
    _category_name_hash := message_store.hash_64(message_store.category(acquire_lock.stream_name));
    PERFORM pg_catalog.pg_advisory_xact_lock(_category_name_hash);
    RETURN _category_name_hash;
END;
$$;

CREATE FUNCTION message_store.write_message(
    id varchar,
    stream_name varchar,
    "type" varchar,
    data jsonb,
    metadata jsonb DEFAULT NULL,
    expected_version bigint DEFAULT NULL
) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT eventstore._write_message(write_message.id::uuid, write_message.stream_name,
        write_message."type", write_message.data, write_message.metadata, write_message.expected_version)
$$;

-- NULL for a stream without messages (or a deleted one)
CREATE FUNCTION message_store.stream_version(stream_name varchar) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT nullif(s.version, 0) - 1
      FROM eventstore.streams s
     WHERE s.tenant_id = (SELECT eventstore.current_tenant())
       AND s.aggregate_type = message_store.category(stream_version.stream_name)
       AND s.aggregate_id = message_store.id(stream_version.stream_name)
       AND s.deleted_at IS NULL
$$;

CREATE FUNCTION message_store._refuse_condition() RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF current_setting('message_store.sql_condition', true) IS NULL OR
       current_setting('message_store.sql_condition', true) = 'off' THEN
        RAISE EXCEPTION 'Retrieval with SQL condition is not activated';
    END IF;
END;
$$;

CREATE FUNCTION message_store.get_stream_messages(
    stream_name varchar,
    "position" bigint DEFAULT 0,
    batch_size bigint DEFAULT 1000,
    condition varchar DEFAULT NULL
) RETURNS SETOF message_store.message
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    _position bigint := coalesce(get_stream_messages."position", 0);
    _batch_size bigint := coalesce(get_stream_messages.batch_size, 1000);
BEGIN
    IF message_store.is_category(get_stream_messages.stream_name) THEN
        RAISE EXCEPTION 'Must be a stream name: %', get_stream_messages.stream_name;
    END IF;
    IF get_stream_messages.condition IS NOT NULL THEN
        PERFORM message_store._refuse_condition();
        RETURN QUERY EXECUTE format(
            'SELECT m.id::varchar, m.stream_name::varchar, m.type::varchar, m.position::bigint,
                    m.global_position::bigint, m.data::varchar, m.metadata::varchar, m.time::timestamp
               FROM message_store.messages m
              WHERE m.stream_name = $1 AND m.position >= $2 AND (%s)
              ORDER BY m.position
              LIMIT CASE WHEN $3 = -1 THEN NULL ELSE $3 END', get_stream_messages.condition)
            USING get_stream_messages.stream_name, _position, _batch_size;
        RETURN;
    END IF;
    -- a soft-deleted stream's messages stay hidden, as in eventstore.read_stream
    RETURN QUERY
    SELECT e.event_id::varchar, (e.aggregate_type || '-' || e.aggregate_id)::varchar,
           e.event_type::varchar, e.aggregate_version - 1, e.global_position, e.payload::varchar,
           nullif(e.metadata, '{}'::jsonb)::varchar, (e.recorded_at AT TIME ZONE 'UTC')
      FROM eventstore.streams s
      JOIN eventstore.events e
        ON e.tenant_id = s.tenant_id AND e.aggregate_type = s.aggregate_type
       AND e.aggregate_id = s.aggregate_id
     WHERE s.tenant_id = (SELECT eventstore.current_tenant())
       AND s.aggregate_type = message_store.category(get_stream_messages.stream_name)
       AND s.aggregate_id = message_store.id(get_stream_messages.stream_name)
       AND s.deleted_at IS NULL
       AND e.aggregate_version >= greatest(_position + 1, s.hidden_through + 1)
     ORDER BY e.aggregate_version
     LIMIT CASE WHEN _batch_size = -1 THEN NULL ELSE _batch_size END;
END;
$$;

CREATE FUNCTION message_store.get_last_stream_message(
    stream_name varchar,
    "type" varchar DEFAULT NULL
) RETURNS SETOF message_store.message
LANGUAGE sql VOLATILE AS $$
    SELECT e.event_id::varchar, (e.aggregate_type || '-' || e.aggregate_id)::varchar,
           e.event_type::varchar, e.aggregate_version - 1, e.global_position, e.payload::varchar,
           nullif(e.metadata, '{}'::jsonb)::varchar, (e.recorded_at AT TIME ZONE 'UTC')
      FROM eventstore.streams s
      JOIN eventstore.events e
        ON e.tenant_id = s.tenant_id AND e.aggregate_type = s.aggregate_type
       AND e.aggregate_id = s.aggregate_id
     WHERE s.tenant_id = (SELECT eventstore.current_tenant())
       AND s.aggregate_type = message_store.category(get_last_stream_message.stream_name)
       AND s.aggregate_id = message_store.id(get_last_stream_message.stream_name)
       AND s.deleted_at IS NULL
       AND e.aggregate_version > s.hidden_through
       AND (get_last_stream_message."type" IS NULL OR e.event_type = get_last_stream_message."type")
     ORDER BY e.aggregate_version DESC
     LIMIT 1
$$;

-- Never skips: only positions below the horizon (eventstore._position_horizon, computed
-- before this statement's snapshot) are read, so a message committed later never lands
-- behind a position a reader has passed. Writers of one category do not wait for each other.
CREATE FUNCTION message_store.get_category_messages(
    category varchar,
    "position" bigint DEFAULT 1,
    batch_size bigint DEFAULT 1000,
    correlation varchar DEFAULT NULL,
    consumer_group_member bigint DEFAULT NULL,
    consumer_group_size bigint DEFAULT NULL,
    condition varchar DEFAULT NULL
) RETURNS SETOF message_store.message
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    _position bigint := coalesce(get_category_messages."position", 1);
    _batch_size bigint := coalesce(get_category_messages.batch_size, 1000);
    _member bigint := get_category_messages.consumer_group_member;
    _size bigint := get_category_messages.consumer_group_size;
    _horizon bigint;
    _command text;
BEGIN
    IF NOT message_store.is_category(get_category_messages.category) THEN
        RAISE EXCEPTION 'Must be a category: %', get_category_messages.category;
    END IF;
    IF get_category_messages.correlation IS NOT NULL
       AND pg_catalog.strpos(get_category_messages.correlation, '-') > 0 THEN
        RAISE EXCEPTION 'Correlation must be a category (Correlation: %)', get_category_messages.correlation;
    END IF;
    IF (_member IS NULL) <> (_size IS NULL) THEN
        RAISE EXCEPTION 'Consumer group member and size must be specified (Consumer Group Member: %, Consumer Group Size: %)', _member, _size;
    END IF;
    IF _size IS NOT NULL THEN
        IF _size < 1 THEN
            RAISE EXCEPTION 'Consumer group size must not be less than 1 (Consumer Group Member: %, Consumer Group Size: %)', _member, _size;
        END IF;
        IF _member < 0 THEN
            RAISE EXCEPTION 'Consumer group member must not be less than 0 (Consumer Group Member: %, Consumer Group Size: %)', _member, _size;
        END IF;
        IF _member >= _size THEN
            RAISE EXCEPTION 'Consumer group member must be less than the group size (Consumer Group Member: %, Consumer Group Size: %)', _member, _size;
        END IF;
    END IF;
    IF get_category_messages.condition IS NOT NULL THEN
        PERFORM message_store._refuse_condition();
    END IF;
    -- the horizon bounds what a later snapshot may show; a transaction snapshot is older
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'get_category_messages needs a read committed transaction'
            USING ERRCODE = '0A000',
                  DETAIL = format('the transaction is %s', current_setting('transaction_isolation')),
                  HINT = 'Read categories outside repeatable read and serializable transactions.';
    END IF;
    _horizon := eventstore._position_horizon();

    IF get_category_messages.condition IS NULL THEN
        RETURN QUERY
        SELECT e.event_id::varchar, (e.aggregate_type || '-' || e.aggregate_id)::varchar,
               e.event_type::varchar, e.aggregate_version - 1, e.global_position, e.payload::varchar,
               nullif(e.metadata, '{}'::jsonb)::varchar, (e.recorded_at AT TIME ZONE 'UTC')
          FROM eventstore.events e
         WHERE e.tenant_id = (SELECT eventstore.current_tenant())
           AND e.aggregate_type = get_category_messages.category
           AND e.global_position >= _position
           AND e.global_position < _horizon
           AND (get_category_messages.correlation IS NULL
                OR message_store.category(e.metadata ->> 'correlationStreamName') = get_category_messages.correlation)
           AND (_size IS NULL
                OR abs(mod(message_store.hash_64(message_store.cardinal_id(e.aggregate_type || '-' || e.aggregate_id)), _size)) = _member)
         ORDER BY e.global_position
         LIMIT CASE WHEN _batch_size = -1 THEN NULL ELSE _batch_size END;
        RETURN;
    END IF;

    _command := format(
        'SELECT m.id::varchar, m.stream_name::varchar, m.type::varchar, m.position::bigint,
                m.global_position::bigint, m.data::varchar, m.metadata::varchar, m.time::timestamp
           FROM message_store.messages m
          WHERE message_store.category(m.stream_name) = $1 AND m.global_position >= $2
            AND m.global_position < $7
            AND ($4 IS NULL OR message_store.category(m.metadata ->> ''correlationStreamName'') = $4)
            AND ($6 IS NULL OR abs(mod(message_store.hash_64(message_store.cardinal_id(m.stream_name)), $6)) = $5)
            AND (%s)
          ORDER BY m.global_position
          LIMIT CASE WHEN $3 = -1 THEN NULL ELSE $3 END', get_category_messages.condition);
    RETURN QUERY EXECUTE _command
        USING get_category_messages.category, _position, _batch_size, get_category_messages.correlation,
              _member, _size, _horizon;
END;
$$;

-- roles granted access under 0.1.0 keep their subscriptions and get the Message DB façade at
-- the same level (grant_access gives new roles both)
DO $$
DECLARE
    r text;
BEGIN
    FOR r IN SELECT g FROM unnest(string_to_array(current_setting('eventstore_update.subscribers'), ',')) AS g LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION eventstore.create_subscription(text, text[], text[], text, integer) TO %s', r);
        EXECUTE format('GRANT EXECUTE ON FUNCTION eventstore.poll_subscription(text, integer, integer) TO %s', r);
        EXECUTE format('GRANT EXECUTE ON FUNCTION eventstore.ack_subscription(text, text, integer) TO %s', r);
        EXECUTE format('GRANT EXECUTE ON FUNCTION eventstore._position_horizon() TO %s', r);
        EXECUTE format('GRANT SELECT ON eventstore.subscription_members TO %s', r);
        EXECUTE format('GRANT USAGE ON SCHEMA message_store TO %s', r);
        EXECUTE format('GRANT SELECT ON message_store.messages TO %s', r);
    END LOOP;
    FOR r IN
        SELECT a.grantee::regrole::text
        FROM pg_catalog.pg_proc p, aclexplode(p.proacl) a
        WHERE p.oid = 'eventstore.append_event(text, text, text, jsonb, jsonb, bigint, uuid)'::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION eventstore._write_message(uuid, text, text, jsonb, jsonb, bigint) TO %s', r);
    END LOOP;
END
$$;

-- Deliveries keep no foreign key to their endpoint: its check locked the endpoint's row in every
-- appending transaction that queued one (a multixact each, all writers sharing the row). A
-- statement trigger deletes an endpoint's deliveries with it, as ON DELETE CASCADE did.
ALTER TABLE eventstore.webhook_deliveries DROP CONSTRAINT webhook_deliveries_endpoint_id_fkey;
CREATE FUNCTION eventstore._webhook_endpoints_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM eventstore.webhook_deliveries d USING deleted_endpoints o WHERE d.endpoint_id = o.endpoint_id;
    RETURN NULL;
END $$;
REVOKE EXECUTE ON FUNCTION eventstore._webhook_endpoints_deleted() FROM PUBLIC;
CREATE TRIGGER webhook_endpoints_cascade AFTER DELETE ON eventstore.webhook_endpoints
    REFERENCING OLD TABLE AS deleted_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore._webhook_endpoints_deleted();

-- The delivery status is checked by a domain instead of a CHECK on the table: PostgreSQL parses
-- a table's CHECK expressions again for every statement that inserts, and every append that
-- queues a delivery is one; a domain's check is kept in the type cache. The column's type
-- changes (the table is rewritten once); its default is set again so that it reads as in a
-- fresh install.
CREATE DOMAIN eventstore.webhook_delivery_status AS text
    CONSTRAINT webhook_delivery_status_check CHECK (VALUE IN ('pending', 'delivering', 'succeeded', 'dead'));
ALTER TABLE eventstore.webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_status_check,
    ALTER COLUMN status DROP DEFAULT,
    ALTER COLUMN status TYPE eventstore.webhook_delivery_status,
    ALTER COLUMN status SET DEFAULT 'pending';
