//! Which handler answers an API call, at which version, through which version changes.
//! Pure: the registered definitions come in as a `Catalog`, the request
//! as a `Call`, and the answer is a `Plan` to run or a `Refusal` to send.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::http::{self, RequestHeaders};
use super::semver::Version;
use crate::json::TransformProgram;

/// One registered API version, with its dates as microseconds since the Unix epoch.
#[derive(Debug)]
pub struct ApiVersion {
    pub name: String,
    pub version: Version,
    pub released_at: i64,
    pub deprecated_at: Option<i64>,
    pub sunset_at: Option<i64>,
    pub min_client: Option<Version>,
    pub docs_url: Option<String>,
}

impl ApiVersion {
    /// Sunset from `sunset_at` on, whatever the stored status column says.
    pub fn is_sunset(&self, now: i64) -> bool {
        self.sunset_at.is_some_and(|s| s <= now)
    }

    /// 'active', 'deprecated' (announced, even for a future date) or 'sunset', at `now`.
    pub fn status(&self, now: i64) -> &'static str {
        if self.is_sunset(now) {
            "sunset"
        } else if self.deprecated_at.is_some() {
            "deprecated"
        } else {
            "active"
        }
    }

    /// The deprecation facts of `meta.deprecation`, or None for a version that is not deprecated.
    pub fn deprecation(&self) -> Option<Value> {
        let deprecated_at = self.deprecated_at?;
        Some(json!({
            "deprecated_at": http::rfc3339(deprecated_at),
            "sunset_at": self.sunset_at.map(http::rfc3339),
            "docs_url": self.docs_url,
        }))
    }

    /// The response headers of a deprecated version, or none.
    pub fn deprecation_headers(&self) -> Vec<(&'static str, String)> {
        match self.deprecated_at {
            Some(at) => http::deprecation_headers(at, self.sunset_at, self.docs_url.as_deref()),
            None => Vec::new(),
        }
    }
}

/// The handler of an rpc registered for one version (an index into `Catalog::versions`); the
/// handler as SQL can call it (`schema.name`).
#[derive(Debug)]
pub struct Route {
    pub version: usize,
    pub handler: String,
}

/// A change of one rpc at one version: `request` reshapes a request of the version before it
/// into this version's shape, `response` a response of this version into the shape before.
#[derive(Debug)]
pub struct Change {
    pub version: usize,
    pub request: Option<TransformProgram>,
    pub response: Option<TransformProgram>,
}

/// Everything registered, in version order; built once per backend and cached.
#[derive(Debug, Default)]
pub struct Catalog {
    pub versions: Vec<ApiVersion>,
    routes: HashMap<String, Vec<Route>>,
    changes: HashMap<String, Vec<Change>>,
    pub current: Option<usize>,
    pub fallback: Option<usize>,
}

/// A route or change as stored: the rpc, the version's name, and the rest.
pub type Stored<T> = (String, String, T);

impl Catalog {
    /// Builds the catalog; routes and changes naming an unknown version are dropped (the
    /// foreign keys make that impossible), changes keep the order they come in.
    pub fn new(
        mut versions: Vec<ApiVersion>,
        routes: Vec<Stored<String>>,
        changes: Vec<Stored<(Option<TransformProgram>, Option<TransformProgram>)>>,
        current: Option<&str>,
        fallback: Option<&str>,
    ) -> Catalog {
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        let index: HashMap<String, usize> = versions.iter().enumerate().map(|(i, v)| (v.name.clone(), i)).collect();
        let mut catalog = Catalog {
            current: current.and_then(|c| index.get(c).copied()),
            fallback: fallback.and_then(|f| index.get(f).copied()),
            versions,
            ..Catalog::default()
        };
        for (rpc, version, handler) in routes {
            if let Some(&version) = index.get(&version) {
                catalog.routes.entry(rpc).or_default().push(Route { version, handler });
            }
        }
        for list in catalog.routes.values_mut() {
            list.sort_by_key(|r| r.version);
        }
        for (rpc, version, (request, response)) in changes {
            if let Some(&version) = index.get(&version) {
                catalog.changes.entry(rpc).or_default().push(Change { version, request, response });
            }
        }
        for list in catalog.changes.values_mut() {
            list.sort_by_key(|c| c.version); // stable: registration order within a version
        }
        catalog
    }

