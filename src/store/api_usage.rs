//! The request log and usage: one `api_request_log` row per logged call, and get_api_usage()
//! aggregated from the log of the days asked for through an index on (tenant_id, day), exact by
//! construction. Days that are over, and that no running transaction can still log a call for,
//! are rolled up into `api_version_usage` the first time they are asked for and read from there
//! afterwards. Calls counted in memory on a standby (src/versioning/unlogged.rs) are added.

use pgrx::datum::{Date, TimestampWithTimeZone};
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::plans::{Statement, run};
use crate::error::{Error, Kind, Result};
use crate::versioning::unlogged;

static LOG_CALL: Statement = Statement {
    sql: "INSERT INTO eventstore.api_request_log (request_id, tenant_id, requested_at, day, rpc_name, requested_version,
              version, version_source, fallback_from, status, error_code, duration_ms, role, jwt_sub, client_app,
              client_version, client_region)
          VALUES ($1, $2, $3, ($3 AT TIME ZONE 'UTC')::date, $4, $5, $6, $7, $8, $9::smallint, $10, $11,
                  pg_get_userbyid($12), $13, $14, $15, $16)",
    args: &[UUIDOID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, FLOAT8OID, OIDOID,
            TEXTOID, TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// One row of the request log.
pub struct LoggedCall<'a> {
    pub request_id: pgrx::Uuid,
    pub tenant: &'a str,
    pub requested_at: Option<TimestampWithTimeZone>,
    pub rpc: Option<&'a str>,
    pub requested_version: Option<String>,
    pub version: Option<&'a str>,
    pub source: &'a str,
    pub fallback_from: Option<&'a str>,
    pub status: i32,
    pub error_code: Option<&'a str>,
    pub duration_ms: f64,
    pub role: pg_sys::Oid,
    pub jwt_sub: Option<String>,
    pub client_app: Option<String>,
    pub client_version: Option<String>,
    pub client_region: Option<String>,
}

pub fn log_call(c: &LoggedCall<'_>) -> Result<()> {
    Spi::connect(|client| {
        run(client, &LOG_CALL, &[
            c.request_id.into(),
            c.tenant.into(),
            c.requested_at.into(),
            c.rpc.into(),
            c.requested_version.as_deref().into(),
            c.version.into(),
            c.source.into(),
            c.fallback_from.into(),
            c.status.into(),
            c.error_code.into(),
            c.duration_ms.into(),
            c.role.into(),
            c.jwt_sub.as_deref().into(),
            c.client_app.as_deref().into(),
            c.client_version.as_deref().into(),
            c.client_region.as_deref().into(),
        ])
        .map(drop)
    })
}

/// The first day a running transaction may still log a call for (days before it are over);
/// NULL when nothing may be rolled up here (read-only, a standby, or prepared transactions
/// whose start is unknown).
static FIRST_OPEN_DAY: Statement = Statement {
    sql: "SELECT CASE WHEN pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean
                        OR EXISTS (SELECT 1 FROM pg_prepared_xacts) THEN NULL
                      ELSE (SELECT (min(a.xact_start) AT TIME ZONE 'UTC')::date
                            FROM pg_stat_activity a WHERE a.xact_start IS NOT NULL) END",
    args: &[],
    volatile: true,
};

