-- Downstream of the log: subscriptions, inline projections, registration checks.
-- This database is not the one the background worker serves, so async projections are refused;
-- the worker itself is exercised by tests/client/test_worker.py.
SET client_min_messages = warning;

SELECT count(*) FROM eventstore.append_events('order', 'o-1', '[{"event_type": "OrderPlaced", "payload": {"n": 1}}, {"event_type": "ItemAdded", "payload": {"n": 2}}]');
SELECT count(*) FROM eventstore.append_event('customer', 'c-1', 'CustomerRegistered', '{"n": 3}');
SELECT count(*) FROM eventstore.append_event('order', 'o-2', 'OrderPlaced', '{"n": 4}');

-- subscriptions start before the first event, or after the last one committed
SELECT eventstore.create_subscription('all');
SELECT eventstore.create_subscription('orders', aggregate_types => ARRAY['order']);
SELECT eventstore.create_subscription('placed', event_types => ARRAY['OrderPlaced', 'OrderShipped']);
SELECT eventstore.create_subscription('tail', start_from => 'end') = (SELECT max(cursor) FROM eventstore.read_all()) AS tail_starts_at_the_end;
SELECT tenant_id, name, event_types, aggregate_types FROM eventstore.subscriptions ORDER BY name;

-- polling reads after the checkpoint and does not move it
SELECT global_position, event_type, payload FROM eventstore.poll_subscription('all') ORDER BY cursor;
SELECT global_position FROM eventstore.poll_subscription('all', max_count => 2) ORDER BY cursor;
SELECT global_position FROM eventstore.poll_subscription('all', max_count => 2) ORDER BY cursor;
SELECT global_position, aggregate_type FROM eventstore.poll_subscription('orders') ORDER BY cursor;
SELECT global_position, event_type FROM eventstore.poll_subscription('placed') ORDER BY cursor;
SELECT count(*) AS tail_events FROM eventstore.poll_subscription('tail');

-- acknowledging moves the checkpoint forward, never back
CREATE TEMP TABLE seen AS SELECT * FROM eventstore.poll_subscription('all');
SELECT eventstore.ack_subscription('all', (SELECT cursor FROM seen ORDER BY cursor OFFSET 1 LIMIT 1)) AS moved;
SELECT global_position FROM eventstore.poll_subscription('all') ORDER BY cursor;
SELECT eventstore.ack_subscription('all', (SELECT min(cursor) FROM seen)) AS moved_back;
SELECT eventstore.ack_subscription('all', (SELECT cursor FROM seen ORDER BY cursor OFFSET 1 LIMIT 1)) AS moved_again;
SELECT global_position FROM eventstore.poll_subscription('all') ORDER BY cursor;
SELECT eventstore.ack_subscription('all', (SELECT max(cursor) FROM seen)) AS moved;
SELECT count(*) AS left_to_poll FROM eventstore.poll_subscription('all');

-- later events reach every subscription that asks for them
SELECT count(*) FROM eventstore.append_event('order', 'o-1', 'OrderShipped', '{"n": 5}');
SELECT global_position, event_type FROM eventstore.poll_subscription('all') ORDER BY cursor;
SELECT global_position, event_type FROM eventstore.poll_subscription('tail') ORDER BY cursor;
SELECT global_position, event_type FROM eventstore.poll_subscription('placed') ORDER BY cursor;

-- errors
SELECT fails($$SELECT eventstore.create_subscription('all')$$);
SELECT fails($$SELECT eventstore.create_subscription('mid', start_from => 'middle')$$);
SELECT fails($$SELECT eventstore.create_subscription('mid', start_from => NULL)$$);
SELECT fails($$SELECT eventstore.create_subscription('')$$);
SELECT fails($$SELECT * FROM eventstore.poll_subscription('nope')$$);
SELECT fails($$SELECT * FROM eventstore.poll_subscription('all', max_count => 0)$$);
SELECT fails($$SELECT eventstore.ack_subscription('nope', '0000000000000000-0000000000000000')$$);
SELECT fails($$SELECT eventstore.ack_subscription('all', 'yesterday')$$);
SELECT fails($$SELECT eventstore.ack_subscription('all', NULL)$$);
SELECT fails($$SELECT eventstore.drop_subscription('nope')$$);

-- another tenant: none of these subscriptions exist there, names are free
SET eventstore.tenant_id = 'other';
SELECT fails($$SELECT * FROM eventstore.poll_subscription('all')$$);
SELECT fails($$SELECT eventstore.ack_subscription('all', '0000000000000000-0000000000000000')$$);
SELECT fails($$SELECT eventstore.drop_subscription('all')$$);
SELECT eventstore.create_subscription('all');
SELECT count(*) AS other_tenant_events FROM eventstore.poll_subscription('all');
RESET eventstore.tenant_id;

SELECT eventstore.drop_subscription('tail');
SELECT fails($$SELECT * FROM eventstore.poll_subscription('tail')$$);
SELECT tenant_id, name FROM eventstore.subscriptions ORDER BY tenant_id, name;

-- projections: handlers (event eventstore.event), reset functions without arguments
CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL, events int NOT NULL);
CREATE FUNCTION apply_balance(e eventstore.event) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    IF (e.payload ->> 'amount')::bigint > 1000 THEN
        RAISE EXCEPTION 'amount % is over the limit', e.payload ->> 'amount'
            USING ERRCODE = 'check_violation', DETAIL = 'the limit is 1000';
    END IF;
    INSERT INTO public.balances AS b
    VALUES (e.aggregate_id, (e.payload ->> 'amount')::bigint * CASE e.event_type WHEN 'Withdrawn' THEN -1 ELSE 1 END, 1)
    ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance, events = b.events + 1;
