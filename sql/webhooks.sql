-- eventstore: webhooks in the Standard Webhooks format. Ordinary logged
-- tables: a crash loses nothing, delivery is at least once.

CREATE TABLE eventstore.webhook_endpoints (
    endpoint_id          uuid         PRIMARY KEY,
    tenant_id            text         NOT NULL,
    url                  text         NOT NULL,
    description          text,
    event_types          text[],
    aggregate_types      text[],
    secret               text         NOT NULL,
    -- during a rotation grace period, deliveries carry a signature with the old secret too
    previous_secret      text,
    previous_secret_until timestamptz,
    retry_schedule       int[],
    rate_limit_per_second int,
    enabled              boolean      NOT NULL DEFAULT true,
    disabled_reason      text,
    disabled_at          timestamptz,
    created_at           timestamptz  NOT NULL DEFAULT statement_timestamp(),
    updated_at           timestamptz  NOT NULL DEFAULT statement_timestamp()
);
CREATE INDEX webhook_endpoints_tenant_idx ON eventstore.webhook_endpoints (tenant_id);

-- A domain, not a CHECK on the table: PostgreSQL parses a table's CHECK expressions again for
-- every statement that inserts, and every append that queues a delivery is one; a domain's
-- check is kept in the type cache.
CREATE DOMAIN eventstore.webhook_delivery_status AS text
    CONSTRAINT webhook_delivery_status_check CHECK (VALUE IN ('pending', 'delivering', 'succeeded', 'dead'));

CREATE TABLE eventstore.webhook_deliveries (
    delivery_id          uuid         PRIMARY KEY,
    tenant_id            text         NOT NULL,
    -- no foreign key: its check would lock the endpoint's row in every appending transaction
    -- (all of them sharing it: a multixact each); webhook_endpoints_cascade deletes with it
    endpoint_id          uuid         NOT NULL,
    event_id             uuid         NOT NULL,
    event_type           text         NOT NULL,
    -- the event's place in the feed: deliveries to one endpoint go out in this order
    transaction_id       xid8         NOT NULL,
    global_position      bigint       NOT NULL,
    -- the `webhook-id` header, the same on every attempt
    message_id           text         NOT NULL,
    -- frozen at queue time
    body                 text         NOT NULL,
    status               eventstore.webhook_delivery_status NOT NULL DEFAULT 'pending',
    attempts             int          NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz  NOT NULL DEFAULT statement_timestamp(),
    lease_until          timestamptz,
    last_status_code     int,
    last_error           text,
    created_at           timestamptz  NOT NULL DEFAULT statement_timestamp(),
    delivered_at         timestamptz,
    UNIQUE (endpoint_id, event_id)
);
-- What ON DELETE CASCADE did: an endpoint's deliveries go with it.
CREATE FUNCTION eventstore._webhook_endpoints_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM eventstore.webhook_deliveries d USING deleted_endpoints o WHERE d.endpoint_id = o.endpoint_id;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_endpoints_cascade AFTER DELETE ON eventstore.webhook_endpoints
    REFERENCING OLD TABLE AS deleted_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore._webhook_endpoints_deleted();
-- the head of each endpoint's queue
CREATE INDEX webhook_deliveries_queue_idx ON eventstore.webhook_deliveries
    (endpoint_id, transaction_id, global_position) WHERE status IN ('pending', 'delivering');
CREATE INDEX webhook_deliveries_tenant_idx ON eventstore.webhook_deliveries (tenant_id, created_at);

CREATE TABLE eventstore.webhook_attempts (
    attempt_id           bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            text         NOT NULL,
    delivery_id          uuid         NOT NULL REFERENCES eventstore.webhook_deliveries ON DELETE CASCADE,
    endpoint_id          uuid         NOT NULL,
    attempt              int          NOT NULL,
    -- 0 for network errors and timeouts
    status_code          int          NOT NULL,
    duration_ms          float8       NOT NULL,
    response_body        text,
    error                text,
    attempted_at         timestamptz  NOT NULL DEFAULT statement_timestamp()
);
CREATE INDEX webhook_attempts_delivery_idx ON eventstore.webhook_attempts (delivery_id, attempt);
CREATE INDEX webhook_attempts_tenant_idx ON eventstore.webhook_attempts (tenant_id, attempted_at);

SELECT pg_catalog.pg_extension_config_dump('eventstore.webhook_endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.webhook_deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.webhook_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.webhook_attempts_attempt_id_seq', '');
