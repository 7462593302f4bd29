-- Fresh state for the eventstore workloads: 1000 streams of 20 events, analyzed, and nothing
-- defined (the situations part defines its one thing after this, bench/sql/situation_*.sql).
-- Webhook endpoints are disabled, not deleted, and only deliveries not yet claimed are dropped:
-- the worker may hold claimed deliveries of a rate-limited endpoint for a while, outside any
-- transaction, and the row must still be there when it records the attempt (else it logs a
-- foreign-key error and backs off). A disabled endpoint matches nothing, as if it were gone.
-- (The append-only guard is lifted for the TRUNCATE only; this is a throwaway cluster.)
UPDATE eventstore.webhook_endpoints SET enabled = false WHERE enabled;
DELETE FROM eventstore.webhook_deliveries WHERE status = 'pending';
TRUNCATE eventstore.projections, eventstore.aggregates, eventstore.reducers, eventstore.snapshots;
ALTER TABLE eventstore.events DISABLE TRIGGER events_no_truncate;
TRUNCATE eventstore.events, eventstore.streams;
ALTER TABLE eventstore.events ENABLE TRIGGER events_no_truncate;
SELECT count(*) FROM generate_series(1, 1000) AS s,
    LATERAL eventstore.append_events('account', s::text, bench.batch_json(20)::jsonb) AS a;
VACUUM ANALYZE eventstore.events, eventstore.streams, eventstore.webhook_endpoints,
    eventstore.webhook_deliveries, eventstore.projections, eventstore.aggregates, eventstore.snapshots;
