//! Which tenant a call acts for (design.md §2).

use serde_json::Value;

use crate::error::{Error, Kind, Result};
use crate::guc;

/// The tenant a call without one falls back to when `eventstore.require_tenant` is off.
pub const DEFAULT_TENANT: &str = "default";

/// The current tenant: `eventstore.tenant_id`, else the claim named by
/// `eventstore.tenant_claim` in PostgREST's `request.jwt.claims`, else `default`, or 42501 when
/// `eventstore.require_tenant` is on.
pub fn current() -> Result<String> {
    if let Some(tenant) = guc::string(&guc::TENANT_ID) {
        return Ok(tenant);
    }
    if let Some(claims) = guc::by_name(c"request.jwt.claims") {
        let path = guc::string(&guc::TENANT_CLAIM).unwrap_or_else(|| "tenant_id".into());
        if let Some(tenant) = claim_at(&claims, &path)? {
            return Ok(tenant);
        }
    }
    if guc::REQUIRE_TENANT.get() {
        return Err(Error::new(Kind::NotPermitted, "no tenant for this call")
            .detail("eventstore.require_tenant is on, eventstore.tenant_id is empty and request.jwt.claims names no tenant")
            .hint("SET LOCAL eventstore.tenant_id, or sign the JWT with the claim named by eventstore.tenant_claim."));
    }
    Ok(DEFAULT_TENANT.into())
}

/// The tenant named by the claim at a dotted `path` of the JSON claims; strings and numbers
/// count, anything else (or nothing there) is no tenant.
pub fn claim_at(claims: &str, path: &str) -> Result<Option<String>> {
    let claims: Value = serde_json::from_str(claims).map_err(|e| {
        Error::invalid("request.jwt.claims is not valid JSON").detail(e.to_string())
    })?;
    let mut at = &claims;
    for key in path.split('.') {
        match at.get(key) {
            Some(next) => at = next,
            None => return Ok(None),
        }
    }
    Ok(match at {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::claim_at;

    #[test]
    fn top_level_claim() {
        assert_eq!(claim_at(r#"{"tenant_id":"acme"}"#, "tenant_id").unwrap(), Some("acme".into()));
    }

    #[test]
    fn dotted_path_is_followed() {
        let claims = r#"{"sub":"u1","app_metadata":{"org_id":"org-7"}}"#;
        assert_eq!(claim_at(claims, "app_metadata.org_id").unwrap(), Some("org-7".into()));
        assert_eq!(claim_at(claims, "app_metadata.missing").unwrap(), None);
        assert_eq!(claim_at(claims, "sub.deeper").unwrap(), None);
    }

    #[test]
    fn numbers_count_and_other_shapes_do_not() {
        assert_eq!(claim_at(r#"{"t":42}"#, "t").unwrap(), Some("42".into()));
        assert_eq!(claim_at(r#"{"t":""}"#, "t").unwrap(), None);
        assert_eq!(claim_at(r#"{"t":{"a":1}}"#, "t").unwrap(), None);
        assert_eq!(claim_at(r#"{"t":null}"#, "t").unwrap(), None);
    }

    #[test]
    fn malformed_claims_are_an_error() {
        let err = claim_at("{not json", "t").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::InvalidArgument);
    }
}
