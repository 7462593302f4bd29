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
