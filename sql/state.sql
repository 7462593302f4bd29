-- eventstore: aggregate state, snapshots, event schemas, upcasters, redactions.
-- Definitions are per tenant like the events they describe.

CREATE TABLE eventstore.aggregates (
    tenant_id       text        NOT NULL,
    aggregate_type  text        NOT NULL,
    initial_state   jsonb       NOT NULL DEFAULT '{}',
    snapshot_every  int         NOT NULL DEFAULT 100 CHECK (snapshot_every > 0),
    keep_snapshots  int         NOT NULL DEFAULT 3 CHECK (keep_snapshots > 0),
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, aggregate_type)
);
COMMENT ON TABLE eventstore.aggregates IS 'Aggregate types with their initial state and snapshot policy.';

-- One reducer per event type of an aggregate type: a declarative rule, or a SQL function
-- (state jsonb, event eventstore.event) -> jsonb. Without one, the payload is merge-patched in.
CREATE TABLE eventstore.reducers (
    tenant_id       text        NOT NULL,
    aggregate_type  text        NOT NULL,
    event_type      text        NOT NULL,
    rule            jsonb,
    handler         regprocedure,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    -- the role that defined it: a handler runs as this role, in a security-restricted operation
    run_as          oid,
    PRIMARY KEY (tenant_id, aggregate_type, event_type),
    CHECK ((rule IS NULL) <> (handler IS NULL))
);

CREATE TABLE eventstore.snapshots (
    tenant_id       text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    version         bigint      NOT NULL,
    state           jsonb,
    -- the reducers a snapshot was made with; a snapshot of other reducers is ignored
    reducer_hash    text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, aggregate_type, aggregate_id, version)
);

CREATE TABLE eventstore.event_schemas (
    tenant_id       text        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  int         NOT NULL CHECK (schema_version > 0),
    json_schema     jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, event_type, schema_version)
);

-- One step of an upcaster chain: payloads of from_version become to_version.
CREATE TABLE eventstore.upcasters (
    tenant_id       text        NOT NULL,
    event_type      text        NOT NULL,
    from_version    int         NOT NULL CHECK (from_version > 0),
    to_version      int         NOT NULL,
    transform       jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, event_type, from_version),
    CHECK (to_version > from_version)
);

-- Who erased which event's payload, when and why (GDPR). The event keeps its identity.
CREATE TABLE eventstore.redactions (
    redaction_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text        NOT NULL,
    event_id        uuid        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    reason          text        NOT NULL,
    -- the calling role, and the JWT subject when the call came through PostgREST
    redacted_by     text        NOT NULL,
    jwt_sub         text,
    redacted_at     timestamptz NOT NULL DEFAULT statement_timestamp()
);
CREATE INDEX redactions_event_idx ON eventstore.redactions (tenant_id, event_id);

CREATE TYPE eventstore.aggregate_state AS (
    aggregate_type   text,
    aggregate_id     text,
    version          bigint,
    state            jsonb,
    updated_at       timestamptz,
    snapshot_version bigint
);

SELECT pg_catalog.pg_extension_config_dump('eventstore.aggregates', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.reducers', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.snapshots', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.event_schemas', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.upcasters', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.redactions', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.redactions_redaction_id_seq', '');
