//! register_event_schema, register_upcaster.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::datum::RawJsonb;
use crate::error::Error;
use crate::json::TransformProgram;
use crate::store::definition_writes as define;
use crate::{input, tenant};

/// Registers the JSON Schema of one version of an event type; appends of that version are
/// validated against it (23514 with the errors in DETAIL).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn register_event_schema(
    event_type: Option<&str>,
    schema_version: Option<i32>,
    json_schema: Option<RawJsonb>,
) -> Result<(), ErrorReport> {
    let event_type = input::name("event_type", event_type)?;
    let schema_version = version("schema_version", schema_version)?;
    let schema = input::required(json_schema, "json_schema")?.value("json_schema")?;
    jsonschema::validator_for(&schema)
        .map_err(|e| Error::invalid("json_schema is not a valid JSON Schema").detail(e.to_string()))?;
    define::event_schema(&tenant::current()?, &event_type, schema_version, schema)?;
    Ok(())
}

/// Adds one step to an event type's upcaster chain: stored payloads of `from_version` are read
/// as `to_version` through `transform`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn register_upcaster(
    event_type: Option<&str>,
    from_version: Option<i32>,
    to_version: Option<i32>,
    transform: Option<RawJsonb>,
) -> Result<(), ErrorReport> {
    let event_type = input::name("event_type", event_type)?;
    let from = version("from_version", from_version)?;
    let to = version("to_version", to_version)?;
    if to <= from {
        return Err(Error::invalid("to_version must be greater than from_version")
            .detail(format!("from_version is {from}, to_version is {to}"))
            .into());
    }
    let transform = input::required(transform, "transform")?.value("transform")?;
    TransformProgram::compile(&transform).map_err(|e| Error::invalid(format!("invalid transform: {e}")))?;
    define::upcaster(&tenant::current()?, &event_type, from, to, transform)?;
    Ok(())
}

fn version(what: &str, value: Option<i32>) -> Result<i32, Error> {
    match value {
        Some(v) if v >= 1 => Ok(v),
        other => Err(Error::invalid(format!("{what} must be 1 or more"))
            .detail(format!("{what} is {}", other.map_or("null".into(), |v| v.to_string())))),
    }
}