    /// The registered version equal to `text` in version order (`v2` finds `2.0.0`).
    pub fn find(&self, text: &str) -> Option<usize> {
        let wanted = Version::parse(text).ok()?;
        self.versions.iter().position(|v| v.version == wanted)
    }

    /// Names of the versions that still answer, oldest first.
    pub fn supported(&self, now: i64) -> Vec<&str> {
        self.versions.iter().filter(|v| !v.is_sunset(now)).map(|v| v.name.as_str()).collect()
    }

    /// The rpcs with a handler registered at the version `index`, by name.
    pub fn rpcs_at(&self, index: usize) -> Vec<&str> {
        let mut rpcs: Vec<&str> =
            self.routes.iter().filter(|(_, list)| list.iter().any(|r| r.version == index)).map(|(rpc, _)| rpc.as_str()).collect();
        rpcs.sort_unstable();
        rpcs
    }

    /// The handler that serves `rpc` at `version`: the one registered at the lowest version at
    /// or above it, reached through the changes in between; without one there, the one at the
    /// highest version below (an rpc unchanged since then). Returns the route and the changes to
    /// apply, oldest first.
    pub fn route(&self, rpc: &str, version: usize) -> Option<(&Route, Vec<&Change>)> {
        let routes = self.routes.get(rpc)?;
        match routes.iter().find(|r| r.version >= version) {
            Some(route) => {
                let changes = self
                    .changes
                    .get(rpc)
                    .map(|list| list.iter().filter(|c| c.version > version && c.version <= route.version).collect())
                    .unwrap_or_default();
                Some((route, changes))
            }
            None => routes.last().map(|route| (route, Vec::new())),
        }
    }
}

/// Where the version of a call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Argument,
    Header,
    Accept,
    Active,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Argument => "argument",
            Source::Header => "header",
            Source::Accept => "accept",
            Source::Active => "active",
        }
    }
}

/// One call of route_api_call, as far as routing is concerned.
pub struct Call<'a> {
    pub rpc: Option<&'a str>,
    pub requested_version: Option<&'a str>,
    pub headers: &'a RequestHeaders,
    /// microseconds since the Unix epoch
    pub now: i64,
}

/// A call that will run: the version that serves it, the handler, and the transforms.
#[derive(Debug)]
pub struct Plan<'c> {
    pub version: usize,
    /// the version first resolved, when the client's app version made the call fall back
    pub fallback_from: Option<usize>,
    pub handler: &'c str,
    /// request transforms, to apply in this order (oldest version change first)
    pub upgrades: Vec<&'c TransformProgram>,
    /// response transforms, to apply in this order (newest version change first)
    pub downgrades: Vec<&'c TransformProgram>,
}

/// A call answered without running a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// the version resolved before the refusal, if any
    pub version: Option<usize>,
}

/// The routing decision of a call.
#[derive(Debug)]
pub struct Resolution<'c> {
    /// the version asked for, as written, or None when the active version was used
    pub requested: Option<String>,
    pub source: Source,
    pub outcome: Result<Plan<'c>, Refusal>,
}

/// The longest rpc name accepted.
pub const MAX_RPC_CHARS: usize = 255;

/// Routes a call: version resolution, sunset, client compatibility, then the rpc.
pub fn resolve<'c>(catalog: &'c Catalog, call: &Call<'_>) -> Resolution<'c> {
    let given = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let (requested, source) = if let Some(v) = given(call.requested_version) {
        (Some(v), Source::Argument)
    } else if let Some(v) = given(call.headers.api_version.as_deref()) {
        (Some(v), Source::Header)
    } else if let Some(v) = call.headers.accept.as_deref().and_then(http::accept_version) {
        (Some(v), Source::Accept)
    } else {
        (None, Source::Active)
    };
    let outcome = plan(catalog, call, requested.as_deref(), source);
    Resolution { requested, source, outcome }
}

