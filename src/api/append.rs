//! append_event, append_events.

use pgrx::Uuid as PgUuid;
use pgrx::prelude::*;

use pgrx::pg_sys::panic::ErrorReport;
use crate::datum::{AppendedRow, RawJsonb, Root};
use crate::error::{Error, Kind, Result};
use crate::store::definition_cache;
use crate::input::{self, Lifted, NewEvent};
use crate::append::append;
use crate::store::append::Body;

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
) -> Result<AppendedRow, ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    let event_type = input::name("event_type", event_type)?;
    let (payload, _) = object("payload", payload)?;
    payload.check_depth("payload")?;
    let lifted = match metadata.map(|m| object("metadata", Some(m))).transpose()? {
        None | Some((_, 0)) => Lifted::default(),
        // only metadata with keys is parsed, to lift correlation_id, causation_id, actor, occurred_at
        Some((m, _)) => input::lift("metadata", input::object("metadata", Some(&m.value("metadata")?))?)?,
    };
    let expected = input::expected_version(expected_version)?;
    let event_id = event_id.map(|id| uuid::Uuid::from_bytes(*id.as_bytes()));
    let mut event = NewEvent::new(event_type, event_id, None, lifted);
    check_schema(&stream.tenant, &mut event, "payload", || payload.value("payload"))?;
    let body = Body::One { payload, metadata };
    let mut rows = append(&stream, std::slice::from_ref(&event), body, expected)?;
    Ok(AppendedRow(rows.pop().expect("one event appended")))
}

/// Appends a batch to one stream, all or nothing, with consecutive versions.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_events(
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    events: Option<RawJsonb>,
    expected_version: default!(Option<i64>, "NULL"),
) -> Result<SetOfIterator<'static, AppendedRow>, ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    let events = events.map(RawJsonb::detoasted);
    // the array and each event object are two levels above the payloads the limit is for
    let parsed = events.map(|e| crate::jsonb::to_value_within("events", e.datum(), 2, batch_place)).transpose()?;
    let mut batch = input::batch(parsed.as_ref())?;
    for (i, event) in batch.iter_mut().enumerate() {
        let element = parsed.as_ref().map(|p| &p[i]);
        for part in ["payload", "metadata"] {
            if let Some(value) = element.and_then(|e| e.get(part)) {
                crate::jsonb::check_value(&format!("events[{i}].{part}"), value)?;
            }
        }
        let payload = || Ok(element.and_then(|e| e.get("payload")).cloned().unwrap_or_default());
        check_schema(&stream.tenant, event, &format!("events[{i}].payload"), payload)?;
    }
    let expected = input::expected_version(expected_version)?;
    let rows = append(&stream, &batch, Body::Batch(events.expect("checked above")), expected)?;
    Ok(SetOfIterator::new(rows.into_iter().map(AppendedRow)))
}

/// `[3].payload.a.b` of a batch as (`events[3].payload`, `.a.b`): the value a limit is for.
fn batch_place(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix('[')?;
    let (index, rest) = rest.split_once(']')?;
    index.parse::<usize>().ok()?;
    ["payload", "metadata"].iter().find_map(|part| {
        let inner = rest.strip_prefix('.')?.strip_prefix(part)?;
        (inner.is_empty() || inner.starts_with(['.', '['])).then(|| (format!("events[{index}].{part}"), inner.to_owned()))
    })
}

/// A jsonb argument that must be an object: returns it and its number of keys, or a 22023 that
/// says what it was instead.
pub(crate) fn object(what: &str, value: Option<RawJsonb>) -> Result<(RawJsonb, u32)> {
    match value.map(|v| (v, v.root())) {
        Some((v, Root::Object(keys))) => Ok((v, keys)),
        // the error path names the exact kind; a scalar is no deeper than itself
        Some((_, Root::Array)) => input::object(what, Some(&serde_json::Value::Array(Vec::new()))).map(|_| unreachable!()),
        Some((v, Root::Scalar)) => input::object(what, Some(&v.value(what)?)).map(|_| unreachable!()),
        None => input::object(what, None).map(|_| unreachable!()),
    }
}

/// Settles the event's schema version (the one given, else the newest registered, else 1) and
/// validates the payload against that version's JSON Schema, if one is registered (23514).
pub(crate) fn check_schema(tenant: &str, event: &mut NewEvent, what: &str, payload: impl FnOnce() -> Result<serde_json::Value>) -> Result<()> {
    let schemas = definition_cache::schemas(tenant, &event.event_type)?;
    let Some(latest) = schemas.latest() else {
        return Ok(());
    };
    let version = *event.schema_version.get_or_insert(latest);
    let Some(validator) = schemas.versions.get(&version) else {
        return Err(Error::invalid(format!("schema version {version} of event type {} is not registered", event.event_type))
            .detail(format!("registered versions: {}", schemas.versions.keys().map(i32::to_string).collect::<Vec<_>>().join(", "))));
    };
    let payload = payload()?;
    let problems: Vec<String> = validator
        .iter_errors(&payload)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{}: {e}", if at.is_empty() { "/" } else { at.as_str() })
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::new(Kind::SchemaViolation, format!("{what} does not match the JSON Schema of {} version {version}", event.event_type))
        .detail(problems.join("; "))
        .hint("Fix the payload, or append it under the schema_version it was written for."))
}
