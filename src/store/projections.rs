//! Projections: read models kept by user handlers `(event eventstore.event)`.
//! Inline ones run inside the appending transaction; async ones run in the background worker,
//! where the handler's writes and the checkpoint commit in one transaction.

use std::rc::Rc;

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgOid;

use super::event_columns;
use super::handlers::{self, handler_name};
use super::caller::as_registrant;
use super::plans::{Statement, run, run_dynamic};
use super::{Row, Stream, caller_context};
use crate::cache::Memo;
use crate::datum::RegProcedure;
use crate::error::{Error, Kind, Result};

/// An inline projection of a tenant, as the append path needs it.
pub struct Inline {
    pub name: String,
    /// how to call the handler; `None` when it was dropped since it was registered
    pub call: Option<String>,
    pub handler: Option<pg_sys::Oid>,
    pub event_types: Option<Vec<String>>,
    /// the role that registered it, which the handler runs as
    pub run_as: pg_sys::Oid,
}

static INLINE: Statement = Statement {
    sql: concat!("SELECT ", handler_name!("p.handler"), ", p.event_types, p.name, p.handler::oid, p.run_as
          FROM eventstore.projections p
          WHERE p.tenant_id = $1 AND p.mode = 'inline' ORDER BY p.name"),
    args: &[TEXTOID],
    volatile: false,
};

static UPSERT: Statement = Statement {
    sql: "INSERT INTO eventstore.projections AS p (tenant_id, name, handler, reset_handler, event_types, mode, run_as)
          VALUES ($1, $2, $3, $4, $5, $6, $7)
          ON CONFLICT (tenant_id, name) DO UPDATE
             SET handler = excluded.handler, reset_handler = excluded.reset_handler,
                 event_types = excluded.event_types, mode = excluded.mode, run_as = excluded.run_as,
                 updated_at = statement_timestamp()",
    args: &[TEXTOID, TEXTOID, REGPROCEDUREOID, REGPROCEDUREOID, TEXTARRAYOID, TEXTOID, OIDOID],
    volatile: true,
};

static GET: Statement = Statement {
    sql: concat!("SELECT p.mode, ", handler_name!("p.reset_handler"), ", p.reset_handler::oid, p.run_as
          FROM eventstore.projections p
          WHERE p.tenant_id = $1 AND p.name = $2 FOR UPDATE"),
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

static RESTART: Statement = Statement {
    sql: "UPDATE eventstore.projections p
             SET checkpoint_xid = '0', checkpoint_position = 0, events_applied = 0,
                 failing_event_id = NULL, attempts = 0, last_error = NULL, last_error_at = NULL,
                 updated_at = statement_timestamp()
           WHERE p.tenant_id = $1 AND p.name = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

static CLEAR_PARKED: Statement = Statement {
    sql: "DELETE FROM eventstore.parked_events WHERE tenant_id = $1 AND projection = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

/// Events just appended to a stream, as handlers see them.
static APPENDED: Statement = Statement {
    sql: concat!(
        "SELECT ROW(",
        event_columns!(),
        ")::eventstore.event, e.event_type
          FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3
            AND e.aggregate_version BETWEEN $4 AND $5
          ORDER BY e.aggregate_version"
    ),
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID],
    volatile: true,
};

static ANY_ASYNC: Statement = Statement {
    sql: "SELECT EXISTS (SELECT 1 FROM eventstore.projections WHERE mode = 'async')",
    args: &[],
    volatile: false,
};

thread_local! {
    static INLINE_BY_TENANT: Memo<String, Vec<Inline>> = Memo::new();
    static ASYNC_EXISTS: Memo<(), bool> = Memo::new();
}

/// Whether any async projection exists (cached; dropped when projections change).
pub fn any_async() -> Result<bool> {
    let any = ASYNC_EXISTS.with(|memo| {
        memo.get(&(), || Spi::connect(|client| Ok(run(client, &ANY_ASYNC, &[])?.first().get_one::<bool>()?.unwrap_or(false))))
    })?;
    Ok(*any)
}

fn inline(tenant: &str) -> Result<Rc<Vec<Inline>>> {
    let key = tenant.to_owned();
    INLINE_BY_TENANT.with(|memo| {
        memo.get(&key, || {
            Spi::connect(|client| {
                let mut out = Vec::new();
                for row in run(client, &INLINE, &[tenant.into()])? {
                    out.push(Inline {
                        call: row.get(1)?,
                        event_types: row.get(2)?,
                        name: row.get(3)?.unwrap_or_default(),
                        handler: row.get(4)?,
                        run_as: row.get(5)?.unwrap_or(pg_sys::InvalidOid),
                    });
                }
                Ok(out)
            })
        })
    })
}

pub fn not_found(name: &str) -> Error {
    Error::new(Kind::NotFound, format!("projection \"{name}\" does not exist"))
        .hint("Register it with eventstore.register_projection().")
}

/// Calls a handler with one event (a composite datum), as `f` arranges (caller or owner role).
pub fn call(client: &SpiClient<'_>, handler: &str, event: pg_sys::Datum) -> Result<()> {
    let sql = format!("SELECT {handler}($1::eventstore.event)");
    let event_type = event_type_oid(client)?;
    run_dynamic(client, &sql, &[PgOid::Custom(event_type)], &[unsafe {
        pgrx::datum::DatumWithOid::new(event, event_type)
    }])?;
    Ok(())
}

/// Calls a handler with one feed row (an `eventstore.feed_event` datum) as the event it holds.
pub fn call_feed(client: &SpiClient<'_>, call: &FeedCall, row: pg_sys::Datum) -> Result<()> {
    run_dynamic(client, &call.sql, &[PgOid::Custom(call.feed_type)], &[unsafe { pgrx::datum::DatumWithOid::new(row, call.feed_type) }])?;
    Ok(())
}

/// Calls the handler for each of `rows`, in order, in one statement.
pub fn call_feed_many(client: &SpiClient<'_>, call: &FeedCall, rows: &[pg_sys::Datum]) -> Result<()> {
    let mut elements = rows.to_vec();
    let array = unsafe {
        pg_sys::construct_array(elements.as_mut_ptr(), elements.len() as i32, call.feed_type, -1, false, b'd' as std::ffi::c_char)
    };
    let datum = pg_sys::Datum::from(array);
    run_dynamic(client, &call.many_sql, &[PgOid::Custom(call.array_type)], &[unsafe { pgrx::datum::DatumWithOid::new(datum, call.array_type) }])?;
    Ok(())
}

/// The statements that pass `eventstore.feed_event`s to a handler as its events, made once
/// per batch.
pub struct FeedCall {
    sql: String,
    many_sql: String,
    feed_type: pg_sys::Oid,
    array_type: pg_sys::Oid,
}

pub fn feed_call(client: &SpiClient<'_>, handler: &str) -> Result<FeedCall> {
    let sql = format!(concat!("SELECT {handler}(ROW(", event_columns!(), ")::eventstore.event) FROM (SELECT ($1::eventstore.feed_event).*) e"), handler = handler);
    static FEED_TYPE: Statement = Statement { sql: "SELECT 'eventstore.feed_event'::regtype::oid", args: &[], volatile: false };
    let feed_type = run(client, &FEED_TYPE, &[])?
        .first()
        .get_one::<pg_sys::Oid>()?
        .ok_or_else(|| Error::new(Kind::Internal, "eventstore internal error: no type eventstore.feed_event"))?;
    let many_sql = format!(concat!("SELECT {handler}(ROW(", event_columns!(), ")::eventstore.event) FROM unnest($1::eventstore.feed_event[]) e"), handler = handler);
    let array_type = unsafe { pg_sys::get_array_type(feed_type) };
    Ok(FeedCall { sql, many_sql, feed_type, array_type })
}

pub fn event_type_oid(client: &SpiClient<'_>) -> Result<pg_sys::Oid> {
    static EVENT_TYPE: Statement = Statement { sql: "SELECT 'eventstore.event'::regtype::oid", args: &[], volatile: false };
    run(client, &EVENT_TYPE, &[])?
        .first()
        .get_one::<pg_sys::Oid>()?
        .ok_or_else(|| Error::new(Kind::Internal, "eventstore internal error: no type eventstore.event"))
}

/// Runs the tenant's inline projections for events `first..=last` just appended to `stream`,
/// of the types `appended`. A failing handler fails the append with the handler's own error.
/// Nothing is read while no inline projection wants one of these types.
pub fn run_inline(stream: &Stream, first: i64, last: i64, appended: &[&str]) -> Result<()> {
    let projections = inline(&stream.tenant)?;
    let wanted = |t: &str| projections.iter().any(|p| p.event_types.as_ref().is_none_or(|types| types.iter().any(|w| w == t)));
    if !appended.iter().any(|t| wanted(t)) {
        return Ok(());
    }
    let context = caller_context();
    let (events, types) = Spi::connect(|client| {
        let mut table = run(client, &APPENDED, &stream.key_and([first.into(), last.into()]))?;
        let (mut events, mut types) = (Vec::new(), Vec::new());
        while let Some(row) = table.next() {
            types.push(row.get::<String>(2)?.unwrap_or_default());
            let datum = table.get_datum_by_ordinal(1)?.ok_or_else(|| Error::new(Kind::Internal, "a null event"))?;
            events.push(super::copy_composite(context, datum));
        }
        Ok::<_, Error>((events, types))
    })?;
    let mut events: Vec<Row> = events;
    super::read::upcast_rows_strict(&stream.tenant, &mut events)?;
    Spi::connect(|client| {
        for projection in projections.iter() {
            let mut handler = None;
            for (event, event_type) in events.iter().zip(&types) {
                if projection.event_types.as_ref().is_some_and(|t| !t.contains(event_type)) {
                    continue;
                }
                let what = || format!("inline projection \"{}\"", projection.name);
                let handler = handler.get_or_insert(handlers::callable(projection.call.clone(), &what(), projection.handler));
                let handler = handler.as_ref().map_err(Clone::clone)?;
                as_registrant(projection.run_as, || call(client, handler, *event))?;
            }
        }
        Ok(())
    })
}

pub enum Mode {
    Async,
    Inline,
}

pub fn register(
    tenant: &str,
    name: &str,
    handler: RegProcedure,
    reset: Option<RegProcedure>,
    event_types: Option<Vec<String>>,
    mode: Mode,
) -> Result<()> {
    Spi::connect(|client| {
        handlers::check(client, handler, &handlers::PROJECTION, None)?;
        if let Some(reset) = reset {
            handlers::check(client, reset, &handlers::RESET, None)?;
        }
        let run_as = unsafe { pg_sys::GetOuterUserId() };
        run(client, &UPSERT, &[
            tenant.into(),
            name.into(),
            handler.into(),
            reset.into(),
            event_types.into(),
            match mode { Mode::Async => "async", Mode::Inline => "inline" }.into(),
            run_as.into(),
        ])?;
        Ok::<_, Error>(())
    })?;
    crate::cache::invalidate(c"projections");
    Ok(())
}


/// Starts a projection over from a clean slate: the reset function (if any) runs, the checkpoint
/// goes back to the start, parked events are forgotten. An inline projection replays the whole
/// feed now, in this transaction; an async one is replayed by the worker.
pub fn rebuild(tenant: &str, name: &str) -> Result<i64> {
    let (mode, reset, run_as) = Spi::connect(|client| {
        let table = run(client, &GET, &[tenant.into(), name.into()])?;
        if table.is_empty() {
            return Err(not_found(name));
        }
        let row = table.first();
        let mode: String = row.get(1)?.unwrap_or_default();
        let (reset, reset_oid): (Option<String>, Option<pg_sys::Oid>) = (row.get(2)?, row.get(3)?);
        let run_as: pg_sys::Oid = row.get(4)?.unwrap_or(pg_sys::InvalidOid);
        let reset = match reset_oid {
            Some(oid) => Some(handlers::callable(reset, &format!("the reset of projection \"{name}\""), Some(oid))?),
            None => None,
        };
        Ok((mode, reset, run_as))
    })?;
    Spi::connect(|client| {
        if let Some(reset) = &reset {
            as_registrant(run_as, || run_dynamic(client, &format!("SELECT {reset}()"), &[], &[]).map(|_| ()))?;
        }
        run(client, &RESTART, &[tenant.into(), name.into()])?;
        run(client, &CLEAR_PARKED, &[tenant.into(), name.into()])?;
        Ok::<_, Error>(())
    })?;
    if mode != "inline" {
        return Ok(0);
    }
    replay_inline(tenant, name)
}

static INLINE_ONE: Statement = Statement {
    sql: concat!("SELECT ", handler_name!("p.handler"), ", p.event_types, p.handler::oid, p.run_as
          FROM eventstore.projections p
          WHERE p.tenant_id = $1 AND p.name = $2"),
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

/// Every committed event of the tenant (matching the projection's types), by position, from
/// the log itself: the feed would hold back events behind older open transactions, whose rows
/// the reset has already cleared.
static REPLAY_PAGE: Statement = Statement {
    sql: concat!(
        "SELECT ROW(",
        event_columns!(),
        ")::eventstore.event, e.global_position
          FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.global_position > $2
            AND ($3::text[] IS NULL OR e.event_type = ANY ($3))
          ORDER BY e.global_position
          LIMIT 1000"
    ),
    args: &[TEXTOID, INT8OID, TEXTARRAYOID],
    volatile: true,
};

/// Feeds every committed event of the tenant to an inline projection's handler.
fn replay_inline(tenant: &str, name: &str) -> Result<i64> {
    let (handler, event_types, run_as): (String, Option<Vec<String>>, pg_sys::Oid) = Spi::connect(|client| {
        let row = run(client, &INLINE_ONE, &[tenant.into(), name.into()])?.first();
        let handler = handlers::callable(row.get(1)?, &format!("inline projection \"{name}\""), row.get(3)?)?;
        Ok::<_, Error>((handler, row.get(2)?, row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid)))
    })?;
    let context = caller_context();
    let (mut after, mut applied) = (0i64, 0i64);
    loop {
        let (mut events, last) = Spi::connect(|client| {
            let mut table = run(client, &REPLAY_PAGE, &[tenant.into(), after.into(), event_types.clone().into()])?;
            let (mut events, mut last) = (Vec::new(), after);
            while let Some(row) = table.next() {
                last = row.get::<i64>(2)?.unwrap_or(last);
                let datum = table.get_datum_by_ordinal(1)?.ok_or_else(|| Error::new(Kind::Internal, "a null event"))?;
                events.push(super::copy_composite(context, datum));
            }
            Ok::<_, Error>((events, last))
        })?;
        if events.is_empty() {
            return Ok(applied);
        }
        super::read::upcast_rows_strict(tenant, &mut events)?;
        Spi::connect(|client| {
            for event in &events {
                as_registrant(run_as, || call(client, &handler, *event))?;
            }
            Ok::<_, Error>(())
        })?;
        applied += events.len() as i64;
        after = last;
    }
}

static DROP: Statement = Statement {
    sql: "DELETE FROM eventstore.projections WHERE tenant_id = $1 AND name = $2 RETURNING 1",
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

/// Forgets a projection and its parked events (the handler's tables are the user's).
pub fn drop(tenant: &str, name: &str) -> Result<()> {
    Spi::connect(|client| {
        if run(client, &DROP, &[tenant.into(), name.into()])?.is_empty() {
            return Err(not_found(name));
        }
        run(client, &CLEAR_PARKED, &[tenant.into(), name.into()])?;
        Ok(())
    })?;
    crate::cache::invalidate(c"projections");
    Ok(())
}

static STATUS: Statement = Statement {
    sql: "SELECT p.name, p.mode,
                 lpad(to_hex(p.checkpoint_xid::text::bigint), 16, '0') || '-' || lpad(to_hex(p.checkpoint_position), 16, '0'),
                 CASE WHEN p.mode = 'inline' THEN 0 ELSE (
                   SELECT count(*) FROM eventstore.events e
                   WHERE e.tenant_id = p.tenant_id
                     AND (e.transaction_id, e.global_position) > (p.checkpoint_xid, p.checkpoint_position)
                     AND e.transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
                     AND (p.event_types IS NULL OR e.event_type = ANY (p.event_types))) END,
                 p.events_applied, p.attempts, p.last_error, p.last_error_at,
                 (SELECT count(*) FROM eventstore.parked_events x WHERE x.tenant_id = p.tenant_id AND x.projection = p.name),
                 p.updated_at
          FROM eventstore.projections p WHERE p.tenant_id = $1 ORDER BY p.name",
    args: &[TEXTOID],
    volatile: false,
};

/// One row of projection_status().
pub struct Status {
    pub name: String,
    pub mode: String,
    pub position: String,
    pub lag: i64,
    pub events_applied: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<pgrx::datum::TimestampWithTimeZone>,
    pub parked: i64,
    pub updated_at: Option<pgrx::datum::TimestampWithTimeZone>,
}

pub fn status(tenant: &str) -> Result<Vec<Status>> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in run(client, &STATUS, &[tenant.into()])? {
            out.push(Status {
                name: row.get(1)?.unwrap_or_default(),
                mode: row.get(2)?.unwrap_or_default(),
                position: row.get(3)?.unwrap_or_default(),
                lag: row.get(4)?.unwrap_or_default(),
                events_applied: row.get(5)?.unwrap_or_default(),
                attempts: row.get(6)?.unwrap_or_default(),
                last_error: row.get(7)?,
                last_error_at: row.get(8)?,
                parked: row.get(9)?.unwrap_or_default(),
                updated_at: row.get(10)?,
            });
        }
        Ok(out)
    })
}

static PARKED: Statement = Statement {
    sql: concat!(
        "SELECT x.event_id, ", handler_name!("p.handler"), ", p.run_as,
                 ROW(",
        event_columns!(),
        ")::eventstore.event
          FROM eventstore.parked_events x
          JOIN eventstore.projections p ON p.tenant_id = x.tenant_id AND p.name = x.projection
          JOIN eventstore.events e ON e.event_id = x.event_id AND e.tenant_id = x.tenant_id
          WHERE x.tenant_id = $1 AND x.projection = $2
          ORDER BY x.global_position"
    ),
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

static UNPARK: Statement = Statement {
    sql: "DELETE FROM eventstore.parked_events WHERE tenant_id = $1 AND projection = $2 AND event_id = $3",
    args: &[TEXTOID, TEXTOID, UUIDOID],
    volatile: true,
};

/// Runs a projection's handler again for its parked events, now, in the caller's transaction;
/// each event that succeeds leaves the parking lot. Returns how many were replayed.
pub fn replay_parked(tenant: &str, name: &str) -> Result<i64> {
    let context = caller_context();
    let parked: Vec<(pgrx::Uuid, String, pg_sys::Oid, Row)> = Spi::connect(|client| {
        let mut table = run(client, &PARKED, &[tenant.into(), name.into()])?;
        let mut out = Vec::new();
        while let Some(row) = table.next() {
            let id: pgrx::Uuid = row.get(1)?.ok_or_else(|| Error::new(Kind::Internal, "parked event without id"))?;
            let handler = handlers::callable(row.get(2)?, &format!("projection \"{name}\""), None)?;
            let run_as: pg_sys::Oid = row.get(3)?.unwrap_or(pg_sys::InvalidOid);
            let datum = table.get_datum_by_ordinal(4)?.ok_or_else(|| Error::new(Kind::Internal, "parked event missing"))?;
            out.push((id, handler, run_as, super::copy_composite(context, datum)));
        }
        Ok::<_, Error>(out)
    })?;
    let mut events: Vec<Row> = parked.iter().map(|p| p.3).collect();
    super::read::upcast_rows_strict(tenant, &mut events)?;
    Spi::connect(|client| {
        for ((id, handler, run_as, _), event) in parked.iter().zip(&events) {
            as_registrant(*run_as, || call(client, handler, *event))?;
            run(client, &UNPARK, &[tenant.into(), name.into(), (*id).into()])?;
        }
        Ok(parked.len() as i64)
    })
}

static EXISTS: Statement = Statement {
    sql: "SELECT 1 FROM eventstore.projections WHERE tenant_id = $1 AND name = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

pub fn exists(tenant: &str, name: &str) -> Result<bool> {
    Spi::connect(|client| Ok(!run(client, &EXISTS, &[tenant.into(), name.into()])?.is_empty()))
}
