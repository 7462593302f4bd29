-- After ALTER EXTENSION eventstore UPDATE: the rows are still there, the answers are the same,
-- and the extension goes on from where the old version stopped (tests/upgrade/run.sh).
SET client_min_messages = warning;
\pset tuples_only on
\pset format unaligned

-- nothing lost
SELECT upgrade_check.rows_survived(tbl) FROM upgrade_check.before_tables ORDER BY tbl;
SELECT upgrade_check.expect('same answer after the update: ' || name,
                            format('SELECT upgrade_check.as_tenant(%L, %L)', tenant, query),
                            format('SELECT %L::jsonb', before))
  FROM upgrade_check.answers ORDER BY name;

-- facts(name) as SQL text, for the checks below
CREATE FUNCTION pg_temp.fact(name text) RETURNS text LANGUAGE sql AS $$
    SELECT format('(SELECT value FROM upgrade_check.facts WHERE name = %L)', name) $$;

-- appends go on at the right versions and positions (the refused appends come last, so that
-- the positions below do not depend on whether a refusal draws one)
SELECT upgrade_check.record('the webhook endpoint paused before the update is enabled again', count(*) = 1, NULL)
  FROM (SELECT eventstore.enable_webhook_endpoint(endpoint_id) FROM eventstore.webhook_endpoints WHERE tenant_id = 'default') e;
SELECT upgrade_check.expect('an event appended before the update is found again by its event_id',
    $$ SELECT jsonb_build_array(a.aggregate_version, a.global_position)
         FROM eventstore.append_event('account', 'a1', 'Deposited', '{"amount": 10}', expected_version => 1,
                                      event_id => '0190b6a0-0000-7000-8000-000000000001') a $$,
    $$ SELECT jsonb_build_array(2, global_position) FROM eventstore.events
        WHERE event_id = '0190b6a0-0000-7000-8000-000000000001' $$);
SELECT upgrade_check.expect('append_event continues the stream at the next version and global position',
    format($$ SELECT jsonb_build_array(a.aggregate_version, a.global_position)
                FROM eventstore.append_event('account', 'a1', 'Deposited', '{"amount": 3}',
                                             expected_version => %s::bigint) a $$, pg_temp.fact('version default account/a1')),
    format($$ SELECT jsonb_build_array(%s::bigint + 1, %s::bigint + 1) $$,
           pg_temp.fact('version default account/a1'), pg_temp.fact('max global_position')));
SELECT upgrade_check.expect('a soft-deleted stream is recreated and numbers on',
    $$ SELECT jsonb_build_array(a.aggregate_version, a.global_position)
         FROM eventstore.append_event('order', 'o2', 'OrderPlaced', '{"total": 4}', expected_version => 0) a $$,
    format($$ SELECT jsonb_build_array(%s::bigint + 1, %s::bigint + 2) $$,
           pg_temp.fact('version default order/o2'), pg_temp.fact('max global_position')));
SET eventstore.tenant_id = 'acme';
SELECT upgrade_check.expect('append_events in another tenant continues its stream and the global positions',
    format($$ SELECT jsonb_agg(jsonb_build_array(a.aggregate_version, a.global_position) ORDER BY a.aggregate_version)
                FROM eventstore.append_events('order', 'o1', '[{"event_type": "OrderPaid", "payload": {}},
                                                              {"event_type": "OrderPlaced", "payload": {"total": 6}}]',
                                              expected_version => %s::bigint) a $$,
           pg_temp.fact('version acme order/o1')),
    format($$ SELECT jsonb_build_array(jsonb_build_array(%1$s::bigint + 1, %2$s::bigint + 3),
                                       jsonb_build_array(%1$s::bigint + 2, %2$s::bigint + 4)) $$,
           pg_temp.fact('version acme order/o1'), pg_temp.fact('max global_position')));
RESET eventstore.tenant_id;
SELECT upgrade_check.expect('an order after the update',
    $$ SELECT to_jsonb(a.aggregate_version) FROM eventstore.append_event('order', 'o4', 'OrderPlaced', '{"total": 7}') a $$,
    $$ SELECT '1'::jsonb $$);
