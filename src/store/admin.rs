//! Statistics, feed lag and stream deletion.

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::Stream;
use super::plans::{Statement, run};
use crate::error::{Error, Kind, Result};

static STATS: Statement = Statement {
    sql: "WITH e AS (SELECT * FROM eventstore.events WHERE tenant_id = $1),
               s AS (SELECT * FROM eventstore.streams WHERE tenant_id = $1)
          SELECT jsonb_build_object(
            'tenant_id', $1,
            'total_events', (SELECT count(*) FROM e),
            'total_streams', (SELECT count(*) FROM s WHERE s.deleted_at IS NULL),
            'deleted_streams', (SELECT count(*) FROM s WHERE s.deleted_at IS NOT NULL),
            'event_types', (SELECT count(DISTINCT event_type) FROM e),
            'aggregate_types', (SELECT count(DISTINCT aggregate_type) FROM s),
            'events_by_type', coalesce((SELECT jsonb_object_agg(event_type, n)
                 FROM (SELECT event_type, count(*) AS n FROM e GROUP BY event_type) t), '{}'),
            'events_by_aggregate_type', coalesce((SELECT jsonb_object_agg(aggregate_type, n)
                 FROM (SELECT aggregate_type, count(*) AS n FROM e GROUP BY aggregate_type) t), '{}'),
            'redacted_events', (SELECT count(*) FROM e WHERE e.redacted_at IS NOT NULL),
            'snapshots', (SELECT count(*) FROM eventstore.snapshots WHERE tenant_id = $1),
            'subscriptions', (SELECT count(*) FROM eventstore.subscriptions WHERE tenant_id = $1),
            'projections', (SELECT count(*) FROM eventstore.projections WHERE tenant_id = $1),
            'webhook_endpoints', (SELECT count(*) FROM eventstore.webhook_endpoints WHERE tenant_id = $1),
            'webhook_backlog', (SELECT count(*) FROM eventstore.webhook_deliveries
                                WHERE tenant_id = $1 AND status IN ('pending', 'delivering')),
            'first_recorded_at', (SELECT min(recorded_at) FROM e),
            'last_recorded_at', (SELECT max(recorded_at) FROM e))",
    args: &[TEXTOID],
    volatile: false,
};

/// How far the feed is held back, and by whom: the oldest running transaction with an xid
/// (in any database: transaction ids are cluster-wide) bounds what read_all may return.
/// A transaction of another tenant (or one that wrote no event) is only said to exist to a
/// caller without admin access ($2): no pid, user, application or database of it.
static FEED_LAG: Statement = Statement {
    sql: "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon),
               held AS (SELECT count(*) AS n, min(e.recorded_at) AS oldest
                        FROM eventstore.events e, h
                        WHERE e.tenant_id = $1 AND e.transaction_id >= h.horizon),
               -- the blocker's rows are invisible until it ends: its writer lock says whose they are
               own AS (SELECT $2 OR EXISTS (
                           SELECT 1 FROM pg_locks l, h
                           WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                             AND l.classid = $3 AND l.objid = $4 AND l.objsubid = 2
                             AND (l.pid IN (SELECT a.pid FROM pg_stat_activity a WHERE a.backend_xid = xid(h.horizon))
                                  OR l.virtualtransaction = '-1/' || xid(h.horizon)::text)) AS named),
               blocker AS (SELECT (SELECT jsonb_build_object('pid', a.pid, 'database', a.datname, 'user', a.usename,
                                    'application_name', a.application_name, 'state', a.state,
                                    'xact_start', a.xact_start,
                                    'xact_seconds', extract(epoch FROM clock_timestamp() - a.xact_start),
                                    'wait_event', a.wait_event)
                                  FROM pg_stat_activity a, h WHERE a.backend_xid = xid(h.horizon) LIMIT 1) AS backend,
                                  (SELECT jsonb_build_object('gid', p.gid, 'prepared', p.prepared, 'owner', p.owner,
                                    'database', p.database)
                                  FROM pg_prepared_xacts p, h WHERE p.transaction = xid(h.horizon) LIMIT 1) AS prepared)
          SELECT jsonb_build_object(
            'horizon_xid', h.horizon::text,
            'held_back_events', held.n,
            'oldest_held_back_at', held.oldest,
            'lag_seconds', coalesce(extract(epoch FROM clock_timestamp() - held.oldest), 0),
            'blocking_backend', CASE WHEN own.named THEN blocker.backend END,
            'blocking_prepared_transaction', CASE WHEN own.named THEN blocker.prepared END,
            'blocked_by_other_tenant', NOT own.named AND (blocker.backend IS NOT NULL OR blocker.prepared IS NOT NULL))
            -- on a hot standby the transaction holding the feed back runs on the primary
            || CASE WHEN pg_is_in_recovery() THEN jsonb_build_object('standby', true,
                    'last_replayed_at', pg_last_xact_replay_timestamp()) ELSE '{}' END
          FROM h, held, own, blocker",
    args: &[TEXTOID, BOOLOID, OIDOID, OIDOID],
    volatile: true,
};

