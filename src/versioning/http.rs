//! The HTTP side of an API call as PostgREST hands it over: request headers from the
//! `request.headers` setting, response headers through `response.headers`, and the date formats
//! of the deprecation headers. Pure Rust, no Postgres.

use crate::calendar;
use serde_json::{Map, Value};

use super::semver::Version;

/// Longest header value kept in the request log, in characters.
const MAX_LOGGED_HEADER: usize = 200;

/// The request headers route_api_call looks at. PostgREST sets `request.headers` to a JSON
/// object with lower-case names; anything else (unset, not JSON, not an object) is no headers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestHeaders {
    pub api_version: Option<String>,
    pub accept: Option<String>,
    pub app_version: Option<String>,
    pub app_name: Option<String>,
    pub client_region: Option<String>,
}

impl RequestHeaders {
    pub fn from_setting(setting: Option<&str>) -> RequestHeaders {
        let Some(Value::Object(map)) = setting.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
            return RequestHeaders::default();
        };
        // names are lower-case from PostgREST; a hand-made setting may not be
        let get = |name: &str| -> Option<String> {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        RequestHeaders {
            api_version: get("x-api-version"),
            accept: get("accept"),
            app_version: get("x-app-version"),
            app_name: get("x-app-name"),
            client_region: get("x-client-region"),
        }
    }
}

/// A header value as the request log keeps it: at most MAX_LOGGED_HEADER characters.
pub fn for_log(value: Option<&str>) -> Option<String> {
    value.map(|v| v.chars().take(MAX_LOGGED_HEADER).collect())
}

/// The version an `Accept` header asks for with `application/vnd.<anything>.<version>+json`, as
/// written. Of several media ranges the one with the highest `q` wins (the first on a tie; q=0
/// ranges are refused ones). `<anything>` may hold dots; the version is the longest tail that is
/// a version (`vnd.acme.v2.1+json` asks for `v2.1`). Other media types, such as PostgREST's own
/// `application/vnd.pgrst.object+json`, ask for no version.
pub fn accept_version(accept: &str) -> Option<String> {
    let mut best: Option<(f32, String)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let Some(version) = vnd_version(media) else { continue };
        if best.as_ref().is_none_or(|(best_q, _)| q > *best_q) {
            best = Some((q, version));
        }
    }
    best.map(|(_, v)| v)
}

fn vnd_version(media: &str) -> Option<String> {
    const PREFIX: &str = "application/vnd.";
    const SUFFIX: &str = "+json";
    if media.len() < PREFIX.len() + SUFFIX.len()
        || !media[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        || !media[media.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX)
    {
        return None;
    }
    let middle = &media[PREFIX.len()..media.len() - SUFFIX.len()];
    // the first dot with a non-empty vendor before it and a version after it gives the longest tail
    middle
        .match_indices('.')
        .map(|(i, _)| (&middle[..i], &middle[i + 1..]))
        .find(|(vendor, tail)| !vendor.is_empty() && Version::parse(tail).is_ok())
        .map(|(_, tail)| tail.to_owned())
}

/// Appends headers to the value of PostgREST's `response.headers` (a JSON array of single-key
/// objects), keeping what is there. An object there is read as its headers; anything that is not
/// JSON (PostgREST would refuse it anyway) is replaced.
pub fn merge_response_headers(existing: Option<&str>, add: &[(&str, String)]) -> String {
    let mut headers: Vec<Value> = match existing.map(str::trim).filter(|s| !s.is_empty()).map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Array(items))) => items,
        Some(Ok(Value::Object(map))) => map.into_iter().map(|(k, v)| Value::Object(Map::from_iter([(k, v)]))).collect(),
        _ => Vec::new(),
    };
    for (name, value) in add {
        headers.push(Value::Object(Map::from_iter([((*name).to_owned(), Value::String(value.clone()))])));
    }
    Value::Array(headers).to_string()
}

