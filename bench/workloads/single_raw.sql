-- 1 event per transaction: a plain INSERT into bench.raw_events (same shape and indexes as eventstore.events).
\set sid random(1, 1000)
INSERT INTO bench.raw_events AS e (global_position, event_id, tenant_id, aggregate_type, aggregate_id,
    aggregate_version, event_type, schema_version, payload, metadata, occurred_at, recorded_at, transaction_id)
VALUES (nextval('bench.raw_events_seq'), gen_random_uuid(), 'default', 'account', :sid,
    currval('bench.raw_events_seq'), 'Deposited', 1, '@PAYLOAD@', '{}',
    statement_timestamp(), statement_timestamp(), pg_current_xact_id())
RETURNING e.event_id, e.aggregate_version, e.global_position, e.recorded_at;
