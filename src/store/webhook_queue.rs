//! Webhook endpoints, queueing deliveries for them, and the statistics of the queue and the
//! attempt log. The worker's claims and records are in `webhook_delivery.rs`.

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};

use super::Stream;
use super::append::{Body, Placed};
use super::plans::{Statement, run, run_generic};
use crate::input::NewEvent;
use crate::cache::Memo;
use crate::error::{Error, Kind, Result};

/// The body frozen at queue time (both queueing statements build it so), from event `e`.
macro_rules! frozen_body {
    () => {
        "jsonb_build_object(
            'type', e.event_type,
            'timestamp', to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
            'data', jsonb_build_object(
              'event_id', e.event_id, 'aggregate_type', e.aggregate_type,
              'aggregate_id', e.aggregate_id, 'aggregate_version', e.aggregate_version,
              'global_position', e.global_position, 'payload', e.payload,
              'metadata', e.metadata))::text"
    };
}

/// Whether endpoint `w` is enabled and wants an event of this tenant, event type and aggregate
/// type (the stored event `e`'s columns unless given).
macro_rules! endpoint_wants {
    () => {
        endpoint_wants!("e.tenant_id", "e.event_type", "e.aggregate_type")
    };
    ($tenant:literal, $event_type:literal, $aggregate_type:literal) => {
        concat!(
            "w.tenant_id = ", $tenant, " AND w.enabled
             AND (w.event_types IS NULL OR ", $event_type, " = ANY (w.event_types))
             AND (w.aggregate_types IS NULL OR ", $aggregate_type, " = ANY (w.aggregate_types))"
        )
    };
}

/// The delivery rows of events `e` for every endpoint `w` that wants them.
macro_rules! queue_select {
    ($events:literal) => {
        concat!(
            "SELECT q.id, q.tenant_id, q.endpoint_id, q.event_id, q.event_type, q.transaction_id,
                    q.global_position, 'msg_' || replace(q.id::text, '-', ''), q.body
             FROM (SELECT gen_random_uuid() AS id, e.tenant_id, w.endpoint_id, e.event_id, e.event_type,
                          e.transaction_id, e.global_position, ", frozen_body!(), " AS body
                   FROM ", $events, " e
                   JOIN eventstore.webhook_endpoints w ON ", endpoint_wants!(), "
                   ORDER BY e.transaction_id, e.global_position) q"
        )
    };
}


static ANY_ENDPOINT: Statement = Statement {
    sql: "SELECT EXISTS (SELECT 1 FROM eventstore.webhook_endpoints WHERE enabled)",
    args: &[],
    volatile: false,
};

thread_local! {
    static ENDPOINTS_EXIST: Memo<(), bool> = Memo::new();
}

/// Whether any enabled endpoint exists (cached; dropped when endpoints change), so appends of
/// a database without webhooks pay nothing for them.
pub fn any_endpoint() -> Result<bool> {
    let any = ENDPOINTS_EXIST.with(|memo| {
        memo.get(&(), || Spi::connect(|client| Ok(run(client, &ANY_ENDPOINT, &[])?.first().get_one::<bool>()?.unwrap_or(false))))
    })?;
    Ok(*any)
}

/// The enabled endpoints of one tenant, with their filters.
struct Filter {
    endpoint_id: Uuid,
    event_types: Option<Vec<String>>,
    aggregate_types: Option<Vec<String>>,
}

static TENANT_ENDPOINTS: Statement = Statement {
    sql: "SELECT w.event_types, w.aggregate_types, w.endpoint_id FROM eventstore.webhook_endpoints w
          WHERE w.tenant_id = $1 AND w.enabled",
    args: &[TEXTOID],
    volatile: false,
};

thread_local! {
    /// tenant -> its enabled endpoints' filters (dropped when any endpoint changes)
    static TENANT_FILTERS: Memo<String, Vec<Filter>> = Memo::new();
}

fn filters(tenant: &str) -> Result<std::rc::Rc<Vec<Filter>>> {
    TENANT_FILTERS.with(|memo| {
        memo.get(&tenant.to_owned(), || {
            Spi::connect(|client| {
                let mut filters = Vec::new();
                for row in run(client, &TENANT_ENDPOINTS, &[tenant.into()])? {
                    let endpoint_id = row.get(3)?.ok_or_else(|| Error::new(Kind::Internal, "an endpoint without an id"))?;
                    filters.push(Filter { endpoint_id, event_types: row.get(1)?, aggregate_types: row.get(2)? });
                }
                Ok(filters)
            })
        })
    })
}

/// Whether the tenant has enabled endpoints (cached like the filters).
pub fn tenant_has_endpoints(tenant: &str) -> Result<bool> {
    Ok(!filters(tenant)?.is_empty())
}

