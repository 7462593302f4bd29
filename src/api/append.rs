//! append_event, append_events (design.md §3.2).

use pgrx::Uuid as PgUuid;
use pgrx::prelude::*;

use pgrx::pg_sys::panic::ErrorReport;
use crate::datum::{RawJsonb, Root};
use crate::error::Result;
use crate::input::{self, Lifted, NewEvent};
use crate::store::Row;
use crate::store::append::{Body, append};

/// Appends one event to a stream; returns where it was stored.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_event(
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    event_type: Option<&str>,
    payload: Option<RawJsonb>,
    metadata: default!(Option<RawJsonb>, "'{}'"),
    expected_version: default!(Option<i64>, "NULL"),
    event_id: default!(Option<PgUuid>, "NULL"),
) -> Result<pgrx::composite_type!('static, "eventstore.appended"), ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    let event_type = input::name("event_type", event_type)?;
    let (payload, _) = object("payload", payload)?;
    let lifted = match metadata.map(|m| object("metadata", Some(m))).transpose()? {
        None | Some((_, 0)) => Lifted::default(),
        // only metadata with keys is parsed, to lift correlation_id, causation_id, actor, occurred_at
        Some((m, _)) => input::lift("metadata", input::object("metadata", Some(&m.to_json()))?)?,
    };
    let expected = input::expected_version(expected_version)?;
    let event_id = event_id.map(|id| uuid::Uuid::from_bytes(*id.as_bytes()));
    let event = NewEvent::new(event_type, event_id, None, lifted);
    let body = Body::One { payload, metadata };
    let mut rows = append(&stream, std::slice::from_ref(&event), body, expected)?;
    Ok(rows.pop().expect("one event appended"))
}

/// Appends a batch to one stream, all or nothing, with consecutive versions.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_events(
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    events: Option<RawJsonb>,
    expected_version: default!(Option<i64>, "NULL"),
) -> Result<SetOfIterator<'static, pgrx::composite_type!('static, "eventstore.appended")>, ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    let batch = input::batch(events.map(RawJsonb::to_json).as_ref())?;
    let expected = input::expected_version(expected_version)?;
    let rows: Vec<Row> = append(&stream, &batch, Body::Batch(events.expect("checked above")), expected)?;
    Ok(SetOfIterator::new(rows))
}

/// A jsonb argument that must be an object: returns it and its number of keys, or a 22023 that
/// says what it was instead.
fn object(what: &str, value: Option<RawJsonb>) -> Result<(RawJsonb, u32)> {
    match value.map(|v| (v, v.root())) {
        Some((v, Root::Object(keys))) => Ok((v, keys)),
        // the error path may parse: it names the exact kind
        other => input::object(what, other.map(|(v, _)| v.to_json()).as_ref()).map(|_| unreachable!()),
    }
}
