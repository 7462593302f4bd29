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

/// The rows of the SPI result a statement just returned, read in place: iterating a
/// `SpiTupleTable` deforms every column of every row into a new vector first, which a replay of
/// a long stream pays per event.
pub struct RawRows {
    table: *mut pg_sys::SPITupleTable,
    len: usize,
}

impl RawRows {
    /// The result `table` holds.
    ///
    /// # Safety
    /// Right after the statement of `table` ran, before any other SPI call (`SPI_tuptable` is
    /// then still its table); the rows stay valid until the SPI connection ends.
    pub unsafe fn of(table: &SpiTupleTable<'_>) -> RawRows {
        RawRows { table: unsafe { pg_sys::SPI_tuptable }, len: table.len() }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Gives the rows' memory back before the SPI connection ends (a result read in batches).
    ///
    /// # Safety
    /// Nothing refers to these rows any more, and the `SpiTupleTable` they came from is gone.
    pub unsafe fn free(self) {
        if !self.table.is_null() {
            unsafe { pg_sys::SPI_freetuptable(self.table) };
        }
    }

    /// Column `column` (from 1) of row `row` (from 0), None when it is null.
    pub fn datum(&self, row: usize, column: usize) -> Option<pg_sys::Datum> {
        assert!(row < self.len && !self.table.is_null());
        let column = std::num::NonZeroUsize::new(column).expect("columns count from 1");
        unsafe { pgrx::htup::heap_getattr_raw(*(*self.table).vals.add(row), column, (*self.table).tupdesc) }
    }

    /// The same, converted.
    pub fn get<T: pgrx::FromDatum>(&self, row: usize, column: usize) -> Option<T> {
        let datum = self.datum(row, column)?;
        let typoid = unsafe { (*(*(*self.table).tupdesc).attrs.as_ptr().add(column - 1)).atttypid };
        unsafe { T::from_polymorphic_datum(datum, false, typoid) }
    }
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
