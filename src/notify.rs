//! One `NOTIFY eventstore_events` per committing transaction that appended events, naming the
//! tenant and the aggregate types it touched, so consumers can LISTEN instead of polling. It is
//! sent from the pre-commit callback: a rolled-back transaction sends nothing. On commit the
//! background workers are woken.

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
        register_xact_callback(PgXactCallbackEvent::PreCommit, send);
        if crate::worker::preloaded() {
            // the workers need not wait for their next poll to see the new events
            register_xact_callback(PgXactCallbackEvent::Commit, crate::worker::status::wake_all);
        }
        register_xact_callback(PgXactCallbackEvent::Abort, forget);
        // a prepared transaction cannot NOTIFY; what it touched must not leak into the next one
        register_xact_callback(PgXactCallbackEvent::PrePrepare, forget);
    }
}

fn forget() {
    TOUCHED.with(|t| *t.borrow_mut() = None);
}

fn send() {
    let Some(touched) = TOUCHED.with(|t| t.borrow_mut().take()) else { return };
    for (tenant, types) in touched {
        let payload = serde_json::json!({ "tenant_id": tenant, "aggregate_types": types }).to_string();
        unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::pg_notify, &[CHANNEL.into_datum(), payload.into_datum()]);
        }
    }
}