/// Whether an endpoint wants an event of this type of this aggregate type.
fn wants(f: &Filter, aggregate_type: &str, event_type: &str) -> bool {
    f.event_types.as_ref().is_none_or(|t| t.iter().any(|t| t == event_type))
        && f.aggregate_types.as_ref().is_none_or(|t| t.iter().any(|t| t == aggregate_type))
}

/// The deliveries of events just appended, for endpoints the cache says want them: which
/// pairs, with their delivery and message ids, come from the append (`$1..$4`); the endpoint
/// is checked again here (the cache may be a moment old), so a pair whose endpoint was disabled
/// or changed its filter just now gives no row. No ON CONFLICT: these events were appended by
/// this transaction just now, so no delivery of theirs exists.
static QUEUE_APPENDED: Statement = Statement {
    sql: concat!(
        "INSERT INTO eventstore.webhook_deliveries (delivery_id, tenant_id, endpoint_id, event_id, event_type,
             transaction_id, global_position, message_id, body)
         SELECT p.delivery_id, e.tenant_id, w.endpoint_id, e.event_id, e.event_type, e.transaction_id,
             e.global_position, p.message_id, ", frozen_body!(), "
         FROM ROWS FROM (unnest($1::uuid[]), unnest($2::text[]), unnest($3::uuid[]), unnest($4::uuid[]))
                  AS p(delivery_id, message_id, event_id, endpoint_id)
         JOIN eventstore.events e ON e.event_id = p.event_id
         JOIN eventstore.webhook_endpoints w ON w.endpoint_id = p.endpoint_id AND ", endpoint_wants!()
    ),
    args: &[UUIDARRAYOID, TEXTARRAYOID, UUIDARRAYOID, UUIDARRAYOID],
    volatile: true,
};

/// The same for one event and one endpoint (the common case), with the body written in Rust
/// from what the append has in hand (src/webhooks/body.rs): no join, the endpoint found by its
/// key and checked as above (`$5` event type, `$8` tenant, `$9` aggregate type).
static QUEUE_APPENDED_ONE: Statement = Statement {
    sql: concat!(
        "INSERT INTO eventstore.webhook_deliveries (delivery_id, tenant_id, endpoint_id, event_id, event_type,
              transaction_id, global_position, message_id, body)
          SELECT $1, w.tenant_id, w.endpoint_id, $3, $5, pg_current_xact_id(), $6, $2, $7
          FROM eventstore.webhook_endpoints w
          WHERE w.endpoint_id = $4 AND ",
        endpoint_wants!("$8", "$5", "$9")
    ),
    args: &[UUIDOID, TEXTOID, UUIDOID, UUIDOID, TEXTOID, INT8OID, TEXTOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// Queues the events just appended to `stream` (stored at `placed`) for the tenant's matching
/// enabled endpoints, in the appending transaction (a rolled-back append queues nothing). The
/// tenant's endpoints are cached: while none of them wants these events, this runs no
/// statement at all; otherwise one kept statement, with delivery ids made here (UUIDv7: the
/// queue's primary key grows at its right edge), `msg_` and their hex digits as message ids.
pub fn queue_appended(stream: &Stream, events: &[NewEvent], placed: &[Placed], body: Body) -> Result<()> {
    let filters = filters(&stream.tenant)?;
    if filters.is_empty() {
        return Ok(());
    }
    let (mut deliveries, mut messages, mut event_ids, mut endpoint_ids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for event in events {
        for f in filters.iter().filter(|f| wants(f, &stream.aggregate_type, &event.event_type)) {
            let id = crate::ids::new_v7();
            deliveries.push(Uuid::from_bytes(*id.as_bytes()));
            messages.push(format!("msg_{}", id.simple()));
            event_ids.push(Uuid::from_bytes(*event.event_id.as_bytes()));
            endpoint_ids.push(f.endpoint_id);
        }
    }
    if deliveries.is_empty() {
        return Ok(());
    }
    Spi::connect(|client| match (deliveries.len(), body, placed) {
        (1, Body::One { payload, metadata }, [at]) => {
            let event = &events[0];
            let text = crate::webhooks::body::body(&crate::webhooks::body::Event {
                event_type: &event.event_type,
                recorded_at: at.recorded_at,
                event_id: event.event_id,
                aggregate_type: &stream.aggregate_type,
                aggregate_id: &stream.aggregate_id,
                aggregate_version: at.version,
                global_position: at.position,
                payload: &payload.text(),
                metadata: &metadata.map_or_else(|| "{}".to_owned(), |m| m.text()),
            });
            run_generic(client, &QUEUE_APPENDED_ONE, &[
                deliveries[0].into(),
                messages[0].as_str().into(),
                event_ids[0].into(),
                endpoint_ids[0].into(),
                event.event_type.as_str().into(),
                at.position.into(),
                text.as_str().into(),
                stream.tenant.as_str().into(),
                stream.aggregate_type.as_str().into(),
            ])
            .map(drop)
        }
        _ => run_generic(client, &QUEUE_APPENDED, &[deliveries.into(), messages.into(), event_ids.into(), endpoint_ids.into()]).map(drop),
    })
}

static QUEUE_EVENT: Statement = Statement {
    sql: concat!(
        "INSERT INTO eventstore.webhook_deliveries (delivery_id, tenant_id, endpoint_id, event_id, event_type,
             transaction_id, global_position, message_id, body) ",
        queue_select!("(SELECT * FROM eventstore.events WHERE tenant_id = $1 AND event_id = $2)"),
        " ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING 1"
    ),
    args: &[TEXTOID, UUIDOID],
    volatile: true,
};

static EVENT_EXISTS: Statement = Statement {
    sql: "SELECT 1 FROM eventstore.events WHERE tenant_id = $1 AND event_id = $2",
    args: &[TEXTOID, UUIDOID],
    volatile: true,
};

/// Queues one stored event for every matching enabled endpoint that has not got it yet.
pub fn queue_event(tenant: &str, event_id: Uuid) -> Result<i32> {
    Spi::connect(|client| {
        if run(client, &EVENT_EXISTS, &[tenant.into(), event_id.into()])?.is_empty() {
            return Err(Error::new(Kind::NotFound, format!("event {event_id} does not exist")));
        }
        Ok(run(client, &QUEUE_EVENT, &[tenant.into(), event_id.into()])?.len() as i32)
    })
}

static CREATE: Statement = Statement {
    sql: "INSERT INTO eventstore.webhook_endpoints (endpoint_id, tenant_id, url, description, event_types,
              aggregate_types, secret, retry_schedule, rate_limit_per_second)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    args: &[UUIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTOID, INT4ARRAYOID, INT4OID],
    volatile: true,
};

