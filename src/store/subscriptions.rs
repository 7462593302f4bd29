//! Subscriptions: catch-up consumers whose checkpoint (a feed cursor) lives in the database.
//! Polling reads the feed after the checkpoint; acking moves it, never back. A consumer group
//! of n members splits the streams as Message DB does (`abs(mod(hash_64(cardinal_id(stream)),
//! n))`), each member with its own checkpoint: member 0's in the subscription's row, the others'
//! in eventstore.subscription_members.

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::plans::{Statement, run, run_ordered};
use super::{Row, caller_context, composites_in, feed_query};
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

static CREATE_GROUP: Statement = Statement {
    sql: "INSERT INTO eventstore.subscriptions (tenant_id, name, event_types, aggregate_types,
              checkpoint_xid, checkpoint_position, consumer_group_size)
          VALUES ($1, $2, $3, $4, $5::text::xid8, $6, $7)
          ON CONFLICT (tenant_id, name) DO NOTHING",
    args: &[TEXTOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTOID, INT8OID, INT4OID],
    volatile: true,
};

static CREATE_MEMBERS: Statement = Statement {
    sql: "INSERT INTO eventstore.subscription_members (tenant_id, name, member, checkpoint_xid,
              checkpoint_position)
          SELECT $1, $2, m, $3::text::xid8, $4 FROM generate_series(1, $5 - 1) AS m",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT4OID],
    volatile: true,
};

/// The subscription (0.1.0's columns only: see `Schema`).
static GET: Statement = Statement {
    sql: "SELECT s.checkpoint_xid::text, s.checkpoint_position, s.event_types, s.aggregate_types, 1
          FROM eventstore.subscriptions s WHERE s.tenant_id = $1 AND s.name = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: false,
};

