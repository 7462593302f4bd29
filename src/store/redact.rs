//! GDPR redaction: a payload becomes `{"redacted": true}`; the event keeps its
//! identity, type, version, position and metadata; the audit row says who, when and why; the
//! stream's snapshots are dropped so state is recomputed from the redacted log, and webhook
//! deliveries of the event that have not gone out yet lose the payload too.

use pgrx::Uuid;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use super::Stream;
use super::plans::{Statement, run};
use super::state::{TOUCH_STREAM, drop_snapshots};
use crate::error::{Error, Kind, Result};

static IS_REDACTED: Statement = Statement {
    sql: "SELECT e.redacted_at IS NOT NULL FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.event_id = $2",
    args: &[TEXTOID, UUIDOID],
    volatile: true,
};

static MATCHING_EVENTS: Statement = Statement {
    sql: "SELECT e.event_id FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.redacted_at IS NULL AND e.payload #>> $2 = $3
          ORDER BY e.global_position",
    args: &[TEXTOID, TEXTARRAYOID, TEXTOID],
    volatile: true,
};

static ALLOW: Statement = Statement {
    sql: "SELECT set_config('eventstore.redacting', $1, true)",
    args: &[TEXTOID],
    volatile: true,
};

static STREAM_OF: Statement = Statement {
    sql: "SELECT e.aggregate_type, e.aggregate_id FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.event_id = $2 AND e.redacted_at IS NULL",
    args: &[TEXTOID, UUIDOID],
    volatile: true,
};

static REDACT: Statement = Statement {
    sql: "UPDATE eventstore.events e
             SET payload = '{\"redacted\": true}', redacted_at = statement_timestamp()
           WHERE e.tenant_id = $1 AND e.event_id = $2 AND e.redacted_at IS NULL
          RETURNING 1",
    args: &[TEXTOID, UUIDOID],
    volatile: true,
};

/// Webhook bodies are frozen when queued; those not delivered yet lose the payload too.
static REDACT_WEBHOOKS: Statement = Statement {
    sql: "UPDATE eventstore.webhook_deliveries
             SET body = jsonb_set(body::jsonb, '{data,payload}', '{\"redacted\": true}')::text
           WHERE tenant_id = $1 AND event_id = $2 AND status <> 'succeeded'",
    args: &[TEXTOID, UUIDOID],
    volatile: true,
};

static AUDIT: Statement = Statement {
    sql: "INSERT INTO eventstore.redactions (tenant_id, event_id, aggregate_type, aggregate_id, reason, redacted_by, jwt_sub)
          VALUES ($1, $2, $3, $4, $5, $6, nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')",
    args: &[TEXTOID, UUIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// The role that called the extension (outside its SECURITY DEFINER functions).
fn caller_name() -> String {
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), true);
        if name.is_null() { String::new() } else { std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned() }
    }
}

/// Redacts one event of the tenant; false when it was redacted already.
pub fn event(tenant: &str, event_id: Uuid, reason: &str) -> Result<bool> {
    let known = Spi::connect(|client| {
        let table = run(client, &IS_REDACTED, &[tenant.into(), event_id.into()])?;
        Ok::<_, Error>((!table.is_empty()).then(|| table.first().get_one::<bool>()).transpose()?.flatten())
    })?;
    match known {
        None => Err(Error::new(Kind::NotFound, format!("event {event_id} does not exist"))),
        Some(true) => Ok(false),
        Some(false) => Spi::connect(|client| redact(client, tenant, event_id, reason)).map(|_| true),
    }
}

/// Redacts every event of the tenant whose payload holds `value` at the dotted `path`.
pub fn subject(tenant: &str, path: &[String], value: &str, reason: &str) -> Result<i32> {
    Spi::connect(|client| {
        let ids: Vec<Uuid> = run(client, &MATCHING_EVENTS, &[tenant.into(), path.to_vec().into(), value.into()])?
            .map(|row| row.get::<Uuid>(1))
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        for id in &ids {
            redact(client, tenant, *id, reason)?;
        }
        Ok(ids.len() as i32)
    })
}

fn redact(client: &SpiClient<'_>, tenant: &str, event_id: Uuid, reason: &str) -> Result<()> {
    let found = run(client, &STREAM_OF, &[tenant.into(), event_id.into()])?;
    if found.is_empty() {
        return Ok(());
    }
    let row = found.first();
    let stream = Stream {
        tenant: tenant.to_owned(),
        aggregate_type: row.get(1)?.unwrap_or_default(),
        aggregate_id: row.get(2)?.unwrap_or_default(),
    };
    // first the stream's row: a snapshot being made of this stream finishes before we go on
    run(client, &TOUCH_STREAM, &[tenant.into(), stream.aggregate_type.as_str().into(), stream.aggregate_id.as_str().into()])?;
    run(client, &ALLOW, &["on".into()])?;
    let table = run(client, &REDACT, &[tenant.into(), event_id.into()])?;
    run(client, &ALLOW, &["off".into()])?;
    if table.is_empty() {
        return Ok(());
    }
    let args: [DatumWithOid<'_>; 6] = [
        tenant.into(),
        event_id.into(),
        stream.aggregate_type.as_str().into(),
        stream.aggregate_id.as_str().into(),
        reason.into(),
        caller_name().into(),
    ];
    run(client, &AUDIT, &args)?;
    run(client, &REDACT_WEBHOOKS, &[tenant.into(), event_id.into()])?;
    drop_snapshots(&stream)
}
