-- A short tour: two streams, read back, and a reader following the global feed.
\pset footer off
\echo '-- append three events to order/1001 and one to customer/42'
SELECT aggregate_version, global_position
  FROM eventstore.append_events('order', '1001', '[
    {"event_type": "OrderPlaced",  "payload": {"customer": "42", "total": 99.5}},
    {"event_type": "ItemAdded",    "payload": {"sku": "A-7", "qty": 2}},
    {"event_type": "OrderShipped", "payload": {"carrier": "DHL"}}
  ]', expected_version => 0);
SELECT aggregate_version, global_position
  FROM eventstore.append_event('customer', '42', 'CustomerRegistered',
                               '{"name": "Ada"}', '{"actor": "signup-form"}');

\echo '-- optimistic concurrency: appending at a stale version fails with 23P01'
DO $$
BEGIN
    PERFORM eventstore.append_event('order', '1001', 'OrderCancelled', '{}', expected_version => 1);
EXCEPTION WHEN exclusion_violation THEN
    RAISE NOTICE 'refused as expected: %', SQLERRM;
END $$;

\echo '-- read order/1001 back'
SELECT aggregate_version, event_type, payload FROM eventstore.read_stream('order', '1001');
SELECT eventstore.stream_version('order', '1001') AS order_version;

\echo '-- follow the global feed two events at a time, passing the last cursor on'
SELECT global_position, aggregate_type, event_type, cursor FROM eventstore.read_all(max_count => 2);
SELECT global_position, aggregate_type, event_type, cursor
  FROM eventstore.read_all(
    after => (SELECT cursor FROM eventstore.read_all(max_count => 2) ORDER BY cursor DESC LIMIT 1),
    max_count => 2);

\echo '-- aggregate state: a reducer rule folds the events into a JSON state'
SELECT eventstore.define_reducer('order', 'ItemAdded',
    rule => '[{"op": "append", "path": "items", "from": "sku"}, {"op": "increment", "path": "qty", "from": "qty"}]');
SELECT version, state FROM eventstore.get_aggregate_state('order', '1001');

\echo '-- an async projection kept by the background worker'
CREATE TABLE public.order_counts (event_type text PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION public.count_event(e eventstore.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.order_counts VALUES (e.event_type, 1)
    ON CONFLICT (event_type) DO UPDATE SET n = public.order_counts.n + 1 $$;
SELECT eventstore.register_projection('order_counts', 'public.count_event(eventstore.event)');
DO $$
BEGIN
    -- CREATE EXTENSION asked the launcher for a worker; it is there within a second or two
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT lag = 0 FROM eventstore.projection_status() WHERE name = 'order_counts');
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT name, lag, events_applied FROM eventstore.projection_status();
SELECT event_type, n FROM public.order_counts ORDER BY event_type;

\echo '-- statistics for the current tenant'
SELECT jsonb_pretty(eventstore.get_event_store_stats() - 'first_recorded_at' - 'last_recorded_at');
