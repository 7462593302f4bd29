//! API versioning: the registered versions, routes and changes, and the hot switch. A call
//! itself is src/versioning/call.rs; its log and usage src/store/api_usage.rs.
//!
//! The definitions are read in one statement (one snapshot: a switch is seen whole or not at
//! all) into a `Catalog`, cached per backend (src/cache.rs) and dropped when any of the
//! definition tables changes. A call resolves its version from the catalog it started with, so
//! calls already running finish on the version they resolved while a switch commits.

use std::rc::Rc;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{Value, json};

use super::plans::{Statement, run};
use crate::cache::{self, Memo};
use crate::datum::RegProcedure;
use crate::error::{Error, Kind, Result};
use crate::json::TransformProgram;
use crate::versioning::http;
use crate::versioning::route::{ApiVersion, Catalog};
use crate::versioning::semver::Version;
use crate::guc;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

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
pub fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

/// The JWT subject of a PostgREST call, if any.
pub fn jwt_sub() -> Option<String> {
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

