-- Fresh state for the eventstore workloads: 1000 streams of 20 events, analyzed, and nothing
-- defined (the situations part defines its one thing after this, bench/sql/situation_*.sql).
-- (The append-only guard is lifted for the TRUNCATE only; this is a throwaway cluster.)
TRUNCATE eventstore.webhook_endpoints, eventstore.webhook_deliveries, eventstore.webhook_attempts,
    eventstore.projections, eventstore.aggregates, eventstore.reducers, eventstore.snapshots;
ALTER TABLE eventstore.events DISABLE TRIGGER events_no_truncate;
TRUNCATE eventstore.events, eventstore.streams;
ALTER TABLE eventstore.events ENABLE TRIGGER events_no_truncate;
SELECT count(*) FROM generate_series(1, 1000) AS s,
    LATERAL eventstore.append_events('account', s::text, bench.batch_json(20)::jsonb) AS a;
VACUUM ANALYZE eventstore.events, eventstore.streams, eventstore.webhook_endpoints,
    eventstore.webhook_deliveries, eventstore.projections, eventstore.aggregates, eventstore.snapshots;