fn plan<'c>(catalog: &'c Catalog, call: &Call<'_>, requested: Option<&str>, source: Source) -> Result<Plan<'c>, Refusal> {
    let rpc = match call.rpc.map(str::trim) {
        Some(rpc) if !rpc.is_empty() && rpc.chars().count() <= MAX_RPC_CHARS => rpc,
        other => {
            return Err(Refusal {
                status: 400,
                code: "invalid_request",
                message: "name must name an rpc".into(),
                details: json!({"name": other, "max_length": MAX_RPC_CHARS}),
                version: None,
            });
        }
    };
    let resolved = match requested {
        Some(text) => catalog.find(text).ok_or_else(|| Refusal {
            status: 400,
            code: "unsupported_api_version",
            message: format!("api version \"{text}\" is not supported"),
            details: json!({"requested_version": text, "source": source.as_str(), "supported_versions": catalog.supported(call.now)}),
            version: None,
        })?,
        None => catalog.current.ok_or_else(|| Refusal {
            status: 400,
            code: "unsupported_api_version",
            message: "no api version is active".into(),
            details: json!({"supported_versions": catalog.supported(call.now)}),
            version: None,
        })?,
    };
    let v = &catalog.versions[resolved];
    if v.is_sunset(call.now) {
        return Err(Refusal {
            status: 410,
            code: "api_version_sunset",
            message: format!("api version {} was sunset on {}", v.name, http::rfc3339(v.sunset_at.unwrap_or_default())),
            details: json!({
                "version": v.name,
                "sunset_at": v.sunset_at.map(http::rfc3339),
                "docs_url": v.docs_url,
                "supported_versions": catalog.supported(call.now),
            }),
            version: Some(resolved),
        });
    }
    let served = client_compatible(catalog, resolved, call)?;
    let Some((route, changes)) = catalog.route(rpc, served) else {
        let name = &catalog.versions[served].name;
        return Err(Refusal {
            status: 404,
            code: "unknown_rpc",
            message: format!("rpc \"{rpc}\" does not exist in api version {name}"),
            details: json!({"rpc": rpc, "version": name}),
            version: Some(served),
        });
    };
    Ok(Plan {
        version: served,
        fallback_from: (served != resolved).then_some(resolved),
        handler: &route.handler,
        upgrades: changes.iter().filter_map(|c| c.request.as_ref()).collect(),
        downgrades: changes.iter().rev().filter_map(|c| c.response.as_ref()).collect(),
    })
}

