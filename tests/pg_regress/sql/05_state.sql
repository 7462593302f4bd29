-- Aggregate state: reducers, declarative rules, snapshots, time travel.
SET client_min_messages = warning;
SET timezone = 'UTC';
-- the state at every version of a stream, one row each
CREATE FUNCTION pg_temp.history(agg text, id text, upto int)
RETURNS TABLE (v int, version bigint, state jsonb, snapshot_version bigint) LANGUAGE sql AS $f$
    SELECT v, s.version, s.state, s.snapshot_version
      FROM generate_series(0, upto) v, eventstore.get_aggregate_state(agg, id, at_version => v) s
     ORDER BY v
$f$;
CREATE FUNCTION pg_temp.snapshots(agg text, id text)
RETURNS TABLE (version bigint, state jsonb) LANGUAGE sql AS $f$
    SELECT version, state FROM eventstore.snapshots
     WHERE tenant_id = eventstore.current_tenant() AND aggregate_type = agg AND aggregate_id = id
     ORDER BY version
$f$;

-- without a definition: initial state {}, each payload merged in (RFC 7396), no automatic snapshots
SELECT count(*) FROM eventstore.append_events('profile', 'p-1', '[
  {"event_type": "Registered", "payload": {"name": "Ann", "address": {"city": "Oslo", "zip": "0150"}, "tags": ["a", "b"]}},
  {"event_type": "Moved", "payload": {"address": {"city": "Bergen", "zip": null}, "tags": ["c"]}},
  {"event_type": "Noted", "payload": {"note": {"text": "hi", "draft": null}, "list": [null, {"k": null}]}},
  {"event_type": "Cleared", "payload": {"note": null, "name": null}}
]');
SELECT * FROM pg_temp.history('profile', 'p-1', 5);
SELECT aggregate_type, aggregate_id, version, state, snapshot_version,
       updated_at = (SELECT max(recorded_at) FROM eventstore.events WHERE aggregate_id = 'p-1') AS updated_at_is_last_event
  FROM eventstore.get_aggregate_state('profile', 'p-1');
SELECT * FROM pg_temp.snapshots('profile', 'p-1');

-- a missing stream: version 0, null state
SELECT * FROM eventstore.get_aggregate_state('profile', 'nobody');
SELECT * FROM eventstore.get_aggregate_state('never-defined', 'nobody', at_version => 3);

-- a cart: declarative rules for some event types, merge patch for the others
SELECT eventstore.define_aggregate('cart', '{"items": [], "total": 0, "count": 0}', snapshot_every => 3, keep_snapshots => 2);
SELECT eventstore.define_reducer('cart', 'ItemAdded', rule => '[
  {"op": "append", "path": "items", "from": "item"},
  {"op": "increment", "path": "total", "from": "item.price"},
  {"op": "increment", "path": "count", "value": 1}]');
SELECT eventstore.define_reducer('cart', 'ItemRemoved', rule => '[
  {"op": "remove", "path": "items", "key": "sku", "from": "sku"},
  {"op": "increment", "path": "count", "value": -1}]');
SELECT eventstore.define_reducer('cart', 'CustomerSet', rule => '[
  {"op": "set", "path": "customer.name", "from": "name"},
  {"op": "set", "path": "customer.vip", "value": false},
  {"op": "merge", "path": "customer.prefs", "from": "prefs"}]');
SELECT eventstore.define_reducer('cart', 'CouponApplied', rule => '[
  {"op": "merge", "from": "changes"},
  {"op": "unset", "path": "customer.vip"}]');
SELECT eventstore.define_reducer('cart', 'CheckedOut', rule => '[{"op": "$delete"}]');
SELECT aggregate_type, event_type, rule FROM eventstore.reducers ORDER BY aggregate_type, event_type;

