//! read_stream, stream_version, read_all.

use pgrx::prelude::*;

use crate::datum::{EventRows, FeedRows};
use crate::error::Error;
use pgrx::pg_sys::panic::ErrorReport;
use crate::feed::Cursor;
use crate::{input, store, tenant};

/// A stream's events in version order, from `from_version` on.
#[pg_extern(sql = r#"
CREATE FUNCTION "read_stream"(
	"aggregate_type" TEXT,
	"aggregate_id" TEXT,
	"from_version" bigint DEFAULT 1,
	"max_count" INT DEFAULT 1000
) RETURNS SETOF eventstore.event
STABLE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust: returns its rows materialized (src/datum.rs) */
AS 'MODULE_PATHNAME', 'read_stream_wrapper';
"#)]
fn read_stream(
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    from_version: default!(Option<i64>, 1),
    max_count: default!(Option<i32>, 1000),
) -> Result<EventRows, ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    let from_version = match from_version {
        Some(v) if v >= 1 => v,
        other => {
            return Err(Error::invalid("from_version must be 1 or more")
                .detail(format!("from_version is {}", other.map_or("null".into(), |v| v.to_string())))
                .into());
        }
    };
    let max_count = input::max_count(max_count)?;
    Ok(EventRows(store::read::read_stream(&stream, from_version, max_count)?))
}

/// The stream's current version; 0 when it does not exist or is deleted.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn stream_version(aggregate_type: Option<&str>, aggregate_id: Option<&str>) -> Result<i64, ErrorReport> {
    let stream = super::stream(aggregate_type, aggregate_id)?;
    Ok(store::read::stream_version(&stream)?)
}

/// The global feed after a cursor: every committed event exactly once, in an order that never
/// changes, for readers that pass the cursor of the last row they got.
#[pg_extern(sql = r#"
CREATE FUNCTION "read_all"(
	"after" TEXT DEFAULT NULL,
	"max_count" INT DEFAULT 1000,
	"event_types" TEXT[] DEFAULT NULL,
	"aggregate_types" TEXT[] DEFAULT NULL
) RETURNS SETOF eventstore.feed_event
STABLE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust: returns its rows materialized (src/datum.rs) */
AS 'MODULE_PATHNAME', 'read_all_wrapper';
"#)]
fn read_all(
    after: default!(Option<&str>, "NULL"),
    max_count: default!(Option<i32>, 1000),
    event_types: default!(Option<Vec<Option<String>>>, "NULL"),
    aggregate_types: default!(Option<Vec<Option<String>>>, "NULL"),
) -> Result<FeedRows, ErrorReport> {
    let after = Cursor::after(after)?;
    let event_types = input::no_nulls("event_types", event_types)?;
    let aggregate_types = input::no_nulls("aggregate_types", aggregate_types)?;
    let max_count = input::max_count(max_count)?;
    let tenant = tenant::current()?;
    let rows = store::read::read_all(&tenant, after, max_count, event_types, aggregate_types)?;
    Ok(FeedRows(rows))
}
