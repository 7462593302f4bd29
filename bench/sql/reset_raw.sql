-- Fresh state for the raw (and raw+stream) workloads: 1000 streams of 20 events, analyzed.
TRUNCATE bench.raw_events, bench.raw_streams;
INSERT INTO bench.raw_events (global_position, event_id, tenant_id, aggregate_type, aggregate_id,
    aggregate_version, event_type, schema_version, payload, metadata, occurred_at, recorded_at, transaction_id)
SELECT nextval('bench.raw_events_seq'), gen_random_uuid(), 'default', 'account', s::text, v, 'Deposited', 1,
    '@PAYLOAD@', '{}', statement_timestamp(), statement_timestamp(), pg_current_xact_id()
FROM generate_series(1, 1000) AS s, generate_series(1, 20) AS v;
INSERT INTO bench.raw_streams (tenant_id, aggregate_type, aggregate_id, version)
SELECT 'default', 'account', s::text, 20 FROM generate_series(1, 1000) AS s;
VACUUM ANALYZE bench.raw_events, bench.raw_streams;
