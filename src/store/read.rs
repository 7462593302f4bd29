//! Reading streams and the global feed.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use pgrx::JsonB;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::heap_tuple::PgHeapTuple;

use super::event_columns;
use super::definitions;
use super::plans::{Statement, run};
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
/// returned, in (transaction id, position) order, which never changes once returned.
static READ_ALL: Statement = Statement {
    sql: concat!(
        "SELECT ROW(",
        event_columns!(),
        ",
                     lpad(to_hex(e.transaction_id::text::bigint), 16, '0') || '-'
                       || lpad(to_hex(e.global_position), 16, '0'))::eventstore.feed_event
          FROM eventstore.events e
          WHERE e.tenant_id = $1
            AND (e.transaction_id, e.global_position) > ($2::text::xid8, $3)
            AND e.transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
            AND ($4::text[] IS NULL OR e.event_type = ANY ($4))
            AND ($5::text[] IS NULL OR e.aggregate_type = ANY ($5))
          ORDER BY e.transaction_id, e.global_position
          LIMIT $6"
    ),
    args: &[TEXTOID, TEXTOID, INT8OID, TEXTARRAYOID, TEXTARRAYOID, INT4OID],
    volatile: false,
};

/// Upcasts rows read for a tenant that has upcasters (stored rows never change). Runs outside
/// SPI, in the caller's memory context, where the rows live.
pub fn upcast_rows(tenant: &str, rows: &mut [Row]) -> Result<()> {
    if definitions::tenant_upcasts(tenant)? {
        for row in rows {
            upcast_row(tenant, row)?;
        }
    }
    Ok(())
}

fn upcast_row(tenant: &str, datum: &mut Row) -> Result<()> {
    let bug = |e: &dyn std::fmt::Display| Error::new(Kind::Internal, format!("eventstore internal error: {e}"));
    let mut row = unsafe { PgHeapTuple::from_composite_datum(*datum) };
    let redacted: Option<TimestampWithTimeZone> = row.get_by_name("redacted_at").map_err(|e| bug(&e))?;
    let event_type: Option<String> = row.get_by_name("event_type").map_err(|e| bug(&e))?;
    let (Some(event_type), None) = (event_type, redacted) else { return Ok(()) };
    let chain = definitions::upcasters(tenant, &event_type)?;
    let version: i32 = row.get_by_name("schema_version").map_err(|e| bug(&e))?.unwrap_or(1);
    if chain.is_empty() || !chain.has_step(version) {
        return Ok(());
    }
    let mut payload = row.get_by_name::<JsonB>("payload").map_err(|e| bug(&e))?.map(|p| p.0).unwrap_or_default();
    let reached = chain.upcast(version, &mut payload);
    row.set_by_name("payload", JsonB(payload)).map_err(|e| bug(&e))?;
    row.set_by_name("schema_version", reached).map_err(|e| bug(&e))?;
    *datum = row.into_composite_datum().ok_or_else(|| bug(&"an upcast row without a datum"))?;
    Ok(())
}

pub fn read_stream(stream: &Stream, from_version: i64, max_count: i32) -> Result<Vec<Row>> {
    let context = caller_context();
    let mut rows = Spi::connect(|client| {
        let args: [DatumWithOid<'_>; 5] = [
            stream.tenant.as_str().into(),
            stream.aggregate_type.as_str().into(),
            stream.aggregate_id.as_str().into(),
            from_version.into(),
            max_count.into(),
        ];
        composites_in(context, run(client, &READ_STREAM, &args)?, 1)
    })?;
    upcast_rows(&stream.tenant, &mut rows)?;
    Ok(rows)
}

/// The stream's version; 0 when it does not exist or is deleted.
pub fn stream_version(stream: &Stream) -> Result<i64> {
    Spi::connect(|client| {
        let args: [DatumWithOid<'_>; 3] = [
            stream.tenant.as_str().into(),
            stream.aggregate_type.as_str().into(),
            stream.aggregate_id.as_str().into(),
        ];
        let table = run(client, &STREAM_VERSION, &args)?;
        Ok(if table.is_empty() { 0 } else { table.first().get_one::<i64>()?.unwrap_or(0) })
    })
}

pub fn read_all(
    tenant: &str,
    after: Cursor,
    max_count: i32,
    event_types: Option<Vec<String>>,
    aggregate_types: Option<Vec<String>>,
) -> Result<Vec<Row>> {
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
        composites_in(context, run(client, &READ_ALL, &args)?, 1)
    })?;
    upcast_rows(tenant, &mut rows)?;
    Ok(rows)
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
        let table = run(client, &FEED_END, &[tenant.into()])?;
        if table.is_empty() {
            return Ok(Cursor::START);
        }
        let row = table.first();
        let xid: String = row.get(1)?.unwrap_or_default();
        Ok(Cursor { transaction_id: xid.parse().unwrap_or(0), position: row.get(2)?.unwrap_or(0) })
    })
}
