//! The worker's statements for webhook delivery: claiming the due heads of the endpoints'
//! queues with a lease, recording attempts and their outcomes, and releasing a dead worker's
//! leases. src/worker/delivery.rs runs them; the queue itself is filled in `webhook_queue.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use pgrx::Uuid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

use super::plans::{Statement, run};
use crate::error::Result;
use crate::webhooks::{schedule, signing};

static ENDPOINTS_EXIST: Statement = Statement {
    sql: "SELECT EXISTS (SELECT 1 FROM eventstore.webhook_endpoints WHERE enabled)",
    args: &[],
    volatile: true,
};

/// The first deliveries of every enabled endpoint's queue (but those in `$2`: rate-limited ones
/// not due yet), in event order; only events whose transactions are all finished (below the
/// snapshot's xmin), so the order cannot change.
static HEADS: Statement = Statement {
    sql: "SELECT w.endpoint_id, w.url, w.secret,
                 CASE WHEN w.previous_secret_until > statement_timestamp() THEN w.previous_secret END,
                 w.retry_schedule, w.rate_limit_per_second,
                 d.delivery_id, d.tenant_id, d.message_id, d.body, d.attempts,
                 d.next_attempt_at <= statement_timestamp()
                   AND (d.status = 'pending' OR d.lease_until < statement_timestamp())
          FROM eventstore.webhook_endpoints w
          CROSS JOIN LATERAL (
              SELECT * FROM eventstore.webhook_deliveries d
              WHERE d.endpoint_id = w.endpoint_id AND d.status IN ('pending', 'delivering')
                AND d.transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
              ORDER BY d.transaction_id, d.global_position
              LIMIT $1) d
          WHERE w.enabled AND NOT (w.endpoint_id = ANY ($2))
          ORDER BY w.endpoint_id, d.transaction_id, d.global_position",
    args: &[INT4OID, UUIDARRAYOID],
    volatile: true,
};

static LEASE: Statement = Statement {
    sql: "UPDATE eventstore.webhook_deliveries
             SET status = 'delivering', lease_until = statement_timestamp() + make_interval(secs => $2)
           WHERE delivery_id = ANY ($1)",
    args: &[UUIDARRAYOID, FLOAT8OID],
    volatile: true,
};

static LOG_ATTEMPTS: Statement = Statement {
    sql: "INSERT INTO eventstore.webhook_attempts (tenant_id, delivery_id, endpoint_id, attempt, status_code,
              duration_ms, response_body, error)
          SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::int[], $5::int[], $6::float8[],
                               $7::text[], $8::text[])",
    args: &[TEXTARRAYOID, UUIDARRAYOID, UUIDARRAYOID, INT4ARRAYOID, INT4ARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID],
    volatile: true,
};

static SETTLE: Statement = Statement {
    sql: "UPDATE eventstore.webhook_deliveries d
             SET status = u.status, attempts = u.attempts,
                 next_attempt_at = CASE WHEN u.delay IS NULL THEN d.next_attempt_at
                                        ELSE statement_timestamp() + make_interval(secs => u.delay) END,
                 lease_until = NULL,
                 last_status_code = coalesce(u.code, d.last_status_code),
                 last_error = CASE WHEN u.code IS NULL THEN d.last_error ELSE u.error END,
                 delivered_at = CASE WHEN u.status = 'succeeded' THEN statement_timestamp() END
          FROM unnest($1::uuid[], $2::text[], $3::int[], $4::float8[], $5::int[], $6::text[])
               AS u(id, status, attempts, delay, code, error)
          WHERE d.delivery_id = u.id",
    args: &[UUIDARRAYOID, TEXTARRAYOID, INT4ARRAYOID, FLOAT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID],
    volatile: true,
};

static GONE: Statement = Statement {
    sql: "UPDATE eventstore.webhook_endpoints
             SET enabled = false, disabled_at = statement_timestamp(), updated_at = statement_timestamp(),
                 disabled_reason = 'the receiver answered 410 Gone'
           WHERE endpoint_id = ANY ($1)",
    args: &[UUIDARRAYOID],
    volatile: true,
};

static RELEASE: Statement = Statement {
    sql: "UPDATE eventstore.webhook_deliveries SET status = 'pending', lease_until = NULL
          WHERE status = 'delivering'",
    args: &[],
    volatile: true,
};

/// One claimed delivery.
pub struct Delivery {
    pub id: Uuid,
    pub tenant: String,
    pub message_id: String,
    pub body: String,
    pub attempts: i32,
}

/// One endpoint with the deliveries claimed for it, in event order.
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// signing keys: the current secret, and the previous one during a rotation's grace period
    pub keys: Vec<Vec<u8>>,
    pub schedule: Vec<i32>,
    pub min_interval: Option<Duration>,
    pub queue: Vec<Delivery>,
    /// more of its queue was due than its rate allows in this round
    pub cut: bool,
}

/// At start: the leases of a worker that crashed are released at once (one worker serves a
/// database, so every lease is a dead worker's).
pub fn release_leases() -> Result<()> {
    Spi::connect(|client| run(client, &RELEASE, &[]).map(drop))
}

