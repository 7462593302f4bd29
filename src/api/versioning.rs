//! register_api_version, register_api_route, register_api_change, deprecate_api_version,
//! switch_api_version, get_active_api_version, route_api_call, get_api_usage.
//!
//! Versions are compared as semantic versions (`1.10.0 > 1.9.9`; `v2`, `2` and `2.0.0` are the
//! same version; dates `YYYY-MM-DD` work too, see src/versioning/semver.rs). The first version
//! registered becomes the active one; after that only switch_api_version changes it (its
//! fallback defaults to the version that was active).
//!
//! route_api_call answers with `{"success": true, "data": ..., "meta": ...}` or `{"success":
//! false, "error": {"code", "message", "details"}, "meta": ...}`; `meta` has `version` (the
//! version that answered, null when none was resolved), `requested_version` (as asked for, null
//! when the active version was used), `request_id` (a UUIDv7, also in the log), `timestamp`
//! (RFC 3339, UTC), `processing_ms`, and for a deprecated version `deprecation`
//! (`deprecated_at`, `sunset_at`, `docs_url`). It sets `response.status` for every refusal:
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `invalid_request` | `name` is null, empty or longer than 255 characters |
//! | 400 | `unsupported_api_version` | the version asked for (argument, `x-api-version`, `Accept: application/vnd.<x>.<version>+json`) is not registered, or none is active; `details.supported_versions` lists the ones that answer |
//! | 400 | `invalid_client_version` | `x-app-version` is not a version and the version has a `min_client_version` |
//! | 400 | `client_version_unsupported` | the app is below the version's `min_client_version`, and neither an older version nor the active fallback accepts it; `details.min_client_version` says what it needs |
//! | 400 | `invalid_payload` | `payload` is not a JSON object (SQL NULL counts as `{}`) |
//! | 404 | `unknown_rpc` | no handler serves the rpc at that version |
//! | 410 | `api_version_sunset` | the version's `sunset_at` has passed |
//! | 500 | `handler_error` | the handler raised (its work is rolled back to a savepoint; `details` has its sqlstate, message, detail and hint) or was dropped |
//!
//! A deprecated version (also one fallen back to, and a sunset one) appends `Deprecation: @<unix
//! seconds>`, `Sunset: <IMF-fixdate>` (when it has a sunset date) and `Link: <docs_url>;
//! rel="deprecation"` (when it has a docs URL) to `response.headers`, after what is there. A call
//! raises only when it has no tenant and one is required (42501), like every other function.

use pgrx::JsonB;
use pgrx::datum::{Date, TimestampWithTimeZone};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use serde_json::Value;

use crate::datum::{RawJsonb, RegProcedure};
use crate::error::{Error, Result};
use crate::json::TransformProgram;
use crate::store::{api_usage, versioning};
use crate::versioning::call::{self, Request};
use crate::versioning::http;
use crate::versioning::semver::Version;
use crate::{input, tenant};

/// Registers an API version, or replaces the release date and minimum client version of a
/// registered one (a NULL docs_url keeps its docs URL). The first version registered becomes
/// the active version.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn register_api_version(
    version: Option<&str>,
    released_at: default!(Option<TimestampWithTimeZone>, "now()"),
    min_client_version: default!(Option<&str>, "NULL"),
    docs_url: default!(Option<&str>, "NULL"),
) -> Result<(), ErrorReport> {
    let version = parse_version("version", version)?;
    let released_at = match released_at {
        None => None,
        Some(t) => Some(finite("released_at", t)?),
    };
    let released_at = released_at.unwrap_or_else(|| TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }).unwrap_or(TimestampWithTimeZone::positive_infinity()));
    let min_client = match min_client_version {
        None => None,
        some => Some(parse_version("min_client_version", some)?),
    };
    let docs_url = docs(docs_url)?;
    versioning::register_version(&version, released_at, min_client.as_ref(), docs_url)?;
    Ok(())
}

/// Registers (or replaces) the handler of an rpc at a version: a function (payload jsonb)
/// RETURNS jsonb, run as the calling role.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn register_api_route(rpc_name: Option<&str>, version: Option<&str>, handler: Option<RegProcedure>) -> Result<(), ErrorReport> {
    let rpc = input::name("rpc_name", rpc_name)?;
    let version = input::name("version", version)?;
    let handler = handler.ok_or_else(|| Error::invalid("handler must not be null").hint("Pass the handler as 'schema.name(jsonb)'."))?;
    versioning::register_route(&rpc, &version, handler)?;
    Ok(())
}

/// Registers what changed in an rpc at a version (Stripe style): calls for older versions run
/// the newer handler, `request_transform` reshaping their payload up to this version and
/// `response_transform` the answer back down.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn register_api_change(
    version: Option<&str>,
    rpc_name: Option<&str>,
    description: Option<&str>,
    request_transform: default!(Option<RawJsonb>, "NULL"),
    response_transform: default!(Option<RawJsonb>, "NULL"),
) -> Result<(), ErrorReport> {
    let version = input::name("version", version)?;
    let rpc = input::name("rpc_name", rpc_name)?;
    let description = match description.map(str::trim) {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => return Err(Error::invalid("description must not be empty").hint("Say what changed, for the changelog.").into()),
    };
    let request = transform("request_transform", request_transform)?;
    let response = transform("response_transform", response_transform)?;
    versioning::register_change(&version, &rpc, &description, request, response)?;
    Ok(())
}

