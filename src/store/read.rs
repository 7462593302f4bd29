//! Reading streams and the global feed.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use pgrx::FromDatum;
use pgrx::datum::TimestampWithTimeZone;
use serde_json::Value;

use crate::datum::RawJsonb;
use pgrx::heap_tuple::PgHeapTuple;

use super::{event_columns, feed_query};
use super::definition_cache;
use super::plans::{Statement, run, run_ordered};
use super::{Row, Stream, caller_context, composites_in};
use crate::error::{Error, Kind, Result};
use crate::feed::Cursor;

/// A live stream's events from a version on; a soft-deleted stream's hidden versions stay hidden.
static READ_STREAM: Statement = Statement {
    sql: concat!(
        "SELECT ROW(",
        event_columns!(),
        ")::eventstore.event
          FROM eventstore.streams s
          JOIN eventstore.events e
            ON e.tenant_id = s.tenant_id AND e.aggregate_type = s.aggregate_type
           AND e.aggregate_id = s.aggregate_id
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3
            AND s.deleted_at IS NULL
            AND e.aggregate_version >= greatest($4, s.hidden_through + 1)
          ORDER BY e.aggregate_version
          LIMIT $5"
    ),
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT4OID],
    volatile: false,
};

static STREAM_VERSION: Statement = Statement {
    sql: "SELECT s.version FROM eventstore.streams s
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3
            AND s.deleted_at IS NULL",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: false,
};

/// The feed: only transactions below the snapshot's xmin are final, so only their events are
/// returned, in (transaction id, position) order, which never changes once returned. On a hot
/// standby the snapshot is built from the primary's transactions as replayed, and an xid below
/// its xmin has ended there too (tests/replica/test_feed_soak.py).
static READ_ALL: Statement = Statement {
    sql: feed_query!(""),
    args: &[TEXTOID, TEXTOID, INT8OID, TEXTARRAYOID, TEXTARRAYOID, INT4OID],
    volatile: false,
};

/// Upcasts rows read for a tenant that has upcasters (stored rows never change). Runs outside
/// SPI, in the caller's memory context, where the rows live. A row that cannot be upcast (too
/// deep for the limits, an upcaster the limits refuse) stays as stored, and its entry in the
/// result says why: one bad event never stops a read.
pub fn upcast_rows(tenant: &str, rows: &mut [Row]) -> Result<Vec<Option<String>>> {
    let mut problems = vec![None; rows.len()];
    if definition_cache::tenant_upcasts(tenant)? {
        for (row, problem) in rows.iter_mut().zip(problems.iter_mut()) {
            *problem = upcast_row(tenant, row)?;
        }
    }
    Ok(problems)
}

/// The same for rows a caller gets: a row that could not be upcast carries the reason in
/// `metadata.$eventstore_error`.
pub fn upcast_rows_marked(tenant: &str, rows: &mut [Row]) -> Result<()> {
    let problems = upcast_rows(tenant, rows)?;
    for (row, problem) in rows.iter_mut().zip(problems) {
        if let Some(problem) = problem {
            mark(row, &problem)?;
        }
    }
    Ok(())
}

/// The same where one bad event must fail the call (inline projections run in the caller's
/// transaction and have nowhere to park it): 22023 naming the event.
pub fn upcast_rows_strict(tenant: &str, rows: &mut [Row]) -> Result<()> {
    let problems = upcast_rows(tenant, rows)?;
    match problems.into_iter().zip(rows.iter()).find_map(|(p, row)| p.map(|p| (p, *row))) {
        None => Ok(()),
        Some((problem, row)) => {
            let row = unsafe { PgHeapTuple::from_composite_datum(row) };
            let id: Option<pgrx::Uuid> = row.get_by_name("event_id").map_err(|e| bug(&e))?;
            Err(Error::invalid(format!("event {} cannot be upcast", id.map(|i| i.to_string()).unwrap_or_default())).detail(problem))
        }
    }
}

fn bug(e: &dyn std::fmt::Display) -> Error {
    Error::new(Kind::Internal, format!("eventstore internal error: {e}"))
}

/// Upcasts one row in place; `Ok(Some(why))` when this event cannot be upcast.
fn upcast_row(tenant: &str, datum: &mut Row) -> Result<Option<String>> {
    let mut row = unsafe { PgHeapTuple::from_composite_datum(*datum) };
    let redacted: Option<TimestampWithTimeZone> = row.get_by_name("redacted_at").map_err(|e| bug(&e))?;
    let event_type: Option<String> = row.get_by_name("event_type").map_err(|e| bug(&e))?;
    let (Some(event_type), None) = (event_type, redacted) else { return Ok(None) };
    let chain = match definition_cache::upcasters(tenant, &event_type) {
        Ok(chain) => chain,
        Err(e) if e.kind == Kind::InvalidArgument => return Ok(Some(e.message)),
        Err(e) => return Err(e),
    };
    let version: i32 = row.get_by_name("schema_version").map_err(|e| bug(&e))?.unwrap_or(1);
    if chain.is_empty() || !chain.has_step(version) {
        return Ok(None);
    }
    let payload = jsonb_attribute(*datum, c"payload");
    let upcast = payload.map_or(Ok(Value::Null), |p| p.value("the stored payload")).and_then(|mut payload| {
        let reached = chain.upcast(version, &mut payload)?;
        Ok((RawJsonb::from_value("the upcast payload", payload)?, reached))
    });
    let (payload, reached) = match upcast {
        Ok(done) => done,
        Err(e) if e.kind == Kind::InvalidArgument => {
            return Ok(Some(match e.detail {
                Some(detail) => format!("{}: {detail}", e.message),
                None => e.message,
            }));
        }
        Err(e) => return Err(e),
    };
    row.set_by_name("payload", payload).map_err(|e| bug(&e))?;
    row.set_by_name("schema_version", reached).map_err(|e| bug(&e))?;
    *datum = row.into_composite_datum().ok_or_else(|| bug(&"an upcast row without a datum"))?;
    Ok(None)
}