END
$f$;
CREATE FUNCTION reset_balances() RETURNS void LANGUAGE sql AS $f$ DELETE FROM public.balances $f$;
CREATE FUNCTION takes_jsonb(e jsonb) RETURNS void LANGUAGE sql AS $f$ SELECT $f$;
CREATE FUNCTION takes_two(e eventstore.event, n int) RETURNS void LANGUAGE sql AS $f$ SELECT $f$;
CREATE FUNCTION returns_set(e eventstore.event) RETURNS SETOF int LANGUAGE sql AS $f$ SELECT 1 $f$;
CREATE PROCEDURE a_procedure(e eventstore.event) LANGUAGE sql AS $f$ SELECT $f$;

-- wrong handlers, modes and names: 22023; async needs the worker's database: 55000
SELECT fails($$SELECT eventstore.register_projection('p', 'takes_jsonb(jsonb)', mode => 'inline')$$);
SELECT fails($$SELECT eventstore.register_projection('p', 'takes_two(eventstore.event, int)', mode => 'inline')$$);
SELECT fails($$SELECT eventstore.register_projection('p', 'returns_set(eventstore.event)', mode => 'inline')$$);
SELECT fails($$SELECT eventstore.register_projection('p', 'a_procedure(eventstore.event)', mode => 'inline')$$);
SELECT fails($$SELECT eventstore.register_projection('p', 'apply_balance(eventstore.event)', mode => 'inline', reset => 'takes_jsonb(jsonb)')$$);
SELECT fails($$SELECT eventstore.register_projection('p', NULL, mode => 'inline')$$);
SELECT fails($$SELECT eventstore.register_projection('', 'apply_balance(eventstore.event)', mode => 'inline')$$);
SELECT fails($$SELECT eventstore.register_projection('p', 'apply_balance(eventstore.event)', mode => 'sync')$$);
SELECT fails($$SELECT eventstore.register_projection('p', 'apply_balance(eventstore.event)', mode => NULL)$$);
-- (the detail names the server's eventstore.database setting, which depends on the cluster)
SELECT split_part(fails($$SELECT eventstore.register_projection('p', 'apply_balance(eventstore.event)')$$), ' (', 1) AS async_here;
SELECT count(*) AS projections FROM eventstore.projections;
SELECT fails($$SELECT eventstore.rebuild_projection('p')$$);
SELECT fails($$SELECT eventstore.replay_parked_events('p')$$);

-- an inline projection runs in the appending transaction, from the next append on
SELECT eventstore.register_projection('balances', 'apply_balance(eventstore.event)',
    event_types => ARRAY['Deposited', 'Withdrawn'], mode => 'inline', reset => 'reset_balances()');
SELECT name, handler, reset_handler, event_types, mode FROM eventstore.projections ORDER BY name;
SELECT count(*) FROM eventstore.append_events('account', 'acc-1', '[{"event_type": "Deposited", "payload": {"amount": 100}}, {"event_type": "Withdrawn", "payload": {"amount": 30}}, {"event_type": "Noted", "payload": {"amount": 5}}]');
SELECT count(*) FROM eventstore.append_event('account', 'acc-2', 'Deposited', '{"amount": 7}');
SELECT * FROM balances ORDER BY account;
BEGIN;
SELECT count(*) FROM eventstore.append_event('account', 'acc-2', 'Deposited', '{"amount": 1}');
SELECT * FROM balances ORDER BY account;
ROLLBACK;
SELECT * FROM balances ORDER BY account;
SELECT eventstore.stream_version('account', 'acc-2');

-- a failing handler fails the append with its own error; nothing is written
SELECT fails($$SELECT eventstore.append_event('account', 'acc-3', 'Deposited', '{"amount": 5000}')$$) ~ '^23514 amount 5000 is over the limit \(the limit is 1000' AS handler_error;
SELECT fails($$SELECT eventstore.append_events('account', 'acc-1', '[{"event_type": "Deposited", "payload": {"amount": 1}}, {"event_type": "Deposited", "payload": {"amount": 5000}}]')$$) ~ '^23514 amount 5000 is over the limit' AS handler_error;
SELECT eventstore.stream_version('account', 'acc-3') AS acc3, eventstore.stream_version('account', 'acc-1') AS acc1;
SELECT * FROM balances ORDER BY account;

-- the status of an inline projection
SELECT name, mode, position, lag, attempts, last_error, parked FROM eventstore.projection_status() ORDER BY name;

-- rebuild: the reset function runs, every event of the types asked for is replayed
UPDATE balances SET balance = 0;
INSERT INTO balances VALUES ('ghost', 1, 1);
SELECT eventstore.rebuild_projection('balances');
SELECT * FROM balances ORDER BY account;
SELECT eventstore.replay_parked_events('balances');

-- another tenant neither sees nor runs this tenant's projections
SET eventstore.tenant_id = 'other';
SELECT count(*) FROM eventstore.append_event('account', 'acc-9', 'Deposited', '{"amount": 9}');
SELECT count(*) AS other_projections FROM eventstore.projection_status();
SELECT fails($$SELECT eventstore.rebuild_projection('balances')$$);
RESET eventstore.tenant_id;
SELECT * FROM balances ORDER BY account;

-- registering again replaces the definition
SELECT eventstore.register_projection('balances', 'apply_balance(eventstore.event)', mode => 'inline');
SELECT name, handler, reset_handler, event_types, mode FROM eventstore.projections ORDER BY name;

-- this database has no worker
SELECT eventstore.worker_status() - 'preloaded' AS worker;