SELECT upgrade_check.expect('upcasters apply to events appended after the update',
    $$ SELECT (SELECT jsonb_build_object('schema_version', e.schema_version, 'payload', e.payload)
                 FROM eventstore.read_stream('account', 'a3') e)
         FROM eventstore.append_event('account', 'a3', 'Opened', '{"owner": "Cy"}') $$,
    $$ SELECT '{"schema_version": 2, "payload": {"holder": {"name": "Cy"}}}'::jsonb $$);
SELECT upgrade_check.expect('a wrong expected version is still refused, now with 23P01',
    $$ SELECT to_jsonb(left(upgrade_check.error_of(
           $e$ SELECT eventstore.append_event('account', 'a1', 'Deposited', '{"amount": 1}', expected_version => 1) $e$), 28)) $$,
    $$ SELECT to_jsonb('23P01 wrong expected version'::text) $$);
SELECT upgrade_check.expect('a hard-deleted stream still refuses appends',
    $$ SELECT to_jsonb(left(upgrade_check.error_of(
           $e$ SELECT eventstore.append_event('order', 'o3', 'OrderPlaced', '{"total": 3}') $e$), 5)) $$,
    $$ SELECT '"55000"'::jsonb $$);
SELECT upgrade_check.expect('event schemas still validate payloads',
    $$ SELECT to_jsonb(left(upgrade_check.error_of(
           $e$ SELECT eventstore.append_event('account', 'a1', 'Deposited', '{"amount": "lots"}') $e$), 5)) $$,
    $$ SELECT '"23514"'::jsonb $$);

-- the state goes on from the old events and snapshots
SELECT upgrade_check.expect('get_aggregate_state adds the new deposit to the balance of before, with a new snapshot',
    $$ SELECT jsonb_build_object('version', g.version, 'balance', g.state -> 'balance', 'snapshot_version', g.snapshot_version)
         FROM eventstore.get_aggregate_state('account', 'a1') g $$,
    format($$ SELECT jsonb_build_object('version', %s::bigint + 1, 'balance', %s::numeric + 3, 'snapshot_version', 6) $$,
           pg_temp.fact('version default account/a1'), pg_temp.fact('balance default')));
SELECT upgrade_check.expect('create_snapshot works on a stream of before the update',
    $$ SELECT to_jsonb(eventstore.create_snapshot('account', 'a2')) $$, $$ SELECT '2'::jsonb $$);