/// Adds `{"$eventstore_error": why}` to a row's metadata (jsonb's own `||`: the stored
/// metadata is never parsed, whatever its depth).
fn mark(datum: &mut Row, why: &str) -> Result<()> {
    let mut row = unsafe { PgHeapTuple::from_composite_datum(*datum) };
    let note = RawJsonb::from_value("the read error", serde_json::json!({ ERROR_KEY: why }))?;
    let metadata = match jsonb_attribute(*datum, c"metadata") {
        Some(stored) => unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_concat, &[Some(stored.datum()), Some(note.datum())])
                .map(|d| RawJsonb::from_datum(d, false).expect("jsonb_concat returns a value"))
        },
        None => Some(note),
    };
    row.set_by_name("metadata", metadata).map_err(|e| bug(&e))?;
    *datum = row.into_composite_datum().ok_or_else(|| bug(&"a marked row without a datum"))?;
    Ok(())
}

/// A jsonb column of a composite row, untouched (it points into the row).
fn jsonb_attribute(row: Row, name: &std::ffi::CStr) -> Option<RawJsonb> {
    let mut is_null = false;
    unsafe {
        let header = row.cast_mut_ptr::<pg_sys::HeapTupleHeaderData>();
        let value = pg_sys::GetAttributeByName(header, name.as_ptr(), &mut is_null);
        RawJsonb::from_datum(value, is_null)
    }
}

/// The metadata key that says why an event came back as stored.
pub const ERROR_KEY: &str = "$eventstore_error";

pub fn read_stream(stream: &Stream, from_version: i64, max_count: i32) -> Result<Vec<Row>> {
    let context = caller_context();
    let mut rows = Spi::connect(|client| {
        let args = stream.key_and([from_version.into(), max_count.into()]);
        composites_in(context, run_ordered(client, &READ_STREAM, &args)?, 1)
    })?;
    upcast_rows_marked(&stream.tenant, &mut rows)?;
    Ok(rows)
}

/// The stream's version; 0 when it does not exist or is deleted.
pub fn stream_version(stream: &Stream) -> Result<i64> {
    Spi::connect(|client| {
        let args = stream.key();
        let table = run(client, &STREAM_VERSION, &args)?;
        Ok(if table.is_empty() { 0 } else { table.first().get_one::<i64>()?.unwrap_or(0) })
    })
}

/// The feed after `after`, as callers get it: an event that cannot be upcast carries the reason
/// in `metadata.$eventstore_error`.
pub fn read_all(
    tenant: &str,
    after: Cursor,
    max_count: i32,
    event_types: Option<Vec<String>>,
    aggregate_types: Option<Vec<String>>,
) -> Result<Vec<Row>> {
    let (mut rows, problems) = read_all_checked(tenant, after, max_count, event_types, aggregate_types)?;
    for (row, problem) in rows.iter_mut().zip(problems) {
        if let Some(problem) = problem {
            mark(row, &problem)?;
        }
    }
    Ok(rows)
}

/// The feed after `after`, with what was wrong with each event that could not be upcast (it
/// comes back as stored): the worker counts that as a failure of the event.
pub fn read_all_checked(
    tenant: &str,
    after: Cursor,
    max_count: i32,
    event_types: Option<Vec<String>>,
    aggregate_types: Option<Vec<String>>,
) -> Result<(Vec<Row>, Vec<Option<String>>)> {
    let context = caller_context();
    let mut rows = Spi::connect(|client| {
        let args: [DatumWithOid<'_>; 6] = [
            tenant.into(),
            after.transaction_id.to_string().into(),
            after.position.into(),
            event_types.into(),
            aggregate_types.into(),
            max_count.into(),
        ];
        composites_in(context, run_ordered(client, &READ_ALL, &args)?, 1)
    })?;
    let problems = upcast_rows(tenant, &mut rows)?;
    Ok((rows, problems))
}

/// The newest event of the tenant's feed now (the start when there is none).
static FEED_END: Statement = Statement {
    sql: "SELECT e.transaction_id::text, e.global_position FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
          ORDER BY e.transaction_id DESC, e.global_position DESC LIMIT 1",
    args: &[TEXTOID],
    // read with the caller's snapshot, like READ_ALL: a worker batch compares the two
    volatile: false,
};

pub fn feed_end(tenant: &str) -> Result<Cursor> {
    Spi::connect(|client| {
        let table = run_ordered(client, &FEED_END, &[tenant.into()])?;
        if table.is_empty() {
            return Ok(Cursor::START);
        }
        let row = table.first();
        let xid: String = row.get(1)?.unwrap_or_default();
        Ok(Cursor { transaction_id: xid.parse().unwrap_or(0), position: row.get(2)?.unwrap_or(0) })
    })
}
