//! The worker's part of webhooks: claim the due head of each endpoint's queue in a short
//! transaction (a lease marks them `delivering`), make the HTTP calls outside any transaction
//! (endpoints in parallel, at most `eventstore.webhook_max_in_flight`; one endpoint's deliveries
//! one after another, in event order, stopping at the first failure), and record the outcome in
//! another short transaction. A crash between the two leaves leases that expire: the delivery
//! goes out again with the same `webhook-id` (at least once).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::Uuid;

use super::http::{self, Reply};
use super::{schedule, signing};
use crate::error::Result;
use crate::guc;
use crate::store::plans::{Statement, run};
use crate::runtime::transaction;

static ENDPOINTS_EXIST: Statement = Statement {
    sql: "SELECT EXISTS (SELECT 1 FROM eventstore.webhook_endpoints WHERE enabled)",
    args: &[],
    volatile: true,
};

/// The first deliveries of every enabled endpoint's queue, in event order; only events whose
/// transactions are all finished (below the snapshot's xmin), so the order cannot change.
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
          WHERE w.enabled
          ORDER BY w.endpoint_id, d.transaction_id, d.global_position",
    args: &[INT4OID],
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

struct Delivery {
    id: Uuid,
    tenant: String,
    message_id: String,
    body: String,
    attempts: i32,
}

struct Endpoint {
    id: Uuid,
    url: String,
    keys: Vec<Vec<u8>>,
    schedule: Vec<i32>,
    min_interval: Option<Duration>,
    queue: Vec<Delivery>,
}

/// What happened to one claimed delivery.
struct Outcome {
    reply: Option<Reply>,
    attempt_started: i64,
}

static RELEASE: Statement = Statement {
    sql: "UPDATE eventstore.webhook_deliveries SET status = 'pending', lease_until = NULL
          WHERE status = 'delivering'",
    args: &[],
    volatile: true,
};

/// At start: the leases of a worker that crashed are released at once (one worker serves a
/// database, so every lease is a dead worker's), instead of holding the queues until they
/// expire. Those deliveries go out again with the same webhook-id.
pub fn release_leases(slot: usize) {
    transaction(slot, "releasing webhook leases", || {
        Spi::connect(|client| {
            if crate::store::admin::installed()? {
                run(client, &RELEASE, &[])?;
            }
            Ok(())
        })
    });
}


/// One round; returns the deliveries attempted and whether more are waiting.
pub fn round(slot: usize) -> (u64, bool) {
    let batch = guc::webhook_batch_size();
    let Some(endpoints) = transaction(slot, "claiming webhook deliveries", || claim(batch)).flatten() else {
        return (0, false);
    };
    if endpoints.is_empty() {
        return (0, false);
    }
    let outcomes = call_all(&endpoints);
    let attempted = outcomes.iter().flatten().filter(|o| o.reply.is_some()).count() as u64;
    let full = endpoints.iter().any(|e| e.queue.len() as i32 == batch);
    transaction(slot, "recording webhook attempts", || record(&endpoints, &outcomes));
    (attempted, full)
}

fn claim(batch: i32) -> Result<Option<Vec<Endpoint>>> {
    Spi::connect(|client| {
        if !run(client, &ENDPOINTS_EXIST, &[])?.first().get_one::<bool>()?.unwrap_or(false) {
            return Ok(None);
        }
        let mut endpoints: BTreeMap<String, Endpoint> = BTreeMap::new();
        let mut blocked = std::collections::HashSet::new();
        for row in run(client, &HEADS, &[batch.into()])? {
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
                    })
                }
            };
            endpoint.queue.push(Delivery {
                id: row.get(7)?.unwrap_or(Uuid::from_bytes([0; 16])),
                tenant: row.get(8)?.unwrap_or_default(),
                message_id: row.get(9)?.unwrap_or_default(),
                body: row.get(10)?.unwrap_or_default(),
                attempts: row.get(11)?.unwrap_or(0),
            });
        }
        let endpoints: Vec<Endpoint> = endpoints.into_values().collect();
        let ids: Vec<Uuid> = endpoints.iter().flat_map(|e| e.queue.iter().map(|d| d.id)).collect();
        if !ids.is_empty() {
            let timeout = guc::webhook_timeout().as_millis() as f64 / 1000.0;
            let longest = endpoints.iter().map(|e| e.queue.len()).max().unwrap_or(1) as f64;
            run(client, &LEASE, &[ids.into(), (timeout * longest + 30.0).into()])?;
        }
        Ok(Some(endpoints))
    })
}

