//! create_subscription, poll_subscription, ack_subscription, drop_subscription.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::datum::FeedRows;
use crate::error::Error;
use crate::feed::Cursor;
use crate::store::subscriptions::{self, Schema};
use crate::{input, tenant};

/// A named consumer of the feed with its checkpoint kept in the database; starts at the
/// beginning of the feed or at its current end. Returns the starting cursor.
#[pg_extern(volatile, parallel_unsafe, security_definer, name = "create_subscription")]
#[search_path(pg_catalog, pg_temp)]
fn create_group_subscription(
    name: Option<&str>,
    event_types: default!(Option<Vec<Option<String>>>, "NULL"),
    aggregate_types: default!(Option<Vec<Option<String>>>, "NULL"),
    start_from: default!(Option<&str>, "'beginning'"),
    consumer_group_size: default!(Option<i32>, 1),
) -> Result<String, ErrorReport> {
    create(name, event_types, aggregate_types, start_from, consumer_group_size, Schema::Groups)
}

fn create(
    name: Option<&str>,
    event_types: Option<Vec<Option<String>>>,
    aggregate_types: Option<Vec<Option<String>>>,
    start_from: Option<&str>,
    consumer_group_size: Option<i32>,
    schema: Schema,
) -> Result<String, ErrorReport> {
    let name = input::name("name", name)?;
    let event_types = input::no_nulls("event_types", event_types)?;
    let aggregate_types = input::no_nulls("aggregate_types", aggregate_types)?;
    let from_end = match start_from {
        Some("beginning") => false,
        Some("end") => true,
        other => {
            return Err(Error::invalid("start_from must be 'beginning' or 'end'")
                .detail(format!("start_from is {}", other.map_or("null".into(), |s| format!("'{s}'"))))
                .into());
        }
    };
    let group_size = match consumer_group_size {
        Some(n) if (1..=subscriptions::MAX_GROUP_SIZE).contains(&n) => n,
        other => {
            return Err(Error::invalid("consumer_group_size is out of range")
                .detail(format!(
                    "consumer_group_size is {}; it must be between 1 and {}",
                    other.map_or("null".into(), |n| n.to_string()),
                    subscriptions::MAX_GROUP_SIZE
                ))
                .into());
        }
    };
    Ok(subscriptions::create(&tenant::current()?, &name, event_types, aggregate_types, from_end, group_size, schema)?)
}

/// The next events after the subscription's checkpoint (which polling does not move).
#[pg_extern(name = "poll_subscription", sql = r#"
CREATE FUNCTION "poll_subscription"(
	"name" TEXT,
	"max_count" INT DEFAULT 100,
	"member" INT DEFAULT 0
) RETURNS SETOF eventstore.feed_event
STABLE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust: returns its rows materialized (src/datum.rs) */
AS 'MODULE_PATHNAME', 'poll_group_subscription_wrapper';
"#)]
fn poll_group_subscription(
    name: Option<&str>,
    max_count: default!(Option<i32>, 100),
    member: default!(Option<i32>, 0),
) -> Result<FeedRows, ErrorReport> {
    poll(name, max_count, member, Schema::Groups)
}

fn poll(
    name: Option<&str>,
    max_count: Option<i32>,
    member: Option<i32>,
    schema: Schema,
) -> Result<FeedRows, ErrorReport> {
    let name = input::name("name", name)?;
    let max_count = input::max_count(max_count)?;
    let member = input::required(member, "member")?;
    let rows = subscriptions::poll(&tenant::current()?, &name, max_count, member, schema)?;
    Ok(FeedRows(rows))
}

/// Moves the checkpoint to `cursor` (the cursor of the last event handled); never backwards.
/// Returns whether it moved.
#[pg_extern(volatile, parallel_unsafe, security_definer, name = "ack_subscription")]
#[search_path(pg_catalog, pg_temp)]
fn ack_group_subscription(
    name: Option<&str>,
    cursor: Option<&str>,
    member: default!(Option<i32>, 0),
) -> Result<bool, ErrorReport> {
    ack(name, cursor, member, Schema::Groups)
}

fn ack(name: Option<&str>, cursor: Option<&str>, member: Option<i32>, schema: Schema) -> Result<bool, ErrorReport> {
    let name = input::name("name", name)?;
    let cursor = Cursor::parse(input::required(cursor, "cursor")?)?;
    let member = input::required(member, "member")?;
    Ok(subscriptions::ack(&tenant::current()?, &name, cursor, member, schema)?)
}

/// The current tenant's own notification channel: LISTEN to it for the aggregate types each
/// appending commit touched (the shared `eventstore_events` channel only says `{}`).
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn notification_channel() -> Result<String, ErrorReport> {
    Ok(crate::notify::channel(&tenant::current()?)?)
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_subscription(name: Option<&str>) -> Result<(), ErrorReport> {
    let name = input::name("name", name)?;
    subscriptions::drop(&tenant::current()?, &name)?;
    Ok(())
}

// The 0.1.0 forms, under their 0.1.0 symbols: a 0.1.0 install calls them with fewer arguments
// until ALTER EXTENSION eventstore UPDATE replaces its functions.

#[pg_extern(sql = false)]
fn create_subscription(
    name: Option<&str>,
    event_types: Option<Vec<Option<String>>>,
    aggregate_types: Option<Vec<Option<String>>>,
    start_from: Option<&str>,
) -> Result<String, ErrorReport> {
    create(name, event_types, aggregate_types, start_from, Some(1), Schema::V1)
}

#[pg_extern(sql = false)]
fn poll_subscription(name: Option<&str>, max_count: Option<i32>) -> Result<FeedRows, ErrorReport> {
    poll(name, max_count, Some(0), Schema::V1)
}

#[pg_extern(sql = false)]
fn ack_subscription(name: Option<&str>, cursor: Option<&str>) -> Result<bool, ErrorReport> {
    ack(name, cursor, Some(0), Schema::V1)
}
