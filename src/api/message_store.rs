//! The Rust half of the Message DB façade (schema `message_store`, sql/message_store.sql):
//! `write_message` appends through the same path as append_event, and category reads ask for
//! the position horizon. See docs/architecture.md.

use pgrx::Uuid as PgUuid;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::datum::RawJsonb;
use crate::error::{Error, Kind, Result};
use crate::input::{self, Lifted, NewEvent};
use crate::append::append;
use crate::store::append::Body;
use crate::store::{Stream, horizon, read};

/// message_store.write_message: appends one event to stream `<category>-<id>` (aggregate type
/// and id) in the current tenant and returns its Message DB position (version - 1). Message
/// DB's expected version is a position too: -1 for "no stream yet".
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _write_message(
    id: Option<PgUuid>,
    stream_name: Option<&str>,
    message_type: Option<&str>,
    data: Option<RawJsonb>,
    metadata: Option<RawJsonb>,
    expected_version: Option<i64>,
) -> Result<i64, ErrorReport> {
    let name = crate::input::required(stream_name, "stream_name")?;
    let (category, stream_id) = split(name)?;
    let stream = super::stream(Some(category), Some(stream_id))?;
    let event_type = input::name("type", message_type)?;
    let (payload, _) = super::append::object("data", data)?;
    payload.check_depth("data")?;
    let metadata = match metadata {
        None => None,
        Some(m) => {
            let (m, _) = super::append::object("metadata", Some(m))?;
            m.check_depth("metadata")?;
            Some(m)
        }
    };
    let lifted = match metadata {
        // Message DB's own keys are camelCase and lift nothing; eventstore's are lifted as usual
        Some(m) => input::lift("metadata", input::object("metadata", Some(&m.value("metadata")?))?)?,
        None => Lifted::default(),
    };
    let expected = match expected_version {
        None => None,
        Some(-1) => Some(0),
        Some(n) if n >= 0 => Some(n + 1),
        Some(n) => return Err(wrong_version(&stream, name, n).into()),
    };
    let mut event = NewEvent::new(event_type, id.map(|id| uuid::Uuid::from_bytes(*id.as_bytes())), None, lifted);
    // Message DB refuses a message id that exists (23505), which the unique index on event_id
    // does too; the re-send check of append_event would cost a lock and a lookup per message
    event.id_supplied = false;
    super::append::check_schema(&stream.tenant, &mut event, "data", || payload.value("data"))?;
    let body = Body::One { payload, metadata };
    match append(&stream, std::slice::from_ref(&event), body, expected) {
        Ok(mut rows) => {
            let row = rows.pop().expect("one event appended");
            let row = unsafe { pgrx::heap_tuple::PgHeapTuple::from_composite_datum(row) };
            let version: Option<i64> = row
                .get_by_name("aggregate_version")
                .map_err(|e| Error::new(Kind::Internal, format!("eventstore internal error: {e}")))?;
            Ok(version.unwrap_or(0) - 1)
        }
        Err(e) if e.kind == Kind::WrongExpectedVersion => Err(wrong_version(&stream, name, expected_version.unwrap_or(0)).into()),
        Err(e) => Err(e.into()),
    }
}

/// Message DB's error for a wrong expected version, word for word (its clients parse it).
fn wrong_version(stream: &Stream, name: &str, expected: i64) -> Error {
    let actual = read::stream_version(stream).map_or(-1, |v| v - 1);
    Error::new(Kind::MessageStore, format!("Wrong expected version: {expected} (Stream: {name}, Stream Version: {actual})"))
}

/// `account-123` as (`account`, `123`): the category up to the first `-`, the id after it.
fn split(name: &str) -> Result<(&str, &str)> {
    name.split_once('-').ok_or_else(|| {
        Error::invalid("stream name has no id")
            .detail(format!("stream name is \"{name}\"; a stream name is a category and an id joined by '-'"))
            .hint("Write to a stream such as 'account-123'; a name without '-' is a category.")
    })
}

/// The first global position that is not yet final (see store/horizon.rs): a category read
/// returns only events below it, read with a later snapshot.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _position_horizon() -> Result<i64, ErrorReport> {
    Ok(horizon::position()?)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn stream_names_split_at_the_first_dash() {
        assert_eq!(split("account-123").unwrap(), ("account", "123"));
        assert_eq!(split("account:command-1+2").unwrap(), ("account:command", "1+2"));
        assert_eq!(split("account-a-b").unwrap(), ("account", "a-b"));
        assert!(split("account").is_err());
    }
}