/// A new endpoint's definition, validated.
pub struct NewEndpoint {
    pub endpoint_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub aggregate_types: Option<Vec<String>>,
    pub secret: String,
    pub retry_schedule: Option<Vec<i32>>,
    pub rate_limit_per_second: Option<i32>,
}

pub fn create(tenant: &str, e: NewEndpoint) -> Result<()> {
    Spi::connect(|client| {
        run(client, &CREATE, &[
            e.endpoint_id.into(),
            tenant.into(),
            e.url.as_str().into(),
            e.description.into(),
            e.event_types.into(),
            e.aggregate_types.into(),
            e.secret.as_str().into(),
            e.retry_schedule.into(),
            e.rate_limit_per_second.into(),
        ])
        .map(|_| ())
    })?;
    crate::cache::invalidate(c"webhook_endpoints");
    Ok(())
}

static ROTATE: Statement = Statement {
    sql: "UPDATE eventstore.webhook_endpoints
             SET previous_secret = secret, previous_secret_until = statement_timestamp() + $4,
                 secret = $3, updated_at = statement_timestamp()
           WHERE tenant_id = $1 AND endpoint_id = $2
          RETURNING 1",
    args: &[TEXTOID, UUIDOID, TEXTOID, INTERVALOID],
    volatile: true,
};

pub fn endpoint_not_found(id: Uuid) -> Error {
    Error::new(Kind::NotFound, format!("webhook endpoint {id} does not exist"))
}

pub fn rotate(tenant: &str, id: Uuid, secret: &str, grace: pgrx::datum::Interval) -> Result<()> {
    Spi::connect(|client| {
        if run(client, &ROTATE, &[tenant.into(), id.into(), secret.into(), grace.into()])?.is_empty() {
            return Err(endpoint_not_found(id));
        }
        Ok(())
    })
}

static SET_ENABLED: Statement = Statement {
    sql: "UPDATE eventstore.webhook_endpoints
             SET enabled = $3, disabled_reason = CASE WHEN $3 THEN NULL ELSE $4 END,
                 disabled_at = CASE WHEN $3 THEN NULL ELSE statement_timestamp() END,
                 updated_at = statement_timestamp()
           WHERE tenant_id = $1 AND endpoint_id = $2
          RETURNING 1",
    args: &[TEXTOID, UUIDOID, BOOLOID, TEXTOID],
    volatile: true,
};

pub fn set_enabled(tenant: &str, id: Uuid, enabled: bool, reason: Option<&str>) -> Result<()> {
    Spi::connect(|client| {
        if run(client, &SET_ENABLED, &[tenant.into(), id.into(), enabled.into(), reason.into()])?.is_empty() {
            return Err(endpoint_not_found(id));
        }
        Ok(())
    })?;
    crate::cache::invalidate(c"webhook_endpoints");
    Ok(())
}