/// The HTTP calls, outside any transaction; plain Rust threads (they touch nothing of
/// PostgreSQL), one per endpoint, at most `webhook_max_in_flight` at a time.
fn call_all(endpoints: &[Endpoint]) -> Vec<Vec<Outcome>> {
    let agent = agent();
    let in_flight = guc::webhook_max_in_flight();
    let mut outcomes = Vec::with_capacity(endpoints.len());
    for wave in endpoints.chunks(in_flight) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = wave.iter().map(|e| scope.spawn(|| call_endpoint(&agent, e))).collect();
            for handle in handles {
                outcomes.push(handle.join().unwrap_or_default());
            }
        });
    }
    outcomes
}

thread_local! {
    /// The HTTP agent, kept across rounds so connections to receivers are reused; made anew
    /// when its settings change.
    static AGENT: std::cell::RefCell<Option<((Duration, String), ureq::Agent)>> = const { std::cell::RefCell::new(None) };
}

fn agent() -> ureq::Agent {
    let settings = (guc::webhook_timeout(), guc::webhook_allowed_hosts());
    AGENT.with(|cell| {
        let mut cell = cell.borrow_mut();
        match &*cell {
            Some((kept, agent)) if *kept == settings => agent.clone(),
            _ => {
                let agent = http::agent(settings.0, settings.1.clone());
                *cell = Some((settings, agent.clone()));
                agent
            }
        }
    })
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn call_endpoint(agent: &ureq::Agent, endpoint: &Endpoint) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(endpoint.queue.len());
    let mut failed = false;
    for delivery in &endpoint.queue {
        if failed {
            // later events wait while an earlier one is being retried
            out.push(Outcome { reply: None, attempt_started: 0 });
            continue;
        }
        let started = std::time::Instant::now();
        let timestamp = unix_now();
        let signature = signing::signature_header(&endpoint.keys, &delivery.message_id, timestamp, &delivery.body);
        let reply = http::post(agent, &endpoint.url, &delivery.message_id, timestamp, &signature, &delivery.body);
        failed = !reply.succeeded();
        out.push(Outcome { reply: Some(reply), attempt_started: timestamp });
        if let Some(min) = endpoint.min_interval {
            std::thread::sleep(min.saturating_sub(started.elapsed()));
        }
    }
    out
}

fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) };
    (u64::from_le_bytes(bytes) as f64 / u64::MAX as f64) * 2.0 - 1.0
}

fn record(endpoints: &[Endpoint], outcomes: &[Vec<Outcome>]) -> Result<()> {
    let mut log = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut settle = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut gone = Vec::new();
    for (endpoint, outcomes) in endpoints.iter().zip(outcomes) {
        for (delivery, outcome) in endpoint.queue.iter().zip(outcomes) {
            let Some(reply) = &outcome.reply else {
                // not attempted: back in the queue as it was
                settle.0.push(delivery.id);
                settle.1.push("pending".to_owned());
                settle.2.push(delivery.attempts);
                settle.3.push(None::<f64>);
                settle.4.push(None::<i32>);
                settle.5.push(None::<String>);
                continue;
            };
            let attempt = delivery.attempts + 1;
            log.0.push(delivery.tenant.clone());
            log.1.push(delivery.id);
            log.2.push(endpoint.id);
            log.3.push(attempt);
            log.4.push(reply.status as i32);
            log.5.push(reply.duration_ms);
            log.6.push(reply.body.clone());
            log.7.push(reply.error.clone());
            let (status, delay) = if reply.succeeded() {
                ("succeeded", None)
            } else {
                if reply.status == 410 {
                    gone.push(endpoint.id);
                }
                let next = schedule::delay(&endpoint.schedule, attempt as usize + 1, jitter());
                let asked = match reply.status {
                    429 | 503 => reply.retry_after.as_deref().and_then(|v| schedule::retry_after(v, outcome.attempt_started)),
                    _ => None,
                };
                match (next, asked) {
                    (None, _) => ("dead", None),
                    (Some(_), Some(asked)) => ("pending", Some(asked)),
                    (Some(next), None) => ("pending", Some(next)),
                }
            };
            settle.0.push(delivery.id);
            settle.1.push(status.to_owned());
            settle.2.push(attempt);
            settle.3.push(delay);
            settle.4.push(Some(reply.status as i32));
            settle.5.push(reply.error.clone().or_else(|| (!reply.succeeded()).then(|| format!("HTTP {}", reply.status))));
        }
    }
    Spi::connect(|client| {
        if !log.0.is_empty() {
            run(client, &LOG_ATTEMPTS, &[
                log.0.into(), log.1.into(), log.2.into(), log.3.into(), log.4.into(), log.5.into(), log.6.into(), log.7.into(),
            ])?;
        }
        if !settle.0.is_empty() {
            run(client, &SETTLE, &[
                settle.0.into(), settle.1.into(), settle.2.into(), settle.3.into(), settle.4.into(), settle.5.into(),
            ])?;
        }
        if !gone.is_empty() {
            run(client, &GONE, &[gone.into()])?;
        }
        Ok(())
    })
}
