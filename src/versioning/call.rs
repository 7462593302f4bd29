//! route_api_call, from the arguments to the envelope: resolve the version from the catalog
//! (src/store/versioning.rs) with the pure rules of `route.rs`, run the handler as the caller in
//! a subtransaction through the version changes in between, set `response.status` and
//! `response.headers` for PostgREST, and log the call (src/store/api_usage.rs; its commit:
//! `async_log.rs`) or, where nothing can be written, count it (`unlogged.rs`).

use std::time::Instant;

use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::pg_sys::BuiltinOid::JSONBOID;
use pgrx::prelude::*;
use pgrx::{JsonB, PgOid};
use serde_json::{Value, json};

use super::http::{self, RequestHeaders};
use super::route::{self, ApiVersion, Call, Catalog, Plan, Refusal};
use super::unlogged;
use crate::datum::{RawJsonb, Root};
use crate::error::Result;
use crate::store::api_usage::{self, LoggedCall};
use crate::store::caller::{as_caller, subtransaction};
use crate::store::plans::run_dynamic;
use crate::store::versioning::{PG_EPOCH_MICROS, caller, catalog, jwt_sub, unix_now};
use crate::{guc, tenant};

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


/// route_api_call: resolves the version, runs the handler (as the caller, in a
/// subtransaction) through the version changes in between, sets `response.status` and
/// `response.headers` for PostgREST, logs the call and returns the envelope. Client mistakes
/// and handler failures are answers, never errors, so the log row commits with the answer.
pub fn route_call(request: Request<'_>) -> Result<Value> {
    let started = Instant::now();
    let now = unix_now();
    let request_id = crate::ids::new_v7();
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
    crate::versioning::async_log::write_log(|| {
        api_usage::log_call(&LoggedCall {
            request_id: pgrx::Uuid::from_bytes(*request_id.as_bytes()),
            tenant: &tenant,
            requested_at,
            rpc: rpc_name.as_deref(),
            requested_version: http::for_log(resolution.requested.as_deref()),
            version: served.map(|v| v.name.as_str()),
            source: resolution.source.as_str(),
            fallback_from: fallback_from.map(|i| catalog.versions[i].name.as_str()),
            status: i32::from(status),
            error_code,
            duration_ms,
            role: caller(),
            jwt_sub: jwt_sub(),
            client_app: http::for_log(headers.app_name.as_deref()),
            client_version: http::for_log(headers.app_version.as_deref()),
            client_region: http::for_log(headers.client_region.as_deref()),
        })
    })?;
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


