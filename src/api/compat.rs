//! C symbols that only an earlier release's schema calls. A database still at 0.1.0 loads this
//! library until `ALTER EXTENSION eventstore UPDATE`, so every C function its install script
//! (sql/eventstore--0.1.0.sql) names must exist here; tests/upgrade checks that.

use pgrx::pg_sys;

/// 0.1.0's statement trigger `events_queue_webhooks`. Appends queue their deliveries
/// themselves now (src/store/webhook_queue.rs), so the trigger has nothing left to do.
#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo__queue_webhooks_wrapper() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
pub extern "C-unwind" fn _queue_webhooks_wrapper(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // a statement-level AFTER trigger's result is ignored
    pg_sys::Datum::from(0)
}
