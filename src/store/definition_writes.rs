//! Writing definitions: aggregates, reducers, event schemas, upcasters. Each write tells every
//! backend's definition caches to start over when it commits.

use pgrx::JsonB;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use serde_json::Value;

use super::plans::{Statement, run};
use crate::cache;
use crate::datum::RegProcedure;
use crate::error::{Error, Result};

static UPSERT_AGGREGATE: Statement = Statement {
    sql: "INSERT INTO eventstore.aggregates AS a (tenant_id, aggregate_type, initial_state, snapshot_every, keep_snapshots)
          VALUES ($1, $2, $3, $4, $5)
          ON CONFLICT (tenant_id, aggregate_type) DO UPDATE
             SET initial_state = excluded.initial_state, snapshot_every = excluded.snapshot_every,
                 keep_snapshots = excluded.keep_snapshots, updated_at = statement_timestamp()",
    args: &[TEXTOID, TEXTOID, JSONBOID, INT4OID, INT4OID],
    volatile: true,
};

static UPSERT_REDUCER: Statement = Statement {
    sql: "INSERT INTO eventstore.reducers AS r (tenant_id, aggregate_type, event_type, rule, handler, run_as)
          VALUES ($1, $2, $3, $4, $5, $6)
          ON CONFLICT (tenant_id, aggregate_type, event_type) DO UPDATE
             SET rule = excluded.rule, handler = excluded.handler, run_as = excluded.run_as,
                 created_at = statement_timestamp()",
    args: &[TEXTOID, TEXTOID, TEXTOID, JSONBOID, REGPROCEDUREOID, OIDOID],
    volatile: true,
};

static SCHEMA_OF_VERSION: Statement = Statement {
    sql: "SELECT s.json_schema FROM eventstore.event_schemas s
          WHERE s.tenant_id = $1 AND s.event_type = $2 AND s.schema_version = $3",
    args: &[TEXTOID, TEXTOID, INT4OID],
    volatile: true,
};

static INSERT_SCHEMA: Statement = Statement {
    sql: "INSERT INTO eventstore.event_schemas (tenant_id, event_type, schema_version, json_schema)
          VALUES ($1, $2, $3, $4)",
    args: &[TEXTOID, TEXTOID, INT4OID, JSONBOID],
    volatile: true,
};

/// Chain steps of the event type whose version range meets [from, to).
static OVERLAPPING_UPCASTERS: Statement = Statement {
    sql: "SELECT u.from_version, u.to_version, u.transform = $5
          FROM eventstore.upcasters u
          WHERE u.tenant_id = $1 AND u.event_type = $2 AND u.from_version < $4 AND $3 < u.to_version
          ORDER BY u.from_version",
    args: &[TEXTOID, TEXTOID, INT4OID, INT4OID, JSONBOID],
    volatile: true,
};

static INSERT_UPCASTER: Statement = Statement {
    sql: "INSERT INTO eventstore.upcasters (tenant_id, event_type, from_version, to_version, transform)
          VALUES ($1, $2, $3, $4, $5)",
    args: &[TEXTOID, TEXTOID, INT4OID, INT4OID, JSONBOID],
    volatile: true,
};

pub fn aggregate(tenant: &str, aggregate_type: &str, initial_state: Value, snapshot_every: i32, keep_snapshots: i32) -> Result<()> {
    Spi::connect(|client| {
        run(client, &UPSERT_AGGREGATE, &[
            tenant.into(), aggregate_type.into(), JsonB(initial_state).into(), snapshot_every.into(), keep_snapshots.into(),
        ])
        .map(|_| ())
    })?;
    cache::invalidate(c"aggregates");
    Ok(())
}

/// A reducer: a compiled-and-checked rule, or a handler function.
pub enum ReducerDef {
    Rule(Value),
    Handler(RegProcedure),
}

pub fn reducer(tenant: &str, aggregate_type: &str, event_type: &str, reducer: ReducerDef) -> Result<()> {
    Spi::connect(|client| {
        let (rule, handler): (Option<JsonB>, Option<RegProcedure>) = match reducer {
            ReducerDef::Rule(rule) => (Some(JsonB(rule)), None),
            ReducerDef::Handler(handler) => {
                super::handlers::check(client, handler, &super::handlers::REDUCER, None)?;
                (None, Some(handler))
            }
        };
        // the definer's role, not the extension owner this function runs as
        let run_as = unsafe { pg_sys::GetOuterUserId() };
        run(client, &UPSERT_REDUCER, &[
            tenant.into(), aggregate_type.into(), event_type.into(), rule.into(), handler.into(), run_as.into(),
        ])?;
        Ok::<_, Error>(())
    })?;
    cache::invalidate(c"reducers");
    Ok(())
}

/// Registers a schema version; registering the same schema again is a no-op, a different one
/// for a registered version is refused (versions are immutable: register a new one).
pub fn event_schema(tenant: &str, event_type: &str, schema_version: i32, schema: Value) -> Result<()> {
    let inserted = Spi::connect(|client| {
        let args = |s: Value| -> [DatumWithOid<'static>; 4] {
            [tenant.to_owned().into(), event_type.to_owned().into(), schema_version.into(), JsonB(s).into()]
        };
        let existing = run(client, &SCHEMA_OF_VERSION, &args(Value::Null)[..3])?;
        if !existing.is_empty() {
            let stored = existing.first().get_one::<crate::datum::RawJsonb>()?;
            if stored.map(|s| s.value("the registered schema")).transpose()? == Some(schema) {
                return Ok(false);
            }
            return Err(Error::invalid(format!("schema version {schema_version} of event type {event_type} is registered already"))
                .detail("the registered schema differs from the one given")
                .hint("Schema versions are immutable: register the new schema as a new version."));
        }
        run(client, &INSERT_SCHEMA, &args(schema))?;
        Ok(true)
    })?;
    if inserted {
        cache::invalidate(c"event_schemas");
    }
    Ok(())
}

/// Adds a step to an event type's upcaster chain; the same step again is a no-op, a step whose
/// versions overlap the chain is refused.
pub fn upcaster(tenant: &str, event_type: &str, from: i32, to: i32, transform: Value) -> Result<()> {
    let inserted = Spi::connect(|client| {
        let args = || -> [DatumWithOid<'static>; 5] {
            [tenant.to_owned().into(), event_type.to_owned().into(), from.into(), to.into(), JsonB(transform.clone()).into()]
        };
        let overlapping = run(client, &OVERLAPPING_UPCASTERS, &args())?;
        let mut same = false;
        for row in overlapping {
            let (f, t, identical): (i32, i32, bool) =
                (row.get(1)?.unwrap_or(0), row.get(2)?.unwrap_or(0), row.get(3)?.unwrap_or(false));
            if f == from && t == to && identical {
                same = true;
                continue;
            }
            return Err(Error::invalid(format!("upcaster {from}->{to} of event type {event_type} overlaps the chain"))
                .detail(format!("an upcaster {f}->{t} is registered already"))
                .hint("Each version is upcast by one step: chain v1->v2, v2->v3, ..."));
        }
        if same {
            return Ok(false);
        }
        run(client, &INSERT_UPCASTER, &args())?;
        Ok(true)
    })?;
    if inserted {
        cache::invalidate(c"upcasters");
    }
    Ok(())
}
