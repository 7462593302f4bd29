-- Benchmark database `bench_es`: eventstore itself plus the raw-INSERT baseline beside it.
CREATE EXTENSION eventstore;
CREATE SCHEMA bench;

-- The physical limit: a table of exactly the shape, defaults and indexes of eventstore.events
-- (LIKE ... INCLUDING ALL copies the primary key, UNIQUE(event_id), the per-stream UNIQUE and
-- the feed index), without the append-only triggers and row-level security. Positions come from
-- a sequence; aggregate_version is the position itself, so the per-stream unique key cannot conflict.
CREATE TABLE bench.raw_events (LIKE eventstore.events INCLUDING ALL);
CREATE SEQUENCE bench.raw_events_seq AS bigint OWNED BY bench.raw_events.global_position;

-- Diagnostic only ("raw+stream"): the raw INSERT plus the same per-stream version row that
-- eventstore keeps, written by one plain SQL statement. It separates the cost of the streams
-- row (inherent in the design) from the cost of the function machinery around it.
CREATE TABLE bench.raw_streams (LIKE eventstore.streams INCLUDING ALL);

-- The 1000-event batch both batch workloads send: a JSON array in append_events' input shape,
-- every element carrying the same ~110-byte payload as the single-event workloads.
CREATE FUNCTION bench.batch_json(n int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_agg(jsonb_build_object(
               'event_type', 'Deposited',
               'payload', '@PAYLOAD@'::jsonb)
           )::text
    FROM generate_series(1, n)
$$;

-- Diagnostic only ("plpgsql"): the two statements append_event runs (upsert of the stream row,
-- insert of the event, both with the same text as src/store/append.rs), in a PL/pgSQL function
-- with the same SECURITY DEFINER and search_path, writing into the raw tables.
CREATE FUNCTION bench.append_event_plpgsql(p_aggregate_type text, p_aggregate_id text,
        p_event_type text, p_payload jsonb, p_metadata jsonb DEFAULT '{}')
RETURNS eventstore.appended LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v bigint;
    r eventstore.appended;
BEGIN
    INSERT INTO bench.raw_streams AS s (tenant_id, aggregate_type, aggregate_id, version)
    VALUES ('default', p_aggregate_type, p_aggregate_id, 1)
    ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE
       SET version = s.version + 1, updated_at = statement_timestamp(), deleted_at = NULL
     WHERE NOT s.hard_deleted
    RETURNING s.version INTO v;
    INSERT INTO bench.raw_events AS e (global_position, event_id, tenant_id, aggregate_type,
        aggregate_id, aggregate_version, event_type, schema_version, payload, metadata,
        correlation_id, causation_id, actor, occurred_at, recorded_at, transaction_id)
    VALUES (nextval('bench.raw_events_seq'), gen_random_uuid(), 'default', p_aggregate_type,
        p_aggregate_id, v, p_event_type, 1, p_payload, p_metadata, NULL, NULL, NULL,
        statement_timestamp(), statement_timestamp(), pg_current_xact_id())
    RETURNING e.event_id, e.aggregate_version, e.global_position, e.recorded_at INTO r;
    RETURN r;
END
$$;

-- Diagnostic only ("plpgsql+notify"): the same, plus the one NOTIFY per transaction that
-- eventstore sends at commit (src/notify.rs), with the same channel and payload shape.
CREATE FUNCTION bench.append_event_plpgsql_notify(p_aggregate_type text, p_aggregate_id text,
        p_event_type text, p_payload jsonb, p_metadata jsonb DEFAULT '{}')
RETURNS eventstore.appended LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r eventstore.appended;
BEGIN
    r := bench.append_event_plpgsql(p_aggregate_type, p_aggregate_id, p_event_type, p_payload, p_metadata);
    PERFORM pg_notify('eventstore_events',
        json_build_object('tenant_id', 'default', 'aggregate_types', json_build_array(p_aggregate_type))::text);
    RETURN r;
END
$$;

-- The handler of the situations part's inline projection (for an event type never appended).
CREATE TABLE bench.noop_seen (global_position bigint);
CREATE FUNCTION bench.noop_projection(e eventstore.event) RETURNS void LANGUAGE sql AS
$$ INSERT INTO bench.noop_seen VALUES (e.global_position) $$;
