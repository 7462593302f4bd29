//! Which tenant a call acts for.

use serde_json::Value;

use crate::error::{Error, Kind, Result};
use crate::guc;

/// The tenant a call without one falls back to when `eventstore.require_tenant` is off.
pub const DEFAULT_TENANT: &str = "default";

/// The current tenant: `eventstore.tenant_id`, else the claim named by
/// `eventstore.tenant_claim` in PostgREST's `request.jwt.claims`, else `default`, or 42501 when
/// `eventstore.require_tenant` is on.
pub fn current() -> Result<String> {
    if let Some(pinned) = pinned()? {
        if let Some(asked) = guc::tenant_id().filter(|t| *t != pinned) {
            return Err(Error::new(Kind::NotPermitted, "this role is pinned to another tenant")
                .detail(format!("eventstore.tenant_id is \"{}\"", asked.chars().take(255).collect::<String>()))
                .hint("A pinned role acts only in its own tenant: reset eventstore.tenant_id."));
        }
        return Ok(pinned);
    }
    if let Some(tenant) = guc::tenant_id() {
        return bounded(tenant, "eventstore.tenant_id");
    }
    if let Some(claims) = guc::by_name(c"request.jwt.claims") {
        let path = guc::tenant_claim();
        if let Some(tenant) = claim_at(&claims, &path)? {
            return bounded(tenant, "the tenant claim");
        }
    }
    if guc::require_tenant() {
        return Err(Error::new(Kind::NotPermitted, "no tenant for this call")
            .detail("eventstore.require_tenant is on, eventstore.tenant_id is empty and request.jwt.claims names no tenant")
            .hint("SET LOCAL eventstore.tenant_id, or sign the JWT with the claim named by eventstore.tenant_claim."));
    }
    Ok(DEFAULT_TENANT.into())
}

/// The first key of the advisory lock that marks a transaction as writing for a tenant
/// ('evnt'); the second is `writer_key(tenant)`.
pub const WRITER_LOCK_CLASS: u32 = 0x6576_6e74;

/// The second key of that lock: 32 bits of the tenant id's SHA-256.
pub fn writer_key(tenant: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(tenant.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Marks the current transaction as one that writes events of `tenant`: a shared advisory lock
/// held until it ends, which no one else ever waits for. `feed_lag()` reads it from `pg_locks`
/// to tell a tenant whether the transaction holding its feed back is its own, since that
/// transaction's rows are invisible until it ends.
pub fn mark_writing(tenant: &str) {
    thread_local! {
        static MARKED: std::cell::RefCell<(u32, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    // the transaction's local id: set when it starts, before it has an xid
    let xid = unsafe { (*pgrx::pg_sys::MyProc).lxid };
    let done = MARKED.with(|m| {
        let m = m.borrow();
        xid != 0 && m.0 == xid && m.1 == tenant
    });
    if done {
        return;
    }
    let tag = pgrx::pg_sys::LOCKTAG {
        locktag_field1: unsafe { pgrx::pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: WRITER_LOCK_CLASS,
        locktag_field3: writer_key(tenant),
        locktag_field4: 2,
        locktag_type: pgrx::pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pgrx::pg_sys::USER_LOCKMETHOD as u8,
    };
    unsafe { pgrx::pg_sys::LockAcquire(&tag, pgrx::pg_sys::ShareLock as i32, false, false) };
    MARKED.with(|m| *m.borrow_mut() = (xid, tenant.to_owned()));
}

static PINNED: crate::store::plans::Statement = crate::store::plans::Statement {
    sql: "SELECT DISTINCT p.tenant_id FROM eventstore.pinned_roles p WHERE p.role_id IN ($1, $2)",
    args: &[pgrx::pg_sys::BuiltinOid::OIDOID, pgrx::pg_sys::BuiltinOid::OIDOID],
    volatile: false,
};

thread_local! {
    static PINNED_TO: crate::cache::Memo<(u32, u32), Vec<String>> = crate::cache::Memo::new();
}

/// The tenant the session user or the current user is pinned to, if either is (cached; dropped
/// when a pin changes). Two different pins are 42501.
fn pinned() -> Result<Option<String>> {
    use pgrx::pg_sys;
    let (session, outer) = unsafe { (pg_sys::GetSessionUserId(), pg_sys::GetOuterUserId()) };
    let tenants = PINNED_TO.with(|memo| {
        memo.get(&(session.to_u32(), outer.to_u32()), || {
            // none before ALTER EXTENSION UPDATE from 0.1.0 has created the table (the update
            // changes functions, which empties this memo in every backend)
            if crate::cache::table_oid(c"pinned_roles") == pg_sys::InvalidOid {
                return Ok(Vec::new());
            }
            // the pins are the extension's own: read as the bootstrap superuser, whoever asks
            crate::store::caller::as_role(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), || {
                pgrx::Spi::connect(|client| {
                    let mut out = Vec::new();
                    for row in crate::store::plans::run(client, &PINNED, &[session.into(), outer.into()])? {
                        out.extend(row.get::<String>(1)?);
                    }
                    Ok(out)
                })
            })
        })
    })?;
    match tenants.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => Err(Error::new(Kind::NotPermitted, "the session user and the current user are pinned to different tenants")
            .hint("Use one pinned role per session.")),
    }
}

/// A tenant id is a name like the others: at most 255 characters (it goes into every row and
/// into notifications, whose payload is limited).
fn bounded(tenant: String, from: &str) -> Result<String> {
    let chars = tenant.chars().count();
    if chars > crate::input::MAX_NAME_CHARS {
        return Err(Error::invalid("the tenant id is too long").detail(format!(
            "{from} has {chars} characters; at most {} are allowed",
            crate::input::MAX_NAME_CHARS
        )));
    }
    Ok(tenant)
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
