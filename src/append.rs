//! What an append does, in order (docs/architecture.md tells the whole life of an append):
//! the version check and the insert (src/store/append.rs), then in the same transaction the
//! writer mark for `feed_lag()`, the commit notification, the webhook deliveries of the
//! tenant's matching endpoints, the inline projections and a snapshot that became due. A
//! failure of any step fails the append, and nothing of it remains.

use crate::error::Result;
use crate::input::NewEvent;
use crate::store::append::{Body, insert};
use crate::store::{Row, Stream, projections, state, webhook_queue};

/// Appends `events` to `stream` as one step of the caller's transaction.
pub fn append(stream: &Stream, events: &[NewEvent], body: Body, expected: Option<i64>) -> Result<Vec<Row>> {
    let (rows, placed) = insert(stream, events, body, expected)?;
    // a re-send found its events stored: everything below happened when they were appended
    let Some(placed) = placed else { return Ok(rows) };
    let last = placed.last().map_or(0, |p| p.version);
    let first = last - events.len() as i64 + 1;
    crate::tenant::mark_writing(&stream.tenant);
    crate::notify::appended(&stream.tenant, &stream.aggregate_type);
    webhook_queue::queue_appended(stream, events, &placed, body)?;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    projections::run_inline(stream, first, last, &types)?;
    state::snapshot_after_append(stream, first - 1, last)?;
    Ok(rows)
}
