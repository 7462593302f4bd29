-- Diagnostic: the raw INSERT plus eventstore's per-stream version row (upsert), as one plain SQL
-- statement: what append_event does, without the function around it.
\set sid random(1, 1000)
WITH s AS (
    INSERT INTO bench.raw_streams AS s (tenant_id, aggregate_type, aggregate_id, version)
    VALUES ('default', 'account', :sid, 1)
    ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE
       SET version = s.version + 1, updated_at = statement_timestamp(), deleted_at = NULL
     WHERE NOT s.hard_deleted
    RETURNING s.tenant_id, s.aggregate_type, s.aggregate_id, s.version)
INSERT INTO bench.raw_events AS e (global_position, event_id, tenant_id, aggregate_type, aggregate_id,
    aggregate_version, event_type, schema_version, payload, metadata, occurred_at, recorded_at, transaction_id)
SELECT nextval('bench.raw_events_seq'), gen_random_uuid(), s.tenant_id, s.aggregate_type, s.aggregate_id,
    s.version, 'Deposited', 1, '@PAYLOAD@', '{}',
    statement_timestamp(), statement_timestamp(), pg_current_xact_id()
FROM s
RETURNING e.event_id, e.aggregate_version, e.global_position, e.recorded_at;
