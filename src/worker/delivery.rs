//! The worker's part of webhooks: claim the due head of each endpoint's queue in a short
//! transaction (a lease marks them `delivering`), make the HTTP calls outside any transaction
//! (endpoints in parallel, at most `eventstore.webhook_max_in_flight`; one endpoint's deliveries
//! one after another, in event order, stopping at the first failure), and record the outcome in
//! another short transaction. A crash between the two leaves leases that expire: the delivery
//! goes out again with the same `webhook-id` (at least once).
//!
//! A rate-limited endpoint (`rate_limit_per_second`) gets, per round, only the deliveries whose
//! turn comes within the next `PACE_SLICE`; the worker remembers when its next turn is and
//! comes back then, so a slow rate never holds up the rounds (notifications, projections,
//! other endpoints) for longer than that.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgrx::Uuid;

use pgrx::prelude::*;

use crate::webhooks::http::{self, Reply};
use crate::webhooks::{schedule, signing};
use crate::error::Result;
use crate::guc;
use crate::store::webhook_delivery::{self, Attempt, Endpoint, Settlement};
use crate::runtime::transaction;

/// What happened to one claimed delivery.
struct Outcome {
    reply: Option<Reply>,
    attempt_started: i64,
    sent: Instant,
}

/// At start: the leases of a worker that crashed are released at once (one worker serves a
/// database, so every lease is a dead worker's), instead of holding the queues until they
/// expire. Those deliveries go out again with the same webhook-id.
pub fn release_leases(slot: usize) {
    transaction(slot, "releasing webhook leases", webhook_delivery::release_leases);
}

/// The longest a round waits for a rate-limited endpoint's turn.
const PACE_SLICE: Duration = Duration::from_millis(200);

thread_local! {
    /// rate-limited endpoints that sent lately: when their next turn is
    static NEXT_TURN: RefCell<HashMap<Uuid, Instant>> = RefCell::new(HashMap::new());
}

/// What a round did.
#[derive(Default)]
pub struct Round {
    pub attempted: u64,
    /// a queue had more due than one round claims
    pub more: bool,
    /// the next turn of a rate-limited endpoint (it may have more due by then)
    pub next_turn: Option<Instant>,
}

/// One round.
pub fn round(slot: usize) -> Round {
    let batch = guc::webhook_batch_size();
    let now = Instant::now();
    let waiting: Vec<Uuid> = NEXT_TURN.with(|t| {
        let mut t = t.borrow_mut();
        t.retain(|_, at| *at > now);
        t.iter().filter(|(_, at)| **at > now + PACE_SLICE).map(|(id, _)| *id).collect()
    });
    let claimed = transaction(slot, "claiming webhook deliveries", || claim(batch, waiting.clone())).flatten();
    let mut round = Round::default();
    if let Some(endpoints) = claimed.filter(|e| !e.is_empty()) {
        let outcomes = call_all(&endpoints);
        round.attempted = outcomes.iter().flatten().filter(|o| o.reply.is_some()).count() as u64;
        round.more = endpoints.iter().any(|e| e.queue.len() as i32 == batch);
        NEXT_TURN.with(|t| {
            let mut t = t.borrow_mut();
            for (endpoint, outcomes) in endpoints.iter().zip(&outcomes) {
                // the turn after the last delivery attempted
                let last = outcomes.iter().filter(|o| o.reply.is_some()).map(|o| o.sent).max();
                if let (Some(interval), Some(last)) = (endpoint.min_interval, last) {
                    t.insert(endpoint.id, last + interval);
                }
            }
        });
        transaction(slot, "recording webhook attempts", || record(&endpoints, &outcomes));
    }
    round.next_turn = NEXT_TURN.with(|t| t.borrow().values().min().copied());
    round
}

