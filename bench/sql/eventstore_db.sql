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
               'payload', '{"account_id": "ACC-000123", "amount": 125.50, "currency": "EUR", "reference": "INV-2024-000987", "channel": "web"}'::jsonb)
           )::text
    FROM generate_series(1, n)
$$;
