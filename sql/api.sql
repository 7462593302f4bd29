-- eventstore: API versioning. Versions, routes, changes and the active version
-- belong to the application (no tenant); the request log and its daily rollups are the
-- tenants' (RLS in security.sql).

CREATE TABLE eventstore.api_versions (
    version             text        PRIMARY KEY,
    -- what deprecate_api_version() decided when it ran; a version is sunset from sunset_at on
    -- whatever this says, and get_active_api_version() reports the status at the time asked
    status              text        NOT NULL DEFAULT 'active'
                                    CHECK (status IN ('active', 'deprecated', 'sunset')),
    released_at         timestamptz NOT NULL DEFAULT statement_timestamp(),
    deprecated_at       timestamptz,
    sunset_at           timestamptz,
    min_client_version  text,
    docs_url            text,
    created_at          timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT statement_timestamp(),
    CHECK (sunset_at IS NULL OR (deprecated_at IS NOT NULL AND sunset_at >= deprecated_at)),
    CHECK ((status = 'active') = (deprecated_at IS NULL))
);
COMMENT ON TABLE eventstore.api_versions IS
    'API versions, ordered as semantic versions (1.10.0 > 1.9.9). Write through register_api_version() and deprecate_api_version().';

-- The handler of an rpc at one version: handler(payload jsonb) -> jsonb, run as the caller.
CREATE TABLE eventstore.api_routes (
    rpc_name            text         NOT NULL,
    version             text         NOT NULL REFERENCES eventstore.api_versions (version),
    handler             regprocedure NOT NULL,
    created_at          timestamptz  NOT NULL DEFAULT statement_timestamp(),
    updated_at          timestamptz  NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (rpc_name, version)
);

-- Stripe-style version changes: what changed in an rpc at a version. A call for an older version
-- runs the newer handler, its request reshaped upwards and its response downwards, one change
-- at a time (in change_id order within a version).
CREATE TABLE eventstore.api_changes (
    change_id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version             text        NOT NULL REFERENCES eventstore.api_versions (version),
    rpc_name            text        NOT NULL,
    description         text        NOT NULL,
    request_transform   jsonb,
    response_transform  jsonb,
    created_at          timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT statement_timestamp(),
    UNIQUE (version, rpc_name, description)
);

-- The version calls get when they ask for none (one row at most; created by the first
-- register_api_version() and changed by switch_api_version()).
CREATE TABLE eventstore.active_api_version (
    singleton           boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    current_version     text        REFERENCES eventstore.api_versions (version),
    fallback_version    text        REFERENCES eventstore.api_versions (version),
    updated_at          timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_by          text        NOT NULL
);

-- Every switch of the active version: who, when, from, to.
CREATE TABLE eventstore.api_deployments (
    deployment_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_version        text,
    to_version          text        NOT NULL,
    from_fallback       text,
    to_fallback         text,
    -- the calling role, and the JWT subject when the call came through PostgREST
    deployed_by         text        NOT NULL,
    jwt_sub             text,
    deployed_at         timestamptz NOT NULL DEFAULT statement_timestamp(),
    reason              text        NOT NULL DEFAULT 'switch' CHECK (reason IN ('switch', 'first version'))
);

-- One row per route_api_call, whatever its outcome. The only write of the hot path: usage is
-- aggregated from here when asked, so no row is updated by every call.
CREATE TABLE eventstore.api_request_log (
    request_id          uuid        PRIMARY KEY,
    tenant_id           text        NOT NULL,
    requested_at        timestamptz NOT NULL,
    -- the UTC day of requested_at, the unit of usage
    day                 date        NOT NULL,
    rpc_name            text,
    requested_version   text,
    -- the version that answered (after a client fallback), NULL when none was resolved
    version             text,
    -- argument | header | accept | active
    version_source      text        NOT NULL,
    -- the version first resolved, when the client's app version made the call fall back
    fallback_from       text,
    status              smallint    NOT NULL,
    error_code          text,
    duration_ms         float8      NOT NULL,
    role                text        NOT NULL,
    jwt_sub             text,
    client_app          text,
    client_version      text,
    client_region       text
);
CREATE INDEX api_request_log_usage_idx ON eventstore.api_request_log (tenant_id, day);

-- Usage of days that are over, per tenant, day, version and rpc: filled by get_api_usage() from
-- the log the first time a closed day is asked for (one that no running transaction can still
-- log a call for), and read instead of the log from then on. version and rpc_name are '' where
-- the log has NULL (calls refused before a version or rpc was known).
CREATE TABLE eventstore.api_version_usage (
    tenant_id           text        NOT NULL,
    day                 date        NOT NULL,
    version             text        NOT NULL,
    rpc_name            text        NOT NULL,
    calls               bigint      NOT NULL,
    errors              bigint      NOT NULL,
    avg_ms              float8      NOT NULL,
    p95_ms              float8      NOT NULL,
    rolled_up_at        timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (tenant_id, day, version, rpc_name)
);

SELECT pg_catalog.pg_extension_config_dump('eventstore.api_versions', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.api_routes', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.api_changes', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.api_changes_change_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.active_api_version', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.api_deployments', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.api_deployments_deployment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.api_request_log', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.api_version_usage', '');
