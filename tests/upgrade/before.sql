-- Notes what the filled database holds and answers, just before the update (tests/upgrade/run.sh).
SET client_min_messages = warning;
\pset tuples_only on
\pset format unaligned

-- the async projection has caught up, so its answers stay put
SELECT upgrade_check.record('before the update: the async projection has applied every deposit',
    upgrade_check.wait_until($$ SELECT coalesce(sum(events), 0) = 4 FROM app.deposits $$),
    (SELECT format('app.deposits: %s', jsonb_agg(d)) FROM app.deposits d));

-- and the worker has made its one attempt (retry_schedule {3600}) at every delivery it may make,
-- so that the webhook backlog stays put as well
SELECT upgrade_check.record('before the update: the worker has settled every delivery of an enabled endpoint',
    upgrade_check.wait_until($$
        SELECT NOT EXISTS (SELECT 1 FROM eventstore.webhook_deliveries d JOIN eventstore.webhook_endpoints w USING (endpoint_id)
                            WHERE d.status = 'delivering' OR (d.status = 'pending' AND w.enabled)) $$),
    (SELECT format('deliveries: %s', jsonb_agg(jsonb_build_object('status', status, 'endpoint_id', endpoint_id)))
       FROM eventstore.webhook_deliveries));

-- questions asked again after the update, in each tenant
INSERT INTO upgrade_check.answers (name, tenant, query)
SELECT format('%s (tenant %s)', q.name, t.tenant), t.tenant, q.query
  FROM (VALUES ('default'), ('acme')) AS t(tenant),
       (VALUES
        ('get_aggregate_state of every stream, now and at version 2', $q$
            SELECT jsonb_object_agg(s.aggregate_type || '/' || s.aggregate_id, jsonb_build_array(
                       (SELECT to_jsonb(g) FROM eventstore.get_aggregate_state(s.aggregate_type, s.aggregate_id) g),
                       (SELECT to_jsonb(g) FROM eventstore.get_aggregate_state(s.aggregate_type, s.aggregate_id, at_version => 2) g)))
              FROM eventstore.streams s WHERE s.tenant_id = eventstore.current_tenant() $q$),
        ('read_stream of every stream (upcast)', $q$
            SELECT jsonb_object_agg(s.aggregate_type || '/' || s.aggregate_id,
                       (SELECT coalesce(jsonb_agg(to_jsonb(e) ORDER BY e.aggregate_version), '[]')
                          FROM eventstore.read_stream(s.aggregate_type, s.aggregate_id) e))
              FROM eventstore.streams s WHERE s.tenant_id = eventstore.current_tenant() $q$),
        ('stream_version of every stream', $q$
            SELECT jsonb_object_agg(s.aggregate_type || '/' || s.aggregate_id, eventstore.stream_version(s.aggregate_type, s.aggregate_id))
              FROM eventstore.streams s WHERE s.tenant_id = eventstore.current_tenant() $q$),
        ('read_all', $q$ SELECT jsonb_agg(to_jsonb(f) ORDER BY f.cursor) FROM eventstore.read_all() f $q$),
        ('read_all of some types', $q$
            SELECT jsonb_agg(f.global_position ORDER BY f.cursor)
              FROM eventstore.read_all(event_types => ARRAY['Deposited', 'OrderPlaced'], aggregate_types => ARRAY['account']) f $q$),
        ('poll_subscription of every subscription', $q$
            SELECT jsonb_object_agg(s.name, (SELECT coalesce(jsonb_agg(p.global_position ORDER BY p.cursor), '[]')
                                               FROM eventstore.poll_subscription(s.name, 1000) p))
              FROM eventstore.subscriptions s WHERE s.tenant_id = eventstore.current_tenant() $q$),
        ('projection_status', $q$
            SELECT jsonb_agg(to_jsonb(p) - 'updated_at' - 'last_error_at' ORDER BY p.name) FROM eventstore.projection_status() p $q$),
        ('get_event_store_stats', $q$ SELECT eventstore.get_event_store_stats() $q$),
        ('get_active_api_version', $q$ SELECT eventstore.get_active_api_version() $q$),
        ('route_api_call, active and deprecated version', $q$
            SELECT jsonb_build_array(
                eventstore.route_api_call('get_order', '{"id": 7}') #- '{meta,request_id}' #- '{meta,timestamp}' #- '{meta,processing_ms}',
                eventstore.route_api_call('get_order', '{"id": 8}', requested_version => '2024-01-01')
                    #- '{meta,request_id}' #- '{meta,timestamp}' #- '{meta,processing_ms}') $q$)
       ) AS q(name, query);
UPDATE upgrade_check.answers SET before = upgrade_check.as_tenant(tenant, query);
SELECT upgrade_check.record('before the update: every question has an answer', count(*) = 0,
                            string_agg(name, ', ')) FROM upgrade_check.answers WHERE before IS NULL;

-- facts the checks after the update continue from
INSERT INTO upgrade_check.facts
SELECT 'max global_position', to_jsonb(max(global_position)) FROM eventstore.events
UNION ALL
SELECT 'version ' || tenant_id || ' ' || aggregate_type || '/' || aggregate_id, to_jsonb(version) FROM eventstore.streams
UNION ALL
SELECT 'balance ' || t, upgrade_check.as_tenant(t, $q$ SELECT (state -> 'balance') FROM eventstore.get_aggregate_state('account', 'a1') $q$)
  FROM unnest(ARRAY['default', 'acme']) t
UNION ALL
SELECT 'cursor ' || t, upgrade_check.as_tenant(t, $q$ SELECT to_jsonb(cursor) FROM eventstore.read_all() ORDER BY cursor OFFSET 2 LIMIT 1 $q$)
  FROM unnest(ARRAY['default', 'acme']) t;
INSERT INTO upgrade_check.facts
SELECT 'read_all after cursor ' || t, upgrade_check.as_tenant(t, format($q$
    SELECT coalesce(jsonb_agg(f.global_position ORDER BY f.cursor), '[]') FROM eventstore.read_all(after => %L) f $q$,
    (SELECT value #>> '{}' FROM upgrade_check.facts WHERE name = 'cursor ' || t)))
  FROM unnest(ARRAY['default', 'acme']) t;
SELECT upgrade_check.record('before the update: every fact is noted', count(*) = 0, string_agg(name, ', '))
  FROM upgrade_check.facts WHERE value IS NULL OR value = 'null';

-- the rows, last: the answers above wrote to api_request_log
INSERT INTO upgrade_check.before_tables (tbl, cols)
SELECT a.attrelid::regclass::text, array_agg(a.attname::text ORDER BY a.attnum)
  FROM pg_attribute a JOIN pg_class k ON k.oid = a.attrelid
 WHERE k.relnamespace = 'eventstore'::regnamespace AND k.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
   -- what the worker changes by itself: checkpoints, counters, delivery attempts
   AND (k.relname, a.attname) NOT IN (
       ('projections', 'checkpoint_xid'), ('projections', 'checkpoint_position'), ('projections', 'events_applied'),
       ('projections', 'failing_event_id'), ('projections', 'attempts'), ('projections', 'last_error'),
       ('projections', 'last_error_at'), ('projections', 'updated_at'),
       ('webhook_deliveries', 'status'), ('webhook_deliveries', 'attempts'), ('webhook_deliveries', 'next_attempt_at'),
       ('webhook_deliveries', 'lease_until'), ('webhook_deliveries', 'last_status_code'),
       ('webhook_deliveries', 'last_error'), ('webhook_deliveries', 'delivered_at'))
   AND k.relname <> 'webhook_attempts'
 GROUP BY 1;
INSERT INTO upgrade_check.before_rows (tbl, r)
SELECT t.tbl, r FROM upgrade_check.before_tables t, upgrade_check.table_rows(t.tbl, t.cols) r;
SELECT format('%s: %s rows', t.tbl, count(b.r))
  FROM upgrade_check.before_tables t LEFT JOIN upgrade_check.before_rows b USING (tbl) GROUP BY t.tbl ORDER BY t.tbl;