static SOFT_DELETE: Statement = Statement {
    sql: "UPDATE eventstore.streams AS s
             SET deleted_at = statement_timestamp(), updated_at = statement_timestamp(),
                 hidden_through = s.version
           WHERE s.tenant_id = $1 AND s.aggregate_type = $2 AND s.aggregate_id = $3
             AND s.deleted_at IS NULL
          RETURNING s.version",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// A tombstone, also for a stream that never existed: nothing may be appended to it again.
static HARD_DELETE: Statement = Statement {
    sql: "INSERT INTO eventstore.streams AS s (tenant_id, aggregate_type, aggregate_id, version,
              deleted_at, hard_deleted)
          VALUES ($1, $2, $3, 0, statement_timestamp(), true)
          ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE
             SET hard_deleted = true, updated_at = statement_timestamp(),
                 deleted_at = coalesce(s.deleted_at, statement_timestamp()),
                 hidden_through = s.version
           WHERE NOT s.hard_deleted
          RETURNING s.version",
    args: &[TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

fn one_jsonb(stmt: &'static Statement, tenant: &str) -> Result<JsonB> {
    Spi::connect(|client| {
        let table = run(client, stmt, &[tenant.into()])?;
        table.first().get_one::<JsonB>()?.ok_or_else(|| Error::new(Kind::Internal, "statistics query returned nothing"))
    })
}

pub fn stats(tenant: &str) -> Result<JsonB> {
    one_jsonb(&STATS, tenant)
}

/// The feed lag of `tenant`; `admin` callers are told who holds it back whoever that is.
pub fn feed_lag(tenant: &str, admin: bool) -> Result<JsonB> {
    Spi::connect(|client| {
        let (class, key) = (pg_sys::Oid::from(crate::tenant::WRITER_LOCK_CLASS), pg_sys::Oid::from(crate::tenant::writer_key(tenant)));
        let table = run(client, &FEED_LAG, &[tenant.into(), admin.into(), class.into(), key.into()])?;
        table.first().get_one::<JsonB>()?.ok_or_else(|| Error::new(Kind::Internal, "feed lag query returned nothing"))
    })
}

/// Whether the role calling the extension has admin access (or is a superuser): admins see
/// the whole server in the reports, others only their tenant.
static IS_ADMIN: Statement = Statement {
    sql: "SELECT r.rolsuper OR EXISTS (
              SELECT 1 FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'eventstore'::regnamespace AND p.proname = 'grant_access'
                AND has_function_privilege(r.oid, p.oid, 'EXECUTE'))
          FROM pg_catalog.pg_roles r WHERE r.oid = $1",
    args: &[OIDOID],
    volatile: false,
};

pub fn is_admin() -> Result<bool> {
    let role = unsafe { pg_sys::GetOuterUserId() };
    Spi::connect(|client| Ok(run(client, &IS_ADMIN, &[role.into()])?.first().get_one::<bool>()?.unwrap_or(false)))
}

/// Deletes a stream; true when something changed (false: absent, or deleted already).
pub fn delete_stream(stream: &Stream, hard: bool) -> Result<bool> {
    Spi::connect(|client| {
        let args = stream.key();
        let table = run(client, if hard { &HARD_DELETE } else { &SOFT_DELETE }, &args)?;
        Ok(!table.is_empty())
    })
}

static INSTALLED: Statement = Statement {
    sql: "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'eventstore')",
    args: &[],
    volatile: true,
};

/// Whether eventstore is installed in the current database (a worker's database may lose it).
pub fn installed() -> Result<bool> {
    Spi::connect(|client| Ok(run(client, &INSTALLED, &[])?.first().get_one::<bool>()?.unwrap_or(false)))
}

static NOTIFY: Statement = Statement {
    sql: "SELECT pg_catalog.pg_notify($1, $2)",
    args: &[TEXTOID, TEXTOID],
    volatile: true,
};

/// `NOTIFY channel, payload`, sent when the current transaction commits.
pub fn notify(channel: &str, payload: &str) -> Result<()> {
    Spi::connect(|client| run(client, &NOTIFY, &[channel.into(), payload.into()]).map(drop))
}