/// The version that serves a client: the resolved one when the client's `x-app-version` meets
/// its `min_client_version` (or either is absent); else the newest older version, not sunset,
/// that the client meets; else the active fallback version if the client meets it.
fn client_compatible(catalog: &Catalog, resolved: usize, call: &Call<'_>) -> Result<usize, Refusal> {
    let v = &catalog.versions[resolved];
    let (Some(min), Some(text)) = (&v.min_client, call.headers.app_version.as_deref()) else {
        return Ok(resolved);
    };
    let client = Version::parse(text).map_err(|e| Refusal {
        status: 400,
        code: "invalid_client_version",
        message: format!("x-app-version \"{text}\" is not a version: {e}"),
        details: json!({"client_version": text, "version": v.name, "min_client_version": min.as_str()}),
        version: Some(resolved),
    })?;
    if client >= *min {
        return Ok(resolved);
    }
    let meets = |i: usize| {
        let candidate = &catalog.versions[i];
        !candidate.is_sunset(call.now) && candidate.min_client.as_ref().is_none_or(|m| client >= *m)
    };
    if let Some(older) = (0..resolved).rev().find(|&i| meets(i)) {
        return Ok(older);
    }
    if let Some(fallback) = catalog.fallback.filter(|&f| meets(f)) {
        return Ok(fallback);
    }
    Err(Refusal {
        status: 400,
        code: "client_version_unsupported",
        message: format!("app version {text} is older than {min}, the minimum of api version {}", v.name),
        details: json!({"client_version": text, "min_client_version": min.as_str(), "version": v.name}),
        version: Some(resolved),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;
    const NOW: i64 = 20_000 * DAY;

    fn version(name: &str) -> ApiVersion {
        ApiVersion {
            name: name.into(),
            version: Version::parse(name).unwrap(),
            released_at: 0,
            deprecated_at: None,
            sunset_at: None,
            min_client: None,
            docs_url: None,
        }
    }

    fn program(rename_from: &str, to: &str) -> TransformProgram {
        TransformProgram::compile(&json!([{"op": "rename", "from": rename_from, "to": to}])).unwrap()
    }

    /// 1.0 (sunset), 1.5 (deprecated), 1.9.9, 1.10.0 (min client 2.0.0), 2.0; `get` at 1.9.9 and 2.0
    /// with a change at 1.10.0 and one at 2.0; `old` at 1.5 only; current 1.10.0, fallback 1.9.9.
    fn catalog() -> Catalog {
        let mut versions: Vec<ApiVersion> = ["2.0", "1.9.9", "1.10.0", "1.5", "1.0"].into_iter().map(version).collect();
        versions[4].deprecated_at = Some(NOW - 10 * DAY);
        versions[4].sunset_at = Some(NOW - DAY);
        versions[3].deprecated_at = Some(NOW - DAY);
        versions[3].sunset_at = Some(NOW + DAY);
        versions[3].docs_url = Some("https://docs/1.5".into());
        versions[2].min_client = Some(Version::parse("2.0.0").unwrap());
        let routes = vec![
            ("get".into(), "1.9.9".into(), "h.get_v1".into()),
            ("get".into(), "2.0".into(), "h.get_v2".into()),
            ("old".into(), "1.5".into(), "h.old".into()),
        ];
        let changes = vec![
            ("get".into(), "2.0".into(), (Some(program("a", "b")), Some(program("b", "a")))),
            ("get".into(), "1.10.0".into(), (Some(program("x", "y")), None)),
            ("get".into(), "2.0".into(), (None, Some(program("c", "d")))),
        ];
        Catalog::new(versions, routes, changes, Some("1.10.0"), Some("1.9.9"))
    }

    fn call<'a>(rpc: &'a str, requested: Option<&'a str>, headers: &'a RequestHeaders) -> Call<'a> {
        Call { rpc: Some(rpc), requested_version: requested, headers, now: NOW }
    }

    fn name(catalog: &Catalog, plan: &Plan<'_>) -> String {
        catalog.versions[plan.version].name.clone()
    }

    fn refusal(r: Resolution<'_>) -> Refusal {
        r.outcome.expect_err("must be refused")
    }

    #[test]
    fn versions_are_ordered_semantically() {
        let c = catalog();
        let names: Vec<&str> = c.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["1.0", "1.5", "1.9.9", "1.10.0", "2.0"]);
        assert_eq!(c.find("v2"), Some(4));
        assert_eq!(c.find("2.0.0"), Some(4));
        assert_eq!(c.find("1.10"), Some(3));
        assert_eq!(c.find("3"), None);
        assert_eq!(c.find("latest"), None);
        assert_eq!(c.supported(NOW), ["1.5", "1.9.9", "1.10.0", "2.0"]);
    }

    #[test]
    fn resolution_order() {
        let c = catalog();
        let all = RequestHeaders {
            api_version: Some("1.9.9".into()),
            accept: Some("application/vnd.acme.v2+json".into()),
            ..Default::default()
        };
        let r = resolve(&c, &call("get", Some("1.5"), &all));
        assert_eq!((r.source, r.requested.as_deref()), (Source::Argument, Some("1.5")));
        let r = resolve(&c, &call("get", Some("  "), &all));
        assert_eq!((r.source, r.requested.as_deref()), (Source::Header, Some("1.9.9")), "a blank argument is no argument");
        assert_eq!(name(&c, r.outcome.as_ref().unwrap()), "1.9.9");
        let accept = RequestHeaders { accept: all.accept.clone(), ..Default::default() };
        let r = resolve(&c, &call("get", None, &accept));
        assert_eq!((r.source, r.requested.as_deref()), (Source::Accept, Some("v2")));
        assert_eq!(name(&c, r.outcome.as_ref().unwrap()), "2.0");
        let none = RequestHeaders { accept: Some("application/json".into()), ..Default::default() };
        let r = resolve(&c, &call("get", None, &none));
        assert_eq!((r.source, r.requested), (Source::Active, None));
        assert_eq!(name(&c, r.outcome.as_ref().unwrap()), "1.10.0");
    }

    #[test]
    fn unknown_and_sunset_versions_and_rpcs() {
        let c = catalog();
        let h = RequestHeaders::default();
        let r = refusal(resolve(&c, &call("get", Some("3.0"), &h)));
        assert_eq!((r.status, r.code), (400, "unsupported_api_version"));
        assert_eq!(r.details["supported_versions"], json!(["1.5", "1.9.9", "1.10.0", "2.0"]));
        assert_eq!(r.message, "api version \"3.0\" is not supported");
        let r = refusal(resolve(&c, &call("get", Some("1.0"), &h)));
        assert_eq!((r.status, r.code, r.version), (410, "api_version_sunset", Some(0)));
        let r = refusal(resolve(&c, &call("nope", Some("2.0"), &h)));
        assert_eq!((r.status, r.code), (404, "unknown_rpc"));
        assert_eq!(r.message, "rpc \"nope\" does not exist in api version 2.0");
        for bad in ["", "  "] {
            let r = refusal(resolve(&c, &call(bad, None, &h)));
            assert_eq!((r.status, r.code), (400, "invalid_request"));
        }
        let r = refusal(resolve(&c, &Call { rpc: None, requested_version: None, headers: &h, now: NOW }));
        assert_eq!((r.status, r.code), (400, "invalid_request"));
        let empty = Catalog::default();
        let r = refusal(resolve(&empty, &call("get", None, &h)));
        assert_eq!((r.status, r.code, r.message.as_str()), (400, "unsupported_api_version", "no api version is active"));
    }

    #[test]
    fn a_deprecated_version_answers_until_its_sunset() {
        let c = catalog();
        let v = &c.versions[1];
        assert_eq!(v.status(NOW), "deprecated");
        assert_eq!(v.status(NOW + DAY), "sunset", "sunset from sunset_at on");
        assert_eq!(c.versions[4].status(NOW), "active");
        let headers: Vec<&str> = v.deprecation_headers().iter().map(|h| h.0).collect();
        assert_eq!(headers, ["Deprecation", "Sunset", "Link"]);
        assert!(c.versions[4].deprecation_headers().is_empty() && c.versions[4].deprecation().is_none());
        let plan = resolve(&c, &call("old", Some("1.5"), &RequestHeaders::default())).outcome.unwrap();
        assert_eq!(plan.handler, "h.old");
    }

    #[test]
    fn handlers_and_changes_between_versions() {
        let c = catalog();
        let h = RequestHeaders::default();
        // at 2.0: its own handler, nothing to transform
        let p = resolve(&c, &call("get", Some("2.0"), &h)).outcome.unwrap();
        assert_eq!((p.handler, p.upgrades.len(), p.downgrades.len()), ("h.get_v2", 0, 0));
        // at 1.10.0: the 2.0 handler through the two 2.0 changes (1.10.0's own change is below)
        let p = resolve(&c, &call("get", Some("1.10.0"), &RequestHeaders { app_version: Some("2.0.0".into()), ..h.clone() })).outcome.unwrap();
        assert_eq!((p.handler, p.upgrades.len(), p.downgrades.len()), ("h.get_v2", 1, 2));
        let mut response = json!({"b": 1, "c": 2});
        p.downgrades.iter().for_each(|t| t.apply(&mut response, 64).unwrap());
        assert_eq!(response, json!({"a": 1, "d": 2}), "newest change first");
        // at 1.9.9 its own handler; at 1.5 the 1.9.9 handler, no change in (1.5, 1.9.9]
        let p = resolve(&c, &call("get", Some("1.9.9"), &h)).outcome.unwrap();
        assert_eq!((p.handler, p.upgrades.len()), ("h.get_v1", 0));
        let p = resolve(&c, &call("get", Some("1.5"), &h)).outcome.unwrap();
        assert_eq!(p.handler, "h.get_v1");
        // an rpc unchanged since 1.5 answers at every later version
        let p = resolve(&c, &call("old", Some("2.0"), &h)).outcome.unwrap();
        assert_eq!((p.handler, p.upgrades.len()), ("h.old", 0));
    }

    #[test]
    fn client_fallback() {
        let c = catalog();
        let app = |v: &str| RequestHeaders { app_version: Some(v.into()), ..Default::default() };
        // 1.10.0 needs app 2.0.0: 1.9.9 is below it, so the client falls back to 1.9.9
        let h = app("1.9.9");
        let p = resolve(&c, &call("get", None, &h)).outcome.unwrap();
        assert_eq!((name(&c, &p), p.fallback_from), ("1.9.9".into(), Some(3)));
        let h = app("1.10.0");
        let p = resolve(&c, &call("get", None, &h)).outcome.unwrap();
        assert_eq!((name(&c, &p), p.fallback_from), ("1.9.9".into(), Some(3)), "1.10.0 < 2.0.0");
        let h = app("2.0.0-beta.1");
        assert_eq!(resolve(&c, &call("get", None, &h)).outcome.unwrap().fallback_from, Some(3));
        let h = app("10.0.0");
        assert_eq!(resolve(&c, &call("get", None, &h)).outcome.unwrap().fallback_from, None);
        let h = RequestHeaders::default();
        assert_eq!(resolve(&c, &call("get", None, &h)).outcome.unwrap().fallback_from, None, "no header, no check");
        let h = app("one");
        let r = refusal(resolve(&c, &call("get", None, &h)));
        assert_eq!((r.status, r.code), (400, "invalid_client_version"));
    }

    #[test]
    fn client_fallback_to_the_active_fallback_or_nothing() {
        let mut versions: Vec<ApiVersion> = ["1", "2", "3"].into_iter().map(version).collect();
        versions[0].min_client = Some(Version::parse("1.9.9").unwrap());
        versions[1].min_client = Some(Version::parse("1.10.0").unwrap());
        versions[2].min_client = Some(Version::parse("1.0.0").unwrap());
        let routes = vec![("get".into(), "3".into(), "h".into())];
        // the client asks for 2 explicitly; nothing older fits; the fallback 3 does
        let c = Catalog::new(versions, routes, vec![], Some("2"), Some("3"));
        let h = RequestHeaders { app_version: Some("1.2.0".into()), ..Default::default() };
        let p = resolve(&c, &call("get", Some("2"), &h)).outcome.unwrap();
        assert_eq!((name(&c, &p), p.fallback_from), ("3".into(), Some(1)));
        // without the fallback nothing fits: the minimum comes back
        let c = Catalog { fallback: None, ..c };
        let r = refusal(resolve(&c, &call("get", Some("2"), &h)));
        assert_eq!((r.status, r.code), (400, "client_version_unsupported"));
        assert_eq!(r.details, json!({"client_version": "1.2.0", "min_client_version": "1.10.0", "version": "2"}));
        assert_eq!(r.message, "app version 1.2.0 is older than 1.10.0, the minimum of api version 2");
    }
}
