//! The position horizon: the global position below which no transaction can still commit an
//! event, so that a reader in global-position order (Message DB's category reads) never skips.
//!
//! Positions are drawn from a sequence (no cache), so they come out in drawing order, not in
//! commit order. Before a transaction draws its first position it takes a shared advisory lock
//! whose key is a lower bound of every position it will draw (the sequence's last value plus
//! one, read before drawing). The lock is released after the transaction's commit (or abort) is
//! visible. A reader first reads the sequence, then the keys of the locks held, and only then
//! takes the snapshot it reads with: every position below the smallest of those is final, and
//! the events at those positions are either visible to that snapshot or never will be.
//! No writer waits for another or for a reader; the lock is never asked for in exclusive mode.

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::plans::{Statement, run};
use crate::error::Result;

/// The fourth field of the lock tag: pg_advisory_lock's bigint form uses 1 and its int4 pair
/// form 2, so 3 is reachable by no SQL call.
const HORIZON_LOCK_SUBID: u16 = 3;

/// The last position drawn (0 before the first).
static LAST_DRAWN: Statement = Statement {
    sql: "SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END
          FROM eventstore.events_global_position_seq s",
    args: &[],
    volatile: true,
};

/// The smallest key of the horizon locks other transactions hold in this database (the
/// reader's own events are visible to it, and its own later draws come after the sequence value
/// it read first).
static LOWEST_HELD: Statement = Statement {
    sql: "SELECT min((l.classid::int8 << 32) | l.objid::int8) FROM pg_catalog.pg_locks l
          WHERE l.locktype = 'advisory' AND l.objsubid = 3 AND l.database = $1
            AND l.pid <> pg_catalog.pg_backend_pid()",
    args: &[OIDOID],
    volatile: true,
};

fn tag(key: i64) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (key >> 32) as u32,
        locktag_field3: key as u32,
        locktag_field4: HORIZON_LOCK_SUBID,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Called before an append draws positions: holds the transaction's horizon lock. Its first
/// key stays valid for every later draw of the transaction; taking it again is a lookup in the
/// backend's local lock table (or takes it anew after a rolled-back subtransaction released it).
pub fn guard(client: &pgrx::spi::SpiClient<'_>) -> Result<()> {
    thread_local! {
        static HELD: std::cell::Cell<(u32, i64)> = const { std::cell::Cell::new((0, 0)) };
    }
    // the transaction's local id: set when it starts, before it has an xid
    let xid = unsafe { (*pg_sys::MyProc).lxid };
    let (held_xid, held_key) = HELD.with(|h| h.get());
    let key = if xid != 0 && held_xid == xid {
        held_key
    } else {
        let key = last_drawn_now(client)? + 1;
        HELD.with(|h| h.set((xid, key)));
        key
    };
    unsafe { pg_sys::LockAcquire(&tag(key), pg_sys::ShareLock as i32, false, false) };
    Ok(())
}

/// The last position drawn, read straight from the sequence (no statement: this runs once per
/// appending transaction); through SQL when the sequence cannot be found by name.
fn last_drawn_now(client: &pgrx::spi::SpiClient<'_>) -> Result<i64> {
    let sequence = crate::cache::table_oid(c"events_global_position_seq");
    if sequence == pg_sys::InvalidOid {
        return last_drawn(client);
    }
    let value: Option<i64> = unsafe { pgrx::direct_function_call(pg_sys::pg_sequence_last_value, &[Some(pg_sys::Datum::from(sequence))]) };
    Ok(value.unwrap_or(0))
}

fn last_drawn(client: &pgrx::spi::SpiClient<'_>) -> Result<i64> {
    Ok(run(client, &LAST_DRAWN, &[])?.first().get_one::<i64>()?.unwrap_or(0))
}

/// The first position that is not yet final. Read it in one statement and read the events
/// below it in a later one (a later snapshot): in that order the read skips nothing.
pub fn position() -> Result<i64> {
    Spi::connect(|client| {
        let drawn = last_drawn(client)?;
        let database = unsafe { pg_sys::MyDatabaseId };
        let held = run(client, &LOWEST_HELD, &[database.into()])?.first().get_one::<i64>()?;
        Ok(held.map_or(drawn + 1, |h| h.min(drawn + 1)))
    })
}
