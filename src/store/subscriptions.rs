//! Subscriptions: catch-up consumers whose checkpoint (a feed cursor) lives in the database.
//! Polling reads the feed after the checkpoint; acking moves it, never back.

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::Row;
use super::plans::{Statement, run};
use crate::error::{Error, Kind, Result};
use crate::feed::Cursor;

static CREATE: Statement = Statement {
    sql: "INSERT INTO eventstore.subscriptions (tenant_id, name, event_types, aggregate_types,
              checkpoint_xid, checkpoint_position)
          VALUES ($1, $2, $3, $4, $5::text::xid8, $6)
          ON CONFLICT (tenant_id, name) DO NOTHING",
    args: &[TEXTOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTOID, INT8OID],
    volatile: true,
};

static GET: Statement = Statement {
    sql: "SELECT s.checkpoint_xid::text, s.checkpoint_position, s.event_types, s.aggregate_types
          FROM eventstore.subscriptions s WHERE s.tenant_id = $1 AND s.name = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: false,
};

/// Moves the checkpoint forward only; returns the row when it moved.
static ACK: Statement = Statement {
    sql: "UPDATE eventstore.subscriptions s
             SET checkpoint_xid = $3::text::xid8, checkpoint_position = $4, updated_at = statement_timestamp()
           WHERE s.tenant_id = $1 AND s.name = $2
             AND (s.checkpoint_xid, s.checkpoint_position) < ($3::text::xid8, $4)
          RETURNING 1",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID],
    volatile: true,
};

static EXISTS: Statement = Statement {
    sql: "SELECT 1 FROM eventstore.subscriptions s WHERE s.tenant_id = $1 AND s.name = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

static DROP: Statement = Statement {
    sql: "DELETE FROM eventstore.subscriptions s WHERE s.tenant_id = $1 AND s.name = $2 RETURNING 1",
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

pub fn not_found(name: &str) -> Error {
    Error::new(Kind::NotFound, format!("subscription \"{name}\" does not exist"))
        .hint("Create it with eventstore.create_subscription().")
}

pub fn create(
    tenant: &str,
    name: &str,
    event_types: Option<Vec<String>>,
    aggregate_types: Option<Vec<String>>,
    from_end: bool,
) -> Result<String> {
    Spi::connect(|client| {
        let start = if from_end { super::read::feed_end(tenant)? } else { Cursor::START };
        let inserted = run(client, &CREATE, &[
            tenant.into(),
            name.into(),
            event_types.into(),
            aggregate_types.into(),
            start.transaction_id.to_string().into(),
            start.position.into(),
        ])?;
        if inserted.len() == 0 {
            return Err(Error::new(Kind::Duplicate, format!("subscription \"{name}\" already exists"))
                .hint("Drop it first, or poll the existing one."));
        }
        Ok(start.to_string())
    })
}

/// The subscription's checkpoint and filters.
pub struct Subscription {
    pub checkpoint: Cursor,
    pub event_types: Option<Vec<String>>,
    pub aggregate_types: Option<Vec<String>>,
}

pub fn get(tenant: &str, name: &str) -> Result<Subscription> {
    Spi::connect(|client| {
        let table = run(client, &GET, &[tenant.into(), name.into()])?;
        if table.is_empty() {
            return Err(not_found(name));
        }
        let row = table.first();
        let xid: String = row.get(1)?.unwrap_or_default();
        Ok(Subscription {
            checkpoint: Cursor { transaction_id: xid.parse().unwrap_or(0), position: row.get(2)?.unwrap_or(0) },
            event_types: row.get(3)?,
            aggregate_types: row.get(4)?,
        })
    })
}

pub fn poll(tenant: &str, name: &str, max_count: i32) -> Result<Vec<Row>> {
    let s = get(tenant, name)?;
    super::read::read_all(tenant, s.checkpoint, max_count, s.event_types, s.aggregate_types)
}

/// Moves the checkpoint to `cursor` if that is further on; returns whether it moved.
pub fn ack(tenant: &str, name: &str, cursor: Cursor) -> Result<bool> {
    // a cursor the feed cannot have returned would skip every event up to it
    let end = super::read::feed_end(tenant)?;
    if cursor > end {
        return Err(Error::invalid("cursor is beyond the end of the feed")
            .detail(format!("cursor is \"{cursor}\"; the feed ends at \"{end}\""))
            .hint("Acknowledge the cursor of the last event poll_subscription returned."));
    }
    Spi::connect(|client| {
        let moved = run(client, &ACK, &[
            tenant.into(),
            name.into(),
            cursor.transaction_id.to_string().into(),
            cursor.position.into(),
        ])?;
        if moved.len() > 0 {
            return Ok(true);
        }
        if run(client, &EXISTS, &[tenant.into(), name.into()])?.is_empty() {
            return Err(not_found(name));
        }
        Ok(false)
    })
}

pub fn drop(tenant: &str, name: &str) -> Result<()> {
    Spi::connect(|client| {
        if run(client, &DROP, &[tenant.into(), name.into()])?.is_empty() {
            return Err(not_found(name));
        }
        Ok(())
    })
}
