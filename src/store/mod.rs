//! SQL text, kept plans and row mapping. Every statement is schema-qualified, takes `$n`
//! parameters and names the tenant explicitly: the callers run as the extension owner, who is
//! not subject to row-level security.

pub mod admin;
pub mod append;
pub mod plans;
pub mod read;

use pgrx::AllocatedByRust;
use pgrx::heap_tuple::PgHeapTuple;

/// A composite row (eventstore.appended, eventstore.event, eventstore.feed_event) copied out of
/// SPI's memory, ready to be returned.
pub type Row = PgHeapTuple<'static, AllocatedByRust>;

/// The stream a call is about, for its tenant.
#[derive(Debug, Clone)]
pub struct Stream {
    pub tenant: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}
