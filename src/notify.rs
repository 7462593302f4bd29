//! `NOTIFY eventstore_events` after a transaction that appended events commits, naming the
//! tenant and the aggregate types it touched, so consumers can LISTEN instead of polling; a
//! rolled-back transaction sends nothing.
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
        match crate::worker::serving_slot() {
            Some(slot) => register_xact_callback(PgXactCallbackEvent::Commit, move || leave(slot)),
            None => register_xact_callback(PgXactCallbackEvent::PreCommit, send),
        };
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

/// After the commit: the note for the worker.
fn leave(slot: usize) {
    let Some(touched) = TOUCHED.with(|t| t.borrow_mut().take()) else { return };
    let touched: Vec<(String, Vec<String>)> = touched.into_iter().map(|(t, types)| (t, types.into_iter().collect())).collect();
    crate::worker::status::leave_notices(slot, &touched);
    crate::worker::status::wake_all();
}

/// The payload of one notification.
pub fn payload(tenant: Option<&str>, types: Option<&[String]>) -> String {
    serde_json::json!({ "tenant_id": tenant, "aggregate_types": types }).to_string()
}

fn send() {
    let Some(touched) = TOUCHED.with(|t| t.borrow_mut().take()) else { return };
    for (tenant, types) in touched {
        let types: Vec<String> = types.into_iter().collect();
        let payload = payload(Some(&tenant), Some(&types));
        unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::pg_notify, &[CHANNEL.into_datum(), payload.into_datum()]);
        }
    }
}
