//! create_webhook_endpoint, queue_event_for_webhooks, rotate_webhook_secret,
//! retry_webhook_delivery, recover_webhook_endpoint, enable/disable_webhook_endpoint,
//! get_webhook_delivery_stats, sign_webhook, and the trigger that queues deliveries.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};

use crate::error::{Error, Result};
use crate::store::webhook_queue::{self, NewEndpoint};
use crate::webhooks::{address, schedule, signing};
use crate::{guc, input, tenant};

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), N) } {
        return Err(Error::new(crate::error::Kind::Internal, "could not generate random bytes"));
    }
    Ok(bytes)
}

fn new_secret() -> Result<String> {
    Ok(signing::secret_from(&random::<24>()?))
}

fn names(what: &str, list: Option<Vec<String>>) -> Result<Option<Vec<String>>> {
    match list {
        Some(l) if l.is_empty() => Err(Error::invalid(format!("{what} must not be empty")).hint("Pass NULL for all.")),
        Some(l) => {
            for n in &l {
                input::name(what, Some(n))?;
            }
            Ok(Some(l))
        }
        None => Ok(None),
    }
}

/// An HTTP endpoint that receives the tenant's events (those matching the filters) as
/// Standard Webhooks. Returns its id and its signing secret.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create_webhook_endpoint(
    url: Option<&str>,
    event_types: default!(Option<Vec<Option<String>>>, "NULL"),
    aggregate_types: default!(Option<Vec<Option<String>>>, "NULL"),
    description: default!(Option<String>, "NULL"),
    retry_schedule: default!(Option<Vec<Option<i32>>>, "NULL"),
    rate_limit_per_second: default!(Option<i32>, "NULL"),
) -> Result<TableIterator<'static, (name!(endpoint_id, Uuid), name!(secret, String))>, ErrorReport> {
    let url = input::required(url, "url")?;
    if url.len() > 2048 {
        return Err(Error::invalid("url is too long").detail(format!("{} characters; at most 2048", url.len())).into());
    }
    let target = address::target(url).map_err(|why| Error::invalid(format!("invalid webhook url: {why}")).detail(format!("url is \"{url}\"")))?;
    let allowed = guc::webhook_allowed_hosts();
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        if address::is_internal(ip) && !address::allowed(&target.host, &allowed) {
            return Err(Error::invalid(format!("webhook url points to an internal address: {ip}"))
                .detail("private, loopback and link-local addresses are refused")
                .hint("List the host in eventstore.webhook_allowed_hosts (server configuration) to allow it.")
                .into());
        }
    }
    let event_types = names("event_types", input::no_nulls("event_types", event_types)?)?;
    let aggregate_types = names("aggregate_types", input::no_nulls("aggregate_types", aggregate_types)?)?;
    let retry_schedule = input::no_nulls("retry_schedule", retry_schedule)?;
    if let Some(s) = &retry_schedule {
        schedule::validate(s).map_err(Error::invalid)?;
    }
    if let Some(r) = rate_limit_per_second.filter(|r| *r < 1) {
        return Err(Error::invalid("rate_limit_per_second must be 1 or more").detail(format!("rate_limit_per_second is {r}")).into());
    }
    let endpoint_id = Uuid::from_bytes(uuid::Builder::from_random_bytes(random::<16>()?).into_uuid().into_bytes());
    let secret = new_secret()?;
    webhook_queue::create(&tenant::current()?, NewEndpoint {
        endpoint_id,
        url: url.to_owned(),
        description,
        event_types,
        aggregate_types,
        secret: secret.clone(),
        retry_schedule,
        rate_limit_per_second,
    })?;
    Ok(TableIterator::once((endpoint_id, secret)))
}

/// Queues a stored event for every matching enabled endpoint that has not got it yet; returns
/// how many deliveries were queued. (Appends queue their events by themselves.)
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn queue_event_for_webhooks(event_id: Option<Uuid>) -> Result<i32, ErrorReport> {
    let event_id = input::required(event_id, "event_id")?;
    Ok(webhook_queue::queue_event(&tenant::current()?, event_id)?)
}

/// A new secret; the old one keeps signing (as a second signature) for `grace`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_webhook_secret(
    endpoint_id: Option<Uuid>,
    grace: default!(Option<Interval>, "'24 hours'"),
) -> Result<String, ErrorReport> {
    let endpoint_id = input::required(endpoint_id, "endpoint_id")?;
    let grace = input::required(grace, "grace")?;
    let secret = new_secret()?;
    webhook_queue::rotate(&tenant::current()?, endpoint_id, &secret, grace)?;
    Ok(secret)
}

/// Makes a delivery (typically a dead one) due again now; false when it was delivered already.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn retry_webhook_delivery(delivery_id: Option<Uuid>) -> Result<bool, ErrorReport> {
    let delivery_id = input::required(delivery_id, "delivery_id")?;
    Ok(webhook_queue::retry(&tenant::current()?, delivery_id)?)
}

/// Enables an endpoint again and requeues every delivery to it that failed since `since`;
/// returns how many.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn recover_webhook_endpoint(endpoint_id: Option<Uuid>, since: Option<TimestampWithTimeZone>) -> Result<i32, ErrorReport> {
    let endpoint_id = input::required(endpoint_id, "endpoint_id")?;
    let since = input::required(since, "since")?;
    Ok(webhook_queue::recover(&tenant::current()?, endpoint_id, since)?)
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn enable_webhook_endpoint(endpoint_id: Option<Uuid>) -> Result<(), ErrorReport> {
    let endpoint_id = input::required(endpoint_id, "endpoint_id")?;
    webhook_queue::set_enabled(&tenant::current()?, endpoint_id, true, None)?;
    Ok(())
}

#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn disable_webhook_endpoint(endpoint_id: Option<Uuid>, reason: default!(Option<&str>, "NULL")) -> Result<(), ErrorReport> {
    let endpoint_id = input::required(endpoint_id, "endpoint_id")?;
    webhook_queue::set_enabled(&tenant::current()?, endpoint_id, false, Some(reason.unwrap_or("disabled by hand")))?;
    Ok(())
}

/// Deliveries and attempts of the current tenant since a time.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_webhook_delivery_stats(
    since: default!(Option<TimestampWithTimeZone>, "now() - interval '24 hours'"),
) -> Result<JsonB, ErrorReport> {
    let since = input::required(since, "since")?;
    Ok(webhook_queue::stats(&tenant::current()?, since)?)
}

/// The `webhook-signature` value of one message: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`.
#[pg_extern(immutable, strict, parallel_safe)]
fn sign_webhook(secret: &str, msg_id: &str, ts: i64, body: &str) -> Result<String, ErrorReport> {
    let key = signing::key(secret)
        .ok_or_else(|| Error::invalid("invalid webhook secret").hint("A secret is 'whsec_' followed by standard base64."))?;
    Ok(signing::sign(&key, msg_id, ts, body))
}