SELECT aggregate_version FROM eventstore.append_event('cart', 'c-1', 'ItemAdded', '{"item": {"sku": "a", "price": 2}}');
SELECT aggregate_version FROM eventstore.append_event('cart', 'c-1', 'ItemAdded', '{"item": {"sku": "b", "price": 3.5}}');
SELECT aggregate_version FROM eventstore.append_event('cart', 'c-1', 'CustomerSet', '{"name": "Ann", "prefs": {"lang": "no", "x": null}}');
-- version 3 is a multiple of snapshot_every: a snapshot, taken by the append
SELECT * FROM pg_temp.snapshots('cart', 'c-1');
SELECT aggregate_version FROM eventstore.append_events('cart', 'c-1', '[
  {"event_type": "ItemAdded", "payload": {"item": {"sku": "a", "price": 2}}},
  {"event_type": "ItemRemoved", "payload": {"sku": "a"}},
  {"event_type": "CouponApplied", "payload": {"changes": {"coupon": "SPRING", "total": 4, "items": null}}},
  {"event_type": "Commented", "payload": {"comment": "merged by default"}},
  {"event_type": "ItemAdded", "payload": {"item": {"sku": "c", "price": 0.25}}}
]') ORDER BY aggregate_version;
-- 3 -> 8 crossed 6 only; keep_snapshots = 2
SELECT * FROM pg_temp.snapshots('cart', 'c-1');
SELECT * FROM pg_temp.history('cart', 'c-1', 9);

-- a rolled-back append that crossed 9 leaves no snapshot
BEGIN;
SELECT aggregate_version FROM eventstore.append_event('cart', 'c-1', 'ItemAdded', '{"item": {"sku": "d", "price": 1}}');
SELECT * FROM pg_temp.snapshots('cart', 'c-1');
ROLLBACK;
SELECT * FROM pg_temp.snapshots('cart', 'c-1');

-- $delete: the state is null from that version on; the version is still reported
SELECT aggregate_version FROM eventstore.append_events('cart', 'c-1', '[
  {"event_type": "CheckedOut", "payload": {}},
  {"event_type": "ItemAdded", "payload": {"item": {"sku": "late", "price": 9}}}
]') ORDER BY aggregate_version;
SELECT * FROM pg_temp.history('cart', 'c-1', 11);
SELECT * FROM pg_temp.snapshots('cart', 'c-1');
SELECT eventstore.stream_version('cart', 'c-1');

-- a changed reducer: the old snapshots are ignored (and pruned by the next one)
SELECT reducer_hash AS old_hash FROM eventstore.snapshots WHERE aggregate_id = 'c-1' AND version = 9 \gset
SELECT eventstore.define_reducer('cart', 'CheckedOut', rule => '[{"op": "set", "path": "checked_out", "value": true}]');
SELECT * FROM pg_temp.history('cart', 'c-1', 10) WHERE v >= 5;
SELECT version, reducer_hash = :'old_hash' AS old_hash FROM eventstore.snapshots WHERE aggregate_id = 'c-1' ORDER BY version;
SELECT eventstore.create_snapshot('cart', 'c-1');
SELECT version, state FROM pg_temp.snapshots('cart', 'c-1');
SELECT version, reducer_hash = :'old_hash' AS old_hash FROM eventstore.snapshots WHERE aggregate_id = 'c-1' ORDER BY version;
SELECT version, snapshot_version FROM eventstore.get_aggregate_state('cart', 'c-1');
-- a changed initial state likewise
SELECT eventstore.define_aggregate('cart', '{"items": [], "total": 100, "count": 0}', snapshot_every => 3, keep_snapshots => 2);
SELECT version, state, snapshot_version FROM eventstore.get_aggregate_state('cart', 'c-1', at_version => 2);
SELECT version, state -> 'total' AS total, snapshot_version FROM eventstore.get_aggregate_state('cart', 'c-1');

-- time travel by time: as_of an event's recorded_at includes it; at_version and as_of together
SELECT version, state -> 'count' AS count
  FROM eventstore.get_aggregate_state('cart', 'c-1',
       as_of => (SELECT recorded_at FROM eventstore.events WHERE aggregate_id = 'c-1' AND aggregate_version = 2));
SELECT version
  FROM eventstore.get_aggregate_state('cart', 'c-1', at_version => 1,
       as_of => (SELECT recorded_at FROM eventstore.events WHERE aggregate_id = 'c-1' AND aggregate_version = 3));
SELECT version, state
  FROM eventstore.get_aggregate_state('cart', 'c-1',
       as_of => (SELECT min(recorded_at) - interval '1 second' FROM eventstore.events WHERE aggregate_id = 'c-1'));
