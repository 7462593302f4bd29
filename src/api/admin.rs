//! current_tenant, get_event_store_stats, feed_lag, delete_stream.
//! grant_access lives in sql/security.sql: it is pure DDL.

use pgrx::JsonB;
use pgrx::prelude::*;

use pgrx::pg_sys::panic::ErrorReport;
use crate::{store, tenant};

/// The tenant of the current call.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn current_tenant() -> Result<String, ErrorReport> {
    Ok(tenant::current()?)
}

/// Counts for the current tenant: events, streams, types, first and last recorded_at.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_event_store_stats() -> Result<JsonB, ErrorReport> {
    Ok(store::admin::stats(&tenant::current()?)?)
}

/// How far the feed is held back by a running transaction, and which backend that is.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn feed_lag() -> Result<JsonB, ErrorReport> {
    Ok(store::admin::feed_lag(&tenant::current()?, store::admin::is_admin()?)?)
}

/// Soft delete hides a stream (a later append recreates it, numbering on); hard delete leaves a
/// tombstone that refuses every later append. Events stay in the log either way.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn delete_stream(
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    hard: default!(Option<bool>, false),
) -> Result<bool, ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    Ok(store::admin::delete_stream(&stream, hard.unwrap_or(false))?)
}
