-- Situation: every appended event matches one enabled endpoint, so every append queues one
-- delivery row. The endpoint is the benchmark's receiver on 127.0.0.1 (answers 204 at once),
-- rate-limited to 1 delivery/s so that the worker's deliveries stay out of the measurement: what
-- is measured is the appending side (queueing and its delivery row), not delivery.
SELECT count(*) FROM eventstore.create_webhook_endpoint('http://127.0.0.1:@HOOK_PORT@/match',
    event_types => ARRAY['Deposited'], rate_limit_per_second => 1);
ANALYZE eventstore.webhook_endpoints;
