-- 1000 events per transaction: one INSERT ... SELECT that unnests the same JSON array the
-- eventstore workload sends. The array (~120 kB) is fetched once per connection and then sent
-- by the client as a bind parameter in every transaction, exactly as for append_events.
\if :loaded = 0
SELECT bench.batch_json(1000) AS batch \gset
\set loaded 1
\endif
\set sid random(1, 1000)
INSERT INTO bench.raw_events AS e (global_position, event_id, tenant_id, aggregate_type, aggregate_id,
    aggregate_version, event_type, schema_version, payload, metadata, occurred_at, recorded_at, transaction_id)
SELECT x.g, gen_random_uuid(), 'default', 'account', :sid, x.g, x.value ->> 'event_type', 1,
    x.value -> 'payload', coalesce(x.value -> 'metadata', '{}'),
    statement_timestamp(), statement_timestamp(), pg_current_xact_id()
FROM (SELECT nextval('bench.raw_events_seq') AS g, value FROM jsonb_array_elements(:batch::jsonb)) AS x
RETURNING e.event_id, e.aggregate_version, e.global_position, e.recorded_at;