SELECT version FROM eventstore.get_aggregate_state('cart', 'c-1', at_version => 1000);

-- a SQL function as the reducer: it gets the whole event
CREATE SCHEMA app;
CREATE FUNCTION app.tally(state jsonb, event eventstore.event) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'sum', (state ->> 'sum')::int + (event.payload ->> 'n')::int,
        'last', event.event_type || '@' || event.aggregate_version || ' by ' || coalesce(event.actor, '?'))
$$;
SELECT eventstore.define_aggregate('tally', '{"sum": 0}', snapshot_every => 2);
SELECT eventstore.define_reducer('tally', 'Added', handler => 'app.tally(jsonb, eventstore.event)');
SELECT aggregate_type, event_type, rule, handler FROM eventstore.reducers WHERE aggregate_type = 'tally';
SELECT count(*) FROM eventstore.append_events('tally', 't-1', '[
  {"event_type": "Added", "payload": {"n": 5}, "metadata": {"actor": "ann"}},
  {"event_type": "Added", "payload": {"n": 7}},
  {"event_type": "Added", "payload": {"n": 30}, "metadata": {"actor": "bob"}}]');
SELECT * FROM pg_temp.history('tally', 't-1', 3);
SELECT * FROM pg_temp.snapshots('tally', 't-1');

-- definitions are checked when they are made; nothing is stored on error
CREATE FUNCTION app.one_arg(state jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION app.returns_text(state jsonb, event eventstore.event) RETURNS text LANGUAGE sql AS 'SELECT state::text';
CREATE FUNCTION app.returns_set(state jsonb, event eventstore.event) RETURNS SETOF jsonb LANGUAGE sql AS 'SELECT state';
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', handler => 'app.one_arg(jsonb)')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', handler => 'app.returns_text(jsonb, eventstore.event)')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', handler => 'app.returns_set(jsonb, eventstore.event)')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', handler => 'app.missing(jsonb, eventstore.event)')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => '{"op": "set", "path": "a", "value": 1}')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => '[{"op": "unset", "path": "a"}, {"op": "sett", "path": "a", "value": 1}]')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => '[{"op": "set", "path": "a"}]')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => '[{"op": "set", "path": "a", "from": "b", "value": 1}]')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => '[{"op": "increment", "path": 7, "value": 1}]')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => '[{"op": "remove", "path": "a", "value": 1}]')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => '[{"op": "append", "path": "a..b", "value": 1}]')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => '[{"op": "$delete", "path": "a"}]')$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', rule => NULL::jsonb)$$);
SELECT fails($$SELECT eventstore.define_reducer('tally', 'Bad', '[]')$$);
SELECT fails($$SELECT eventstore.define_aggregate('tally', '{}', snapshot_every => 0)$$);
SELECT fails($$SELECT eventstore.define_aggregate('tally', '{}', keep_snapshots => 0)$$);
SELECT fails($$SELECT eventstore.define_aggregate('tally', NULL)$$);
SELECT fails($$SELECT eventstore.get_aggregate_state('tally', 't-1', at_version => -1)$$);
SELECT count(*) AS bad_reducers FROM eventstore.reducers WHERE event_type = 'Bad';
SELECT aggregate_type, initial_state, snapshot_every, keep_snapshots FROM eventstore.aggregates ORDER BY aggregate_type;

-- definitions belong to their tenant
SET eventstore.tenant_id = 'other';
SELECT count(*) FROM eventstore.append_events('cart', 'c-1', '[
  {"event_type": "ItemAdded", "payload": {"item": {"sku": "z", "price": 1}}},
  {"event_type": "CheckedOut", "payload": {"at": "noon"}},
  {"event_type": "ItemAdded", "payload": {"n": 1}}]');
SELECT version, state, snapshot_version FROM eventstore.get_aggregate_state('cart', 'c-1');
SELECT * FROM pg_temp.snapshots('cart', 'c-1');
RESET eventstore.tenant_id;
SELECT version, state -> 'total' AS total FROM eventstore.get_aggregate_state('cart', 'c-1');