/// What a deprecated version tells its callers, as response headers: `Deprecation: @<unix
/// seconds>` (RFC 9745), `Sunset: <IMF-fixdate>` (RFC 8594) and `Link: <docs>;
/// rel="deprecation"`, the last two only when known.
pub fn deprecation_headers(deprecated_at: i64, sunset_at: Option<i64>, docs_url: Option<&str>) -> Vec<(&'static str, String)> {
    let mut out = vec![("Deprecation", format!("@{}", deprecated_at.div_euclid(1_000_000)))];
    if let Some(sunset) = sunset_at {
        out.push(("Sunset", imf_fixdate(sunset)));
    }
    if let Some(url) = docs_url {
        out.push(("Link", format!("<{url}>; rel=\"deprecation\"")));
    }
    out
}

/// Whether a documentation URL can go into a `Link` header: an absolute http(s) URL without
/// spaces, control characters, quotes or angle brackets.
pub fn valid_docs_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url.len() <= 2048
        && url.chars().all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '<' | '>' | '"'))
}

/// Microseconds since the Unix epoch as days, and microseconds into the day.
fn split(unix_micros: i64) -> (i64, i64) {
    (unix_micros.div_euclid(calendar::MICROS_PER_DAY), unix_micros.rem_euclid(calendar::MICROS_PER_DAY))
}

/// An HTTP date (RFC 9110 IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(unix_micros: i64) -> String {
    let (days, micros) = split(unix_micros);
    let (year, month, day) = calendar::civil_from_days(days);
    let secs = micros / 1_000_000;
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        calendar::WEEKDAYS_FROM_EPOCH[days.rem_euclid(7) as usize],
        day,
        calendar::MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// An RFC 3339 timestamp in UTC: `2025-06-01T12:00:00Z`, with the fraction of a second when
