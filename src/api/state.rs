//! define_aggregate, define_reducer, get_aggregate_state, create_snapshot.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::datum::{RawJsonb, RegProcedure};
use crate::error::{Error, Kind, Result};
use crate::json::ReducerProgram;
use crate::store::definition_writes::{self as define, ReducerDef};
use crate::store::state::{self, Target};
use crate::{input, tenant};

/// Defines (or redefines) an aggregate type: its initial state and snapshot policy.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn define_aggregate(
    aggregate_type: Option<&str>,
    initial_state: default!(Option<RawJsonb>, "'{}'"),
    snapshot_every: default!(Option<i32>, 100),
    keep_snapshots: default!(Option<i32>, 3),
) -> Result<(), ErrorReport> {
    let aggregate_type = input::name("aggregate_type", aggregate_type)?;
    let initial_state = input::required(initial_state, "initial_state")?.value("initial_state")?;
    let snapshot_every = positive("snapshot_every", snapshot_every)?;
    let keep_snapshots = positive("keep_snapshots", keep_snapshots)?;
    define::aggregate(&tenant::current()?, &aggregate_type, initial_state, snapshot_every, keep_snapshots)?;
    Ok(())
}

fn positive(what: &str, value: Option<i32>) -> Result<i32> {
    match value {
        Some(v) if v >= 1 => Ok(v),
        other => Err(Error::invalid(format!("{what} must be 1 or more"))
            .detail(format!("{what} is {}", other.map_or("null".into(), |v| v.to_string())))),
    }
}

/// A declarative reducer rule for one event type of an aggregate type.
#[pg_extern(name = "define_reducer", volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn define_reducer_rule(
    aggregate_type: Option<&str>,
    event_type: Option<&str>,
    rule: Option<RawJsonb>,
) -> Result<(), ErrorReport> {
    let (aggregate_type, event_type) = names(aggregate_type, event_type)?;
    let rule = input::required(rule, "rule")?.value("rule")?;
    ReducerProgram::compile(&rule).map_err(|e| Error::invalid(format!("invalid reducer rule: {e}")))?;
    define::reducer(&tenant::current()?, &aggregate_type, &event_type, ReducerDef::Rule(rule))?;
    Ok(())
}

/// A SQL function `(state jsonb, event eventstore.event) -> jsonb` as the reducer of one event
/// type; it runs as the role that asks for the state.
#[pg_extern(name = "define_reducer", volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn define_reducer_handler(
    aggregate_type: Option<&str>,
    event_type: Option<&str>,
    handler: Option<RegProcedure>,
) -> Result<(), ErrorReport> {
    let (aggregate_type, event_type) = names(aggregate_type, event_type)?;
    let handler = input::required(handler, "handler")?;
    define::reducer(&tenant::current()?, &aggregate_type, &event_type, ReducerDef::Handler(handler))?;
    Ok(())
}

fn names(aggregate_type: Option<&str>, event_type: Option<&str>) -> Result<(String, String)> {
    Ok((input::name("aggregate_type", aggregate_type)?, input::name("event_type", event_type)?))
}

/// The state of a stream, now or at a version or a point in time (time travel).
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_aggregate_state(
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    at_version: default!(Option<i64>, "NULL"),
    as_of: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> Result<pgrx::composite_type!('static, "eventstore.aggregate_state"), ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    if let Some(v) = at_version.filter(|v| *v < 0) {
        return Err(Error::invalid("at_version must not be negative").detail(format!("at_version is {v}")).into());
    }
    let computed = state::compute(&stream, Target { at_version, as_of })?;
    let bug = |e: &dyn std::fmt::Display| Error::new(Kind::Internal, format!("eventstore internal error: {e}"));
    let mut row = PgHeapTuple::new_composite_type("eventstore.aggregate_state").map_err(|e| bug(&e))?;
    row.set_by_name("aggregate_type", stream.aggregate_type.clone()).map_err(|e| bug(&e))?;
    row.set_by_name("aggregate_id", stream.aggregate_id.clone()).map_err(|e| bug(&e))?;
    row.set_by_name("version", computed.version).map_err(|e| bug(&e))?;
    row.set_by_name("state", computed.state.map(JsonB)).map_err(|e| bug(&e))?;
    row.set_by_name("updated_at", computed.updated_at).map_err(|e| bug(&e))?;
    row.set_by_name("snapshot_version", computed.snapshot_version).map_err(|e| bug(&e))?;
    Ok(row)
}

/// Snapshots a stream's current state now; returns the version snapshotted (0: no stream).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create_snapshot(aggregate_type: Option<&str>, aggregate_id: Option<&str>) -> Result<i64, ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    Ok(state::snapshot(&stream, None)?)
}
