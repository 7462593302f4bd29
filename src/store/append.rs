//! Appending: the version check under the stream's row lock, idempotent re-sends, and the
//! insert. Positions are drawn only after the check, so a losing writer leaves no gap.

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid as PgUuid;

use super::plans::{Statement, run, run_generic};
use super::{Row, Stream, caller_context, copy_composite};
use crate::datum::RawJsonb;
use crate::error::{Error, Kind, Result};
use crate::input::NewEvent;

/// Makes sure the stream has a row (version 0 until something is appended), waiting for a
/// concurrent creator to finish, so that LOCK_STREAM has a row to lock even for a new stream.
static ENSURE_STREAM: Statement = Statement {
    sql: "INSERT INTO eventstore.streams (tenant_id, aggregate_type, aggregate_id, version)
          VALUES ($1, $2, $3, 0)
          ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO NOTHING",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// Locks the stream's row so that a re-send is judged against committed events.
static LOCK_STREAM: Statement = Statement {
    sql: "SELECT 1 FROM eventstore.streams s
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3
          FOR UPDATE",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// Events of a batch that are stored already, anywhere.
static FIND_EVENT_IDS: Statement = Statement {
    sql: "SELECT e.event_id::text,
                 e.tenant_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3,
                 e.aggregate_version,
                 ROW(e.event_id, e.aggregate_version, e.global_position, e.recorded_at)::eventstore.appended
          FROM eventstore.events e
          WHERE e.event_id = ANY ($4::uuid[])",
    args: &[TEXTOID, TEXTOID, TEXTOID, UUIDARRAYOID],
    volatile: true,
};

/// `expected_version` NULL (any) or 0 (must not exist: no row, a row at version 0, or a
/// soft-deleted stream): create or bump by `$4` events. `$1..$3` name the stream, `$5` is the
/// expected version.
macro_rules! upsert_stream {
    () => {
        "INSERT INTO eventstore.streams AS s (tenant_id, aggregate_type, aggregate_id, version)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE
            SET version = s.version + $4, updated_at = statement_timestamp(), deleted_at = NULL
          WHERE NOT s.hard_deleted AND ($5::bigint IS NULL OR s.deleted_at IS NOT NULL OR s.version = 0)
         RETURNING s.version"
    };
}

/// `expected_version` -1 (must exist) or N (must be exactly at N): bump a live stream.
macro_rules! bump_stream {
    () => {
        "UPDATE eventstore.streams AS s
            SET version = s.version + $4, updated_at = statement_timestamp()
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3
            AND NOT s.hard_deleted AND s.deleted_at IS NULL
            AND (($5 = -1 AND s.version > 0) OR s.version = $5)
         RETURNING s.version"
    };
}

/// The insert both appends share, and what they return: the row and its version.
macro_rules! insert_events {
    () => {
        "INSERT INTO eventstore.events AS e (global_position, event_id, tenant_id, aggregate_type,
             aggregate_id, aggregate_version, event_type, schema_version, payload, metadata,
             correlation_id, causation_id, actor, occurred_at, recorded_at, transaction_id)"
    };
}

macro_rules! returning_appended {
    () => {
        "RETURNING ROW(e.event_id, e.aggregate_version, e.global_position, e.recorded_at)::eventstore.appended,
                   e.aggregate_version, e.global_position, e.recorded_at"
    };
}

/// One event, inserted only when the stream's version check (`v`, one row or none) passed: the
/// check and the insert are one statement, and a losing writer draws no position.
macro_rules! insert_one {
    ($stream:expr) => {
        concat!(
            "WITH v AS (", $stream, ") ", insert_events!(), "
             SELECT nextval('eventstore.events_global_position_seq'), $6, $1, $2, $3, v.version, $7, $8, $9,
                 coalesce($10, '{}'),
                 $11, $12, $13, coalesce($14::timestamptz, statement_timestamp()), statement_timestamp(),
                 pg_current_xact_id()
             FROM v
             ", returning_appended!()
        )
    };
}

const ONE_ARGS: &[pgrx::pg_sys::BuiltinOid] = &[
    TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, UUIDOID, TEXTOID, INT4OID, JSONBOID, JSONBOID, UUIDOID,
    UUIDOID, TEXTOID, TEXTOID,
];

static APPEND_ONE_UPSERT: Statement = Statement { sql: insert_one!(upsert_stream!()), args: ONE_ARGS, volatile: true };
static APPEND_ONE_BUMP: Statement = Statement { sql: insert_one!(bump_stream!()), args: ONE_ARGS, volatile: true };

/// A batch: ids, types and lifted metadata come as arrays from the validation; payloads and
/// metadata are taken straight from the caller's JSON array, walked once in step with them.
/// Inserted only when the version check passed, like one event.
macro_rules! insert_many {
    ($stream:expr) => {
        concat!(
            "WITH v AS (", $stream, ") ", insert_events!(), "
             SELECT nextval('eventstore.events_global_position_seq'), u.event_id, $1, $2, $3,
                 v.version - $4 + u.n, u.event_type, u.schema_version, u.x -> 'payload',
                 coalesce(nullif(u.x -> 'metadata', 'null'), '{}'),
                 u.correlation_id, u.causation_id, u.actor,
                 coalesce(u.occurred_at::timestamptz, statement_timestamp()), statement_timestamp(),
                 pg_current_xact_id()
             FROM v, ROWS FROM (jsonb_array_elements($6), unnest($7::uuid[]), unnest($8::text[]),
                             unnest($9::int[]), unnest($10::uuid[]), unnest($11::uuid[]),
                             unnest($12::text[]), unnest($13::text[]))
                  WITH ORDINALITY AS u(x, event_id, event_type, schema_version, correlation_id,
                                       causation_id, actor, occurred_at, n)
             ", returning_appended!()
        )
    };
}

const MANY_ARGS: &[pgrx::pg_sys::BuiltinOid] = &[
    TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, JSONBOID, UUIDARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
    UUIDARRAYOID, UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
];

static APPEND_MANY_UPSERT: Statement = Statement { sql: insert_many!(upsert_stream!()), args: MANY_ARGS, volatile: true };
static APPEND_MANY_BUMP: Statement = Statement { sql: insert_many!(bump_stream!()), args: MANY_ARGS, volatile: true };

/// Why a version check failed.
static STREAM_STATE: Statement = Statement {
    sql: "SELECT CASE WHEN s.deleted_at IS NULL THEN s.version ELSE 0 END, s.hard_deleted
          FROM eventstore.streams s
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};


/// What is appended besides the validated events: one payload, or the caller's whole batch.
#[derive(Clone, Copy)]
pub enum Body {
    One { payload: RawJsonb, metadata: Option<RawJsonb> },
    Batch(RawJsonb),
}

fn pg_uuid(id: uuid::Uuid) -> PgUuid {
    PgUuid::from_bytes(*id.as_bytes())
}

/// Where an appended event was stored.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub version: i64,
    pub position: i64,
    /// microseconds since 2000-01-01 UTC
    pub recorded_at: i64,
}

