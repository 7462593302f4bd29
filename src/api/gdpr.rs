//! redact_event, redact_subject.

use pgrx::Uuid;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::input;
use crate::error::{Error, Result};
use crate::json::Path;
use crate::store::redact;
use crate::tenant;

fn reason(reason: Option<&str>) -> Result<&str> {
    reason.filter(|r| !r.trim().is_empty()).ok_or_else(|| {
        Error::invalid("reason must not be empty").hint("Say why the data is erased; the audit row keeps it.")
    })
}

/// Erases one event's payload; returns false when it was erased already.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn redact_event(event_id: Option<Uuid>, reason: Option<&str>) -> Result<bool, ErrorReport> {
    let event_id = input::required(event_id, "event_id")?;
    let reason = self::reason(reason)?;
    Ok(redact::event(&tenant::current()?, event_id, reason)?)
}

/// Erases the payload of every event that holds `value` at the dotted `json_path` (a leading
/// `$.` is allowed); returns how many events were erased.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn redact_subject(json_path: Option<&str>, value: Option<&str>, reason: Option<&str>) -> Result<i32, ErrorReport> {
    let json_path = input::required(json_path, "json_path")?;
    let path = Path::parse(json_path.strip_prefix("$.").unwrap_or(json_path))
        .map_err(|e| Error::invalid(format!("invalid json_path: {e}")).detail(format!("json_path is \"{json_path}\"")))?;
    let value = input::required(value, "value")?;
    let reason = self::reason(reason)?;
    Ok(redact::subject(&tenant::current()?, path.segments(), value, reason)?)
}
