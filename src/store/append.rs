//! Appending: the version check under the stream's row lock, idempotent re-sends, and the
//! insert. Positions are drawn only after the check, so a losing writer leaves no gap.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid as PgUuid;

use super::plans::{Statement, run};
use super::{Row, Stream, caller_context, composites_in, copy_composite, state};
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
/// soft-deleted stream): create or bump.
static UPSERT_STREAM: Statement = Statement {
    sql: "INSERT INTO eventstore.streams AS s (tenant_id, aggregate_type, aggregate_id, version)
          VALUES ($1, $2, $3, $4)
          ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE
             SET version = s.version + $4, updated_at = statement_timestamp(), deleted_at = NULL
           WHERE NOT s.hard_deleted AND ($5::bigint IS NULL OR s.deleted_at IS NOT NULL OR s.version = 0)
          RETURNING s.version",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID],
    volatile: true,
};

/// `expected_version` -1 (must exist) or N (must be exactly at N): bump a live stream.
static BUMP_STREAM: Statement = Statement {
    sql: "UPDATE eventstore.streams AS s
             SET version = s.version + $4, updated_at = statement_timestamp()
           WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3
             AND NOT s.hard_deleted AND s.deleted_at IS NULL
             AND (($5 = -1 AND s.version > 0) OR s.version = $5)
          RETURNING s.version",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID],
    volatile: true,
};

/// Why a version check failed.
static STREAM_STATE: Statement = Statement {
    sql: "SELECT CASE WHEN s.deleted_at IS NULL THEN s.version ELSE 0 END, s.hard_deleted
          FROM eventstore.streams s
          WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};


static INSERT_ONE: Statement = Statement {
    sql: "INSERT INTO eventstore.events AS e (global_position, event_id, tenant_id, aggregate_type,
              aggregate_id, aggregate_version, event_type, schema_version, payload, metadata,
              correlation_id, causation_id, actor, occurred_at, recorded_at, transaction_id)
          VALUES (nextval('eventstore.events_global_position_seq'), $1, $2, $3, $4, $5, $6, $7, $8,
              coalesce($9, '{}'),
              $10, $11, $12, coalesce($13::timestamptz, statement_timestamp()), statement_timestamp(),
              pg_current_xact_id())
          RETURNING ROW(e.event_id, e.aggregate_version, e.global_position, e.recorded_at)::eventstore.appended",
    args: &[
        UUIDOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, INT4OID, JSONBOID, JSONBOID, UUIDOID,
        UUIDOID, TEXTOID, TEXTOID,
    ],
    volatile: true,
};

/// A batch: ids, types and lifted metadata come as arrays from the validation; payloads and
/// metadata are taken straight from the caller's JSON array, walked once in step with them.
static INSERT_MANY: Statement = Statement {
    sql: "INSERT INTO eventstore.events AS e (global_position, event_id, tenant_id, aggregate_type,
              aggregate_id, aggregate_version, event_type, schema_version, payload, metadata,
              correlation_id, causation_id, actor, occurred_at, recorded_at, transaction_id)
          SELECT nextval('eventstore.events_global_position_seq'), u.event_id, $1, $2, $3,
              $4 + u.n - 1, u.event_type, u.schema_version, u.x -> 'payload',
              coalesce(nullif(u.x -> 'metadata', 'null'), '{}'),
              u.correlation_id, u.causation_id, u.actor,
              coalesce(u.occurred_at::timestamptz, statement_timestamp()), statement_timestamp(),
              pg_current_xact_id()
          FROM ROWS FROM (jsonb_array_elements($5), unnest($6::uuid[]), unnest($7::text[]),
                          unnest($8::int[]), unnest($9::uuid[]), unnest($10::uuid[]),
                          unnest($11::text[]), unnest($12::text[]))
               WITH ORDINALITY AS u(x, event_id, event_type, schema_version, correlation_id,
                                    causation_id, actor, occurred_at, n)
          RETURNING ROW(e.event_id, e.aggregate_version, e.global_position, e.recorded_at)::eventstore.appended",
    args: &[
        TEXTOID, TEXTOID, TEXTOID, INT8OID, JSONBOID, UUIDARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
        UUIDARRAYOID, UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
    ],
    volatile: true,
};

/// What is appended besides the validated events: one payload, or the caller's whole batch.
pub enum Body {
    One { payload: RawJsonb, metadata: Option<RawJsonb> },
    Batch(RawJsonb),
}

fn pg_uuid(id: uuid::Uuid) -> PgUuid {
    PgUuid::from_bytes(*id.as_bytes())
}

fn key(stream: &Stream) -> [DatumWithOid<'_>; 3] {
    [
        stream.tenant.as_str().into(),
        stream.aggregate_type.as_str().into(),
        stream.aggregate_id.as_str().into(),
    ]
}

