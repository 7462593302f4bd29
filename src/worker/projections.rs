//! Async projections in the worker: per projection and batch, one transaction in which the
//! handler's writes and the new checkpoint commit together, so each event takes effect exactly
//! once even across crashes. Each event runs in a subtransaction: a failure rolls back only
//! that event's writes; after `eventstore.projection_max_attempts` failures the event is parked
//! and the projection goes on.


use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::Uuid;

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::runtime::{transaction, try_transaction};
use crate::error::{Error, Kind, Result};
use crate::feed::Cursor;
use crate::guc;
use crate::store::caller::{as_registrant, subtransaction};
use crate::store::handlers::{self, handler_name};
use crate::store::plans::{Statement, run};
use crate::store::{projections, read};

/// What one round of the worker did.
#[derive(Default)]
pub struct Outcome {
    pub applied: u64,
    /// a batch came back full: there is more to do right away
    pub more: bool,
}


static ASYNC: Statement = Statement {
    sql: "SELECT p.tenant_id, p.name FROM eventstore.projections p WHERE p.mode = 'async'
          ORDER BY p.tenant_id, p.name",
    args: &[],
    volatile: true,
};

/// The projection, without a lock: is there anything to do?
static PEEK: Statement = Statement {
    sql: concat!("SELECT ", handler_name!("p.handler"), ", p.event_types, p.checkpoint_xid::text, p.checkpoint_position,
                 p.failing_event_id, p.attempts, p.run_as, p.handler::oid
          FROM eventstore.projections p
          WHERE p.tenant_id = $1 AND p.name = $2 AND p.mode = 'async'"),
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

/// The projection, locked for this batch (a rebuild in progress makes the worker skip it).
static CLAIM: Statement = Statement {
    sql: concat!("SELECT ", handler_name!("p.handler"), ", p.event_types, p.checkpoint_xid::text, p.checkpoint_position,
                 p.failing_event_id, p.attempts, p.run_as, p.handler::oid
          FROM eventstore.projections p
          WHERE p.tenant_id = $1 AND p.name = $2 AND p.mode = 'async'
          FOR UPDATE SKIP LOCKED"),
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

static SET_TENANT: Statement = Statement {
    sql: "SELECT set_config('eventstore.tenant_id', $1, true)",
    args: &[TEXTOID],
    volatile: true,
};

static SAVE: Statement = Statement {
    sql: "UPDATE eventstore.projections
             SET checkpoint_xid = $3::text::xid8, checkpoint_position = $4,
                 events_applied = events_applied + $5, failing_event_id = $6, attempts = $7,
                 last_error = coalesce($8, last_error),
                 last_error_at = CASE WHEN $8 IS NULL THEN last_error_at ELSE statement_timestamp() END,
                 updated_at = statement_timestamp()
           WHERE tenant_id = $1 AND name = $2",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, UUIDOID, INT4OID, TEXTOID],
    volatile: true,
};

static PARK: Statement = Statement {
    sql: "INSERT INTO eventstore.parked_events (tenant_id, projection, event_id, global_position, error, attempts)
          VALUES ($1, $2, $3, $4, $5, $6)
          ON CONFLICT (tenant_id, projection, event_id) DO UPDATE
             SET error = excluded.error, attempts = excluded.attempts, parked_at = statement_timestamp()",
    args: &[TEXTOID, TEXTOID, UUIDOID, INT8OID, TEXTOID, INT4OID],
    volatile: true,
};

/// Why a projection's batch failed as a whole (not one of its events), recorded on its row so
/// that projection_status() shows it while the worker backs off.
static RECORD_FAILURE: Statement = Statement {
    sql: "UPDATE eventstore.projections
             SET last_error = $3, last_error_at = statement_timestamp()
           WHERE tenant_id = $1 AND name = $2",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// Projections whose batches failed as a whole, and when to try again: a failure that belongs
/// to no single event (the handler is gone, its role cannot run it) waits longer each time, up
/// to a minute, instead of being retried every round.
struct Backoff {
    failures: u32,
    until: Instant,
}

thread_local! {
    static BACKING_OFF: RefCell<HashMap<(String, String), Backoff>> = RefCell::new(HashMap::new());
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const LONGEST_BACKOFF: Duration = Duration::from_secs(60);

fn backing_off(key: &(String, String)) -> bool {
    BACKING_OFF.with(|b| b.borrow().get(key).is_some_and(|b| Instant::now() < b.until))
}

fn failed(key: (String, String)) {
    BACKING_OFF.with(|b| {
        let mut b = b.borrow_mut();
        let failures = b.get(&key).map_or(0, |b| b.failures) + 1;
        let wait = FIRST_BACKOFF.saturating_mul(1 << failures.min(16)).min(LONGEST_BACKOFF);
        b.insert(key, Backoff { failures, until: Instant::now() + wait });
    });
}

/// One round: a batch for every async projection of every tenant.
pub fn round(slot: usize) -> Outcome {
    let list = transaction(slot, "listing projections", || {
        Spi::connect(|client| {
            let mut list = Vec::new();
            for row in run(client, &ASYNC, &[])? {
                list.push((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default()));
            }
            Ok(list)
        })
    })
    .unwrap_or_default();
    let mut outcome = Outcome::default();
    for (tenant, name) in list {
        let key = (tenant, name);
        if backing_off(&key) {
            continue;
        }
        let (tenant, name) = (&key.0, &key.1);
        let what = format!("projection \"{name}\" of tenant \"{tenant}\"");
        match try_transaction(slot, &what, || batch(tenant, name)) {
            Ok(Batch { applied, full, blocked: None }) => {
                BACKING_OFF.with(|b| b.borrow_mut().remove(&key));
                outcome.applied += applied;
                outcome.more |= full;
            }
            Ok(Batch { applied, blocked: Some(message), .. }) => {
                // recorded with the batch's progress; the same error every round would be noise
                warning!("eventstore worker: projection \"{name}\" of tenant \"{tenant}\" cannot run: {message}");
                outcome.applied += applied;
                failed(key);
            }
            Err(message) => {
                transaction(slot, "recording a projection failure", || {
                    Spi::connect(|client| run(client, &RECORD_FAILURE, &[tenant.into(), name.into(), message.as_str().into()]).map(|_| ()))
                });
                failed(key);
            }
        }
    }
    outcome
}

/// The state of a projection while a batch runs.
struct Progress {
    checkpoint: Cursor,
    applied: i64,
    failing: Option<Uuid>,
    attempts: i32,
    error: Option<String>,
}

/// One batch of one projection; returns the events applied and whether the batch was full.
/// An idle projection costs no write and no transaction id: its row is locked (and updated)
/// only when there are events to apply or its checkpoint can move.
fn batch(tenant: &str, name: &str) -> Result<Batch> {
    let Some(seen) = Spi::connect(|client| read_projection(client, &PEEK, tenant, name))? else {
        return Ok(Batch::default());
    };
    let size = guc::worker_batch_size();
    // the feed's end first, then the events: a batch that is not full has seen every event up
    // to that end, so the checkpoint may move there even past events the filter skips
    let end = read::feed_end(tenant)?;
    let (rows, problems) = read::read_all_checked(tenant, seen.checkpoint, size, seen.event_types.clone(), None)?;
    let full = rows.len() as i32 == size;
    if rows.is_empty() && end <= seen.checkpoint {
        return Ok(Batch::default());
    }
    let Some(claimed) = Spi::connect(|client| {
        let claimed = read_projection(client, &CLAIM, tenant, name)?;
        if claimed.is_some() {
            run(client, &SET_TENANT, &[tenant.into()])?;
        }
        Ok::<_, Error>(claimed)
    })?
    else {
        return Ok(Batch::default());
    };
    if claimed.checkpoint != seen.checkpoint {
        // a rebuild moved it meanwhile: next round
        return Ok(Batch::default());
    }
    let handler = handlers::callable(claimed.handler.clone(), &format!("projection \"{name}\""), claimed.handler_oid)?;
    let max_attempts = guc::projection_max_attempts();
    let mut progress = Progress { checkpoint: claimed.checkpoint, applied: 0, failing: claimed.failing, attempts: claimed.attempts, error: None };
    let mut parked = Vec::new();
    // the role cannot call the handler at all: no event is at fault, none is counted or
    // parked, and the worker backs off until that is mended
    let blocked = Spi::connect(|client| {
        Ok::<_, Error>(run(client, &CANNOT_CALL, &[claimed.run_as.into(), claimed.handler_oid.into()])?.first().get_one::<String>()?)
    })?;
    if let Some(why) = &blocked {
        progress.error = Some(format!("the projection's role cannot call its handler: {why}"));
    }
    let rows: &[_] = if blocked.is_some() { &[] } else { &rows };
    let call = Spi::connect(|client| projections::feed_call(client, &handler))?;
    // the whole batch in one statement (so the handler's own plans are made once), in one
    // subtransaction, as its role once; one subtransaction per event only when that fails, or
    // when an event is already failing or cannot be read. The failed try counts as one
    // attempt of the event that then fails on its own.
    let mut start = 0;
    let mut tried_together = false;
    if !rows.is_empty() && progress.failing.is_none() && problems.iter().all(Option::is_none) {
        let together = subtransaction(|| Spi::connect(|client| as_registrant(claimed.run_as, || projections::call_feed_many(client, &call, rows))));
        match together {
            Ok(()) => {
                progress.checkpoint = feed_fields(rows[rows.len() - 1])?.0;
                progress.applied = rows.len() as i64;
                start = rows.len();
            }
            Err(_) => tried_together = true,
        }
    }
    for (row, problem) in rows.iter().zip(problems).skip(start) {
        let (cursor, event_id, position) = feed_fields(*row)?;
        // an event that could not be read as its handler expects fails like a handler would
        let outcome = match problem {
            Some(problem) => Err(format!("the event cannot be read: {problem}")),
            None => subtransaction(|| {
                Spi::connect(|client| as_registrant(claimed.run_as, || projections::call_feed(client, &call, *row)))
            })
            .map_err(|failure| failure.message),
        };
        match outcome {
            Ok(()) => {
                progress.checkpoint = cursor;
                progress.applied += 1;
                if progress.failing == Some(event_id) {
                    (progress.failing, progress.attempts) = (None, 0);
                }
            }
            Err(message) => {
                let attempts = if progress.failing == Some(event_id) { progress.attempts + 1 } else { 1 };
                let attempts = if std::mem::take(&mut tried_together) { attempts + 1 } else { attempts };
                progress.error = Some(message.clone());
                if attempts >= max_attempts {
                    parked.push((event_id, position, message, attempts));
                    progress.checkpoint = cursor;
                    (progress.failing, progress.attempts) = (None, 0);
                } else {
                    (progress.failing, progress.attempts) = (Some(event_id), attempts);
                    break;
                }
            }
        }
    }
    if !full && progress.failing.is_none() && progress.error.is_none() && end > progress.checkpoint {
        progress.checkpoint = end;
    }
    Spi::connect(|client| {
        for (event_id, position, message, attempts) in &parked {
            run(client, &PARK, &[
                tenant.into(),
                name.into(),
                (*event_id).into(),
                (*position).into(),
                message.as_str().into(),
                (*attempts).into(),
            ])?;
        }
        run(client, &SAVE, &[
            tenant.into(),
            name.into(),
            progress.checkpoint.transaction_id.to_string().into(),
            progress.checkpoint.position.into(),
            progress.applied.into(),
            progress.failing.into(),
            progress.attempts.into(),
            progress.error.clone().into(),
        ])?;
        Ok::<_, Error>(())
    })?;
    let blocked = blocked.and(progress.error.clone());
    Ok(Batch { applied: progress.applied as u64, full: full && progress.failing.is_none() && blocked.is_none(), blocked })
}

/// What one batch did.
#[derive(Default)]
struct Batch {
    applied: u64,
    /// it came back full: there is more to do right away
    full: bool,
    /// why it stopped before an event that no event could have passed
    blocked: Option<String>,
}

/// Why the projection's role ($1) cannot call its handler ($2) whatever the event, or NULL.
static CANNOT_CALL: Statement = Statement {
    sql: "SELECT CASE
                   WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = $1) THEN 'the role no longer exists'
                   WHEN NOT has_schema_privilege($1, 'eventstore', 'USAGE') THEN 'no USAGE on schema eventstore'
                   WHEN NOT has_schema_privilege($1, (SELECT p.pronamespace FROM pg_catalog.pg_proc p WHERE p.oid = $2), 'USAGE')
                     THEN 'no USAGE on the schema of the handler'
                   WHEN NOT has_function_privilege($1, $2, 'EXECUTE') THEN 'no EXECUTE on the handler'
                 END",
    args: &[OIDOID, OIDOID],
    volatile: true,
};

/// A projection's row as a batch needs it.
struct Claimed {
    /// `None` when the function was dropped since the projection was registered
    handler: Option<String>,
    handler_oid: Option<pg_sys::Oid>,
    event_types: Option<Vec<String>>,
    checkpoint: Cursor,
    failing: Option<Uuid>,
    attempts: i32,
    run_as: pg_sys::Oid,
}

fn read_projection(client: &pgrx::spi::SpiClient<'_>, stmt: &'static Statement, tenant: &str, name: &str) -> Result<Option<Claimed>> {
    let table = run(client, stmt, &[tenant.into(), name.into()])?;
    if table.is_empty() {
        return Ok(None);
    }
    let row = table.first();
    let xid: String = row.get(3)?.unwrap_or_default();
    Ok(Some(Claimed {
        handler: row.get(1)?,
        handler_oid: row.get(8)?,
        event_types: row.get(2)?,
        checkpoint: Cursor { transaction_id: xid.parse().unwrap_or(0), position: row.get(4)?.unwrap_or(0) },
        failing: row.get(5)?,
        attempts: row.get(6)?.unwrap_or(0),
        run_as: row.get(7)?.unwrap_or(pg_sys::InvalidOid),
    }))
}

/// The cursor, event id and position of a feed row.
fn feed_fields(row: pg_sys::Datum) -> Result<(Cursor, Uuid, i64)> {
    let bug = |e: &dyn std::fmt::Display| Error::new(Kind::Internal, format!("eventstore internal error: {e}"));
    let tuple = unsafe { pgrx::heap_tuple::PgHeapTuple::from_composite_datum(row) };
    let cursor: String = tuple.get_by_name("cursor").map_err(|e| bug(&e))?.unwrap_or_default();
    let event_id: Uuid = tuple.get_by_name("event_id").map_err(|e| bug(&e))?.ok_or_else(|| bug(&"no event_id"))?;
    let position: i64 = tuple.get_by_name("global_position").map_err(|e| bug(&e))?.unwrap_or(0);
    Ok((Cursor::parse(&cursor)?, event_id, position))
}
