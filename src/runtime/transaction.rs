//! The worker's transactions: each step of a round is its own short transaction, and a failing
//! step is rolled back, logged and recorded in its slot, never the end of the worker.

use std::panic::AssertUnwindSafe;

use pgrx::PgTryBuilder;
use pgrx::prelude::*;

use crate::error::Result;

/// Runs `f` in its own transaction; an error is logged and recorded and the transaction rolled
/// back, so one failing batch never ends the worker.
pub fn transaction<R>(slot: usize, what: &str, f: impl FnOnce() -> Result<R>) -> Option<R> {
    try_transaction(slot, what, f).ok()
}

/// The same, with the error's message for the caller.
pub fn try_transaction<R>(slot: usize, what: &str, f: impl FnOnce() -> Result<R>) -> std::result::Result<R, String> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let outcome = PgTryBuilder::new(AssertUnwindSafe(|| f().map_err(|e| e.message)))
        .catch_others(|caught| {
            Err(match caught {
                pg_sys::panic::CaughtError::PostgresError(e) | pg_sys::panic::CaughtError::ErrorReport(e) => e.message().to_owned(),
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_owned(),
            })
        })
        .execute();
    match outcome {
        Ok(value) => unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
            Ok(value)
        },
        Err(message) => {
            unsafe { pg_sys::AbortCurrentTransaction() };
            warning!("eventstore worker: {what} failed: {message}");
            super::slots::failed(slot, &format!("{what}: {message}"));
            Err(message)
        }
    }
}