/// there is one (`...:00.25Z`).
pub fn rfc3339(unix_micros: i64) -> String {
    let (days, micros) = split(unix_micros);
    let (year, month, day) = calendar::civil_from_days(days);
    let secs = micros / 1_000_000;
    let fraction = micros % 1_000_000;
    let fraction = if fraction == 0 {
        String::new()
    } else {
        format!(".{fraction:06}").trim_end_matches('0').to_owned()
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_headers_from_postgrest() {
        let h = RequestHeaders::from_setting(Some(
            r#"{"x-api-version":" 2.0 ","accept":"application/json","x-app-version":"1.9.9","x-app-name":"ios","x-client-region":"eu-west","user-agent":"x"}"#,
        ));
        assert_eq!(h.api_version.as_deref(), Some("2.0"));
        assert_eq!(h.accept.as_deref(), Some("application/json"));
        assert_eq!(h.app_version.as_deref(), Some("1.9.9"));
        assert_eq!(h.app_name.as_deref(), Some("ios"));
        assert_eq!(h.client_region.as_deref(), Some("eu-west"));
        let mixed = RequestHeaders::from_setting(Some(r#"{"X-Api-Version":"3"}"#));
        assert_eq!(mixed.api_version.as_deref(), Some("3"));
        for nothing in [None, Some(""), Some("not json"), Some("[1]"), Some(r#"{"x-api-version": 2}"#), Some(r#"{"x-api-version": ""}"#)] {
            assert_eq!(RequestHeaders::from_setting(nothing), RequestHeaders::default(), "{nothing:?}");
        }
    }

    #[test]
    fn log_values_are_bounded() {
        assert_eq!(for_log(Some(&"é".repeat(500))).map(|s| s.chars().count()), Some(200));
        assert_eq!(for_log(None), None);
    }

    #[test]
    fn versions_in_accept() {
        assert_eq!(accept_version("application/vnd.acme.v2+json").as_deref(), Some("v2"));
        assert_eq!(accept_version("application/vnd.acme.2.1.0+json").as_deref(), Some("2.1.0"));
        assert_eq!(accept_version("application/vnd.com.example.api.1.10+json").as_deref(), Some("1.10"));
        assert_eq!(accept_version("application/vnd.acme.2024-06-20+json").as_deref(), Some("2024-06-20"));
        assert_eq!(accept_version("Application/VND.acme.v3+JSON").as_deref(), Some("v3"));
        assert_eq!(accept_version("text/html, application/vnd.acme.v2+json; charset=utf-8").as_deref(), Some("v2"));
        // the preferred range wins; refused ranges do not count
        assert_eq!(accept_version("application/vnd.a.v1+json;q=0.5, application/vnd.a.v2+json").as_deref(), Some("v2"));
        assert_eq!(accept_version("application/vnd.a.v1+json, application/vnd.a.v2+json").as_deref(), Some("v1"));
        assert_eq!(accept_version("application/vnd.a.v1+json;q=0, application/json").as_deref(), None);
        for none in ["application/json", "*/*", "", "application/vnd.pgrst.object+json", "application/vnd.pgrst.plan+json",
                     "application/vnd.v2+json", "application/vnd..v2+json", "application/vnd.acme.v2+xml", "application/vnd.acme+json"] {
            assert_eq!(accept_version(none), None, "{none:?}");
        }
    }

    #[test]
    fn response_headers_are_appended() {
        let add = [("Deprecation", "@1".to_owned())];
        assert_eq!(merge_response_headers(None, &add), r#"[{"Deprecation":"@1"}]"#);
        assert_eq!(merge_response_headers(Some(""), &add), r#"[{"Deprecation":"@1"}]"#);
        let merged: Value = serde_json::from_str(&merge_response_headers(Some(r#"[{"Cache-Control":"no-store"}]"#), &add)).unwrap();
        assert_eq!(merged, json!([{"Cache-Control": "no-store"}, {"Deprecation": "@1"}]));
        let merged: Value = serde_json::from_str(&merge_response_headers(Some(r#"{"X-A":"1"}"#), &add)).unwrap();
        assert_eq!(merged, json!([{"X-A": "1"}, {"Deprecation": "@1"}]));
        assert_eq!(merge_response_headers(Some("garbage"), &add), r#"[{"Deprecation":"@1"}]"#);
    }

    #[test]
    fn deprecation_headers_in_postgrest_format() {
        // 2025-01-01T00:00:00Z and 2025-07-01T00:00:00Z
        let headers = deprecation_headers(1_735_689_600_000_000, Some(1_751_328_000_000_000), Some("https://docs.example.com/v1"));
        assert_eq!(headers, vec![
            ("Deprecation", "@1735689600".to_owned()),
            ("Sunset", "Tue, 01 Jul 2025 00:00:00 GMT".to_owned()),
            ("Link", "<https://docs.example.com/v1>; rel=\"deprecation\"".to_owned()),
        ]);
        assert_eq!(deprecation_headers(1_500_000, None, None), vec![("Deprecation", "@1".to_owned())]);
        assert_eq!(deprecation_headers(-1, None, None), vec![("Deprecation", "@-1".to_owned())]);
    }

    #[test]
    fn http_and_rfc3339_dates() {
        assert_eq!(imf_fixdate(784_111_777_000_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(951_782_400_000_000), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(imf_fixdate(-1_000_000), "Wed, 31 Dec 1969 23:59:59 GMT");
        assert_eq!(rfc3339(784_111_777_000_000), "1994-11-06T08:49:37Z");
        assert_eq!(rfc3339(784_111_777_250_000), "1994-11-06T08:49:37.25Z");
        assert_eq!(rfc3339(784_111_777_000_001), "1994-11-06T08:49:37.000001Z");
        assert_eq!(rfc3339(4_102_444_799_999_999), "2099-12-31T23:59:59.999999Z");
    }

    #[test]
    fn docs_urls_fit_in_a_link_header() {
        assert!(valid_docs_url("https://docs.example.com/api/v1#deprecation"));
        assert!(valid_docs_url("http://example.com"));
        for bad in ["", "docs.example.com", "ftp://x", "https://", "https:///x", "https://a b", "https://a>b",
                    "https://a\r\nSet-Cookie: x", "javascript:alert(1)"] {
            assert!(!valid_docs_url(bad), "{bad:?}");
        }
    }
}