-- the feed and the subscriptions continue where they were
SELECT upgrade_check.expect(format('read_all continues from a cursor taken before the update (tenant %s)', t),
    format($$ SELECT upgrade_check.as_tenant(%L, format('SELECT jsonb_agg(f.global_position ORDER BY f.cursor) FROM eventstore.read_all(after => %%L) f',
                                                        %s #>> '{}')) $$, t, pg_temp.fact('cursor ' || t)),
    format($$ SELECT %s || (SELECT jsonb_agg(global_position ORDER BY global_position) FROM eventstore.events
                             WHERE tenant_id = %L AND global_position > %s::bigint) $$,
           pg_temp.fact('read_all after cursor ' || t), t, pg_temp.fact('max global_position')))
  FROM unnest(ARRAY['default', 'acme']) t;
SELECT upgrade_check.expect('poll_subscription returns the orders of before and after the update',
    $$ SELECT jsonb_agg(p.global_position ORDER BY p.cursor) FROM eventstore.poll_subscription('billing', 1000) p $$,
    format($$ SELECT (%s -> 'billing') || (SELECT jsonb_agg(global_position ORDER BY global_position) FROM eventstore.events
                                           WHERE tenant_id = 'default' AND event_type = 'OrderPlaced' AND global_position > %s::bigint) $$,
           (SELECT format('(SELECT before FROM upgrade_check.answers WHERE name = %L)', name)
              FROM upgrade_check.answers WHERE name = 'poll_subscription of every subscription (tenant default)'),
           pg_temp.fact('max global_position')));
SELECT upgrade_check.expect('ack_subscription moves the checkpoint to the end',
    $$ SELECT jsonb_build_array(eventstore.ack_subscription('billing', (SELECT max(cursor) FROM eventstore.read_all(max_count => 10000))),
                                (SELECT count(*) FROM eventstore.poll_subscription('billing'))) $$,
    $$ SELECT '[true, 0]'::jsonb $$);

-- projections and webhooks react to the new events
SELECT upgrade_check.expect('the inline projection saw every order of the tenant, before and after the update',
    $$ SELECT jsonb_agg(global_position ORDER BY global_position) FROM app.orders_seen WHERE tenant_id = 'default' $$,
    $$ SELECT jsonb_agg(global_position ORDER BY global_position) FROM eventstore.events
        WHERE tenant_id = 'default' AND event_type = 'OrderPlaced' $$);
SELECT upgrade_check.expect('the async projection applies the deposit made after the update',
    $$ SELECT jsonb_build_array(upgrade_check.wait_until('SELECT sum(events) = 5 FROM app.deposits'),
                                (SELECT total FROM app.deposits WHERE account = 'a1')) $$,
    $$ SELECT jsonb_build_array(true, 25.5) $$);
SELECT upgrade_check.expect('the webhook endpoint paused before the update got the orders appended after it',
    format($$ SELECT jsonb_agg(e.global_position ORDER BY e.global_position)
                FROM eventstore.webhook_deliveries d JOIN eventstore.events e USING (event_id)
               WHERE d.tenant_id = 'default' AND e.global_position > %s::bigint $$, pg_temp.fact('max global_position')),
    format($$ SELECT jsonb_agg(global_position ORDER BY global_position) FROM eventstore.events
               WHERE tenant_id = 'default' AND event_type = 'OrderPlaced' AND global_position > %s::bigint $$,
           pg_temp.fact('max global_position')));
SELECT upgrade_check.expect('worker_status answers', $$ SELECT to_jsonb(jsonb_typeof(eventstore.worker_status())) $$, $$ SELECT '"object"'::jsonb $$);
SELECT upgrade_check.expect('feed_lag answers', $$ SELECT to_jsonb(jsonb_typeof(eventstore.feed_lag())) $$, $$ SELECT '"object"'::jsonb $$);

-- GDPR and API versions on the new version
SELECT upgrade_check.expect('get_api_usage counts the calls of before and after the update',
    $$ SELECT to_jsonb(sum(u.calls)) FROM eventstore.get_api_usage(current_date - 1, current_date + 1) u $$,
    $$ SELECT to_jsonb(count(*)) FROM eventstore.api_request_log WHERE tenant_id = 'default' $$);
SELECT upgrade_check.expect('redact_event works on an event appended after the update',
    $$ SELECT to_jsonb(eventstore.redact_event((SELECT event_id FROM eventstore.read_stream('account', 'a3')), 'erasure request #3')) $$,
    $$ SELECT 'true'::jsonb $$);
SELECT upgrade_check.expect('a redacted payload reads as redacted',
    $$ SELECT (SELECT e.payload FROM eventstore.read_stream('account', 'a3') e) $$, $$ SELECT '{"redacted": true}'::jsonb $$);
SELECT upgrade_check.expect('a new API version registers beside the old ones, the active one stays',
    $$ SELECT jsonb_build_array(upgrade_check.error_of($e$ SELECT eventstore.register_api_version('2025-01-01', '2025-01-01') $e$),
                                eventstore.get_active_api_version() -> 'version') $$,
    $$ SELECT jsonb_build_array('no error', (SELECT before -> 'version' FROM upgrade_check.answers
                                             WHERE name = 'get_active_api_version (tenant default)')) $$);

-- the roles granted access before the update keep it
SET ROLE upgrade_writer;
SELECT upgrade_check.expect('a writer of before the update still appends',
    $$ SELECT to_jsonb(a.aggregate_version) FROM eventstore.append_event('account', 'w1', 'Opened', '{"owner": "W"}') a $$,
    $$ SELECT '1'::jsonb $$);
RESET ROLE;
SET ROLE upgrade_reader;
SELECT upgrade_check.expect('a reader of before the update still reads and still cannot append',
    $$ SELECT jsonb_build_array((SELECT count(*) FROM eventstore.read_stream('account', 'w1')),
                                left(upgrade_check.error_of($e$ SELECT eventstore.append_event('account', 'w1', 'Closed', '{}') $e$), 5)) $$,
    $$ SELECT '[1, "42501"]'::jsonb $$);
RESET ROLE;