/// Deprecates a version: its answers carry Deprecation, Sunset and Link headers, and from
/// `sunset_at` on it answers 410. A NULL deprecated_at means now; a NULL docs_url keeps the
/// registered one. Returns the version with its status and headers.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn deprecate_api_version(
    version: Option<&str>,
    deprecated_at: default!(Option<TimestampWithTimeZone>, "now()"),
    sunset_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    docs_url: default!(Option<&str>, "NULL"),
) -> Result<JsonB, ErrorReport> {
    let version = input::name("version", version)?;
    let deprecated_at = deprecated_at.map(|t| finite("deprecated_at", t)).transpose()?;
    let sunset_at = sunset_at.map(|t| finite("sunset_at", t)).transpose()?;
    let docs_url = docs(docs_url)?;
    Ok(JsonB(versioning::deprecate(&version, deprecated_at, sunset_at, docs_url)?))
}

/// Makes a version the active one, atomically and audited in api_deployments; refuses unknown
/// and sunset versions (22023). Calls already running finish on the version they resolved.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn switch_api_version(new_version: Option<&str>, fallback_version: default!(Option<&str>, "NULL")) -> Result<JsonB, ErrorReport> {
    let new_version = input::name("new_version", new_version)?;
    let fallback = match fallback_version {
        None => None,
        some => Some(input::name("fallback_version", some)?),
    };
    Ok(JsonB(versioning::switch(&new_version, fallback.as_deref())?))
}

/// The active version, its fallback, and every version with its status, dates and rpcs.
#[pg_extern(stable, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_active_api_version() -> Result<JsonB, ErrorReport> {
    Ok(JsonB(versioning::active()?))
}

/// Calls an rpc at a version and answers with the envelope `{"success",
/// "data" | "error": {"code", "message", "details"}, "meta"}`. Client mistakes are answers
/// with a status in `response.status`, not errors, so the request log row commits.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn route_api_call(
    name: Option<&str>,
    payload: default!(Option<RawJsonb>, "'{}'"),
    requested_version: default!(Option<&str>, "NULL"),
) -> Result<JsonB, ErrorReport> {
    Ok(JsonB(call::route_call(Request { name, payload, requested_version })?))
}

/// Usage of the current tenant per day (UTC), version and rpc between `since` and `until`
/// (inclusive; NULL is open-ended), exact from the request log.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_api_usage(
    since: Option<Date>,
    until: Option<Date>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(day, Date),
            name!(version, Option<String>),
            name!(rpc_name, Option<String>),
            name!(calls, i64),
            name!(errors, i64),
            name!(avg_ms, f64),
            name!(p95_ms, f64),
        ),
    >,
    ErrorReport,
> {
    let since = since.unwrap_or(Date::negative_infinity());
    let until = until.unwrap_or(Date::positive_infinity());
    if until < since {
        return Err(Error::invalid("until is before since")
            .detail(format!("since is {since}, until is {until}"))
            .hint("Both days are included: pass until on or after since.")
            .into());
    }
    Ok(TableIterator::new(api_usage::usage(&tenant::current()?, since, until)?))
}

fn parse_version(what: &str, text: Option<&str>) -> Result<Version> {
    let text = input::required(text, what)?;
    Version::parse(text).map_err(|e| {
        Error::invalid(format!("{what} \"{text}\" is not a version"))
            .detail(e.to_string())
            .hint("Use numbers separated by dots such as 2, 1.4 or 1.10.0 (a leading v and a -pre-release are allowed), or a date such as 2024-06-20.")
    })
}

/// A timestamp of an API version: finite, and within the years 1 to 9999, which HTTP dates
/// (the Sunset header) can say and whose microseconds every later computation can hold.
fn finite(what: &str, t: TimestampWithTimeZone) -> Result<TimestampWithTimeZone> {
    // microseconds from 2000-01-01 (PostgreSQL's epoch) to 0001-01-01 and to 10000-01-01
    const FIRST: i64 = -63_082_281_600_000_000;
    const AFTER_LAST: i64 = 252_455_616_000_000_000;
    if !t.is_finite() {
        return Err(Error::invalid(format!("{what} must be a finite timestamp")).detail(format!("{what} is {t}")));
    }
    let micros: i64 = t.into_inner();
    if !(FIRST..AFTER_LAST).contains(&micros) {
        return Err(Error::invalid(format!("{what} is out of range"))
            .detail(format!("{what} is {t}"))
            .hint("API version dates must fall in the years 1 to 9999."));
    }
    Ok(t)
}

fn docs(url: Option<&str>) -> Result<Option<&str>> {
    match url {
        Some(u) if !http::valid_docs_url(u) => Err(Error::invalid("docs_url is not an http(s) URL")
            .detail(format!("docs_url is \"{}\"", u.chars().take(200).collect::<String>()))
            .hint("It goes into a Link header: an absolute http:// or https:// URL without spaces, quotes or angle brackets.")),
        other => Ok(other),
    }
}

fn transform(what: &str, program: Option<RawJsonb>) -> Result<Option<Value>> {
    let Some(program) = program.map(|p| p.value(what)).transpose()? else { return Ok(None) };
    TransformProgram::compile(&program).map_err(|e| {
        Error::invalid(format!("invalid {what}: {e}")).hint("A transform is a JSON array of steps: rename, move, set_default, remove, map_values, wrap.")
    })?;
    Ok(Some(program))
}