/// Checks the expected version and inserts `events` under the stream's row lock (src/append.rs
/// runs what follows an append). Returns the rows appended (or found again) and where each
/// event was stored (None for a re-send, which stored nothing).
pub fn insert(stream: &Stream, events: &[NewEvent], body: Body, expected: Option<i64>) -> Result<(Vec<Row>, Option<Vec<Placed>>)> {
    let context = caller_context();
    Spi::connect(|client| {
        if events.iter().any(|e| e.id_supplied) {
            run(client, &ENSURE_STREAM, &stream.key())?;
            run(client, &LOCK_STREAM, &stream.key())?;
            if let Some(original) = already_appended(client, context, stream, events)? {
                return Ok((original, None));
            }
        }
        let n = events.len() as i64;
        let upsert = matches!(expected, None | Some(0));
        let [tenant, aggregate_type, aggregate_id] = stream.key();
        // before the statement draws positions: Message DB's category reads stop below it
        super::horizon::guard(client)?;
        let table = match body {
            Body::One { payload, metadata } => {
                let e = &events[0];
                run(client, if upsert { &APPEND_ONE_UPSERT } else { &APPEND_ONE_BUMP }, &[
                    tenant,
                    aggregate_type,
                    aggregate_id,
                    n.into(),
                    expected.into(),
                    pg_uuid(e.event_id).into(),
                    e.event_type.as_str().into(),
                    e.schema_version.unwrap_or(1).into(),
                    payload.into(),
                    metadata.into(),
                    e.lifted.correlation_id.map(pg_uuid).into(),
                    e.lifted.causation_id.map(pg_uuid).into(),
                    e.lifted.actor.as_deref().into(),
                    e.lifted.occurred_at.as_deref().into(),
                ])?
            }
            Body::Batch(batch) => run(client, if upsert { &APPEND_MANY_UPSERT } else { &APPEND_MANY_BUMP }, &[
                tenant,
                aggregate_type,
                aggregate_id,
                n.into(),
                expected.into(),
                batch.into(),
                events.iter().map(|e| pg_uuid(e.event_id)).collect::<Vec<_>>().into(),
                events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>().into(),
                events.iter().map(|e| e.schema_version.unwrap_or(1)).collect::<Vec<_>>().into(),
                events.iter().map(|e| e.lifted.correlation_id.map(pg_uuid)).collect::<Vec<_>>().into(),
                events.iter().map(|e| e.lifted.causation_id.map(pg_uuid)).collect::<Vec<_>>().into(),
                events.iter().map(|e| e.lifted.actor.clone()).collect::<Vec<_>>().into(),
                events.iter().map(|e| e.lifted.occurred_at.clone()).collect::<Vec<_>>().into(),
            ])?,
        };
        let mut table = table;
        let mut rows = Vec::with_capacity(events.len());
        let mut placed = Vec::with_capacity(events.len());
        while table.next().is_some() {
            let row = table.get_datum_by_ordinal(1)?.ok_or_else(|| Error::new(Kind::Internal, "eventstore internal error: a null row"))?;
            rows.push(copy_composite(context, row));
            placed.push(Placed {
                version: table.get::<i64>(2)?.unwrap_or(0),
                position: table.get::<i64>(3)?.unwrap_or(0),
                recorded_at: table.get_datum_by_ordinal(4)?.map_or(0, |d| d.value() as i64),
            });
        }
        if rows.is_empty() {
            return Err(refused(client, stream, expected));
        }
        // a batch comes back in the order it was inserted, but nothing promises that
        placed.sort_by_key(|p| p.version);
        Ok((rows, Some(placed)))
    })
}

