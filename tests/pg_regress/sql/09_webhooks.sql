-- Webhooks: endpoints, the queue filled by appends, secrets and signatures.
-- This database is not the one the background worker serves, so nothing is ever sent: the
-- deliveries stay queued. Delivery itself is exercised by tests/client/test_webhooks.py.
-- Secrets, ids and times are random or moving, so only their shape is shown.
SET client_min_messages = warning;
-- fails() (tests/pg_regress/setup.sql), with the random ids in the message masked
CREATE FUNCTION pg_temp.fails_masked(statement text) RETURNS text LANGUAGE sql AS $f$
    SELECT regexp_replace(fails(statement), '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<id>', 'g')
$f$;

-- signatures: the known answer of the Standard Webhooks test suite; the prefix is optional
SELECT eventstore.sign_webhook('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, '{"test": 2432232314}');
SELECT eventstore.sign_webhook('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, '{"test": 2432232314}');
-- anything else changes it: the id, the timestamp, the body
SELECT eventstore.sign_webhook('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265331, '{"test": 2432232314}');
SELECT eventstore.sign_webhook('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, '{"test":2432232314}');
SELECT eventstore.sign_webhook(NULL, 'msg_1', 1, '{}') IS NULL AS strict;
SELECT fails($$SELECT eventstore.sign_webhook('whsec_!!!', 'msg_1', 1, '{}')$$);
SELECT fails($$SELECT eventstore.sign_webhook('whsec_', 'msg_1', 1, '{}')$$);

-- endpoints: checked when created
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('ftp://example.com/hook')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('example.com/hook')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('http:///hook')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('http://user:secret@example.com/')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('http://example.com:99999/')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('http://10.0.0.1/hook')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('http://169.254.169.254/latest/meta-data')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('http://192.168.0.1/')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('http://[::1]:8080/')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint(NULL)$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('https://example.com/hook', event_types => '{}')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('https://example.com/hook', aggregate_types => '{}')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('https://example.com/hook', event_types => '{""}')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('https://example.com/hook', retry_schedule => '{}')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('https://example.com/hook', retry_schedule => '{0,-5}')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('https://example.com/hook', retry_schedule => '{0,604801}')$$);
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('https://example.com/hook', rate_limit_per_second => 0)$$);
SELECT count(*) AS endpoints FROM eventstore.webhook_endpoints;

-- created: a random id and a secret of 'whsec_' + base64 of 24 random bytes
SELECT endpoint_id AS all_id, secret AS all_secret
  FROM eventstore.create_webhook_endpoint('https://example.com/all', description => 'everything') \gset
SELECT endpoint_id AS orders_id
  FROM eventstore.create_webhook_endpoint('https://example.com/orders', aggregate_types => ARRAY['order'],
       retry_schedule => '{0,1,1,1}', rate_limit_per_second => 5) \gset
SELECT endpoint_id AS paid_id
  FROM eventstore.create_webhook_endpoint('https://example.com/paid', event_types => ARRAY['Paid'], description => 'paid only') \gset
SELECT left(:'all_secret', 6) AS prefix, length(:'all_secret') AS length,
       length(decode(substr(:'all_secret', 7), 'base64')) AS key_bytes;
SELECT url, description, event_types, aggregate_types, retry_schedule, rate_limit_per_second, enabled, tenant_id,
       secret LIKE 'whsec_%' AS has_secret, previous_secret
  FROM eventstore.webhook_endpoints ORDER BY url;

-- appends queue one delivery per matching enabled endpoint, in the appending transaction
SELECT count(*) FROM eventstore.append_event('order', 'o-1', 'Placed', '{"total": 10}', '{"source": "regress"}');
SELECT count(*) FROM eventstore.append_events('order', 'o-1', '[{"event_type": "Paid", "payload": {"total": 10}}, {"event_type": "Shipped", "payload": {}}]');
SELECT count(*) FROM eventstore.append_event('invoice', 'i-1', 'Paid', '{"total": 10}');
BEGIN;
SELECT count(*) FROM eventstore.append_event('order', 'o-2', 'Placed', '{}');
SELECT count(*) AS queued_inside FROM eventstore.webhook_deliveries;
ROLLBACK;
SELECT w.url, d.global_position, d.event_type, d.status, d.attempts, d.last_status_code, d.delivered_at
  FROM eventstore.webhook_deliveries d JOIN eventstore.webhook_endpoints w USING (endpoint_id)
 ORDER BY w.url, d.transaction_id, d.global_position;

-- the frozen body: type, RFC 3339 timestamp, the event; the webhook-id: msg_ and the delivery's id
SELECT d.global_position, d.body::jsonb #- '{data,event_id}' #- '{timestamp}' AS body,
       (d.body::jsonb ->> 'timestamp') ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$' AS rfc3339,
       (d.body::jsonb ->> 'timestamp')::timestamptz = e.recorded_at AS recorded_at,
       (d.body::jsonb #>> '{data,event_id}')::uuid = e.event_id AS event_id,
       d.message_id = 'msg_' || replace(d.delivery_id::text, '-', '') AS message_id
  FROM eventstore.webhook_deliveries d JOIN eventstore.events e USING (event_id)
 WHERE d.endpoint_id = :'all_id' ORDER BY d.global_position;
SELECT count(DISTINCT message_id) AS message_ids, count(*) AS deliveries FROM eventstore.webhook_deliveries;

-- queue_event_for_webhooks: only endpoints that have not got the event yet
SELECT eventstore.queue_event_for_webhooks((SELECT event_id FROM eventstore.events WHERE global_position = 1));
SELECT endpoint_id AS late_id FROM eventstore.create_webhook_endpoint('https://example.com/late') \gset
SELECT eventstore.queue_event_for_webhooks((SELECT event_id FROM eventstore.events WHERE global_position = 1));
SELECT eventstore.queue_event_for_webhooks((SELECT event_id FROM eventstore.events WHERE global_position = 1));
SELECT global_position, event_type FROM eventstore.webhook_deliveries WHERE endpoint_id = :'late_id' ORDER BY global_position;
SELECT fails($$SELECT eventstore.queue_event_for_webhooks('00000000-0000-0000-0000-000000000000')$$);
SELECT fails($$SELECT eventstore.queue_event_for_webhooks(NULL)$$);

-- disabled endpoints get nothing queued; enabling does not queue the past
SELECT eventstore.disable_webhook_endpoint(:'late_id', 'maintenance');
SELECT eventstore.disable_webhook_endpoint(:'paid_id');
SELECT url, enabled, disabled_reason, disabled_at IS NOT NULL AS disabled_at FROM eventstore.webhook_endpoints ORDER BY url;
SELECT count(*) FROM eventstore.append_event('invoice', 'i-1', 'Paid', '{"total": 5}');
SELECT eventstore.enable_webhook_endpoint(:'late_id');
SELECT w.url, count(d.*) AS deliveries FROM eventstore.webhook_endpoints w LEFT JOIN eventstore.webhook_deliveries d USING (endpoint_id)
 GROUP BY w.url ORDER BY w.url;
SELECT url, enabled, disabled_reason, disabled_at IS NOT NULL AS disabled_at FROM eventstore.webhook_endpoints ORDER BY url;

-- rotation: a new secret; the old one signs too until the grace period ends
SELECT eventstore.rotate_webhook_secret(:'all_id') AS new_secret \gset
SELECT left(:'new_secret', 6) AS prefix, length(decode(substr(:'new_secret', 7), 'base64')) AS key_bytes,
       :'new_secret' <> :'all_secret' AS changed;
SELECT secret = :'new_secret' AS secret_is_new, previous_secret = :'all_secret' AS previous_is_old,
       previous_secret_until - updated_at = interval '24 hours' AS default_grace
  FROM eventstore.webhook_endpoints WHERE endpoint_id = :'all_id';
SELECT eventstore.rotate_webhook_secret(:'all_id', '5 minutes') <> :'new_secret' AS changed_again;
SELECT previous_secret = :'new_secret' AS previous_is_the_last, previous_secret_until - updated_at = interval '5 minutes' AS grace
  FROM eventstore.webhook_endpoints WHERE endpoint_id = :'all_id';
SELECT fails($$SELECT eventstore.rotate_webhook_secret('00000000-0000-0000-0000-000000000000')$$);
SELECT fails($$SELECT eventstore.rotate_webhook_secret(NULL)$$);
SELECT fails(format('SELECT eventstore.rotate_webhook_secret(%L, NULL)', :'all_id'));

-- retry and recover (nothing failed yet: the worker does not serve this database)
SELECT eventstore.retry_webhook_delivery((SELECT delivery_id FROM eventstore.webhook_deliveries WHERE endpoint_id = :'all_id' AND global_position = 1)) AS retried;
UPDATE eventstore.webhook_deliveries SET status = 'dead', attempts = 4, last_status_code = 500
 WHERE endpoint_id = :'orders_id' AND global_position <= 2;
UPDATE eventstore.webhook_deliveries SET status = 'succeeded', attempts = 1, last_status_code = 200, delivered_at = now()
 WHERE endpoint_id = :'orders_id' AND global_position = 3;
SELECT eventstore.retry_webhook_delivery((SELECT delivery_id FROM eventstore.webhook_deliveries WHERE endpoint_id = :'orders_id' AND global_position = 3)) AS retried_delivered;
SELECT eventstore.retry_webhook_delivery((SELECT delivery_id FROM eventstore.webhook_deliveries WHERE endpoint_id = :'orders_id' AND global_position = 1)) AS retried_dead;
SELECT global_position, status, attempts FROM eventstore.webhook_deliveries WHERE endpoint_id = :'orders_id' ORDER BY global_position;
UPDATE eventstore.webhook_endpoints SET enabled = false, disabled_reason = 'the receiver answered 410 Gone' WHERE endpoint_id = :'orders_id';
SELECT eventstore.recover_webhook_endpoint(:'orders_id', now() + interval '1 hour') AS recovered_since_later;
SELECT eventstore.recover_webhook_endpoint(:'orders_id', now() - interval '1 hour') AS recovered;
SELECT url, enabled, disabled_reason FROM eventstore.webhook_endpoints WHERE endpoint_id = :'orders_id';
SELECT global_position, status, attempts FROM eventstore.webhook_deliveries WHERE endpoint_id = :'orders_id' ORDER BY global_position;
SELECT fails($$SELECT eventstore.retry_webhook_delivery('00000000-0000-0000-0000-000000000000')$$);
SELECT fails($$SELECT eventstore.retry_webhook_delivery(NULL)$$);
SELECT fails($$SELECT eventstore.recover_webhook_endpoint('00000000-0000-0000-0000-000000000000', now())$$);
SELECT fails(format('SELECT eventstore.recover_webhook_endpoint(%L, NULL)', :'orders_id'));
SELECT fails($$SELECT eventstore.enable_webhook_endpoint('00000000-0000-0000-0000-000000000000')$$);
SELECT fails($$SELECT eventstore.disable_webhook_endpoint('00000000-0000-0000-0000-000000000000')$$);

-- statistics of the tenant's deliveries and attempts (none attempted here)
SELECT s - 'since' - 'endpoints' AS stats, jsonb_array_length(s -> 'endpoints') AS endpoints
  FROM eventstore.get_webhook_delivery_stats() AS s;
SELECT e ->> 'url' AS url, e -> 'enabled' AS enabled, e -> 'pending' AS pending, e -> 'dead' AS dead
  FROM eventstore.get_webhook_delivery_stats() AS s, jsonb_array_elements(s -> 'endpoints') AS e ORDER BY 1;
SELECT s -> 'deliveries' AS deliveries FROM eventstore.get_webhook_delivery_stats(now() + interval '1 minute') AS s;
SELECT fails($$SELECT eventstore.get_webhook_delivery_stats(NULL)$$);

-- another tenant sees and touches none of it, and its events go to its own endpoints only
SET eventstore.tenant_id = 'other';
SELECT pg_temp.fails_masked(format('SELECT eventstore.rotate_webhook_secret(%L)', :'all_id'));
SELECT pg_temp.fails_masked(format('SELECT eventstore.disable_webhook_endpoint(%L)', :'all_id'));
SELECT pg_temp.fails_masked(format('SELECT eventstore.recover_webhook_endpoint(%L, now())', :'all_id'));
SELECT pg_temp.fails_masked(format('SELECT eventstore.retry_webhook_delivery(%L)',
    (SELECT delivery_id FROM eventstore.webhook_deliveries WHERE endpoint_id = :'all_id' AND global_position = 1)));
SELECT pg_temp.fails_masked(format('SELECT eventstore.queue_event_for_webhooks(%L)',
    (SELECT event_id FROM eventstore.events WHERE global_position = 1)));
SELECT s -> 'deliveries' AS deliveries, s -> 'endpoints' AS endpoints FROM eventstore.get_webhook_delivery_stats() AS s;
SELECT count(*) FROM eventstore.create_webhook_endpoint('https://example.org/other');
SELECT count(*) FROM eventstore.append_event('order', 'o-1', 'Placed', '{}');
RESET eventstore.tenant_id;
SELECT d.tenant_id, w.url, d.global_position, d.event_type
  FROM eventstore.webhook_deliveries d JOIN eventstore.webhook_endpoints w USING (endpoint_id)
 WHERE d.tenant_id = 'other' OR w.tenant_id = 'other' ORDER BY d.global_position, w.url;

-- privileges: managing webhooks is for admins; signing is for everyone
CREATE ROLE regress_es_wh_writer;
SELECT eventstore.grant_access('regress_es_wh_writer', 'writer');
SET ROLE regress_es_wh_writer;
SELECT fails($$SELECT * FROM eventstore.create_webhook_endpoint('https://example.com/x')$$);
SELECT fails($$SELECT eventstore.get_webhook_delivery_stats()$$);
SELECT eventstore.sign_webhook('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, '{"test": 2432232314}');
-- a writer's append queues deliveries all the same
SELECT count(*) FROM eventstore.append_event('order', 'o-3', 'Placed', '{}');
-- row-level security: a role sees its tenant's endpoints and deliveries only
SET eventstore.tenant_id = 'other';
SELECT tenant_id, url FROM eventstore.webhook_endpoints ORDER BY url;
SELECT tenant_id, global_position, event_type FROM eventstore.webhook_deliveries ORDER BY global_position;
RESET eventstore.tenant_id;
SELECT count(*) AS default_tenant_endpoints FROM eventstore.webhook_endpoints;
RESET ROLE;
SELECT w.url, d.event_type FROM eventstore.webhook_deliveries d JOIN eventstore.webhook_endpoints w USING (endpoint_id)
 JOIN eventstore.events e USING (event_id) WHERE e.aggregate_id = 'o-3' ORDER BY w.url;
DROP OWNED BY regress_es_wh_writer;
DROP ROLE regress_es_wh_writer;
