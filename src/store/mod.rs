//! SQL text, kept plans and row mapping. Every statement is schema-qualified, takes `$n`
//! parameters and names the tenant explicitly: the callers run as the extension owner, who is
//! not subject to row-level security.

pub mod admin;
pub mod api_usage;
pub mod caller;
pub mod definition_cache;
pub mod definition_writes;
pub mod handlers;
pub mod horizon;
pub mod append;
pub mod plans;
pub mod projection_batches;
pub mod projections;
pub mod read;
pub mod redact;
pub mod state;
pub mod subscriptions;
pub mod versioning;
pub mod webhook_delivery;
pub mod webhook_queue;

use pgrx::memcxt::PgMemoryContexts;
use pgrx::pg_sys;
use pgrx::spi::SpiTupleTable;

use crate::error::{Error, Kind, Result};

/// A composite row (eventstore.appended, eventstore.event, eventstore.feed_event) as a datum
/// copied out of SPI's memory, ready to be returned. Plain datums, not `PgHeapTuple`s: each of
/// those holds a tuple descriptor reference in the resource owner, and thousands of them make
/// every further reference slower.
pub type Row = pg_sys::Datum;

/// The columns of an `eventstore.event`, in the type's order, from `eventstore.events e`.
macro_rules! event_columns {
    () => {
        "e.global_position, e.event_id, e.tenant_id, e.aggregate_type, e.aggregate_id,
         e.aggregate_version, e.event_type, e.schema_version, e.payload, e.metadata,
         e.correlation_id, e.causation_id, e.actor, e.occurred_at, e.recorded_at,
         e.transaction_id, e.redacted_at"
    };
}

/// The feed after a cursor: only transactions below the snapshot's xmin are final, so only
/// their events are returned, in (transaction id, position) order, which never changes once
/// returned. `$1` tenant, `$2`/`$3` the cursor, `$4`/`$5` the event and aggregate type filters,
/// `$6` the limit; `$extra` narrows it further (a consumer group member's streams).
macro_rules! feed_query {
    ($extra:expr) => {
        concat!(
            "SELECT ROW(",
            $crate::store::event_columns!(),
            ",
                         encode(xid8send(e.transaction_id), 'hex') || '-'
                           || encode(int8send(e.global_position), 'hex'))::eventstore.feed_event
              FROM eventstore.events e
              WHERE e.tenant_id = $1
                AND (e.transaction_id, e.global_position) > ($2::text::xid8, $3)
                AND e.transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
                AND ($4::text[] IS NULL OR e.event_type = ANY ($4))
                AND ($5::text[] IS NULL OR e.aggregate_type = ANY ($5))
                ",
            $extra,
            "
              ORDER BY e.transaction_id, e.global_position
              LIMIT $6"
        )
    };
}
pub(crate) use event_columns;
pub(crate) use feed_query;

/// The memory context a #[pg_extern] was called in: what it returns must live there, not in
/// SPI's context (freed when SPI finishes) nor in the transaction's (which would grow with
/// every call of a long transaction).
pub fn caller_context() -> pg_sys::MemoryContext {
    PgMemoryContexts::CurrentMemoryContext.value()
}

/// Copies a composite datum into `context`.
pub fn copy_composite(context: pg_sys::MemoryContext, datum: pg_sys::Datum) -> Row {
    // a composite datum is a plain varlena: its detoasted copy is a copy
    unsafe {
        PgMemoryContexts::For(context)
            .switch_to(|_| pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr())))
    }
}

/// Copies the composite in column `ordinal` of every row of an SPI result into `context`.
pub fn composites_in(context: pg_sys::MemoryContext, mut table: SpiTupleTable<'_>, ordinal: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::with_capacity(table.len());
    while table.next().is_some() {
        let datum = table.get_datum_by_ordinal(ordinal)?;
        let datum = datum.ok_or_else(|| Error::new(Kind::Internal, "eventstore internal error: a null row"))?;
        rows.push(copy_composite(context, datum));
    }
    Ok(rows)
}

/// The stream a call is about, for its tenant.
#[derive(Debug, Clone)]
pub struct Stream {
    pub tenant: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl Stream {
    /// The stream's key as the first three parameters of a statement: tenant, aggregate type,
    /// aggregate id.
    pub fn key(&self) -> [pgrx::datum::DatumWithOid<'_>; 3] {
        [self.tenant.as_str().into(), self.aggregate_type.as_str().into(), self.aggregate_id.as_str().into()]
    }

    /// The key followed by more parameters.
    pub fn key_and<'a>(&'a self, more: impl IntoIterator<Item = pgrx::datum::DatumWithOid<'a>>) -> Vec<pgrx::datum::DatumWithOid<'a>> {
        self.key().into_iter().chain(more).collect()
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}
