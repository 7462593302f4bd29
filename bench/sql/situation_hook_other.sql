-- Situation: one webhook endpoint exists, in another tenant, for another event type. Nothing
-- the benchmark appends matches it, so no delivery is queued and the worker delivers nothing.
SET eventstore.tenant_id = 'other';
SELECT count(*) FROM eventstore.create_webhook_endpoint('http://127.0.0.1:@HOOK_PORT@/other',
    event_types => ARRAY['Shipped']);
RESET eventstore.tenant_id;
ANALYZE eventstore.webhook_endpoints;
