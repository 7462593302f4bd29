//! register_projection, rebuild_projection, projection_status, replay_parked_events,
//! worker_status.

use pgrx::JsonB;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::datum::RegProcedure;
use crate::error::Error;
use crate::store::projections::{self, Mode};
use crate::runtime::{self, slots};
use crate::{input, tenant};

/// A read model kept by `handler(event eventstore.event)`: 'inline' runs it inside every
/// appending transaction, 'async' in the background worker. `reset` (no arguments) is called
/// by rebuild_projection to clear the handler's tables.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn register_projection(
    name: Option<&str>,
    handler: Option<RegProcedure>,
    event_types: default!(Option<Vec<Option<String>>>, "NULL"),
    mode: default!(Option<&str>, "'async'"),
    reset: default!(Option<RegProcedure>, "NULL"),
) -> Result<(), ErrorReport> {
    let name = input::name("name", name)?;
    let event_types = input::no_nulls("event_types", event_types)?;
    let handler = input::required(handler, "handler")?;
    let mode = match mode {
        Some("async") => {
            runtime::require()?;
            Mode::Async
        }
        Some("inline") => Mode::Inline,
        other => {
            return Err(Error::invalid("mode must be 'async' or 'inline'")
                .detail(format!("mode is {}", other.map_or("null".into(), |m| format!("'{m}'"))))
                .into());
        }
    };
    projections::register(&tenant::current()?, &name, handler, reset, event_types, mode)?;
    Ok(())
}

/// Replays a projection from the beginning into a clean slate; returns the events replayed
/// now (inline), or 0 when the worker replays it (async).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn rebuild_projection(name: Option<&str>) -> Result<i64, ErrorReport> {
    let name = input::name("name", name)?;
    Ok(projections::rebuild(&tenant::current()?, &name)?)
}

/// Forgets a projection (its checkpoint and parked events; the handler's tables stay).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_projection(name: Option<&str>) -> Result<(), ErrorReport> {
    let name = input::name("name", name)?;
    projections::drop(&tenant::current()?, &name)?;
    Ok(())
}

/// Runs a projection's handler again for the events it parked; returns how many.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn replay_parked_events(name: Option<&str>) -> Result<i64, ErrorReport> {
    // a write even when nothing is parked: refused on a standby like every other (25006)
    unsafe { pg_sys::PreventCommandIfReadOnly(c"replay_parked_events()".as_ptr()) };
    let name = input::name("name", name)?;
    let tenant = tenant::current()?;
    if !projections::exists(&tenant, &name)? {
        return Err(projections::not_found(&name).into());
    }
    Ok(projections::replay_parked(&tenant, &name)?)
}

/// Every projection of the current tenant: where it is, how far behind, what failed.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn projection_status() -> Result<
    TableIterator<
        'static,
        (
            name!(name, String),
            name!(mode, String),
            name!(position, String),
            name!(lag, i64),
            name!(events_applied, i64),
            name!(attempts, i32),
            name!(last_error, Option<String>),
            name!(last_error_at, Option<TimestampWithTimeZone>),
            name!(parked, i64),
            name!(updated_at, Option<TimestampWithTimeZone>),
        ),
    >,
    ErrorReport,
> {
    let rows = projections::status(&tenant::current()?)?;
    Ok(TableIterator::new(rows.into_iter().map(|p| {
        (p.name, p.mode, p.position, p.lag, p.events_applied, p.attempts, p.last_error, p.last_error_at, p.parked, p.updated_at)
    })))
}

/// What the background worker serving this database is doing.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn worker_status() -> Result<JsonB, ErrorReport> {
    let database = runtime::current_database();
    let configured = runtime::preloaded();
    let assigned = if configured { slots::of(unsafe { pg_sys::MyDatabaseId }).map(|(_, s)| s) } else { None };
    let mut out = serde_json::json!({
        "preloaded": configured,
        "database": database,
        "served": assigned.is_some(),
    });
    if configured && assigned.is_none() {
        // why not, in words; the launcher is asked to look again
        let reason = if unsafe { pg_sys::RecoveryInProgress() } {
            "a hot standby runs no worker; the launcher starts one when it is promoted".to_owned()
        } else if !runtime::allowed(&database) {
            format!("eventstore.database does not name database \"{database}\"")
        } else if slots::taken() >= crate::guc::max_workers() {
            format!("all eventstore.max_workers ({}) workers serve other databases", crate::guc::max_workers())
        } else {
            "the launcher starts a worker for this database within seconds".to_owned()
        };
        out["reason"] = serde_json::json!(reason);
        runtime::want_worker();
    }
    if configured {
        if let Some(slot) = assigned {
            let ts = |t: i64| (t != 0).then(|| unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(t), false) }).flatten();
            let alive = slot.pid != 0 && unsafe { libc_kill(slot.pid) };
            out["pid"] = serde_json::json!(slot.pid);
            out["running"] = serde_json::json!(alive);
            out["started_at"] = serde_json::json!(ts(slot.started_at).map(|t| t.to_string()));
            out["last_run_at"] = serde_json::json!(ts(slot.last_run_at).map(|t| t.to_string()));
            out["runs"] = serde_json::json!(slot.runs);
            out["events_applied"] = serde_json::json!(slot.events_applied);
            out["errors"] = serde_json::json!(slot.errors);
            out["last_error"] = serde_json::json!(Some(slots::text(&slot.last_error)).filter(|e| !e.is_empty()));
            out["last_error_at"] = serde_json::json!(ts(slot.last_error_at).map(|t| t.to_string()));
            out["backing_off_until"] = serde_json::json!(ts(slot.backing_off_until).map(|t| t.to_string()));
        }
    }
    if unsafe { pg_sys::RecoveryInProgress() } {
        // a hot standby runs no worker (it starts once the standby is promoted)
        out["standby"] = serde_json::json!(true);
        out["running"] = serde_json::json!(false);
    }
    let own = projections::status(&tenant::current()?)?;
    let backlog: i64 = own.iter().filter(|p| p.mode == "async").map(|p| p.lag).sum();
    out["backlog"] = serde_json::json!(backlog);
    let admin = crate::store::admin::is_admin()?;
    out["scope"] = serde_json::json!(if admin { "server" } else { "tenant" });
    if !admin && out.get("pid").is_some() {
        // the worker serves every tenant: others see only their own projections' part
        let failing: Vec<_> = own.iter().filter(|p| p.last_error.is_some()).collect();
        let latest = failing.iter().max_by_key(|p| p.last_error_at.map(|t| t.into_inner()));
        out["events_applied"] = serde_json::json!(own.iter().filter(|p| p.mode == "async").map(|p| p.events_applied).sum::<i64>());
        out["errors"] = serde_json::json!(failing.len());
        out["last_error"] = serde_json::json!(latest.and_then(|p| p.last_error.clone()));
        out["last_error_at"] = serde_json::json!(latest.and_then(|p| p.last_error_at).map(|t| t.to_string()));
    }
    Ok(JsonB(out))
}

/// Whether a process with this pid exists (signal 0).
unsafe fn libc_kill(pid: i32) -> bool {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    unsafe { kill(pid, 0) == 0 }
}