/// Rolled-up days as they are, the other days aggregated from the log; the last column says
/// whether a row of the log is of a day that is over.
static USAGE: Statement = Statement {
    sql: "WITH cached AS (
            SELECT u.day, nullif(u.version, '') AS version, nullif(u.rpc_name, '') AS rpc_name,
                   u.calls, u.errors, u.avg_ms, u.p95_ms
            FROM eventstore.api_version_usage u
            WHERE u.tenant_id = $1 AND u.day BETWEEN $2 AND $3
          ), live AS (
            SELECT l.day, l.version, l.rpc_name, count(*) AS calls,
                   count(*) FILTER (WHERE l.status >= 400) AS errors,
                   avg(l.duration_ms) AS avg_ms,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY l.duration_ms) AS p95_ms
            FROM eventstore.api_request_log l
            WHERE l.tenant_id = $1 AND l.day BETWEEN $2 AND $3
              AND l.day NOT IN (SELECT c.day FROM cached c)
            GROUP BY l.day, l.version, l.rpc_name
          )
          SELECT day, version, rpc_name, calls, errors, avg_ms, p95_ms, false FROM cached
          UNION ALL
          SELECT day, version, rpc_name, calls, errors, avg_ms, p95_ms, coalesce(day < $4, false) FROM live
          ORDER BY 1, 2 NULLS FIRST, 3 NULLS FIRST",
    args: &[TEXTOID, DATEOID, DATEOID, DATEOID],
    volatile: true,
};

static ROLL_UP: Statement = Statement {
    sql: "INSERT INTO eventstore.api_version_usage (tenant_id, day, version, rpc_name, calls, errors, avg_ms, p95_ms)
          SELECT $1, l.day, coalesce(l.version, ''), coalesce(l.rpc_name, ''), count(*),
                 count(*) FILTER (WHERE l.status >= 400), avg(l.duration_ms),
                 percentile_cont(0.95) WITHIN GROUP (ORDER BY l.duration_ms)
          FROM eventstore.api_request_log l
          WHERE l.tenant_id = $1 AND l.day = ANY ($2)
          GROUP BY l.day, coalesce(l.version, ''), coalesce(l.rpc_name, '')
          ON CONFLICT DO NOTHING",
    args: &[TEXTOID, DATEARRAYOID],
    volatile: true,
};

/// One row of get_api_usage().
pub type UsageRow = (Date, Option<String>, Option<String>, i64, i64, f64, f64);

/// Usage of a tenant per day, version and rpc: calls, errors (status 400 and above), average
/// and 95th percentile duration (interpolated), from every logged call of the days asked for.
pub fn usage(tenant: &str, since: Date, until: Date) -> Result<Vec<UsageRow>> {
    Spi::connect(|client| {
        let first_open: Option<Date> = run(client, &FIRST_OPEN_DAY, &[])?.first().get_one()?;
        let mut rows = Vec::new();
        let mut closed = Vec::new();
        for row in run(client, &USAGE, &[tenant.into(), since.into(), until.into(), first_open.into()])? {
            let day: Date = row.get(1)?.ok_or_else(|| Error::new(Kind::Internal, "usage without a day"))?;
            if row.get::<bool>(8)?.unwrap_or(false) && closed.last() != Some(&day) {
                closed.push(day);
            }
            rows.push((
                day,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?.unwrap_or_default(),
                row.get(5)?.unwrap_or_default(),
                row.get(6)?.unwrap_or_default(),
                row.get(7)?.unwrap_or_default(),
            ));
        }
        if !closed.is_empty() {
            run(client, &ROLL_UP, &[tenant.into(), closed.into()])?;
        }
        Ok(rows)
    })
    .map(|rows| with_unlogged(tenant, since, until, rows))
}

/// The calls of this server that could not be logged, added to the logged ones.
fn with_unlogged(tenant: &str, since: Date, until: Date, rows: Vec<UsageRow>) -> Vec<UsageRow> {
    let memory = unlogged::usage(tenant, since.into_inner(), until.into_inner());
    if memory.is_empty() {
        return rows;
    }
    let mut all: Vec<unlogged::Usage> = rows
        .into_iter()
        .map(|r| unlogged::Usage { day: r.0.into_inner(), version: r.1, rpc: r.2, calls: r.3, errors: r.4, avg_ms: r.5, p95_ms: r.6 })
        .collect();
    unlogged::merge(&mut all, memory);
    all.into_iter().map(|u| (Date::saturating_from_raw(u.day), u.version, u.rpc, u.calls, u.errors, u.avg_ms, u.p95_ms)).collect()
}
