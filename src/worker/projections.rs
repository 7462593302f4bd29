//! Async projections in the worker: per projection and batch, one transaction in which the
//! handler's writes and the new checkpoint commit together, so each event takes effect exactly
//! once even across crashes. Each event runs in a subtransaction: a failure rolls back only
//! that event's writes; after `eventstore.projection_max_attempts` failures the event is parked
//! and the projection goes on.

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
use crate::store::handlers;
use crate::store::projection_batches::{self as batches, Parked, Saved};
use crate::store::{projections, read};

/// What one round of the worker did.
#[derive(Default)]
pub struct Outcome {
    pub applied: u64,
    /// a batch came back full: there is more to do right away
    pub more: bool,
}

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
    let list = transaction(slot, "listing projections", batches::async_projections).unwrap_or_default();
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
                    batches::record_failure(tenant, name, &message)
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
    let Some(seen) = batches::peek(tenant, name)? else {
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
    let Some(claimed) = batches::claim(tenant, name)?
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
    let blocked = batches::cannot_call(claimed.run_as, claimed.handler_oid)?;
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
                    parked.push(Parked { event_id, position, error: message, attempts });
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
    batches::save(tenant, name, &parked, &Saved {
        checkpoint: progress.checkpoint,
        applied: progress.applied,
        failing: progress.failing,
        attempts: progress.attempts,
        error: progress.error.as_deref(),
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

/// The cursor, event id and position of a feed row.
fn feed_fields(row: pg_sys::Datum) -> Result<(Cursor, Uuid, i64)> {
    let bug = |e: &dyn std::fmt::Display| Error::new(Kind::Internal, format!("eventstore internal error: {e}"));
    let tuple = unsafe { pgrx::heap_tuple::PgHeapTuple::from_composite_datum(row) };
    let cursor: String = tuple.get_by_name("cursor").map_err(|e| bug(&e))?.unwrap_or_default();
    let event_id: Uuid = tuple.get_by_name("event_id").map_err(|e| bug(&e))?.ok_or_else(|| bug(&"no event_id"))?;
    let position: i64 = tuple.get_by_name("global_position").map_err(|e| bug(&e))?.unwrap_or(0);
    Ok((Cursor::parse(&cursor)?, event_id, position))
}
