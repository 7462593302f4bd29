//! The worker's statements for async projections: the projections to serve, a projection's
//! row without and with its lock, the privilege check before a batch, and the batch's end (the
//! checkpoint and the parked events, in the batch's transaction). src/worker/projections.rs
//! runs them.

use pgrx::Uuid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::handlers::handler_name;
use super::plans::{Statement, run};
use crate::error::{Error, Result};
use crate::feed::Cursor;

static ASYNC: Statement = Statement {
    sql: "SELECT p.tenant_id, p.name FROM eventstore.projections p WHERE p.mode = 'async'
          ORDER BY p.tenant_id, p.name",
    args: &[],
    volatile: true,
};

/// The projection, without a lock: is there anything to do?
static PEEK: Statement = Statement {
    sql: concat!("SELECT ", handler_name!("p.handler"), ", p.event_types, p.checkpoint_xid::text, p.checkpoint_position,
                 p.failing_event_id, p.attempts, p.run_as, p.handler::oid
          FROM eventstore.projections p
          WHERE p.tenant_id = $1 AND p.name = $2 AND p.mode = 'async'"),
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

/// The projection, locked for this batch (a rebuild in progress makes the worker skip it).
static CLAIM: Statement = Statement {
    sql: concat!("SELECT ", handler_name!("p.handler"), ", p.event_types, p.checkpoint_xid::text, p.checkpoint_position,
                 p.failing_event_id, p.attempts, p.run_as, p.handler::oid
          FROM eventstore.projections p
          WHERE p.tenant_id = $1 AND p.name = $2 AND p.mode = 'async'
          FOR UPDATE SKIP LOCKED"),
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

static SET_TENANT: Statement = Statement {
    sql: "SELECT set_config('eventstore.tenant_id', $1, true)",
    args: &[TEXTOID],
    volatile: true,
};

static SAVE: Statement = Statement {
    sql: "UPDATE eventstore.projections
             SET checkpoint_xid = $3::text::xid8, checkpoint_position = $4,
                 events_applied = events_applied + $5, failing_event_id = $6, attempts = $7,
                 last_error = coalesce($8, last_error),
                 last_error_at = CASE WHEN $8 IS NULL THEN last_error_at ELSE statement_timestamp() END,
                 updated_at = statement_timestamp()
           WHERE tenant_id = $1 AND name = $2",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, UUIDOID, INT4OID, TEXTOID],
    volatile: true,
};

static PARK: Statement = Statement {
    sql: "INSERT INTO eventstore.parked_events (tenant_id, projection, event_id, global_position, error, attempts)
          VALUES ($1, $2, $3, $4, $5, $6)
          ON CONFLICT (tenant_id, projection, event_id) DO UPDATE
             SET error = excluded.error, attempts = excluded.attempts, parked_at = statement_timestamp()",
    args: &[TEXTOID, TEXTOID, UUIDOID, INT8OID, TEXTOID, INT4OID],
    volatile: true,
};

/// Why a projection's batch failed as a whole (not one of its events), recorded on its row so
/// that projection_status() shows it while the worker backs off.
static RECORD_FAILURE: Statement = Statement {
    sql: "UPDATE eventstore.projections
             SET last_error = $3, last_error_at = statement_timestamp()
           WHERE tenant_id = $1 AND name = $2",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// Why the projection's role ($1) cannot call its handler ($2) whatever the event, or NULL.
static CANNOT_CALL: Statement = Statement {
    sql: "SELECT CASE
                   WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = $1) THEN 'the role no longer exists'
                   WHEN NOT has_schema_privilege($1, 'eventstore', 'USAGE') THEN 'no USAGE on schema eventstore'
                   WHEN NOT has_schema_privilege($1, (SELECT p.pronamespace FROM pg_catalog.pg_proc p WHERE p.oid = $2), 'USAGE')
                     THEN 'no USAGE on the schema of the handler'
                   WHEN NOT has_function_privilege($1, $2, 'EXECUTE') THEN 'no EXECUTE on the handler'
                 END",
    args: &[OIDOID, OIDOID],
    volatile: true,
};

/// A projection's row as a batch needs it.
/// A projection's row as a batch needs it.
pub struct Claimed {
    /// `None` when the function was dropped since the projection was registered
    pub handler: Option<String>,
    pub handler_oid: Option<pg_sys::Oid>,
    pub event_types: Option<Vec<String>>,
    pub checkpoint: Cursor,
    pub failing: Option<Uuid>,
    pub attempts: i32,
    pub run_as: pg_sys::Oid,
}

fn read_projection(client: &pgrx::spi::SpiClient<'_>, stmt: &'static Statement, tenant: &str, name: &str) -> Result<Option<Claimed>> {
    let table = run(client, stmt, &[tenant.into(), name.into()])?;
    if table.is_empty() {
        return Ok(None);
    }
    let row = table.first();
    let xid: String = row.get(3)?.unwrap_or_default();
    Ok(Some(Claimed {
        handler: row.get(1)?,
        handler_oid: row.get(8)?,
        event_types: row.get(2)?,
        checkpoint: Cursor { transaction_id: xid.parse().unwrap_or(0), position: row.get(4)?.unwrap_or(0) },
        failing: row.get(5)?,
        attempts: row.get(6)?.unwrap_or(0),
        run_as: row.get(7)?.unwrap_or(pg_sys::InvalidOid),
    }))
}

/// The async projections of every tenant: (tenant, name).
pub fn async_projections() -> Result<Vec<(String, String)>> {
    Spi::connect(|client| {
        let mut list = Vec::new();
        for row in run(client, &ASYNC, &[])? {
            list.push((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default()));
        }
        Ok(list)
    })
}

/// The projection without a lock: is there anything to do?
pub fn peek(tenant: &str, name: &str) -> Result<Option<Claimed>> {
    Spi::connect(|client| read_projection(client, &PEEK, tenant, name))
}

/// The projection locked for this batch (None while a rebuild holds it), with the
/// transaction's tenant set to its own.
pub fn claim(tenant: &str, name: &str) -> Result<Option<Claimed>> {
    Spi::connect(|client| {
        let claimed = read_projection(client, &CLAIM, tenant, name)?;
        if claimed.is_some() {
            run(client, &SET_TENANT, &[tenant.into()])?;
        }
        Ok::<_, Error>(claimed)
    })
}

/// Why `role` cannot call `handler` whatever the event, or None.
pub fn cannot_call(role: pg_sys::Oid, handler: Option<pg_sys::Oid>) -> Result<Option<String>> {
    Spi::connect(|client| Ok(run(client, &CANNOT_CALL, &[role.into(), handler.into()])?.first().get_one::<String>()?))
}

/// An event parked by a batch.
pub struct Parked {
    pub event_id: Uuid,
    pub position: i64,
    pub error: String,
    pub attempts: i32,
}

/// Where a batch leaves its projection.
pub struct Saved<'a> {
    pub checkpoint: Cursor,
    pub applied: i64,
    pub failing: Option<Uuid>,
    pub attempts: i32,
    pub error: Option<&'a str>,
}

/// The end of a batch, in its transaction: the parked events and the new checkpoint.
pub fn save(tenant: &str, name: &str, parked: &[Parked], saved: &Saved<'_>) -> Result<()> {
    Spi::connect(|client| {
        for p in parked {
            run(client, &PARK, &[
                tenant.into(),
                name.into(),
                p.event_id.into(),
                p.position.into(),
                p.error.as_str().into(),
                p.attempts.into(),
            ])?;
        }
        run(client, &SAVE, &[
            tenant.into(),
            name.into(),
            saved.checkpoint.transaction_id.to_string().into(),
            saved.checkpoint.position.into(),
            saved.applied.into(),
            saved.failing.into(),
            saved.attempts.into(),
            saved.error.into(),
        ])?;
        Ok(())
    })
}

/// Records why a batch failed as a whole on the projection's row.
pub fn record_failure(tenant: &str, name: &str, message: &str) -> Result<()> {
    Spi::connect(|client| run(client, &RECORD_FAILURE, &[tenant.into(), name.into(), message.into()]).map(drop))
}
