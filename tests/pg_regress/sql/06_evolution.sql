-- Event schema evolution (JSON Schemas, upcasters) and GDPR redaction.
SET client_min_messages = warning;
SET timezone = 'UTC';

-- a JSON Schema validates every append of its event type
SELECT eventstore.register_event_schema('OrderPlaced', 1, '{
  "type": "object", "required": ["customer_name"],
  "properties": {"customer_name": {"type": "string"}, "total": {"type": "number"}}}');
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', '{"total": 12}')$$);
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', '{"customer_name": 7, "total": "12"}')$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '[
  {"event_type": "OrderPlaced", "payload": {"customer_name": "Ann"}},
  {"event_type": "OrderPlaced", "payload": {"customer_name": null}}]')$$);
SELECT eventstore.stream_version('order', 'o-1') AS nothing_written;
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'OrderPlaced',
  '{"customer_name": "Ann", "customer_email": "ann@example.com", "total": 12, "status": "new", "legacy": true}');

-- a new version becomes the default; a batch element may name an older one
SELECT eventstore.register_event_schema('OrderPlaced', 2, '{
  "type": "object", "required": ["customer"],
  "properties": {"customer": {"type": "object", "required": ["name"]}}}');
SELECT fails($$SELECT eventstore.append_event('order', 'o-1', 'OrderPlaced', '{"customer_name": "Bob"}')$$);
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'OrderPlaced', '{"customer": {"name": "Bob"}, "total": 5, "status": "paid"}');
SELECT aggregate_version FROM eventstore.append_events('order', 'o-1', '[
  {"event_type": "OrderPlaced", "schema_version": 1, "payload": {"customer_name": "Cy", "total": 1}},
  {"event_type": "OrderShipped", "schema_version": 4, "payload": {"status": "new"}}]') ORDER BY aggregate_version;
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '[{"event_type": "OrderPlaced", "schema_version": 3, "payload": {"customer": {"name": "D"}}}]')$$);
SELECT fails($$SELECT eventstore.append_events('order', 'o-1', '[{"event_type": "OrderPlaced", "schema_version": 1, "payload": {"customer": {"name": "D"}}}]')$$);

-- registration: the same schema again is a no-op; a different one for a version, an invalid one: 22023
SELECT eventstore.register_event_schema('OrderPlaced', 2, '{
  "properties": {"customer": {"required": ["name"], "type": "object"}},
  "required": ["customer"], "type": "object"}');
SELECT fails($$SELECT eventstore.register_event_schema('OrderPlaced', 2, '{"type": "object"}')$$);
SELECT fails($$SELECT eventstore.register_event_schema('OrderPlaced', 3, '{"type": "nope"}')$$);
SELECT fails($$SELECT eventstore.register_event_schema('OrderPlaced', 0, '{}')$$);
SELECT fails($$SELECT eventstore.register_event_schema('OrderPlaced', 3, NULL)$$);
SELECT event_type, schema_version FROM eventstore.event_schemas ORDER BY event_type, schema_version;

-- upcasters: chained v1 -> v2 -> v3, applied on read
SELECT eventstore.register_upcaster('OrderPlaced', 1, 2, '[
  {"op": "rename", "from": "customer_name", "to": "customer.name"},
  {"op": "move", "from": "customer_email", "to": "customer.email"}]');
SELECT eventstore.register_upcaster('OrderPlaced', 2, 3, '[
  {"op": "wrap", "path": "total", "into": "amount"},
  {"op": "set_default", "path": "total.currency", "value": "EUR"},
  {"op": "map_values", "path": "status", "map": {"new": "pending"}},
  {"op": "remove", "path": "legacy"}]');
SELECT eventstore.register_upcaster('OrderPlaced', 2, 3, '[
  {"op": "wrap", "path": "total", "into": "amount"},
  {"op": "set_default", "path": "total.currency", "value": "EUR"},
  {"op": "map_values", "path": "status", "map": {"new": "pending"}},
  {"op": "remove", "path": "legacy"}]') AS same_again;
SELECT fails($$SELECT eventstore.register_upcaster('OrderPlaced', 1, 3, '[]')$$);
SELECT fails($$SELECT eventstore.register_upcaster('OrderPlaced', 2, 4, '[]')$$);
SELECT fails($$SELECT eventstore.register_upcaster('OrderPlaced', 1, 2, '[]')$$);
SELECT fails($$SELECT eventstore.register_upcaster('OrderPlaced', 3, 3, '[]')$$);
SELECT fails($$SELECT eventstore.register_upcaster('OrderPlaced', 3, 4, '[{"op": "set", "path": "a", "value": 1}]')$$);
SELECT fails($$SELECT eventstore.register_upcaster('OrderPlaced', 3, 4, '[{"op": "rename", "from": "a"}]')$$);
SELECT fails($$SELECT eventstore.register_upcaster('OrderPlaced', 3, 4, '[{"op": "wrap", "path": ["a"], "into": "b"}]')$$);
SELECT event_type, from_version, to_version FROM eventstore.upcasters ORDER BY event_type, from_version;

SELECT aggregate_version, event_type, schema_version, payload FROM eventstore.read_stream('order', 'o-1') ORDER BY aggregate_version;
SELECT aggregate_version, event_type, schema_version, payload FROM eventstore.read_all(aggregate_types => ARRAY['order']) ORDER BY cursor;
-- the stored rows keep what was written
SELECT aggregate_version, schema_version, payload FROM eventstore.events ORDER BY aggregate_version;

