-- eventstore: tables, types and indexes of the event store core.
-- Loaded first (bootstrap); policies and grants that need the Rust functions come in security.sql.

-- Positions are drawn only after the expected-version check has passed, so a losing writer
-- leaves no gap behind it.
CREATE SEQUENCE eventstore.events_global_position_seq AS bigint;

CREATE TABLE eventstore.streams (
    tenant_id       text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    version         bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    deleted_at      timestamptz,
    -- soft delete hides every version up to this one; a later append numbers on from `version`
    hidden_through  bigint      NOT NULL DEFAULT 0,
    -- hard delete: a tombstone, every later append fails
    hard_deleted    boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, aggregate_type, aggregate_id)
);
COMMENT ON TABLE eventstore.streams IS 'One row per stream: its current version; the row lock serializes writers of that stream only.';

CREATE TABLE eventstore.events (
    global_position   bigint      PRIMARY KEY,
    event_id          uuid        NOT NULL UNIQUE,
    tenant_id         text        NOT NULL,
    aggregate_type    text        NOT NULL,
    aggregate_id      text        NOT NULL,
    aggregate_version bigint      NOT NULL,
    event_type        text        NOT NULL,
    schema_version    int         NOT NULL DEFAULT 1,
    payload           jsonb       NOT NULL,
    metadata          jsonb       NOT NULL DEFAULT '{}',
    correlation_id    uuid,
    causation_id      uuid,
    actor             text,
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL,
    transaction_id    xid8        NOT NULL,
    redacted_at       timestamptz,
    UNIQUE (tenant_id, aggregate_type, aggregate_id, aggregate_version)
);
ALTER SEQUENCE eventstore.events_global_position_seq OWNED BY eventstore.events.global_position;
COMMENT ON TABLE eventstore.events IS 'The append-only event log. Write through eventstore.append_event(s) only.';

-- The global feed reads in (transaction_id, global_position) order per tenant.
CREATE INDEX events_feed_idx ON eventstore.events (tenant_id, transaction_id, global_position);

-- What an append returns for each event written (or found again, on an idempotent re-send).
CREATE TYPE eventstore.appended AS (
    event_id          uuid,
    aggregate_version bigint,
    global_position   bigint,
    recorded_at       timestamptz
);

-- One event as read back: the columns of eventstore.events, after upcasting.
CREATE TYPE eventstore.event AS (
    global_position   bigint,
    event_id          uuid,
    tenant_id         text,
    aggregate_type    text,
    aggregate_id      text,
    aggregate_version bigint,
    event_type        text,
    schema_version    int,
    payload           jsonb,
    metadata          jsonb,
    correlation_id    uuid,
    causation_id      uuid,
    actor             text,
    occurred_at       timestamptz,
    recorded_at       timestamptz,
    transaction_id    xid8,
    redacted_at       timestamptz
);

-- An event of the global feed, with the cursor to pass as `after` to continue behind it.
CREATE TYPE eventstore.feed_event AS (
    global_position   bigint,
    event_id          uuid,
    tenant_id         text,
    aggregate_type    text,
    aggregate_id      text,
    aggregate_version bigint,
    event_type        text,
    schema_version    int,
    payload           jsonb,
    metadata          jsonb,
    correlation_id    uuid,
    causation_id      uuid,
    actor             text,
    occurred_at       timestamptz,
    recorded_at       timestamptz,
    transaction_id    xid8,
    redacted_at       timestamptz,
    cursor            text
);

-- The log is append-only: no UPDATE, DELETE or TRUNCATE, whoever asks. The one exception is
-- the redaction of a payload (eventstore.redact_event), which sets the superuser-only setting
-- eventstore.redacting for its own UPDATE.
CREATE FUNCTION eventstore._reject_event_mutation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('eventstore.redacting', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'eventstore.events is append-only: % is not allowed', TG_OP
        USING ERRCODE = '42501',
              HINT = 'Append a compensating event instead.';
END
$$;
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON eventstore.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore._reject_event_mutation();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON eventstore.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore._reject_event_mutation();

-- Roles pinned to one tenant (grant_access(role, access, tenant => ...)): for a session whose
-- session or current user is pinned, the tenant is the pinned one, whatever it sets. Read
-- only by the extension itself.
CREATE TABLE eventstore.pinned_roles (
    role_id    oid         PRIMARY KEY,
    tenant_id  text        NOT NULL,
    pinned_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    pinned_by  text        NOT NULL DEFAULT current_user
);

-- pg_dump keeps the rows of extension tables registered here.
SELECT pg_catalog.pg_extension_config_dump('eventstore.streams', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.events', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.events_global_position_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.pinned_roles', '');
