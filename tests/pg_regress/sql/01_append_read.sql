-- Appending and reading streams: versions, expected versions, batches, errors.
SET client_min_messages = warning;
SET timezone = 'UTC';

-- a new stream starts at version 1; expected_version 0 means "must not exist yet"
SELECT aggregate_version, global_position
  FROM eventstore.append_event('order', 'o-1', 'OrderPlaced', '{"total": 10}', expected_version => 0);
SELECT aggregate_version, global_position
  FROM eventstore.append_event('order', 'o-1', 'ItemAdded', '{"sku": "A"}',
       '{"actor": "ann", "correlation_id": "6f1c3c1e-0c1a-4d7e-9a55-111111111111", "occurred_at": "2024-05-01T12:00:00Z"}',
       expected_version => 1);
-- -1 means "must exist"; NULL means any version
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'ItemAdded', '{"sku": "B"}', expected_version => -1);
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'OrderShipped', '{}');

SELECT aggregate_version, event_type, payload, metadata, actor, correlation_id,
       CASE WHEN occurred_at = recorded_at THEN 'recorded_at' ELSE occurred_at::text END AS occurred_at, schema_version, redacted_at
  FROM eventstore.read_stream('order', 'o-1') ORDER BY aggregate_version;
SELECT aggregate_version FROM eventstore.read_stream('order', 'o-1', from_version => 3) ORDER BY aggregate_version;
SELECT aggregate_version FROM eventstore.read_stream('order', 'o-1', max_count => 2) ORDER BY aggregate_version;
SELECT eventstore.stream_version('order', 'o-1') AS existing, eventstore.stream_version('order', 'nope') AS missing;

-- a batch: all or nothing, consecutive versions
SELECT aggregate_version, global_position
  FROM eventstore.append_events('cart', 'c-1', '[
    {"event_type": "CartCreated", "payload": {}},
    {"event_type": "ItemAdded", "payload": {"sku": "X"}, "metadata": {"actor": "bob"}, "schema_version": 2},
    {"event_type": "ItemAdded", "payload": {"sku": "Y"}, "event_id": "6f1c3c1e-0c1a-4d7e-9a55-222222222222"}
  ]', expected_version => 0) ORDER BY aggregate_version;
SELECT aggregate_version, event_type, payload, actor, schema_version, event_id = '6f1c3c1e-0c1a-4d7e-9a55-222222222222' AS given_id
  FROM eventstore.read_stream('cart', 'c-1') ORDER BY aggregate_version;

-- idempotent re-send of a stored event returns the original row and writes nothing
SELECT aggregate_version, global_position
  FROM eventstore.append_events('cart', 'c-1', '[{"event_type": "ItemAdded", "payload": {"sku": "Y"}, "event_id": "6f1c3c1e-0c1a-4d7e-9a55-222222222222"}]');
SELECT count(*) AS cart_events FROM eventstore.read_stream('cart', 'c-1');

-- wrong expected versions: 23P01, and nothing is written
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'Late', '{}', expected_version => 2)$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'Late', '{}', expected_version => 0)$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-2', 'Late', '{}', expected_version => -1)$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-2', 'Late', '{}', expected_version => 5)$$);
SELECT eventstore.stream_version('order', 'o-1') AS still_4;

-- invalid input: 22023 with what is wrong, nothing written
SELECT fails($$SELECT eventstore.append_event('', 'o-1', 'X', '{}')$$);
SELECT fails($$SELECT eventstore.append_event('order', NULL, 'X', '{}')$$);
SELECT fails($$SELECT eventstore.append_event('order', repeat('x', 256), 'X', '{}')$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'X', '[1, 2]')$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'X', NULL)$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'X', '{}', '"meta"')$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'X', '{}', '{"occurred_at": "yesterday"}')$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'X', '{}', '{"correlation_id": "not-a-uuid"}')$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'X', '{}', expected_version => -5)$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '{"event_type": "X"}')$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '[]')$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '[{"event_type": "X", "payload": {}}, {"event_type": "Y", "payload": 3}]')$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '[{"event_type": "X", "payload": {}, "payloud": {}}]')$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1',
    (SELECT jsonb_agg(jsonb_build_object('event_type', 'X', 'payload', '{}'::jsonb)) FROM generate_series(1, 10001)))$$);
SELECT fails($$SELECT * FROM eventstore.read_stream('order', 'o-1', from_version => 0)$$);
SELECT fails($$SELECT * FROM eventstore.read_stream('order', 'o-1', max_count => 0)$$);
SELECT eventstore.stream_version('order', 'o-1') AS still_4;
SELECT count(*) AS total_events FROM eventstore.events;

-- duplicate and partly overlapping event ids: 23505
SELECT fails($$SELECT eventstore.append_event('order', 'o-9', 'X', '{}', event_id => '6f1c3c1e-0c1a-4d7e-9a55-222222222222')$$);
SELECT fails($$SELECT eventstore.append_events('cart', 'c-1', '[
    {"event_type": "ItemAdded", "payload": {"sku": "Y"}, "event_id": "6f1c3c1e-0c1a-4d7e-9a55-222222222222"},
    {"event_type": "ItemAdded", "payload": {"sku": "Z"}, "event_id": "6f1c3c1e-0c1a-4d7e-9a55-333333333333"}]')$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '[
    {"event_type": "X", "payload": {}, "event_id": "6f1c3c1e-0c1a-4d7e-9a55-444444444444"},
    {"event_type": "X", "payload": {}, "event_id": "6f1c3c1e-0c1a-4d7e-9a55-444444444444"}]')$$);

-- the log is append-only
SELECT fails($$UPDATE eventstore.events SET payload = '{}'$$);
SELECT fails($$DELETE FROM eventstore.events$$);
SELECT fails($$TRUNCATE eventstore.events$$);
SELECT count(*) AS total_events FROM eventstore.events;
