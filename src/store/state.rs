//! Aggregate state: the newest usable snapshot at or below the target version, then a replay of
//! the events after it through the reducers.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::{AllocatedByRust, FromDatum, JsonB, PgOid};

use crate::datum::RawJsonb;
use serde_json::Value;

use super::event_columns;
use super::caller::as_registrant;
use std::collections::HashMap;
use std::rc::Rc;

use super::definition_cache::{self, Aggregate, Reducer, Upcasters};
use super::plans::{Statement, open_cursor, run, run_dynamic};
use super::{RawRows, Stream};
use crate::error::{Error, Kind, Result};
use crate::json::{Underlay, default_reduce};
use crate::jsonb::InPlace;

/// Which version of a stream to compute.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target {
    pub at_version: Option<i64>,
    pub as_of: Option<TimestampWithTimeZone>,
}

/// A computed state, before it becomes an `eventstore.aggregate_state` row.
pub struct State {
    pub version: i64,
    pub state: Option<Value>,
    pub updated_at: Option<TimestampWithTimeZone>,
    pub snapshot_version: Option<i64>,
}

static STREAM: Statement = Statement {
    sql: "SELECT CASE WHEN s.deleted_at IS NULL THEN s.version ELSE 0 END, s.hidden_through
          FROM eventstore.streams s
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: false,
};

static AS_OF_VERSION: Statement = Statement {
    sql: "SELECT max(e.aggregate_version) FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3
            AND e.recorded_at <= $4",
    args: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
    volatile: false,
};

static SNAPSHOT: Statement = Statement {
    sql: "SELECT s.version, s.state FROM eventstore.snapshots s
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3
            AND s.version <= $4 AND s.version > $5 AND s.reducer_hash = $6
          ORDER BY s.version DESC LIMIT 1",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, TEXTOID],
    volatile: false,
};


/// The events after a snapshot, with what the reducers need: the fixed-width columns first, so
/// that reading them in place needs no walk over the ones before.
static REPLAY: Statement = Statement {
    sql: "SELECT e.aggregate_version, e.schema_version, e.recorded_at, e.redacted_at IS NOT NULL,
                 e.event_type, e.payload
          FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3
            AND e.aggregate_version > $4 AND e.aggregate_version <= $5
          ORDER BY e.aggregate_version",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID],
    volatile: false,
};

/// The same newest first, with only what the default reducer needs.
static REPLAY_NEWEST_FIRST: Statement = Statement {
    sql: "SELECT e.aggregate_version, e.recorded_at, e.payload
          FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3
            AND e.aggregate_version > $4 AND e.aggregate_version <= $5
          ORDER BY e.aggregate_version DESC",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID],
    volatile: false,
};

/// Events a replay reads at a time.
const REPLAY_BATCH: i64 = 1000;

/// The same, with whole events for SQL-function reducers.
static REPLAY_ROWS: Statement = Statement {
    sql: concat!(
        "SELECT e.aggregate_version, e.schema_version, e.recorded_at, e.redacted_at IS NOT NULL,
                 e.event_type, e.payload,
                 ROW(",
        event_columns!(),
        ")::eventstore.event
          FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3
            AND e.aggregate_version > $4 AND e.aggregate_version <= $5
          ORDER BY e.aggregate_version"
    ),
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID],
    volatile: false,
};

static RECORDED_AT: Statement = Statement {
    sql: "SELECT e.recorded_at FROM eventstore.events e
          WHERE e.tenant_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3
            AND e.aggregate_version = $4",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID],
    volatile: false,
};

static SAVE_SNAPSHOT: Statement = Statement {
    sql: "INSERT INTO eventstore.snapshots AS s (tenant_id, aggregate_type, aggregate_id, version, state, reducer_hash)
          VALUES ($1, $2, $3, $4, $5, $6)
          ON CONFLICT (tenant_id, aggregate_type, aggregate_id, version) DO UPDATE
             SET state = excluded.state, reducer_hash = excluded.reducer_hash, created_at = statement_timestamp()",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, JSONBOID, TEXTOID],
    volatile: true,
};