/// Appends `events` to `stream` as one step of the caller's transaction, then takes the
/// snapshot the append made due, if any.
pub fn append(stream: &Stream, events: &[NewEvent], body: Body, expected: Option<i64>) -> Result<Vec<Row>> {
    let (rows, last) = insert(stream, events, body, expected)?;
    if let Some(last) = last {
        crate::tenant::mark_writing(&stream.tenant);
        crate::notify::appended(&stream.tenant, &stream.aggregate_type);
        super::projections::run_inline(stream, last - events.len() as i64 + 1, last)?;
        state::snapshot_after_append(stream, last - events.len() as i64, last)?;
    }
    Ok(rows)
}

/// The rows appended (or found again) and the stream's new version (None for a re-send).
fn insert(stream: &Stream, events: &[NewEvent], body: Body, expected: Option<i64>) -> Result<(Vec<Row>, Option<i64>)> {
    let context = caller_context();
    Spi::connect(|client| {
        if events.iter().any(|e| e.id_supplied) {
            run(client, &ENSURE_STREAM, &key(stream))?;
            run(client, &LOCK_STREAM, &key(stream))?;
            if let Some(original) = already_appended(client, context, stream, events)? {
                return Ok((original, None));
            }
        }
        let last = reserve(client, stream, events.len() as i64, expected)?;
        let first = last - events.len() as i64 + 1;
        super::horizon::guard(client)?;
        let table = match body {
            Body::One { payload, metadata } => {
                let e = &events[0];
                let [tenant, aggregate_type, aggregate_id] = key(stream);
                run(client, &INSERT_ONE, &[
                    pg_uuid(e.event_id).into(),
                    tenant,
                    aggregate_type,
                    aggregate_id,
                    first.into(),
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
            Body::Batch(batch) => {
                let [tenant, aggregate_type, aggregate_id] = key(stream);
                run(client, &INSERT_MANY, &[
                    tenant,
                    aggregate_type,
                    aggregate_id,
                    first.into(),
                    batch.into(),
                    events.iter().map(|e| pg_uuid(e.event_id)).collect::<Vec<_>>().into(),
                    events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>().into(),
                    events.iter().map(|e| e.schema_version.unwrap_or(1)).collect::<Vec<_>>().into(),
                    events.iter().map(|e| e.lifted.correlation_id.map(pg_uuid)).collect::<Vec<_>>().into(),
                    events.iter().map(|e| e.lifted.causation_id.map(pg_uuid)).collect::<Vec<_>>().into(),
                    events.iter().map(|e| e.lifted.actor.clone()).collect::<Vec<_>>().into(),
                    events.iter().map(|e| e.lifted.occurred_at.clone()).collect::<Vec<_>>().into(),
                ])?
            }
        };
        Ok((composites_in(context, table, 1)?, Some(last)))
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
    let [tenant, aggregate_type, aggregate_id] = key(stream);
    let table = run(client, &FIND_EVENT_IDS, &[tenant, aggregate_type, aggregate_id, ids.into()])?;
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

/// Checks `expected` and moves the stream's version on by `n` under its row lock; returns the
/// new version.
fn reserve(client: &SpiClient<'_>, stream: &Stream, n: i64, expected: Option<i64>) -> Result<i64> {
    let [tenant, aggregate_type, aggregate_id] = key(stream);
    let args = [tenant, aggregate_type, aggregate_id, n.into(), expected.into()];
    let stmt = match expected {
        None | Some(0) => &UPSERT_STREAM,
        Some(_) => &BUMP_STREAM,
    };
    let table = run(client, stmt, &args)?;
    if !table.is_empty() {
        return table.first().get_one::<i64>()?.ok_or_else(|| Error::new(Kind::Internal, "stream without a version"));
    }
    let state = run(client, &STREAM_STATE, &key(stream))?;
    let (actual, hard_deleted) = if state.is_empty() {
        (0, false)
    } else {
        let state = state.first();
        (state.get::<i64>(1)?.unwrap_or(0), state.get::<bool>(2)?.unwrap_or(false))
    };
    if hard_deleted {
        return Err(Error::new(Kind::WrongState, format!("stream {stream} is deleted"))
            .detail(format!("stream {stream} was hard-deleted; its events stay in the log"))
            .hint("Append to a new stream."));
    }
    let wanted = match expected.unwrap_or_default() {
        0 => "no stream (0)".to_string(),
        -1 => "an existing stream (-1)".to_string(),
        v => format!("version {v}"),
    };
    Err(Error::new(Kind::WrongExpectedVersion, format!("wrong expected version for stream {stream}"))
        .detail(format!("stream {stream}: expected {wanted}, actual version {actual}"))
        .hint("Reload the stream, decide again and append again."))
}
