-- eventstore: subscriptions and projections.
-- Checkpoints are feed cursors, kept as (transaction id, position) so they compare as rows.

CREATE TABLE eventstore.subscriptions (
    tenant_id            text        NOT NULL,
    name                 text        NOT NULL,
    event_types          text[],
    aggregate_types      text[],
    checkpoint_xid       xid8        NOT NULL DEFAULT '0',
    checkpoint_position  bigint      NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at           timestamptz NOT NULL DEFAULT statement_timestamp(),
    -- members of a consumer group split the streams (member 0's checkpoint is the one above)
    consumer_group_size  int         NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, name)
);

-- The checkpoints of consumer group members 1 .. size - 1 of a subscription.
CREATE TABLE eventstore.subscription_members (
    tenant_id            text        NOT NULL,
    name                 text        NOT NULL,
    member               int         NOT NULL,
    checkpoint_xid       xid8        NOT NULL DEFAULT '0',
    checkpoint_position  bigint      NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, name, member),
    FOREIGN KEY (tenant_id, name) REFERENCES eventstore.subscriptions (tenant_id, name) ON DELETE CASCADE
);

CREATE TABLE eventstore.projections (
    tenant_id            text         NOT NULL,
    name                 text         NOT NULL,
    handler              regprocedure NOT NULL,
    reset_handler        regprocedure,
    event_types          text[],
    mode                 text         NOT NULL CHECK (mode IN ('async', 'inline')),
    -- async handlers run in the worker as this role (the one that registered the projection)
    run_as               oid          NOT NULL,
    checkpoint_xid       xid8         NOT NULL DEFAULT '0',
    checkpoint_position  bigint       NOT NULL DEFAULT 0,
    events_applied       bigint       NOT NULL DEFAULT 0,
    -- the event that keeps failing, how often it failed, and why
    failing_event_id     uuid,
    attempts             int          NOT NULL DEFAULT 0,
    last_error           text,
    last_error_at        timestamptz,
    created_at           timestamptz  NOT NULL DEFAULT statement_timestamp(),
    updated_at           timestamptz  NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, name)
);

-- Events an async projection gave up on after eventstore.projection_max_attempts failures.
CREATE TABLE eventstore.parked_events (
    tenant_id            text         NOT NULL,
    projection           text         NOT NULL,
    event_id             uuid         NOT NULL,
    global_position      bigint       NOT NULL,
    error                text         NOT NULL,
    attempts             int          NOT NULL,
    parked_at            timestamptz  NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, projection, event_id)
);

SELECT pg_catalog.pg_extension_config_dump('eventstore.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.subscription_members', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.projections', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.parked_events', '');

-- The per-database secret behind each tenant's notification channel
-- (eventstore.notification_channel()): read by the extension only. Registered for dumps
-- without its row: a restored database makes a secret of its own (and new channel names).
CREATE TABLE eventstore.secrets (
    name    text  PRIMARY KEY,
    secret  bytea NOT NULL
);
-- gen_random_uuid() draws from pg_strong_random(): two of them are 244 random bits
INSERT INTO eventstore.secrets (name, secret)
VALUES ('notification_channel', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
SELECT pg_catalog.pg_extension_config_dump('eventstore.secrets', 'WHERE false');