/// A re-send of events stored at exactly these positions of this stream returns the original
/// rows; any other overlap with stored event ids is a 23505.
fn already_appended(
    client: &SpiClient<'_>,
    context: pg_sys::MemoryContext,
    stream: &Stream,
    events: &[NewEvent],
) -> Result<Option<Vec<Row>>> {
    let ids: Vec<PgUuid> = events.iter().filter(|e| e.id_supplied).map(|e| pg_uuid(e.event_id)).collect();
    let [tenant, aggregate_type, aggregate_id] = stream.key();
    let table = run_generic(client, &FIND_EVENT_IDS, &[tenant, aggregate_type, aggregate_id, ids.into()])?;
    if table.is_empty() {
        return Ok(None);
    }
    let mut found = std::collections::HashMap::new();
    let mut table = table;
    while let Some(row) = table.next() {
        let id: String = row.get(1)?.unwrap_or_default();
        let same_stream: bool = row.get(2)?.unwrap_or(false);
        let version: i64 = row.get(3)?.unwrap_or(0);
        let appended = table.get_datum_by_ordinal(4)?.map(|d| copy_composite(context, d));
        found.insert(id, (same_stream, version, appended));
    }
    let mut original = Vec::with_capacity(events.len());
    let mut expected_version = None;
    for e in events {
        let id = e.event_id.to_string();
        let Some((same_stream, version, appended)) = found.remove(&id) else {
            return Err(Error::new(Kind::Duplicate, format!("batch for stream {stream} partly overlaps events already stored"))
                .detail(format!("event id {id} is new while other event ids of the batch are stored already"))
                .hint("Re-send exactly the original batch, or only new events."));
        };
        let in_place = same_stream && expected_version.is_none_or(|v| v == version);
        if !in_place {
            let where_ = if same_stream { format!("at version {version} of this stream") } else { "in another stream".into() };
            return Err(Error::new(Kind::Duplicate, format!("event id {id} already exists"))
                .detail(format!("event {id} is stored {where_}, not where this append would put it"))
                .hint("Give every new event a new event_id."));
        }
        expected_version = Some(version + 1);
        original.push(appended.ok_or_else(|| Error::new(Kind::Internal, "stored event without a row"))?);
    }
    Ok(Some(original))
}

/// Why the version check refused an append (no row came back): a hard-deleted stream (55000)
/// or a wrong expected version (23P01).
fn refused(client: &SpiClient<'_>, stream: &Stream, expected: Option<i64>) -> Error {
    match explain(client, stream, expected) {
        Ok(e) | Err(e) => e,
    }
}

fn explain(client: &SpiClient<'_>, stream: &Stream, expected: Option<i64>) -> Result<Error> {
    let state = run(client, &STREAM_STATE, &stream.key())?;
    let (actual, hard_deleted) = if state.is_empty() {
        (0, false)
    } else {
        let state = state.first();
        (state.get::<i64>(1)?.unwrap_or(0), state.get::<bool>(2)?.unwrap_or(false))
    };
    if hard_deleted {
        return Ok(Error::new(Kind::WrongState, format!("stream {stream} is deleted"))
            .detail(format!("stream {stream} was hard-deleted; its events stay in the log"))
            .hint("Append to a new stream."));
    }
    let wanted = match expected.unwrap_or_default() {
        0 => "no stream (0)".to_string(),
        -1 => "an existing stream (-1)".to_string(),
        v => format!("version {v}"),
    };
    Ok(Error::new(Kind::WrongExpectedVersion, format!("wrong expected version for stream {stream}"))
        .detail(format!("stream {stream}: expected {wanted}, actual version {actual}"))
        .hint("Reload the stream, decide again and append again."))
}
