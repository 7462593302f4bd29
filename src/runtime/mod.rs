//! What backends and the background workers share while the server runs: whether the library
//! was preloaded, the worker slots in shared memory (`slots`), the notices committing appenders
//! leave for their worker (`notices`), and the worker's transaction helper. It depends on
//! nothing above it: `notify`, `worker` and the webhook delivery all stand on it.

pub mod notices;
pub mod slots;
mod transaction;

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;

use crate::error::{Error, Kind, Result};
use crate::guc;

pub use transaction::{transaction, try_transaction};

static PRELOADED: AtomicBool = AtomicBool::new(false);

/// From _PG_init, when the library is in shared_preload_libraries: reserves the shared memory.
pub fn init() {
    PRELOADED.store(true, Ordering::Relaxed);
    slots::init();
    notices::init();
}

/// Whether this server loaded eventstore through shared_preload_libraries (and so runs workers).
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

pub fn current_database() -> String {
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() { String::new() } else { std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned() }
    }
}

/// Whether `eventstore.database` (when set) lets a worker serve `database`.
pub fn allowed(database: &str) -> bool {
    let only = guc::databases();
    only.is_empty() || only.iter().any(|d| d == database)
}

/// The slot of the worker running for this backend's database, if one runs.
pub fn serving_slot() -> Option<usize> {
    if !preloaded() {
        return None;
    }
    match slots::of(unsafe { pg_sys::MyDatabaseId }) {
        Some((slot, s)) if s.pid != 0 => Some(slot),
        _ => None,
    }
}

/// Asks the launcher for a worker in this database when none runs yet (it looks at the
/// databases again at once instead of at its next round).
/// A backend asks at most every few seconds: in a database left without a worker (all
/// `eventstore.max_workers` taken) every appending transaction would wake the launcher.
pub fn want_worker() {
    thread_local! {
        static ASKED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    if !preloaded() || ASKED.with(|a| a.get()).is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(5)) {
        return;
    }
    if slots::of(unsafe { pg_sys::MyDatabaseId }).is_none() && allowed(&current_database()) {
        ASKED.with(|a| a.set(Some(std::time::Instant::now())));
        slots::wake_launcher();
    }
}

/// 55000 unless workers may serve the current database.
pub fn require() -> Result<()> {
    let hint = "Add eventstore to shared_preload_libraries (and this database to eventstore.database, when that is set), then restart the server.";
    if !preloaded() {
        return Err(Error::new(Kind::WrongState, "the eventstore background worker is not running")
            .detail("eventstore is not in shared_preload_libraries")
            .hint(hint));
    }
    let database = current_database();
    if !allowed(&database) {
        return Err(Error::new(Kind::WrongState, format!("no eventstore background worker serves database \"{database}\""))
            .detail(format!("eventstore.database is \"{}\"", guc::databases().join(",")))
            .hint(hint));
    }
    want_worker();
    Ok(())
}
