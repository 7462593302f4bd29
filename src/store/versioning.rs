//! API versioning: the registered versions, routes and changes, the hot switch,
//! route_api_call's handler call and request log, and usage.
//!
//! The definitions are read in one statement (one snapshot: a switch is seen whole or not at
//! all) into a `Catalog`, cached per backend (src/cache.rs) and dropped when any of the
//! definition tables changes. A call resolves its version from the catalog it started with, so
//! calls already running finish on the version they resolved while a switch commits.
//!
//! Usage has no hot row: the only write of a call is its own `api_request_log` row, and
//! get_api_usage() aggregates the log of the days asked for through an index on
//! (tenant_id, day), exact by construction. Days that are over, and that no running transaction
//! can still log a call for, are rolled up into `api_version_usage` the first time they are
//! asked for and read from there afterwards.

use std::rc::Rc;
use std::time::Instant;

use pgrx::datum::{Date, DatumWithOid, TimestampWithTimeZone};
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgOid};
use serde_json::{Value, json};

use super::caller::{as_caller, subtransaction};
use super::plans::{Statement, run, run_dynamic};
use crate::cache::{self, Memo};
use crate::datum::{RawJsonb, RegProcedure, Root};
use crate::error::{Error, Kind, Result};
use crate::json::TransformProgram;
use crate::versioning::http::{self, RequestHeaders};
use crate::versioning::route::{self, ApiVersion, Call, Catalog, Plan, Refusal};
use crate::versioning::semver::Version;
use crate::versioning::unlogged;
use crate::{guc, tenant};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The current time, in microseconds since the Unix epoch.
pub fn unix_now() -> i64 {
    (unsafe { pg_sys::GetCurrentTimestamp() }) + PG_EPOCH_MICROS
}

/// A finite timestamp in microseconds since the Unix epoch.
pub fn unix_micros(ts: TimestampWithTimeZone) -> i64 {
    pg_sys::TimestampTz::from(ts) + PG_EPOCH_MICROS
}

// --- the catalog -----------------------------------------------------------------------------

/// Everything route_api_call needs, in one statement so in one snapshot.
static CATALOG: Statement = Statement {
    sql: "SELECT jsonb_build_object(
            'versions', coalesce((SELECT jsonb_agg(jsonb_build_object(
                'version', v.version,
                'released_at', (extract(epoch FROM v.released_at) * 1000000)::bigint,
                'deprecated_at', (extract(epoch FROM v.deprecated_at) * 1000000)::bigint,
                'sunset_at', (extract(epoch FROM v.sunset_at) * 1000000)::bigint,
                'min_client_version', v.min_client_version,
                'docs_url', v.docs_url)) FROM eventstore.api_versions v), '[]'::jsonb),
            'routes', coalesce((SELECT jsonb_agg(jsonb_build_array(r.rpc_name, r.version,
                (SELECT p.oid::regproc::text FROM pg_proc p WHERE p.oid = r.handler), r.handler::oid::text))
                FROM eventstore.api_routes r), '[]'::jsonb),
            'changes', coalesce((SELECT jsonb_agg(jsonb_build_array(c.rpc_name, c.version, c.request_transform,
                c.response_transform) ORDER BY c.change_id) FROM eventstore.api_changes c), '[]'::jsonb),
            'active', (SELECT jsonb_build_object('current_version', a.current_version,
                'fallback_version', a.fallback_version,
                'updated_at', (extract(epoch FROM a.updated_at) * 1000000)::bigint,
                'updated_by', a.updated_by) FROM eventstore.active_api_version a))",
    args: &[],
    volatile: false,
};

thread_local! {
    static CATALOGS: Memo<(), Catalog> = Memo::new();
}

/// A stored definition that the current limits refuse (stored by an earlier version, or under
/// a higher limit): an error for the calls that need it, never a crash.
fn broken(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("stored {what} no longer compiles: {e}"))
        .hint("Register it again within the limits, or ask a superuser to raise eventstore.max_json_depth.")
}