-- reducers see upcast payloads
SELECT eventstore.define_aggregate('order', '{"customers": [], "sum": 0}');
SELECT eventstore.define_reducer('order', 'OrderPlaced', rule => '[
  {"op": "append", "path": "customers", "from": "customer.name"},
  {"op": "increment", "path": "sum", "from": "total.amount"},
  {"op": "set", "path": "currency", "from": "total.currency"}]');
SELECT v, s.version, s.state
  FROM generate_series(1, 4) v, eventstore.get_aggregate_state('order', 'o-1', at_version => v) s ORDER BY v;

-- schemas and upcasters belong to their tenant
SET eventstore.tenant_id = 'other';
SELECT aggregate_version FROM eventstore.append_event('order', 'o-1', 'OrderPlaced', '{"customer_name": 1}');
SELECT aggregate_version, schema_version, payload FROM eventstore.read_stream('order', 'o-1') ORDER BY aggregate_version;
SELECT state FROM eventstore.get_aggregate_state('order', 'o-1');
RESET eventstore.tenant_id;

-- GDPR: redact one event
CREATE ROLE regress_es_dpo;
SELECT eventstore.grant_access('regress_es_dpo', 'admin');
SELECT eventstore.define_aggregate('customer', '{}', snapshot_every => 2);
SELECT count(*) FROM eventstore.append_events('customer', 'c-1', '[
  {"event_type": "Registered", "payload": {"customer": {"email": "x@example.com", "name": "X"}}, "metadata": {"actor": "signup", "ip": "10.0.0.1"}},
  {"event_type": "Moved", "payload": {"city": "Oslo"}},
  {"event_type": "Renamed", "payload": {"customer": {"name": "Y"}}}]');
SELECT version FROM eventstore.snapshots WHERE aggregate_id = 'c-1' ORDER BY version;
SELECT event_id AS first_event, global_position AS first_position FROM eventstore.events
 WHERE aggregate_id = 'c-1' AND aggregate_version = 1 \gset
SET ROLE regress_es_dpo;
SELECT eventstore.redact_event(:'first_event', 'erasure request #17') AS redacted;
SELECT eventstore.redact_event(:'first_event', 'again') AS redacted_again;
RESET ROLE;
SELECT aggregate_version, event_id = :'first_event' AS same_id, global_position = :first_position AS same_position,
       event_type, payload, metadata, actor, redacted_at IS NOT NULL AS redacted
  FROM eventstore.read_stream('customer', 'c-1') ORDER BY aggregate_version;
SELECT aggregate_type, aggregate_id, event_id = :'first_event' AS same_id, reason, redacted_by, jwt_sub
  FROM eventstore.redactions ORDER BY redaction_id;
-- the snapshots are dropped; the state is recomputed from the redacted log
SELECT version FROM eventstore.snapshots WHERE aggregate_id = 'c-1' ORDER BY version;
SELECT version, state, snapshot_version FROM eventstore.get_aggregate_state('customer', 'c-1');
SELECT fails($$SELECT eventstore.redact_event('00000000-0000-0000-0000-000000000001', 'gdpr')$$);
SELECT fails($$SELECT eventstore.redact_event('$$ || :'first_event' || $$', '  ')$$);
SELECT fails($$SELECT eventstore.redact_event(NULL, 'gdpr')$$);

-- redact a subject: every event of this tenant holding the value at the path
SELECT count(*) FROM eventstore.append_events('order', 'o-9', '[
  {"event_type": "Contacted", "payload": {"customer": {"email": "x@example.com"}, "note": "call back"}},
  {"event_type": "Contacted", "payload": {"customer": {"email": "someone@example.com"}}},
  {"event_type": "Contacted", "payload": {"email": "x@example.com"}}]');
SET eventstore.tenant_id = 'other';
SELECT aggregate_version FROM eventstore.append_event('order', 'o-9', 'Contacted', '{"customer": {"email": "x@example.com"}}');
RESET eventstore.tenant_id;
SELECT eventstore.redact_subject('customer.email', 'x@example.com', 'erase x') AS redacted;
SELECT eventstore.redact_subject('$.customer.email', 'x@example.com', 'erase x') AS redacted_again;
SELECT tenant_id, aggregate_id, aggregate_version, payload, redacted_at IS NOT NULL AS redacted
  FROM eventstore.events WHERE aggregate_id IN ('o-9', 'c-1') ORDER BY tenant_id, aggregate_id, aggregate_version;
SELECT tenant_id, aggregate_type, aggregate_id, reason, redacted_by FROM eventstore.redactions ORDER BY redaction_id;
SELECT fails($$SELECT eventstore.redact_subject('a..b', 'x', 'gdpr')$$);
SELECT fails($$SELECT eventstore.redact_subject('email', 'x', '')$$);

-- the log stays append-only: for the superuser too, and the switch is not for application roles
SELECT fails($$UPDATE eventstore.events SET payload = '{}'$$);
SELECT fails($$DELETE FROM eventstore.events$$);
SELECT fails($$TRUNCATE eventstore.events$$);
SET ROLE regress_es_dpo;
SELECT fails($$SET eventstore.redacting = on$$);
SELECT fails($$SELECT set_config('eventstore.redacting', 'on', true)$$);
SELECT fails($$UPDATE eventstore.events SET payload = '{}'$$);
RESET ROLE;

DROP OWNED BY regress_es_dpo;
DROP ROLE regress_es_dpo;
