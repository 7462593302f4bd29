//! Notifications after a transaction that appended events commits, so consumers can LISTEN
//! instead of polling; a rolled-back transaction sends nothing. LISTEN cannot be limited by
//! row-level security, so the shared channel `eventstore_events` carries only `{}` ("something
//! was appended"), and each tenant's own channel, `eventstore_events_` + 16 hex digits of an
//! HMAC of the tenant id under a per-database secret (`eventstore.notification_channel()`),
//! carries `{"aggregate_types": [...]}`. Only a role that can act in the tenant can learn the
//! name of its channel.
//!
//! A NOTIFY holds a database-wide lock from just before the commit until after it, so if every
//! appending transaction sent one, all their commits would take turns. Where a background
//! worker serves the database, the committing transaction therefore only leaves a note in
//! shared memory and wakes the worker, which sends the notifications (one per tenant for what
//! committed since its last round; concurrent transactions may share one). Elsewhere the
//! transaction sends its own NOTIFY from the pre-commit callback.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{PgXactCallbackEvent, register_xact_callback};

pub const CHANNEL: &str = "eventstore_events";
/// NOTIFY payloads are limited to 8000 bytes; past this many types the list is cut short.
const MAX_TYPES: usize = 100;

thread_local! {
    /// tenant -> aggregate types appended to in the current transaction (None: nothing yet)
    static TOUCHED: RefCell<Option<BTreeMap<String, BTreeSet<String>>>> = const { RefCell::new(None) };
    /// tenant -> its channel, for the transaction's own NOTIFY: named while the append runs,
    /// since the pre-commit callback cannot read the secret (it has no snapshot)
    static CHANNELS: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
    /// the worker slot that takes this transaction's notice (None: it sends its own NOTIFY),
    /// looked up at its first append
    static SLOT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Notes an append; the first one of a transaction arranges the notification.
pub fn appended(tenant: &str, aggregate_type: &str) {
    let first = TOUCHED.with(|t| {
        let mut t = t.borrow_mut();
        let first = t.is_none();
        let types = t.get_or_insert_with(BTreeMap::new).entry(tenant.to_owned()).or_default();
        if types.len() < MAX_TYPES {
            types.insert(aggregate_type.to_owned());
        }
        first
    });
    if first {
        SLOT.with(|s| s.set(crate::runtime::serving_slot()));
    }
    let slot = SLOT.with(|s| s.get());
    if slot.is_none() && !CHANNELS.with(|c| c.borrow().contains_key(tenant)) {
        // a schema not yet updated to 0.2.0 has no channels of its own: the shared one says it
        if let Ok(channel) = channel(tenant) {
            CHANNELS.with(|c| c.borrow_mut().insert(tenant.to_owned(), channel));
        }
    }
    if first {
        match slot {
            // the worker's notice also wakes it for the new events, if it sleeps
            Some(slot) => register_xact_callback(PgXactCallbackEvent::Commit, move || leave(slot)),
            None => {
                crate::runtime::want_worker();
                register_xact_callback(PgXactCallbackEvent::PreCommit, send)
            }
        };
        register_xact_callback(PgXactCallbackEvent::Abort, forget);
        // a prepared transaction cannot NOTIFY; what it touched must not leak into the next one
        register_xact_callback(PgXactCallbackEvent::PrePrepare, forget);
    }
}

fn forget() {
    TOUCHED.with(|t| *t.borrow_mut() = None);
    CHANNELS.with(|c| c.borrow_mut().clear());
}

/// After the commit: the note for the worker.
fn leave(slot: usize) {
    let Some(touched) = TOUCHED.with(|t| t.borrow_mut().take()) else { return };
    let touched: Vec<(String, Vec<String>)> = touched.into_iter().map(|(t, types)| (t, types.into_iter().collect())).collect();
    crate::runtime::notices::leave(slot, unsafe { pg_sys::MyDatabaseId }, &touched);
}

/// What the shared channel says: something was appended, in some tenant.
pub const SHARED_PAYLOAD: &str = "{}";

/// The payload of a tenant's channel: the aggregate types appended to (`null`: some were lost).
pub fn payload(types: Option<&[String]>) -> String {
    serde_json::json!({ "aggregate_types": types }).to_string()
}

static SECRET: crate::store::plans::Statement = crate::store::plans::Statement {
    sql: "SELECT s.secret FROM eventstore.secrets s WHERE s.name = 'notification_channel'",
    args: &[],
    volatile: false,
};

thread_local! {
    static CHANNEL_SECRET: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// The tenant's own channel: `eventstore_events_` and 16 hex digits of an HMAC-SHA256 of the
/// tenant id under the database's secret (read once per backend, as the bootstrap superuser:
/// the table is the extension's alone).
pub fn channel(tenant: &str) -> crate::error::Result<String> {
    use hmac::{Hmac, Mac};
    if crate::cache::table_oid(c"secrets") == pg_sys::InvalidOid {
        return Err(crate::error::Error::new(crate::error::Kind::WrongState, "tenant notification channels need eventstore 0.2.0")
            .hint("Run ALTER EXTENSION eventstore UPDATE."));
    }
    let secret = match CHANNEL_SECRET.with(|s| s.borrow().clone()) {
        Some(secret) => secret,
        None => {
            let secret = crate::store::caller::as_role(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), || {
                Spi::connect(|client| Ok::<_, crate::error::Error>(crate::store::plans::run(client, &SECRET, &[])?.first().get_one::<Vec<u8>>()?))
            })?
            .ok_or_else(|| crate::error::Error::new(crate::error::Kind::Internal, "eventstore internal error: no notification secret"))?;
            CHANNEL_SECRET.with(|s| *s.borrow_mut() = Some(secret.clone()));
            secret
        }
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).expect("HMAC takes keys of any length");
    mac.update(tenant.as_bytes());
    let digest = mac.finalize().into_bytes();
    Ok(format!("{CHANNEL}_{}", digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

fn notify(channel: &str, payload: &str) {
    unsafe {
        pgrx::direct_function_call_as_datum(pg_sys::pg_notify, &[channel.into_datum(), payload.into_datum()]);
    }
}

fn send() {
    let Some(touched) = TOUCHED.with(|t| t.borrow_mut().take()) else { return };
    let channels = CHANNELS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    notify(CHANNEL, SHARED_PAYLOAD);
    for (tenant, types) in touched {
        let types: Vec<String> = types.into_iter().collect();
        if let Some(channel) = channels.get(&tenant) {
            notify(channel, &payload(Some(&types)));
        }
    }
}
