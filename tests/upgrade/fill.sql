-- Fills a fresh 0.1.0 install with one of everything eventstore keeps, in two tenants, through
-- the 0.1.0 SQL surface (tests/upgrade/run.sh; the worker serves this database). The library
-- loaded is this checkout's: where its functions write columns that 0.2.0 added, the rows are
-- written as 0.1.0 wrote them instead.
SET client_min_messages = warning;

-- user code the definitions point to
CREATE SCHEMA app;
CREATE TABLE app.deposits (account text PRIMARY KEY, total numeric NOT NULL, events int NOT NULL);
CREATE TABLE app.orders_seen (tenant_id text, global_position bigint, PRIMARY KEY (tenant_id, global_position));
CREATE FUNCTION app.apply_deposit(e eventstore.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO app.deposits AS d VALUES (e.aggregate_id, (e.payload ->> 'amount')::numeric, 1)
    ON CONFLICT (account) DO UPDATE SET total = d.total + excluded.total, events = d.events + 1 $$;
CREATE FUNCTION app.reset_deposits() RETURNS void LANGUAGE sql AS $$ DELETE FROM app.deposits $$;
CREATE FUNCTION app.see_order(e eventstore.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO app.orders_seen VALUES (e.tenant_id, e.global_position) $$;
CREATE FUNCTION app.audit(state jsonb, e eventstore.event) RETURNS jsonb LANGUAGE sql AS $$
    SELECT state || jsonb_build_object('audits', coalesce((state ->> 'audits')::int, 0) + 1,
                                       'audited_at', e.aggregate_version) $$;
CREATE FUNCTION app.get_order(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('id', payload -> 'id', 'total', jsonb_build_object('amount', 99.5, 'currency', 'EUR')) $$;

-- API versions (global to the database): two versions, a route, a change, a switch, a deprecation
SELECT eventstore.register_api_version('2024-01-01', '2024-01-01');
SELECT eventstore.register_api_version('2024-06-01', '2024-06-01', min_client_version => '1.10.0',
                                       docs_url => 'https://docs.example.com/2024-06-01');
SELECT eventstore.register_api_route('get_order', '2024-06-01', 'app.get_order(jsonb)');
SELECT eventstore.register_api_change('2024-06-01', 'get_order', 'total became an object',
    response_transform => '[{"op": "rename", "from": "total.amount", "to": "total_amount"}, {"op": "remove", "path": "total"}]');
SELECT eventstore.switch_api_version('2024-06-01') IS NOT NULL AS switched;
SELECT eventstore.deprecate_api_version('2024-01-01', sunset_at => '2999-01-01') IS NOT NULL AS deprecated;
SELECT eventstore.route_api_call('get_order', '{"id": 7}') -> 'success' AS answered;
SELECT eventstore.route_api_call('get_order', '{"id": 8}', requested_version => '2024-01-01') -> 'success' AS answered;

-- the same definitions in both tenants
CREATE FUNCTION pg_temp.define() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eventstore.define_aggregate('account', '{"balance": 0}', snapshot_every => 3, keep_snapshots => 2);
    -- the rows 0.1.0's define_reducer wrote (this library's define_reducer writes 0.2.0's
    -- columns, which a 0.1.0 schema does not have)
    INSERT INTO eventstore.reducers (tenant_id, aggregate_type, event_type, rule, handler) VALUES
        (eventstore.current_tenant(), 'account', 'Deposited', '[{"op": "increment", "path": "balance", "from": "amount"}]', NULL),
        (eventstore.current_tenant(), 'account', 'Closed', '[{"op": "$delete"}]', NULL),
        (eventstore.current_tenant(), 'account', 'Audited', NULL, 'app.audit(jsonb, eventstore.event)');
    PERFORM eventstore.register_event_schema('Deposited', 1,
        '{"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}}');
    PERFORM eventstore.register_upcaster('Opened', 1, 2, '[{"op": "rename", "from": "owner", "to": "holder.name"}]');
    PERFORM eventstore.create_subscription('billing', event_types => ARRAY['OrderPlaced']);
    PERFORM eventstore.create_subscription('everything');
    PERFORM eventstore.register_projection('orders_seen', 'app.see_order(eventstore.event)',
                                           event_types => ARRAY['OrderPlaced'], mode => 'inline');
    PERFORM eventstore.create_webhook_endpoint('https://hooks.invalid/' || eventstore.current_tenant(),
        event_types => ARRAY['OrderPlaced'], description => 'orders', retry_schedule => '{3600}');
END
$$;

-- tenant default: two accounts (an automatic snapshot, a handler, an explicit snapshot), orders
-- (one soft-deleted, one hard-deleted), an async projection, redactions
SELECT pg_temp.define();
SELECT eventstore.register_projection('deposits', 'app.apply_deposit(eventstore.event)',
    event_types => ARRAY['Deposited'], mode => 'async', reset => 'app.reset_deposits()');
SELECT count(*) FROM eventstore.append_events('account', 'a1', '[
  {"event_type": "Opened", "payload": {"owner": "Ann"},
   "metadata": {"actor": "teller", "correlation_id": "6f1c3c1e-0c1a-4d7e-9a55-111111111111"}},
  {"event_type": "Deposited", "payload": {"amount": 10}, "event_id": "0190b6a0-0000-7000-8000-000000000001"},
  {"event_type": "Deposited", "payload": {"amount": 5.5}}]', expected_version => 0);
SELECT count(*) FROM eventstore.append_event('account', 'a1', 'Audited', '{}', expected_version => 3);
SELECT count(*) FROM eventstore.append_event('account', 'a1', 'Deposited', '{"amount": 7}');
SELECT count(*) FROM eventstore.append_events('account', 'a2', '[
  {"event_type": "Opened", "payload": {"owner": "Bob", "email": "bob@example.com"}},
  {"event_type": "Deposited", "payload": {"amount": 100}}]');
SELECT count(*) FROM eventstore.append_event('order', 'o1', 'OrderPlaced', '{"total": 99.5, "customer": {"email": "bob@example.com"}}');
SELECT count(*) FROM eventstore.append_event('order', 'o1', 'OrderShipped', '{}');
SELECT count(*) FROM eventstore.append_event('order', 'o2', 'OrderPlaced', '{"total": 1}');
SELECT eventstore.delete_stream('order', 'o2');
SELECT count(*) FROM eventstore.append_event('order', 'o3', 'OrderPlaced', '{"total": 2}');
SELECT eventstore.delete_stream('order', 'o3', hard => true);
SELECT eventstore.redact_subject('customer.email', 'bob@example.com', 'erasure request #1');
SELECT eventstore.redact_event((SELECT event_id FROM eventstore.read_stream('account', 'a2') WHERE aggregate_version = 1),
                               'erasure request #2');
SELECT eventstore.create_snapshot('account', 'a2');
SELECT eventstore.ack_subscription('everything', (SELECT cursor FROM eventstore.read_all() ORDER BY cursor OFFSET 2 LIMIT 1));
-- deliveries to this endpoint wait while it is disabled
SELECT eventstore.disable_webhook_endpoint(endpoint_id, 'paused by the upgrade test') FROM eventstore.webhook_endpoints;

-- tenant acme: the same ids, other events
SET eventstore.tenant_id = 'acme';
SELECT pg_temp.define();
SELECT count(*) FROM eventstore.append_events('account', 'a1', '[
  {"event_type": "Opened", "payload": {"owner": "Acme"}},
  {"event_type": "Deposited", "payload": {"amount": 1000}}]');
SELECT count(*) FROM eventstore.append_event('order', 'o1', 'OrderPlaced', '{"total": 5}');
SELECT count(*) FROM eventstore.append_event('account', 'a1', 'Deposited', '{"amount": 1}');
SELECT eventstore.ack_subscription('billing', (SELECT max(cursor) FROM eventstore.read_all()));
RESET eventstore.tenant_id;