/// Claims, for each enabled endpoint but those in `skip`, the due head of its queue (at most
/// `batch`, and at most `allowance(endpoint, min_interval)` of it), leased for
/// `lease_seconds(longest queue)`; None when no endpoint is enabled. An endpoint whose queue
/// was cut by its allowance is marked `cut`.
pub fn claim(
    batch: i32,
    skip: Vec<Uuid>,
    allowance: impl Fn(Uuid, Option<Duration>) -> usize,
    lease_seconds: impl Fn(usize) -> f64,
) -> Result<Option<Vec<Endpoint>>> {
    Spi::connect(|client| {
        if !run(client, &ENDPOINTS_EXIST, &[])?.first().get_one::<bool>()?.unwrap_or(false) {
            return Ok(None);
        }
        let mut endpoints: BTreeMap<String, Endpoint> = BTreeMap::new();
        let mut blocked = std::collections::HashSet::new();
        for row in run(client, &HEADS, &[batch.into(), skip.into()])? {
            let id: Uuid = row.get(1)?.unwrap_or(Uuid::from_bytes([0; 16]));
            let key = id.to_string();
            if blocked.contains(&key) {
                continue;
            }
            // the queue waits at the first delivery that is not due (or is leased)
            if !row.get::<bool>(12)?.unwrap_or(false) {
                blocked.insert(key);
                continue;
            }
            let endpoint = match endpoints.entry(key) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let secret: String = row.get(3)?.unwrap_or_default();
                    let previous: Option<String> = row.get(4)?;
                    let keys = std::iter::once(secret).chain(previous).filter_map(|s| signing::key(&s)).collect();
                    let rate: Option<i32> = row.get(6)?;
                    v.insert(Endpoint {
                        id,
                        url: row.get(2)?.unwrap_or_default(),
                        keys,
                        schedule: row.get::<Vec<i32>>(5)?.unwrap_or_else(|| schedule::DEFAULT.to_vec()),
                        min_interval: rate.filter(|r| *r > 0).map(|r| Duration::from_secs_f64(1.0 / r as f64)),
                        queue: Vec::new(),
                        cut: false,
                    })
                }
            };
            if endpoint.queue.len() >= allowance(endpoint.id, endpoint.min_interval) {
                endpoint.cut = true;
                continue;
            }
            endpoint.queue.push(Delivery {
                id: row.get(7)?.unwrap_or(Uuid::from_bytes([0; 16])),
                tenant: row.get(8)?.unwrap_or_default(),
                message_id: row.get(9)?.unwrap_or_default(),
                body: row.get(10)?.unwrap_or_default(),
                attempts: row.get(11)?.unwrap_or(0),
            });
        }
        let endpoints: Vec<Endpoint> = endpoints.into_values().filter(|e| !e.queue.is_empty()).collect();
        let ids: Vec<Uuid> = endpoints.iter().flat_map(|e| e.queue.iter().map(|d| d.id)).collect();
        if !ids.is_empty() {
            let longest = endpoints.iter().map(|e| e.queue.len()).max().unwrap_or(1);
            run(client, &LEASE, &[ids.into(), lease_seconds(longest).into()])?;
        }
        Ok(Some(endpoints))
    })
}

/// One attempt, as `eventstore.webhook_attempts` logs it.
pub struct Attempt {
    pub tenant: String,
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    pub attempt: i32,
    pub status_code: i32,
    pub duration_ms: f64,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

/// What becomes of a delivery after a round.
pub struct Settlement {
    pub delivery_id: Uuid,
    /// `pending`, `succeeded` or `dead`
    pub status: &'static str,
    pub attempts: i32,
    /// seconds until the next attempt (None: keep the time it had)
    pub delay: Option<f64>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// Records a round: the attempts, the deliveries' new states, and the endpoints that answered
/// 410 Gone (disabled).
pub fn record(attempts: &[Attempt], settlements: &[Settlement], gone: &[Uuid]) -> Result<()> {
    Spi::connect(|client| {
        if !attempts.is_empty() {
            run(client, &LOG_ATTEMPTS, &[
                attempts.iter().map(|a| a.tenant.clone()).collect::<Vec<_>>().into(),
                attempts.iter().map(|a| a.delivery_id).collect::<Vec<_>>().into(),
                attempts.iter().map(|a| a.endpoint_id).collect::<Vec<_>>().into(),
                attempts.iter().map(|a| a.attempt).collect::<Vec<_>>().into(),
                attempts.iter().map(|a| a.status_code).collect::<Vec<_>>().into(),
                attempts.iter().map(|a| a.duration_ms).collect::<Vec<_>>().into(),
                attempts.iter().map(|a| a.response_body.clone()).collect::<Vec<_>>().into(),
                attempts.iter().map(|a| a.error.clone()).collect::<Vec<_>>().into(),
            ])?;
        }
        if !settlements.is_empty() {
            run(client, &SETTLE, &[
                settlements.iter().map(|s| s.delivery_id).collect::<Vec<_>>().into(),
                settlements.iter().map(|s| s.status.to_owned()).collect::<Vec<_>>().into(),
                settlements.iter().map(|s| s.attempts).collect::<Vec<_>>().into(),
                settlements.iter().map(|s| s.delay).collect::<Vec<_>>().into(),
                settlements.iter().map(|s| s.status_code).collect::<Vec<_>>().into(),
                settlements.iter().map(|s| s.error.clone()).collect::<Vec<_>>().into(),
            ])?;
        }
        if !gone.is_empty() {
            run(client, &GONE, &[gone.to_vec().into()])?;
        }
        Ok(())
    })
}