/// Keeps the newest `keep` snapshots made with the current reducers; the rest can never be used.
static PRUNE_SNAPSHOTS: Statement = Statement {
    sql: "DELETE FROM eventstore.snapshots s
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3
            AND (s.reducer_hash <> $5 OR s.version < (
                 SELECT min(k.version) FROM (
                   SELECT version FROM eventstore.snapshots
                   WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3 AND reducer_hash = $5
                   ORDER BY version DESC LIMIT $4) k))",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID],
    volatile: true,
};

/// Updates the stream's row without changing it: snapshotting and redaction both do this first,
/// so one of them waits for the other (or, under REPEATABLE READ, fails with 40001) and a
/// snapshot can never be computed from events a committed redaction has erased.
pub static TOUCH_STREAM: Statement = Statement {
    sql: "UPDATE eventstore.streams s SET version = s.version
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

static DROP_SNAPSHOTS: Statement = Statement {
    sql: "DELETE FROM eventstore.snapshots s
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

fn internal(what: &str) -> Error {
    Error::new(Kind::Internal, format!("eventstore internal error: {what}"))
}

/// The state of `stream` at `target`.
pub fn compute(stream: &Stream, target: Target) -> Result<State> {
    let aggregate = definition_cache::aggregate(&stream.tenant, &stream.aggregate_type)?;
    Spi::connect(|client| compute_with(client, stream, &aggregate, target))
}

fn compute_with(client: &SpiClient<'_>, stream: &Stream, aggregate: &Aggregate, target: Target) -> Result<State> {
    let missing = State { version: 0, state: None, updated_at: None, snapshot_version: None };
    let table = run(client, &STREAM, &stream.key())?;
    if table.is_empty() {
        return Ok(missing);
    }
    let row = table.first();
    let (current, hidden_through) = (row.get::<i64>(1)?.unwrap_or(0), row.get::<i64>(2)?.unwrap_or(0));
    let mut version = current;
    if let Some(at) = target.at_version {
        version = version.min(at);
    }
    if let Some(as_of) = target.as_of {
        let [t, a, i] = stream.key();
        let table = run(client, &AS_OF_VERSION, &[t, a, i, as_of.into()])?;
        version = version.min(table.first().get_one::<i64>()?.unwrap_or(0));
    }
    if version <= hidden_through {
        return Ok(missing);
    }

    let [t, a, i] = stream.key();
    let snapshot = run(client, &SNAPSHOT, &[t, a, i, version.into(), hidden_through.into(), aggregate.hash.as_str().into()])?;
    let (state, snapshot_version) = if snapshot.is_empty() {
        (Some(aggregate.initial_state.clone()), None)
    } else {
        let row = snapshot.first();
        let state = row.get::<RawJsonb>(2)?.map(|s| s.value(&format!("the snapshot of {stream}"))).transpose()?;
        (state, row.get::<i64>(1)?)
    };
    let from = snapshot_version.unwrap_or(hidden_through);

    let upcasting = definition_cache::tenant_upcasts(&stream.tenant)?;
    let (state, updated_at) = if aggregate.reducers.is_empty() && !upcasting {
        replay_by_default(client, stream, state, from, version)?
    } else {
        replay(client, stream, aggregate, upcasting, state, from, version)?
    };
    if let Some(state) = &state {
        // rules and handlers can grow a state past the limit: an error, before anything
        // serialises it
        crate::jsonb::check_value(&format!("the state of {stream}"), state)?;
    }
    let updated_at = match updated_at {
        Some(at) => Some(at),
        // served from a snapshot exactly at the target: the event there says when
        None => {
            let [t, a, i] = stream.key();
            run(client, &RECORDED_AT, &[t, a, i, version.into()])?.first().get_one()?
        }
    };
    Ok(State { version, state, updated_at, snapshot_version })
}

/// Replays events `from` (exclusive) to `to` onto `state` through their reducers, oldest first.
/// Gives the state and when its last event was recorded.
fn replay(
    client: &SpiClient<'_>,
    stream: &Stream,
    aggregate: &Aggregate,
    upcasting: bool,
    mut state: Option<Value>,
    from: i64,
    version: i64,
) -> Result<(Option<Value>, Option<TimestampWithTimeZone>)> {
    let with_rows = aggregate.reducers.values().any(|r| matches!(r, Reducer::Handler(..)));
    let [t, a, i] = stream.key();
    let mut chains: HashMap<String, Rc<Upcasters>> = HashMap::new();
    let mut updated_at = None;
    // in batches, each given back when done: a long stream is never all in memory at once
    let mut events = open_cursor(client, if with_rows { &REPLAY_ROWS } else { &REPLAY }, &[t, a, i, from.into(), version.into()])?;
    loop {
        let batch = events.fetch(REPLAY_BATCH)?;
        // SAFETY: nothing ran since the fetch
        let rows = unsafe { RawRows::of(&batch) };
        if rows.len() == 0 {
            break;
        }
        for n in 0..rows.len() {
            // text and jsonb straight from the tuple: converted, they would be copied into the
            // transaction's memory for every event replayed
            let event_type = rows.datum(n, 5).and_then(|d| unsafe { <&str>::from_datum(d, false) }).ok_or_else(|| internal("event without a type"))?;
            let version: i64 = rows.get(n, 1).unwrap_or(0);
            let what = || format!("the payload of event {version} of {stream}");
            let mut payload = match rows.datum(n, 6) {
                Some(d) => crate::jsonb::to_value_named(what, d)?,
                None => Value::Null,
            };
            let schema_version: i32 = rows.get(n, 2).unwrap_or(1);
            updated_at = rows.get::<TimestampWithTimeZone>(n, 3);
            let mut upcast_to = schema_version;
            if upcasting && !rows.get::<bool>(n, 4).unwrap_or(false) {
                if !chains.contains_key(event_type) {
                    chains.insert(event_type.to_owned(), definition_cache::upcasters(&stream.tenant, event_type)?);
                }
                upcast_to = chains[event_type].upcast(schema_version, &mut payload)?;
            }
            state = match aggregate.reducers.get(event_type) {
                None => default_reduce(state, payload),
                Some(Reducer::Rule(program)) => program.apply(state, &payload),
                Some(Reducer::Missing(oid)) => {
                    return Err(Error::new(Kind::HandlerMissing, format!("the reducer handler of event type {event_type} no longer exists"))
                        .detail(format!("aggregate type {}, handler oid {oid}, stream {stream}", stream.aggregate_type))
                        .hint("Define the reducer again with eventstore.define_reducer()."));
                }
                Some(Reducer::Handler(handler, run_as)) => {
                    let mut event: PgHeapTuple<'_, AllocatedByRust> = rows.get(n, 7).ok_or_else(|| internal("replay row without event"))?;
                    if upcast_to != schema_version {
                        let payload = RawJsonb::from_value(&what(), payload)?;
                        event.set_by_name("payload", payload).map_err(|e| internal(&e.to_string()))?;
                        event.set_by_name("schema_version", upcast_to).map_err(|e| internal(&e.to_string()))?;
                    }
                    call_handler(client, handler, *run_as, state, event)?
                }
            };
        }
        drop(batch);
        // SAFETY: the batch is gone and nothing kept a row of it (states and payloads are copies)
        unsafe { rows.free() };
    }
    Ok((state, updated_at))
}

/// The same when every event goes through the default reducer (no reducer defined, no
/// upcaster): newest first, converting only the values that end up in the state
/// (src/json/underlay.rs), and stopping at a payload that replaced the state whole. A deleted
/// state (`None`) stays deleted whatever follows, so then nothing is read.
fn replay_by_default(
    client: &SpiClient<'_>,
    stream: &Stream,
    state: Option<Value>,
    from: i64,
    to: i64,
) -> Result<(Option<Value>, Option<TimestampWithTimeZone>)> {
    let Some(state) = state else { return Ok((None, None)) };
    let mut underlay = Underlay::new();
    let mut updated_at = None;
    let [t, a, i] = stream.key();
    let mut events = open_cursor(client, &REPLAY_NEWEST_FIRST, &[t, a, i, from.into(), to.into()])?;
    while !underlay.settled() {
        let batch = events.fetch(REPLAY_BATCH)?;
        // SAFETY: nothing ran since the fetch
        let rows = unsafe { RawRows::of(&batch) };
        if rows.len() == 0 {
            break;
        }
        if updated_at.is_none() {
            updated_at = rows.get::<TimestampWithTimeZone>(0, 2);
        }
        let mut deep = None;
        for n in 0..rows.len() {
            let put = match rows.datum(n, 3) {
                // SAFETY: the row stays in the batch while the payload is read; the underlay
                // keeps only converted values
                Some(payload) => unsafe { InPlace::with_payload(payload, |p| underlay.put_older(p)) }.is_ok(),
                None => underlay.put_older(&Value::Null).is_ok(),
            };
            if !put {
                deep = Some(n);
                break;
            }
            if underlay.settled() {
                break;
            }
        }
        if let Some(n) = deep {
            // converted whole, the payload names the place that is too deep
            let version: i64 = rows.get(n, 1).unwrap_or(0);
            let what = || format!("the payload of event {version} of {stream}");
            let error = rows.datum(n, 3).and_then(|d| crate::jsonb::to_value_named(what, d).err());
            return Err(error.unwrap_or_else(|| internal("a payload too deep to read and yet readable")));
        }
        drop(batch);
        // SAFETY: the batch is gone and nothing kept a row of it (the underlay holds copies)
        unsafe { rows.free() };
    }
    Ok((Some(underlay.apply(state)), updated_at))
}

fn call_handler(
    client: &SpiClient<'_>,
    handler: &str,
    run_as: pg_sys::Oid,
    state: Option<Value>,
    event: PgHeapTuple<'_, AllocatedByRust>,
) -> Result<Option<Value>> {
    let sql = format!("SELECT {handler}($1::jsonb, $2::eventstore.event)");
    let event_type = event_type_oid(client)?;
    as_registrant(run_as, || {
        let table = run_dynamic(
            client,
            &sql,
            &[PgOid::BuiltIn(JSONBOID), PgOid::Custom(event_type)],
            &[state.map(JsonB).into(), event.into()],
        )?;
        let state = table.first().get::<RawJsonb>(1)?;
        state.map(|s| s.value("the state a reducer handler returned")).transpose()
    })
}

fn event_type_oid(client: &SpiClient<'_>) -> Result<pg_sys::Oid> {
    static EVENT_TYPE: Statement = Statement {
        sql: "SELECT 'eventstore.event'::regtype::oid",
        args: &[],
        volatile: false,
    };
    run(client, &EVENT_TYPE, &[])?.first().get_one::<pg_sys::Oid>()?.ok_or_else(|| internal("no type eventstore.event"))
}

/// Computes the state at `version` and keeps it as a snapshot; prunes old ones.
pub fn snapshot(stream: &Stream, version: Option<i64>) -> Result<i64> {
    let aggregate = definition_cache::aggregate(&stream.tenant, &stream.aggregate_type)?;
    Spi::connect(|client| snapshot_with(client, stream, &aggregate, version))
}

fn snapshot_with(client: &SpiClient<'_>, stream: &Stream, aggregate: &Aggregate, version: Option<i64>) -> Result<i64> {
    run(client, &TOUCH_STREAM, &stream.key())?;
    let state = compute_with(client, stream, aggregate, Target { at_version: version, as_of: None })?;
    if state.version == 0 {
        return Ok(0);
    }
    let keep = if aggregate.defined { aggregate.keep_snapshots } else { 3 };
    let [t, a, i] = stream.key();
    run(client, &SAVE_SNAPSHOT, &[t, a, i, state.version.into(), state.state.map(JsonB).into(), aggregate.hash.as_str().into()])?;
    let [t, a, i] = stream.key();
    run(client, &PRUNE_SNAPSHOTS, &[t, a, i, keep.into(), aggregate.hash.as_str().into()])?;
    Ok(state.version)
}

/// After an append moved a stream from version `before` to `after`: a snapshot at the last
/// multiple of `snapshot_every` crossed, if any (defined aggregates only).
pub fn snapshot_after_append(stream: &Stream, before: i64, after: i64) -> Result<()> {
    let aggregate = definition_cache::aggregate(&stream.tenant, &stream.aggregate_type)?;
    if !aggregate.defined {
        return Ok(());
    }
    let every = aggregate.snapshot_every.max(1);
    if before / every == after / every {
        return Ok(());
    }
    let at = after / every * every;
    Spi::connect(|client| snapshot_with(client, stream, &aggregate, Some(at)))?;
    Ok(())
}

/// Snapshots of a stream whose events changed (redaction) can no longer be trusted.
pub fn drop_snapshots(stream: &Stream) -> Result<()> {
    Spi::connect(|client| run(client, &DROP_SNAPSHOTS, &stream.key()).map(|_| ()))
}
