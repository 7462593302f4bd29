-- Deleting streams: soft delete hides and numbering goes on; hard delete is a tombstone.
SET client_min_messages = warning;

SELECT count(*) FROM eventstore.append_events('order', 'o-1', '[{"event_type": "A", "payload": {}}, {"event_type": "B", "payload": {}}]');

-- soft delete: hidden from reads, version 0
SELECT eventstore.delete_stream('order', 'o-1') AS deleted;
SELECT eventstore.delete_stream('order', 'o-1') AS deleted_again;
SELECT eventstore.delete_stream('order', 'never-existed') AS deleted_missing;
SELECT eventstore.stream_version('order', 'o-1');
SELECT count(*) AS readable FROM eventstore.read_stream('order', 'o-1');
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'C', '{}', expected_version => -1)$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'C', '{}', expected_version => 2)$$);

-- a later append recreates it, numbering on; the old events stay hidden
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'C', '{}', expected_version => 0);
SELECT eventstore.stream_version('order', 'o-1');
SELECT aggregate_version, event_type FROM eventstore.read_stream('order', 'o-1') ORDER BY aggregate_version;
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'D', '{}', expected_version => 3);

-- hard delete: every later append fails with 55000; events stay in the log
SELECT eventstore.delete_stream('order', 'o-1', hard => true) AS tombstoned;
SELECT eventstore.delete_stream('order', 'o-1', hard => true) AS tombstoned_again;
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'E', '{}')$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'E', '{}', expected_version => 0)$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '[{"event_type": "E", "payload": {}}]')$$);
SELECT eventstore.stream_version('order', 'o-1');
SELECT count(*) AS readable FROM eventstore.read_stream('order', 'o-1');
SELECT aggregate_version, event_type FROM eventstore.read_all(aggregate_types => ARRAY['order']) ORDER BY cursor;

-- a stream that never existed can be tombstoned too
SELECT eventstore.delete_stream('order', 'o-2', hard => true) AS tombstoned;
SELECT fails($$SELECT eventstore.append_event('order', 'o-2', 'A', '{}')$$);
SELECT aggregate_id, version, deleted_at IS NOT NULL AS deleted, hard_deleted, hidden_through
  FROM eventstore.streams ORDER BY aggregate_id;