static RETRY: Statement = Statement {
    sql: "UPDATE eventstore.webhook_deliveries
             SET status = 'pending', next_attempt_at = statement_timestamp(), lease_until = NULL
           WHERE tenant_id = $1 AND delivery_id = $2 AND status <> 'succeeded'
          RETURNING 1",
    args: &[TEXTOID, UUIDOID],
    volatile: true,
};

static DELIVERY_EXISTS: Statement = Statement {
    sql: "SELECT status FROM eventstore.webhook_deliveries WHERE tenant_id = $1 AND delivery_id = $2",
    args: &[TEXTOID, UUIDOID],
    volatile: true,
};

/// Makes a dead (or waiting) delivery due now; a delivered one is left alone (false).
pub fn retry(tenant: &str, id: Uuid) -> Result<bool> {
    Spi::connect(|client| {
        if !run(client, &RETRY, &[tenant.into(), id.into()])?.is_empty() {
            return Ok(true);
        }
        if run(client, &DELIVERY_EXISTS, &[tenant.into(), id.into()])?.is_empty() {
            return Err(Error::new(Kind::NotFound, format!("webhook delivery {id} does not exist")));
        }
        Ok(false)
    })
}

static RECOVER: Statement = Statement {
    sql: "UPDATE eventstore.webhook_deliveries d
             SET status = 'pending', next_attempt_at = statement_timestamp(), lease_until = NULL
           WHERE d.tenant_id = $1 AND d.endpoint_id = $2 AND d.created_at >= $3
             AND (d.status = 'dead' OR (d.status = 'pending' AND d.attempts > 0))
          RETURNING 1",
    args: &[TEXTOID, UUIDOID, TIMESTAMPTZOID],
    volatile: true,
};

/// Enables the endpoint again and requeues what failed since `since`; returns how many.
pub fn recover(tenant: &str, id: Uuid, since: pgrx::datum::TimestampWithTimeZone) -> Result<i32> {
    set_enabled(tenant, id, true, None)?;
    Spi::connect(|client| Ok(run(client, &RECOVER, &[tenant.into(), id.into(), since.into()])?.len() as i32))
}

static STATS: Statement = Statement {
    sql: "WITH d AS (SELECT * FROM eventstore.webhook_deliveries WHERE tenant_id = $1 AND created_at >= $2),
               a AS (SELECT * FROM eventstore.webhook_attempts WHERE tenant_id = $1 AND attempted_at >= $2)
          SELECT jsonb_build_object(
            'since', $2,
            'deliveries', (SELECT count(*) FROM d),
            'succeeded', (SELECT count(*) FROM d WHERE status = 'succeeded'),
            'pending', (SELECT count(*) FROM d WHERE status IN ('pending', 'delivering')),
            'dead', (SELECT count(*) FROM d WHERE status = 'dead'),
            'attempts', (SELECT count(*) FROM a),
            'failed_attempts', (SELECT count(*) FROM a WHERE status_code NOT BETWEEN 200 AND 299),
            'avg_duration_ms', (SELECT round(avg(duration_ms)::numeric, 3) FROM a),
            'p95_duration_ms', (SELECT round((percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms))::numeric, 3) FROM a),
            'by_status_code', coalesce((SELECT jsonb_object_agg(status_code, n)
                 FROM (SELECT status_code, count(*) AS n FROM a GROUP BY status_code) s), '{}'),
            'endpoints', coalesce((SELECT jsonb_agg(jsonb_build_object(
                 'endpoint_id', w.endpoint_id, 'url', w.url, 'enabled', w.enabled,
                 'disabled_reason', w.disabled_reason,
                 'pending', (SELECT count(*) FROM eventstore.webhook_deliveries x
                             WHERE x.endpoint_id = w.endpoint_id AND x.status IN ('pending', 'delivering')),
                 'dead', (SELECT count(*) FROM d WHERE d.endpoint_id = w.endpoint_id AND d.status = 'dead'))
                 ORDER BY w.created_at)
               FROM eventstore.webhook_endpoints w WHERE w.tenant_id = $1), '[]'))",
    args: &[TEXTOID, TIMESTAMPTZOID],
    volatile: false,
};

pub fn stats(tenant: &str, since: pgrx::datum::TimestampWithTimeZone) -> Result<JsonB> {
    Spi::connect(|client| {
        run(client, &STATS, &[tenant.into(), since.into()])?
            .first()
            .get_one::<JsonB>()?
            .ok_or_else(|| Error::new(Kind::Internal, "eventstore internal error: no statistics"))
    })
}
