//! The request log row of a call that wrote nothing else commits asynchronously: waiting for
//! its WAL flush was most of what route_api_call cost (a read-only rpc's transaction would not
//! flush at all without it). When the log row is the transaction's first write, the transaction
//! is marked `synchronous_commit = off` (transaction-locally, like `SET LOCAL`); if the same
//! transaction writes anything after the call, the setting it had is put back before it
//! commits, so no write of the caller's ever loses its durability. What a crash can lose is
//! the log rows of the last moments (at most three times `wal_writer_delay`), as with
//! `synchronous_commit = off`; the answers themselves were read-only.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::{PgXactCallbackEvent, register_xact_callback};

use crate::error::Result;

/// Writes the log row with `write`, committing asynchronously when it is the transaction's only
/// write.
pub fn write_log<R>(write: impl FnOnce() -> Result<R>) -> Result<R> {
    let first_write = unsafe { pg_sys::GetTopTransactionIdIfAny() } == pg_sys::InvalidTransactionId;
    let result = write()?;
    if first_write {
        if let Some(previous) = setting().filter(|v| v != "off") {
            set("off");
            let mark = unsafe { pg_sys::XactLastRecEnd };
            register_xact_callback(PgXactCallbackEvent::PreCommit, move || {
                // more WAL since the log row: the caller wrote after the call
                if unsafe { pg_sys::XactLastRecEnd } != mark {
                    set(&previous);
                }
            });
        }
    }
    Ok(result)
}

fn setting() -> Option<String> {
    let value = unsafe { pg_sys::GetConfigOption(c"synchronous_commit".as_ptr(), true, false) };
    (!value.is_null()).then(|| unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned())
}

fn set(value: &str) {
    crate::guc::set_local(c"synchronous_commit", value);
}
