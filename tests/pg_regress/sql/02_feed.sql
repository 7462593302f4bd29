-- The global feed: order, cursors, filters.
SET client_min_messages = warning;

SELECT count(*) FROM eventstore.append_events('order', 'o-1', '[{"event_type": "OrderPlaced", "payload": {"n": 1}}, {"event_type": "ItemAdded", "payload": {"n": 2}}]');
SELECT count(*) FROM eventstore.append_event('customer', 'c-1', 'CustomerRegistered', '{"n": 3}');
SELECT count(*) FROM eventstore.append_event('order', 'o-2', 'OrderPlaced', '{"n": 4}');
SELECT count(*) FROM eventstore.append_event('order', 'o-1', 'OrderShipped', '{"n": 5}');

-- the whole feed in commit-safe order
SELECT global_position, aggregate_type, aggregate_id, aggregate_version, event_type, payload
  FROM eventstore.read_all() ORDER BY cursor;
-- cursors are ordered like the feed and parse back
SELECT bool_and(cursor ~ '^[0-9a-f]{16}-[0-9a-f]{16}$') AS well_formed FROM eventstore.read_all();

-- paging: each page continues after the last cursor of the one before
CREATE TEMP TABLE page1 AS SELECT * FROM eventstore.read_all(max_count => 2);
SELECT global_position FROM page1 ORDER BY cursor;
CREATE TEMP TABLE page2 AS
  SELECT * FROM eventstore.read_all(after => (SELECT max(cursor) FROM page1), max_count => 2);
SELECT global_position FROM page2 ORDER BY cursor;
SELECT global_position FROM eventstore.read_all(after => (SELECT max(cursor) FROM page2)) ORDER BY cursor;
SELECT count(*) AS nothing_after_the_end
  FROM eventstore.read_all(after => (SELECT max(cursor) FROM eventstore.read_all()));

-- filters
SELECT global_position, event_type FROM eventstore.read_all(event_types => ARRAY['OrderPlaced']) ORDER BY cursor;
SELECT global_position, aggregate_type FROM eventstore.read_all(aggregate_types => ARRAY['customer']) ORDER BY cursor;
SELECT global_position FROM eventstore.read_all(event_types => ARRAY['ItemAdded', 'OrderShipped'], aggregate_types => ARRAY['order']) ORDER BY cursor;

-- an event appended in this (still open) transaction is not in the feed yet: the feed only
-- returns what can never be preceded by a later commit
BEGIN;
SELECT count(*) FROM eventstore.append_event('order', 'o-3', 'OrderPlaced', '{}');
SELECT count(*) AS visible_in_feed FROM eventstore.read_all(aggregate_types => ARRAY['order']) WHERE aggregate_id = 'o-3';
SELECT (eventstore.feed_lag() -> 'blocking_backend' ->> 'pid')::int = pg_backend_pid() AS this_backend_holds_the_feed;
COMMIT;
SELECT count(*) AS visible_in_feed FROM eventstore.read_all() WHERE aggregate_id = 'o-3';
SELECT eventstore.feed_lag() -> 'held_back_events' AS held_back;

-- bad cursors and bounds: 22023
SELECT fails($$SELECT * FROM eventstore.read_all(after => 'yesterday')$$);
SELECT fails($$SELECT * FROM eventstore.read_all(max_count => 100000)$$);

-- statistics of the current tenant
SELECT eventstore.get_event_store_stats() - 'first_recorded_at' - 'last_recorded_at' AS stats;