/// The catalog of this backend, loaded again after any definition changed.
pub fn catalog() -> Result<Rc<Catalog>> {
    CATALOGS.with(|memo| memo.get(&(), || load().map(|(catalog, _)| catalog)))
}

/// The catalog read now, with the row of the active version as stored.
fn load() -> Result<(Catalog, Value)> {
    // the catalog document holds the stored transforms three levels down
    let doc = Spi::connect(|client| {
        let datum = run(client, &CATALOG, &[])?.first().get::<crate::datum::RawJsonb>(1)?;
        datum.map(|d| crate::jsonb::to_value_within("the api catalog", d.datum(), 3, |_| None)).transpose()
    })?
    .unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let mut versions = Vec::new();
    for v in doc["versions"].as_array().into_iter().flatten() {
        let name = text(&v["version"]).unwrap_or_default();
        let version = Version::parse(&name).map_err(|e| broken("api version", e))?;
        let min_client = match text(&v["min_client_version"]) {
            Some(m) => Some(Version::parse(&m).map_err(|e| broken("min_client_version", e))?),
            None => None,
        };
        versions.push(ApiVersion {
            name,
            version,
            released_at: v["released_at"].as_i64().unwrap_or_default(),
            deprecated_at: v["deprecated_at"].as_i64(),
            sunset_at: v["sunset_at"].as_i64(),
            min_client,
            docs_url: text(&v["docs_url"]),
        });
    }
    let routes = doc["routes"]
        .as_array()
        .into_iter()
        .flatten()
        // a dropped handler has no name: `#<oid>`, which answers 500 instead of failing to parse
        .map(|r| (text(&r[0]).unwrap_or_default(), text(&r[1]).unwrap_or_default(),
                  text(&r[2]).unwrap_or_else(|| format!("#{}", text(&r[3]).unwrap_or_default()))))
        .collect();
    let mut changes = Vec::new();
    for c in doc["changes"].as_array().into_iter().flatten() {
        let compile = |t: &Value| match t {
            Value::Null => Ok(None),
            t => TransformProgram::compile(t).map(Some).map_err(|e| broken("api change transform", e)),
        };
        changes.push((text(&c[0]).unwrap_or_default(), text(&c[1]).unwrap_or_default(), (compile(&c[2])?, compile(&c[3])?)));
    }
    let active = doc["active"].clone();
    let catalog = Catalog::new(
        versions,
        routes,
        changes,
        active["current_version"].as_str(),
        active["fallback_version"].as_str(),
    );
    Ok((catalog, active))
}

// --- registration ----------------------------------------------------------------------------

/// Registrations and switches take turns; calls (which only read) never wait for them.
static LOCK_VERSIONS: Statement = Statement {
    sql: "LOCK TABLE eventstore.api_versions IN SHARE ROW EXCLUSIVE MODE",
    args: &[],
    volatile: true,
};

static VERSION_NAMES: Statement = Statement {
    sql: "SELECT v.version FROM eventstore.api_versions v",
    args: &[],
    volatile: true,
};