/// The subscription and the checkpoint of member $3.
static GET_GROUP: Statement = Statement {
    sql: "SELECT CASE WHEN $3 = 0 THEN s.checkpoint_xid ELSE m.checkpoint_xid END::text,
                 CASE WHEN $3 = 0 THEN s.checkpoint_position ELSE m.checkpoint_position END,
                 s.event_types, s.aggregate_types, s.consumer_group_size
          FROM eventstore.subscriptions s
          LEFT JOIN eventstore.subscription_members m
            ON m.tenant_id = s.tenant_id AND m.name = s.name AND m.member = $3
          WHERE s.tenant_id = $1 AND s.name = $2",
    args: &[TEXTOID, TEXTOID, INT4OID],
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

/// The same for member $5 (1 or more) of a consumer group.
static ACK_MEMBER: Statement = Statement {
    sql: "UPDATE eventstore.subscription_members m
             SET checkpoint_xid = $3::text::xid8, checkpoint_position = $4, updated_at = statement_timestamp()
           WHERE m.tenant_id = $1 AND m.name = $2 AND m.member = $5
             AND (m.checkpoint_xid, m.checkpoint_position) < ($3::text::xid8, $4)
          RETURNING 1",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT4OID],
    volatile: true,
};

/// The feed (as READ_ALL in store/read.rs) restricted to the streams of member $8 of $7.
static READ_MEMBER: Statement = Statement {
    sql: feed_query!("AND abs(mod(message_store.hash_64(message_store.cardinal_id(e.aggregate_type || '-' || e.aggregate_id)), $7)) = $8"),
    args: &[TEXTOID, TEXTOID, INT8OID, TEXTARRAYOID, TEXTARRAYOID, INT4OID, INT4OID, INT4OID],
    volatile: false,
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

/// The largest consumer group.
pub const MAX_GROUP_SIZE: i32 = 1000;

/// Which schema the caller's SQL functions come from: a 0.1.0 install runs the new library
/// with 0.1.0's tables until ALTER EXTENSION eventstore UPDATE, and its calls (which name no
/// group or member) must use 0.1.0's columns only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    V1,
    Groups,
}

pub fn create(
    tenant: &str,
    name: &str,
    event_types: Option<Vec<String>>,
    aggregate_types: Option<Vec<String>>,
    from_end: bool,
    group_size: i32,
    schema: Schema,
) -> Result<String> {
    Spi::connect(|client| {
        let start = if from_end { super::read::feed_end(tenant)? } else { Cursor::START };
        let mut args = vec![
            tenant.into(),
            name.into(),
            event_types.into(),
            aggregate_types.into(),
            start.transaction_id.to_string().into(),
            start.position.into(),
        ];
        let stmt = match schema {
            Schema::V1 => &CREATE,
            Schema::Groups => {
                args.push(group_size.into());
                &CREATE_GROUP
            }
        };
        let inserted = run(client, stmt, &args)?;
        if inserted.len() == 0 {
            return Err(Error::new(Kind::Duplicate, format!("subscription \"{name}\" already exists"))
                .hint("Drop it first, or poll the existing one."));
        }
        if group_size > 1 {
            run(client, &CREATE_MEMBERS, &[
                tenant.into(),
                name.into(),
                start.transaction_id.to_string().into(),
                start.position.into(),
                group_size.into(),
            ])?;
        }
        Ok(start.to_string())
    })
}

/// A member's checkpoint and the subscription's filters.
pub struct Subscription {
    pub checkpoint: Cursor,
    pub event_types: Option<Vec<String>>,
    pub aggregate_types: Option<Vec<String>>,
    pub group_size: i32,
}

pub fn get(tenant: &str, name: &str, member: i32, schema: Schema) -> Result<Subscription> {
    Spi::connect(|client| {
        let table = match schema {
            Schema::V1 => run(client, &GET, &[tenant.into(), name.into()])?,
            Schema::Groups => run(client, &GET_GROUP, &[tenant.into(), name.into(), member.into()])?,
        };
        if table.is_empty() {
            return Err(not_found(name));
        }
        let row = table.first();
        let group_size: i32 = row.get(5)?.unwrap_or(1);
        if member < 0 || member >= group_size {
            return Err(Error::invalid(format!("subscription \"{name}\" has no consumer group member {member}"))
                .detail(format!("its consumer group has {group_size} member(s), 0 to {}", group_size - 1))
                .hint("Pass a member between 0 and consumer_group_size - 1."));
        }
        let xid: String = row.get(1)?.unwrap_or_default();
        Ok(Subscription {
            checkpoint: Cursor { transaction_id: xid.parse().unwrap_or(0), position: row.get(2)?.unwrap_or(0) },
            event_types: row.get(3)?,
            aggregate_types: row.get(4)?,
            group_size,
        })
    })
}

pub fn poll(tenant: &str, name: &str, max_count: i32, member: i32, schema: Schema) -> Result<Vec<Row>> {
    let s = get(tenant, name, member, schema)?;
    if s.group_size == 1 {
        return super::read::read_all(tenant, s.checkpoint, max_count, s.event_types, s.aggregate_types);
    }
    let context = caller_context();
    let mut rows = Spi::connect(|client| {
        let table = run_ordered(client, &READ_MEMBER, &[
            tenant.into(),
            s.checkpoint.transaction_id.to_string().into(),
            s.checkpoint.position.into(),
            s.event_types.into(),
            s.aggregate_types.into(),
            max_count.into(),
            s.group_size.into(),
            member.into(),
        ])?;
        composites_in(context, table, 1)
    })?;
    super::read::upcast_rows_marked(tenant, &mut rows)?;
    Ok(rows)
}

/// Moves member `member`'s checkpoint to `cursor` if that is further on; returns whether it moved.
pub fn ack(tenant: &str, name: &str, cursor: Cursor, member: i32, schema: Schema) -> Result<bool> {
    if member != 0 {
        // the member must exist in the subscription's group
        get(tenant, name, member, schema)?;
    }
    // a cursor the feed cannot have returned would skip every event up to it
    let end = super::read::feed_end(tenant)?;
    if cursor > end {
        return Err(Error::invalid("cursor is beyond the end of the feed")
            .detail(format!("cursor is \"{cursor}\"; the feed ends at \"{end}\""))
            .hint("Acknowledge the cursor of the last event poll_subscription returned."));
    }
    Spi::connect(|client| {
        let moved = if member == 0 {
            run(client, &ACK, &[
                tenant.into(),
                name.into(),
                cursor.transaction_id.to_string().into(),
                cursor.position.into(),
            ])?
        } else {
            run(client, &ACK_MEMBER, &[
                tenant.into(),
                name.into(),
                cursor.transaction_id.to_string().into(),
                cursor.position.into(),
                member.into(),
            ])?
        };
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
