//! append_event, append_events (design.md §3.2).

use pgrx::prelude::*;
use pgrx::{JsonB, Uuid as PgUuid};

use pgrx::pg_sys::panic::ErrorReport;
use crate::input::{self, NewEvent};
use crate::store::Row;
use crate::store::append::{Body, append};

/// Appends one event to a stream; returns where it was stored.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_event(
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    event_type: Option<&str>,
    payload: Option<JsonB>,
    metadata: default!(Option<JsonB>, "'{}'"),
    expected_version: default!(Option<i64>, "NULL"),
    event_id: default!(Option<PgUuid>, "NULL"),
) -> Result<pgrx::composite_type!('static, "eventstore.appended"), ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    let event_type = input::name("event_type", event_type)?;
    input::object("payload", payload.as_ref().map(|p| &p.0))?;
    let metadata = metadata.unwrap_or_else(|| JsonB(serde_json::json!({})));
    let lifted = input::lift("metadata", input::object("metadata", Some(&metadata.0))?)?;
    let expected = input::expected_version(expected_version)?;
    let event_id = event_id.map(|id| uuid::Uuid::from_bytes(*id.as_bytes()));
    let event = NewEvent::new(event_type, event_id, None, lifted);
    let body = Body::One { payload: payload.expect("checked above"), metadata };
    let mut rows = append(&stream, std::slice::from_ref(&event), body, expected)?;
    Ok(rows.pop().expect("one event appended"))
}

/// Appends a batch to one stream, all or nothing, with consecutive versions.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_events(
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    events: Option<JsonB>,
    expected_version: default!(Option<i64>, "NULL"),
) -> Result<SetOfIterator<'static, pgrx::composite_type!('static, "eventstore.appended")>, ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    let batch = input::batch(events.as_ref().map(|e| &e.0))?;
    let expected = input::expected_version(expected_version)?;
    let rows: Vec<Row> = append(&stream, &batch, Body::Batch(events.expect("checked above")), expected)?;
    Ok(SetOfIterator::new(rows))
}