static UPSERT_VERSION: Statement = Statement {
    sql: "INSERT INTO eventstore.api_versions AS v (version, released_at, min_client_version, docs_url)
          VALUES ($1, $2, $3, $4)
          ON CONFLICT (version) DO UPDATE
             SET released_at = excluded.released_at, min_client_version = excluded.min_client_version,
                 docs_url = coalesce(excluded.docs_url, v.docs_url), updated_at = statement_timestamp()",
    args: &[TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// The first version registered becomes the active one; returns a row only then.
static FIRST_ACTIVE: Statement = Statement {
    sql: "INSERT INTO eventstore.active_api_version (singleton, current_version, updated_by)
          VALUES (true, $1, pg_get_userbyid($2))
          ON CONFLICT (singleton) DO NOTHING
          RETURNING 1",
    args: &[TEXTOID, OIDOID],
    volatile: true,
};

static INSERT_DEPLOYMENT: Statement = Statement {
    sql: "INSERT INTO eventstore.api_deployments (from_version, to_version, from_fallback, to_fallback, deployed_by, jwt_sub, reason)
          VALUES ($1, $2, $3, $4, pg_get_userbyid($5), $6, $7)
          RETURNING deployment_id, deployed_at",
    args: &[TEXTOID, TEXTOID, TEXTOID, TEXTOID, OIDOID, TEXTOID, TEXTOID],
    volatile: true,
};

/// The role that called the extension.
fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

/// The JWT subject of a PostgREST call, if any.
fn jwt_sub() -> Option<String> {
    let claims = guc::by_name(c"request.jwt.claims")?;
    let claims: Value = serde_json::from_str(&claims).ok()?;
    match &claims["sub"] {
        Value::String(s) => Some(http::for_log(Some(s)).unwrap_or_default()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The registered name of the version equal to `text` (`v2` finds `2.0.0`), if any.
fn registered(client: &SpiClient<'_>, text: &str) -> Result<Option<String>> {
    let wanted = Version::parse(text).ok();
    let mut names = Vec::new();
    for row in run(client, &VERSION_NAMES, &[])? {
        names.push(row.get::<String>(1)?.unwrap_or_default());
    }
    Ok(wanted.and_then(|w| names.into_iter().find(|n| Version::parse(n).is_ok_and(|v| v == w))))
}

fn all_names(client: &SpiClient<'_>) -> Result<String> {
    let mut names: Vec<(Version, String)> = Vec::new();
    for row in run(client, &VERSION_NAMES, &[])? {
        let name: String = row.get(1)?.unwrap_or_default();
        if let Ok(v) = Version::parse(&name) {
            names.push((v, name));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(if names.is_empty() { "none".into() } else { names.into_iter().map(|n| n.1).collect::<Vec<_>>().join(", ") })
}

/// The registered version equal to `text`, or `kind` (P0002 when registering against it,
/// 22023 for a switch to an unregistered version) naming the registered ones.
fn existing(client: &SpiClient<'_>, text: &str, kind: Kind) -> Result<String> {
    match registered(client, text)? {
        Some(name) => Ok(name),
        None => Err(Error::new(kind, format!("api version \"{text}\" does not exist"))
            .detail(format!("registered api versions: {}", all_names(client)?))
            .hint("Register it with eventstore.register_api_version().")),
    }
}

/// Registers an API version, or replaces the release date and minimum client version of a
/// registered one (its deprecation stays; a NULL docs_url keeps the one it has). The first
/// version ever registered becomes the active version.
pub fn register_version(version: &Version, released_at: TimestampWithTimeZone, min_client: Option<&Version>, docs_url: Option<&str>) -> Result<()> {
    Spi::connect(|client| {
        run(client, &LOCK_VERSIONS, &[])?;
        let name = match registered(client, version.as_str())? {
            Some(same) if same != version.as_str() => {
                return Err(Error::invalid(format!("api version \"{version}\" is registered already as \"{same}\""))
                    .detail(format!("\"{version}\" and \"{same}\" are the same version in semantic version order"))
                    .hint(format!("Use \"{same}\".")));
            }
            _ => version.as_str(),
        };
        run(client, &UPSERT_VERSION, &[
            name.into(),
            released_at.into(),
            min_client.map(|m| m.as_str()).into(),
            docs_url.into(),
        ])?;
        if !run(client, &FIRST_ACTIVE, &[name.into(), caller().into()])?.is_empty() {
            run(client, &INSERT_DEPLOYMENT, &[
                None::<&str>.into(),
                name.into(),
                None::<&str>.into(),
                None::<&str>.into(),
                caller().into(),
                jwt_sub().into(),
                "first version".into(),
            ])?;
        }
        Ok(())
    })?;
    cache::invalidate(c"api_versions");
    cache::invalidate(c"active_api_version");
    Ok(())
}

static UPSERT_ROUTE: Statement = Statement {
    sql: "INSERT INTO eventstore.api_routes AS r (rpc_name, version, handler) VALUES ($1, $2, $3)
          ON CONFLICT (rpc_name, version) DO UPDATE
             SET handler = excluded.handler, updated_at = statement_timestamp()",
    args: &[TEXTOID, TEXTOID, REGPROCEDUREOID],
    volatile: true,
};

/// Registers (or replaces) the handler of an rpc at a version.
pub fn register_route(rpc: &str, version: &str, handler: RegProcedure) -> Result<()> {
    Spi::connect(|client| {
        run(client, &LOCK_VERSIONS, &[])?;
        let version = existing(client, version, Kind::NotFound)?;
        super::handlers::check(client, handler, &super::handlers::API_ROUTE, Some(format!("rpc \"{rpc}\", api version {version}")))?;
        run(client, &UPSERT_ROUTE, &[rpc.into(), version.as_str().into(), handler.into()])?;
        Ok::<_, Error>(())
    })?;
    cache::invalidate(c"api_routes");
    Ok(())
}

static ROUTE_VERSIONS: Statement = Statement {
    sql: "SELECT r.version FROM eventstore.api_routes r WHERE r.rpc_name = $1",
    args: &[TEXTOID],
    volatile: true,
};

static UPSERT_CHANGE: Statement = Statement {
    sql: "INSERT INTO eventstore.api_changes AS c (version, rpc_name, description, request_transform, response_transform)
          VALUES ($1, $2, $3, $4, $5)
          ON CONFLICT (version, rpc_name, description) DO UPDATE
             SET request_transform = excluded.request_transform, response_transform = excluded.response_transform,
                 updated_at = statement_timestamp()",
    args: &[TEXTOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID],
    volatile: true,
};

/// Registers a change of an rpc at a version (the same description again replaces its
/// transforms). The rpc needs a handler at that version or a newer one: that handler is what the
/// change adapts older calls to.
pub fn register_change(version: &str, rpc: &str, description: &str, request: Option<Value>, response: Option<Value>) -> Result<()> {
    Spi::connect(|client| {
        run(client, &LOCK_VERSIONS, &[])?;
        let version = existing(client, version, Kind::NotFound)?;
        let at = Version::parse(&version).map_err(|e| broken("api version", e))?;
        let mut handled = Vec::new();
        for row in run(client, &ROUTE_VERSIONS, &[rpc.into()])? {
            handled.push(row.get::<String>(1)?.unwrap_or_default());
        }
        if handled.is_empty() {
            return Err(Error::new(Kind::NotFound, format!("rpc \"{rpc}\" does not exist"))
                .detail("no api version has a handler for it")
                .hint("Register the handler of its newest version with eventstore.register_api_route() first."));
        }
        if !handled.iter().any(|h| Version::parse(h).is_ok_and(|v| v >= at)) {
            handled.sort_by(|a, b| Version::parse(a).ok().cmp(&Version::parse(b).ok()));
            return Err(Error::invalid(format!("rpc \"{rpc}\" has no handler at api version {version} or newer"))
                .detail(format!("rpc \"{rpc}\" has handlers at api versions {}", handled.join(", ")))
                .hint(format!("A change adapts older calls to a newer handler: register the handler of \"{rpc}\" at {version} first.")));
        }
        run(client, &UPSERT_CHANGE, &[
            version.as_str().into(),
            rpc.into(),
            description.into(),
            request.map(JsonB).into(),
            response.map(JsonB).into(),
        ])?;
        Ok(())
    })?;
    cache::invalidate(c"api_changes");
    Ok(())
}

// --- deprecation and the hot switch ----------------------------------------------------------

static ACTIVE_ROW: Statement = Statement {
    sql: "SELECT a.current_version, a.fallback_version FROM eventstore.active_api_version a",
    args: &[],
    volatile: true,
};

static DEPRECATE: Statement = Statement {
    sql: "UPDATE eventstore.api_versions v
             SET deprecated_at = $2, sunset_at = $3, docs_url = coalesce($4, v.docs_url),
                 status = CASE WHEN $3 <= statement_timestamp() THEN 'sunset' ELSE 'deprecated' END,
                 updated_at = statement_timestamp()
           WHERE v.version = $1
          RETURNING v.status, v.docs_url",
    args: &[TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID],
    volatile: true,
};

fn active_versions(client: &SpiClient<'_>) -> Result<(Option<String>, Option<String>)> {
    let table = run(client, &ACTIVE_ROW, &[])?;
    if table.is_empty() {
        return Ok((None, None));
    }
    let row = table.first();
    Ok((row.get(1)?, row.get(2)?))
}

/// Deprecates a version: from now on its answers carry `Deprecation`, `Sunset` and `Link`
/// headers, and from `sunset_at` on it answers 410. Calling it again moves the dates. Returns
/// the version as get_active_api_version() shows it.
pub fn deprecate(version: &str, deprecated_at: Option<TimestampWithTimeZone>, sunset_at: Option<TimestampWithTimeZone>, docs_url: Option<&str>) -> Result<Value> {
    let name = Spi::connect(|client| {
        run(client, &LOCK_VERSIONS, &[])?;
        let name = existing(client, version, Kind::NotFound)?;
        let deprecated_at = deprecated_at.map(unix_micros).unwrap_or_else(unix_now);
        if let Some(sunset) = sunset_at.map(unix_micros) {
            if sunset < deprecated_at {
                return Err(Error::invalid(format!("the sunset of api version {name} is before its deprecation"))
                    .detail(format!("deprecated_at is {}, sunset_at is {}", http::rfc3339(deprecated_at), http::rfc3339(sunset)))
                    .hint("A version is sunset at or after its deprecation: pass a later sunset_at."));
            }
            // the version calls get by default must answer; a sunset fallback is only skipped
            if sunset <= unix_now() && active_versions(client)?.0.as_deref() == Some(&name) {
                return Err(Error::invalid(format!("api version {name} is the active version and cannot be sunset now"))
                    .detail(format!("sunset_at is {}", http::rfc3339(sunset)))
                    .hint("Switch to another version with eventstore.switch_api_version() first, or pass a later sunset_at."));
            }
        }
        let to_ts = |micros: i64| TimestampWithTimeZone::try_from(micros - PG_EPOCH_MICROS).ok();
        run(client, &DEPRECATE, &[
            name.as_str().into(),
            to_ts(deprecated_at).into(),
            sunset_at.into(),
            docs_url.into(),
        ])?;
        Ok::<_, Error>(name)
    })?;
    cache::invalidate(c"api_versions");
    let (catalog, _) = load()?;
    let now = unix_now();
    Ok(catalog
        .find(&name)
        .map(|i| describe(&catalog, i, now))
        .unwrap_or(Value::Null))
}

/// One version as get_active_api_version() and deprecate_api_version() show it.
fn describe(catalog: &Catalog, index: usize, now: i64) -> Value {
    let v = &catalog.versions[index];
    let headers: serde_json::Map<String, Value> =
        v.deprecation_headers().into_iter().map(|(k, val)| (k.to_owned(), Value::String(val))).collect();
    json!({
        "version": v.name,
        "status": v.status(now),
        "released_at": http::rfc3339(v.released_at),
        "deprecated_at": v.deprecated_at.map(http::rfc3339),
        "sunset_at": v.sunset_at.map(http::rfc3339),
        "min_client_version": v.min_client.as_ref().map(Version::as_str),
        "docs_url": v.docs_url,
        "rpcs": catalog.rpcs_at(index),
        "headers": headers,
    })
}

static LOCK_ACTIVE: Statement = Statement {
    sql: "LOCK TABLE eventstore.active_api_version IN SHARE ROW EXCLUSIVE MODE",
    args: &[],
    volatile: true,
};

/// Whether a version is sunset now (its row locked until the switch commits, so it cannot be
/// sunset under the switch).
static SUNSET_AT: Statement = Statement {
    sql: "SELECT (extract(epoch FROM v.sunset_at) * 1000000)::bigint
          FROM eventstore.api_versions v WHERE v.version = $1 FOR SHARE",
    args: &[TEXTOID],
    volatile: true,
};

static SET_ACTIVE: Statement = Statement {
    sql: "INSERT INTO eventstore.active_api_version AS a (singleton, current_version, fallback_version, updated_at, updated_by)
          VALUES (true, $1, $2, statement_timestamp(), pg_get_userbyid($3))
          ON CONFLICT (singleton) DO UPDATE
             SET current_version = excluded.current_version, fallback_version = excluded.fallback_version,
                 updated_at = excluded.updated_at, updated_by = excluded.updated_by",
    args: &[TEXTOID, TEXTOID, OIDOID],
    volatile: true,
};

/// Makes `new_version` the active version, atomically, and records the switch. The fallback is
/// `fallback`, else the version that was active (unless sunset), else the previous fallback.
pub fn switch(new_version: &str, fallback: Option<&str>) -> Result<Value> {
    let out = Spi::connect(|client| {
        run(client, &LOCK_VERSIONS, &[])?;
        run(client, &LOCK_ACTIVE, &[])?;
        let now = unix_now();
        let not_sunset = |name: &str, what: &str| -> Result<()> {
            let sunset: Option<i64> = run(client, &SUNSET_AT, &[name.into()])?.first().get_one()?;
            match sunset {
                Some(at) if at <= now => Err(Error::invalid(format!("api version {name} is sunset"))
                    .detail(format!("{what} {name} was sunset on {}", http::rfc3339(at)))
                    .hint("Switch to a version that is not sunset, or move its sunset_at with eventstore.deprecate_api_version().")),
                _ => Ok(()),
            }
        };
        let to = existing(client, new_version, Kind::InvalidArgument)?;
        not_sunset(&to, "new_version")?;
        let (previous, previous_fallback) = active_versions(client)?;
        let fallback = match fallback {
            Some(text) => {
                let name = existing(client, text, Kind::InvalidArgument)?;
                if name == to {
                    return Err(Error::invalid("fallback_version must differ from new_version")
                        .detail(format!("both are {to}"))
                        .hint("Pass the version older clients should fall back to, or NULL."));
                }
                not_sunset(&name, "fallback_version")?;
                Some(name)
            }
            None => {
                let mut chosen = None;
                for candidate in [&previous, &previous_fallback].into_iter().flatten() {
                    if *candidate != to && not_sunset(candidate, "fallback_version").is_ok() {
                        chosen = Some(candidate.clone());
                        break;
                    }
                }
                chosen
            }
        };
        run(client, &SET_ACTIVE, &[to.as_str().into(), fallback.clone().into(), caller().into()])?;
        let deployment = run(client, &INSERT_DEPLOYMENT, &[
            previous.clone().into(),
            to.as_str().into(),
            previous_fallback.clone().into(),
            fallback.clone().into(),
            caller().into(),
            jwt_sub().into(),
            "switch".into(),
        ])?
        .first();
        let id: Option<i64> = deployment.get(1)?;
        let at: Option<TimestampWithTimeZone> = deployment.get(2)?;
        Ok::<_, Error>(json!({
            "success": true,
            "previous_version": previous,
            "current_version": to,
            "fallback_version": fallback,
            "previous_fallback_version": previous_fallback,
            "deployment_id": id,
            "switched_at": at.map(|t| http::rfc3339(unix_micros(t))),
        }))
    })?;
    cache::invalidate(c"active_api_version");
    Ok(out)
}

/// The active version, its fallback, and every registered version with its status now.
pub fn active() -> Result<Value> {
    let (catalog, active) = load()?;
    let now = unix_now();
    let name = |i: Option<usize>| i.map(|i| catalog.versions[i].name.clone());
    Ok(json!({
        "current_version": name(catalog.current),
        "fallback_version": name(catalog.fallback),
        "status": catalog.current.map(|i| catalog.versions[i].status(now)),
        "updated_at": active["updated_at"].as_i64().map(http::rfc3339),
        "updated_by": active["updated_by"],
        "supported_versions": catalog.supported(now),
        "versions": (0..catalog.versions.len()).map(|i| describe(&catalog, i, now)).collect::<Vec<_>>(),
    }))
}

// --- route_api_call --------------------------------------------------------------------------

/// One call, from the arguments of route_api_call to the envelope it returns.
pub struct Request<'a> {
    pub name: Option<&'a str>,
    pub payload: Option<RawJsonb>,
    pub requested_version: Option<&'a str>,
}

/// What a call answers: data, or a refusal with its status.
enum Answer {
    Data(Value),
    Refused(Refusal),
}

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

/// route_api_call: resolves the version, runs the handler (as the caller, in a
/// subtransaction) through the version changes in between, sets `response.status` and
/// `response.headers` for PostgREST, logs the call and returns the envelope. Client mistakes
/// and handler failures are answers, never errors, so the log row commits with the answer.
pub fn route_call(request: Request<'_>) -> Result<Value> {
    let started = Instant::now();
    let now = unix_now();
    let request_id = uuid::Uuid::now_v7();
    let tenant = tenant::current()?;
    let headers = RequestHeaders::from_setting(guc::by_name(c"request.headers").as_deref());
    let catalog = catalog()?;
    let resolution = route::resolve(&catalog, &Call {
        rpc: request.name,
        requested_version: request.requested_version,
        headers: &headers,
        now,
    });
    let (answer, served, fallback_from) = match resolution.outcome {
        Err(refusal) => {
            let version = refusal.version;
            (Answer::Refused(refusal), version, None)
        }
        Ok(plan) => {
            let rpc = request.name.map(str::trim).unwrap_or_default();
            (answer(&catalog, &plan, rpc, request.payload), Some(plan.version), plan.fallback_from)
        }
    };
    let served = served.map(|i| &catalog.versions[i]);
    // what PostgREST sends: the status of a refusal (a handler may set its own, 201 or 202,
    // which the log keeps), and the deprecation headers of the version that answered
    let status = match &answer {
        Answer::Data(_) => guc::by_name(c"response.status")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|s| (100..=599).contains(s))
            .unwrap_or(200),
        Answer::Refused(r) => r.status,
    };
    if let Answer::Refused(r) = &answer {
        crate::guc::set_local(c"response.status", &r.status.to_string());
    }
    let deprecation = served.and_then(ApiVersion::deprecation);
    if let Some(version) = served.filter(|_| deprecation.is_some()) {
        let merged = http::merge_response_headers(guc::by_name(c"response.headers").as_deref(), &version.deprecation_headers());
        crate::guc::set_local(c"response.headers", &merged);
    }
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut meta = json!({
        "version": served.map(|v| v.name.as_str()),
        "requested_version": resolution.requested,
        "request_id": request_id.to_string(),
        "timestamp": http::rfc3339(now),
        "processing_ms": (duration_ms * 1000.0).round() / 1000.0,
    });
    if let Some(deprecation) = deprecation {
        meta["deprecation"] = deprecation;
    }
    // a standby or a read-only transaction cannot write the log: counted in memory instead
    let logged = !unlogged::read_only();
    if !logged {
        meta["logged"] = json!(false);
    }
    let (envelope, error_code) = match answer {
        Answer::Data(data) => (json!({"success": true, "data": data, "meta": meta}), None),
        Answer::Refused(r) => (
            json!({"success": false, "error": {"code": r.code, "message": r.message, "details": r.details}, "meta": meta}),
            Some(r.code),
        ),
    };
    let rpc_name = request.name.map(str::trim).filter(|n| !n.is_empty()).map(|n| n.chars().take(route::MAX_RPC_CHARS).collect::<String>());
    if !logged {
        let version = served.map(|v| v.name.as_str());
        let call = unlogged::Call { at: now, tenant: &tenant, version, rpc: rpc_name.as_deref(), duration_ms, status };
        unlogged::count(&call);
        return Ok(envelope);
    }
    let requested_at = TimestampWithTimeZone::try_from(now - PG_EPOCH_MICROS).ok();
    crate::versioning::async_log::write_log(|| Spi::connect(|client| {
        run(client, &LOG_CALL, &[
            pgrx::Uuid::from_bytes(*request_id.as_bytes()).into(),
            tenant.as_str().into(),
            requested_at.into(),
            rpc_name.into(),
            http::for_log(resolution.requested.as_deref()).into(),
            served.map(|v| v.name.as_str()).into(),
            resolution.source.as_str().into(),
            fallback_from.map(|i| catalog.versions[i].name.as_str()).into(),
            i32::from(status).into(),
            error_code.into(),
            duration_ms.into(),
            caller().into(),
            jwt_sub().into(),
            http::for_log(headers.app_name.as_deref()).into(),
            http::for_log(headers.app_version.as_deref()).into(),
            http::for_log(headers.client_region.as_deref()).into(),
        ])
        .map(|_| ())
    }))?;
    Ok(envelope)
}

/// Runs a planned call: the payload checked and reshaped up to the handler's version, the
/// handler run, its result reshaped back down.
fn answer(catalog: &Catalog, plan: &Plan<'_>, rpc: &str, payload: Option<RawJsonb>) -> Answer {
    let version = &catalog.versions[plan.version].name;
    let payload = match payload {
        None => None,
        Some(raw) => match raw.root() {
            Root::Object(_) => Some(raw),
            other => {
                let kind = match other {
                    Root::Array => "an array",
                    _ => "a scalar",
                };
                return Answer::Refused(Refusal {
                    status: 400,
                    code: "invalid_payload",
                    message: "payload must be a JSON object".into(),
                    details: json!({"rpc": rpc, "version": version, "payload": kind}),
                    version: Some(plan.version),
                });
            }
        },
    };
    // without changes to apply the payload goes to the handler untouched
    let argument: DatumWithOid<'_> = if plan.upgrades.is_empty() {
        match payload {
            Some(raw) => raw.into(),
            None => JsonB(json!({})).into(),
        }
    } else {
        let max = crate::guc::max_json_depth();
        let upgraded = payload.map(|p| p.value("payload")).unwrap_or_else(|| Ok(json!({}))).and_then(|mut doc| {
            for t in &plan.upgrades {
                t.apply(&mut doc, max).map_err(|deep| crate::jsonb::too_deep("payload", &deep))?;
            }
            Ok(doc)
        });
        match upgraded {
            Ok(doc) => JsonB(doc).into(),
            Err(e) => {
                return Answer::Refused(Refusal {
                    status: 400,
                    code: "invalid_payload",
                    message: e.message,
                    details: json!({"rpc": rpc, "version": version, "detail": e.detail}),
                    version: Some(plan.version),
                });
            }
        }
    };
    if let Some(oid) = plan.handler.strip_prefix('#') {
        return Answer::Refused(Refusal {
            status: 500,
            code: "handler_error",
            message: format!("the handler of rpc \"{rpc}\" at api version {version} does not exist"),
            details: json!({"handler_oid": oid, "message": "the function was dropped"}),
            version: Some(plan.version),
        });
    }
    let sql = format!("SELECT {}($1)", plan.handler);
    let outcome = subtransaction(|| {
        Spi::connect(|client| {
            as_caller(|| {
                let table = run_dynamic(client, &sql, &[PgOid::BuiltIn(JSONBOID)], &[argument])?;
                let answer = table.first().get::<crate::datum::RawJsonb>(1)?;
                answer.map(|a| a.value("the handler's answer")).transpose()
            })
        })
    });
    match outcome {
        Ok(data) => {
            let mut data = data.unwrap_or(Value::Null);
            let max = crate::guc::max_json_depth();
            for t in &plan.downgrades {
                if let Err(deep) = t.apply(&mut data, max) {
                    let e = crate::jsonb::too_deep("the handler's answer", &deep);
                    return Answer::Refused(Refusal {
                        status: 500,
                        code: "handler_error",
                        message: format!("rpc \"{rpc}\" failed at api version {version}"),
                        details: json!({"sqlstate": "22023", "message": e.message, "detail": e.detail, "hint": null}),
                        version: Some(plan.version),
                    });
                }
            }
            Answer::Data(data)
        }
        Err(failure) => Answer::Refused(Refusal {
            status: 500,
            code: "handler_error",
            message: format!("rpc \"{rpc}\" failed at api version {version}"),
            details: json!({
                "sqlstate": failure.sqlstate,
                "message": failure.message,
                "detail": failure.detail,
                "hint": failure.hint,
            }),
            version: Some(plan.version),
        }),
    }
}


// --- usage -----------------------------------------------------------------------------------

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