fn claim(batch: i32, waiting: Vec<Uuid>) -> Result<Option<Vec<Endpoint>>> {
    // long enough for every call of the longest queue at the timeout, and some
    let timeout = guc::webhook_timeout().as_millis() as f64 / 1000.0;
    let now = Instant::now();
    let allowance = |endpoint: Uuid, interval: Option<Duration>| match interval {
        None => usize::MAX,
        Some(interval) => {
            let first = NEXT_TURN.with(|t| t.borrow().get(&endpoint).copied()).unwrap_or(now).max(now);
            let mut n = 0;
            while first + interval * n as u32 <= now + PACE_SLICE && n < batch as usize {
                n += 1;
            }
            n
        }
    };
    webhook_delivery::claim(batch, waiting, allowance, |longest| timeout * longest as f64 + 30.0)
}

/// The HTTP calls, outside any transaction; plain Rust threads (they touch nothing of
/// PostgreSQL), one per endpoint, at most `webhook_max_in_flight` at a time.
fn call_all(endpoints: &[Endpoint]) -> Vec<Vec<Outcome>> {
    let agent = agent();
    let in_flight = guc::webhook_max_in_flight();
    let mut outcomes = Vec::with_capacity(endpoints.len());
    for wave in endpoints.chunks(in_flight) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = wave
                .iter()
                .map(|e| {
                    let first = NEXT_TURN.with(|t| t.borrow().get(&e.id).copied());
                    let agent = &agent;
                    scope.spawn(move || call_endpoint(agent, e, first))
                })
                .collect();
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

/// One endpoint's claimed deliveries, in order; a rate-limited one's paced from its next turn
/// (`first`) on, never waiting after its last delivery.
fn call_endpoint(agent: &ureq::Agent, endpoint: &Endpoint, first: Option<Instant>) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(endpoint.queue.len());
    let mut failed = false;
    let mut turn = first;
    for delivery in &endpoint.queue {
        if failed {
            // later events wait while an earlier one is being retried
            out.push(Outcome { reply: None, attempt_started: 0, sent: Instant::now() });
            continue;
        }
        if let Some(wait) = turn.and_then(|t| t.checked_duration_since(Instant::now())) {
            std::thread::sleep(wait);
        }
        let sent = Instant::now();
        let timestamp = unix_now();
        let signature = signing::signature_header(&endpoint.keys, &delivery.message_id, timestamp, &delivery.body);
        let reply = http::post(agent, &endpoint.url, &delivery.message_id, timestamp, &signature, &delivery.body);
        failed = !reply.succeeded();
        out.push(Outcome { reply: Some(reply), attempt_started: timestamp, sent });
        turn = endpoint.min_interval.map(|interval| sent + interval);
    }
    out
}

fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) };
    (u64::from_le_bytes(bytes) as f64 / u64::MAX as f64) * 2.0 - 1.0
}

fn record(endpoints: &[Endpoint], outcomes: &[Vec<Outcome>]) -> Result<()> {
    let mut attempts = Vec::new();
    let mut settlements = Vec::new();
    let mut gone = Vec::new();
    for (endpoint, outcomes) in endpoints.iter().zip(outcomes) {
        for (delivery, outcome) in endpoint.queue.iter().zip(outcomes) {
            let Some(reply) = &outcome.reply else {
                // not attempted: back in the queue as it was
                settlements.push(Settlement {
                    delivery_id: delivery.id,
                    status: "pending",
                    attempts: delivery.attempts,
                    delay: None,
                    status_code: None,
                    error: None,
                });
                continue;
            };
            let attempt = delivery.attempts + 1;
            attempts.push(Attempt {
                tenant: delivery.tenant.clone(),
                delivery_id: delivery.id,
                endpoint_id: endpoint.id,
                attempt,
                status_code: reply.status as i32,
                duration_ms: reply.duration_ms,
                response_body: reply.body.clone(),
                error: reply.error.clone(),
            });
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
            settlements.push(Settlement {
                delivery_id: delivery.id,
                status,
                attempts: attempt,
                delay,
                status_code: Some(reply.status as i32),
                error: reply.error.clone().or_else(|| (!reply.succeeded()).then(|| format!("HTTP {}", reply.status))),
            });
        }
    }
    webhook_delivery::record(&attempts, &settlements, &gone)
}
