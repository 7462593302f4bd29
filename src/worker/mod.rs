//! The background worker: one per database named by `eventstore.database`,
//! registered only when the library is in `shared_preload_libraries`. It applies async
//! projections and delivers webhooks; each batch is its own short transaction, and a failing batch is logged and
//! recorded, never the end of the loop. SIGHUP reloads the settings, SIGTERM ends it promptly,
//! and the postmaster restarts it after a crash (or when its database comes back).

mod projections;
mod restarts;
pub mod status;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

use crate::error::{Error, Kind, Result};
use crate::guc;

static PRELOADED: AtomicBool = AtomicBool::new(false);

/// From _PG_init: shared memory and one worker per database, when preloaded.
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    PRELOADED.store(true, Ordering::Relaxed);
    status::init();
    for (slot, database) in guc::databases().iter().take(status::MAX_WORKERS).enumerate() {
        BackgroundWorkerBuilder::new(&format!("eventstore worker for {database}"))
            .set_type("eventstore worker")
            .set_library("eventstore")
            .set_function("eventstore_worker_main")
            .set_argument((slot as i32).into_datum())
            .set_extra(database)
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(Duration::from_secs(5)))
            .load();
    }
}

/// Whether this server loaded eventstore through shared_preload_libraries (and so runs workers).
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// The worker slot serving this backend's database, if a worker serves it.
pub fn serving_slot() -> Option<usize> {
    thread_local! {
        static SLOT: std::cell::OnceCell<Option<usize>> = const { std::cell::OnceCell::new() };
    }
    if !preloaded() {
        return None;
    }
    SLOT.with(|slot| {
        *slot.get_or_init(|| {
            let database = current_database();
            guc::databases().iter().take(status::MAX_WORKERS).position(|d| *d == database)
        })
    })
}

/// 55000 unless a worker serves the current database.
pub fn require() -> Result<()> {
    let hint = "Add eventstore to shared_preload_libraries and this database to eventstore.database, then restart the server.";
    if !preloaded() {
        return Err(Error::new(Kind::WrongState, "the eventstore background worker is not running")
            .detail("eventstore is not in shared_preload_libraries")
            .hint(hint));
    }
    let database = current_database();
    if !guc::databases().contains(&database) {
        return Err(Error::new(Kind::WrongState, format!("no eventstore background worker serves database \"{database}\""))
            .detail(format!("eventstore.database is \"{}\"", guc::databases().join(",")))
            .hint(hint));
    }
    Ok(())
}

pub fn current_database() -> String {
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() { String::new() } else { std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned() }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventstore_worker_main(arg: pg_sys::Datum) {
    let slot = unsafe { i32::from_datum(arg, false) }.unwrap_or(0) as usize;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = BackgroundWorker::get_extra().to_owned();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    status::started(slot, &database);
    log!("eventstore worker started for database \"{database}\"");
    // a worker that keeps crashing (and with it, every backend of the server) waits longer
    // each time before it works again
    let (quick, wait) = restarts::on_start(slot);
    if !wait.is_zero() {
        let message = format!("backing off {} s after {quick} quick restarts", wait.as_secs());
        warning!("eventstore worker for database \"{database}\": {message}");
        status::backing_off(slot, &message, wait);
        let until = std::time::Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
            if !BackgroundWorker::wait_latch(Some(left.min(Duration::from_secs(1)))) {
                status::stopped(slot);
                unsafe { pg_sys::proc_exit(1) };
            }
        }
        status::backed_off(slot);
    }
    crate::webhooks::deliver::release_leases(slot);
    let mut idle = false;
    loop {
        let wait = if idle { guc::worker_poll_interval() } else { Duration::ZERO };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // one short transaction decides what this round has to do (cached: an idle round
        // runs no query but the extension check) and sends what appenders left to notify
        let work = transaction(slot, "looking for work", || look_for_work(slot)).unwrap_or_default();
        let applied = if work.projections { projections::round(slot) } else { projections::Outcome::default() };
        let (delivered, more_deliveries) = if work.webhooks { crate::webhooks::deliver::round(slot) } else { (0, false) };
        status::ran(slot, applied.applied + delivered);
        idle = !applied.more && !more_deliveries;
    }
    status::stopped(slot);
    restarts::on_clean_exit(slot);
    log!("eventstore worker for database \"{database}\" is exiting");
    // exit code 1: the postmaster starts it again after bgw_restart_time (a SIGTERM may come
    // from DROP DATABASE ... WITH (FORCE); the database may come back). At server shutdown it
    // is not restarted anyway.
    unsafe { pg_sys::proc_exit(1) };
}

static NOTIFY: crate::store::plans::Statement = crate::store::plans::Statement {
    sql: "SELECT pg_notify($1, $2)",
    args: &[pg_sys::BuiltinOid::TEXTOID, pg_sys::BuiltinOid::TEXTOID],
    volatile: true,
};

static INSTALLED: crate::store::plans::Statement = crate::store::plans::Statement {
    sql: "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'eventstore')",
    args: &[],
    volatile: true,
};

/// What a round has to do.
#[derive(Default)]
struct Work {
    projections: bool,
    webhooks: bool,
}

/// Sends the notifications appenders left (see notify.rs) and says whether there are async
/// projections or webhook endpoints to serve (per-backend caches, dropped when they change).
fn look_for_work(slot: usize) -> Result<Work> {
    let (notices, overflowed) = status::take_notices(slot);
    let installed = Spi::connect(|client| {
        if !crate::store::plans::run(client, &INSTALLED, &[])?.first().get_one::<bool>()?.unwrap_or(false) {
            return Ok(false);
        }
        if !notices.is_empty() || overflowed {
            // when notes were lost, this is all that is said: something changed, somewhere
            crate::store::plans::run(client, &NOTIFY, &[crate::notify::CHANNEL.into(), crate::notify::SHARED_PAYLOAD.into()])?;
        }
        for (tenant, types) in &notices {
            // a schema not yet updated to 0.2.0 has no channels of its own: the shared one said it
            let Ok(channel) = crate::notify::channel(tenant) else { continue };
            let payload = crate::notify::payload(types.as_deref());
            crate::store::plans::run(client, &NOTIFY, &[channel.as_str().into(), payload.as_str().into()])?;
        }
        Ok::<_, Error>(true)
    })?;
    if !installed {
        return Ok(Work::default());
    }
    Ok(Work {
        projections: crate::store::projections::any_async()?,
        webhooks: crate::store::webhooks::any_endpoint()?,
    })
}

/// Runs `f` in its own transaction; an error is logged and recorded and the transaction rolled
/// back, so one failing batch never ends the worker.
pub(crate) fn transaction<R>(slot: usize, what: &str, f: impl FnOnce() -> Result<R>) -> Option<R> {
    try_transaction(slot, what, f).ok()
}

/// The same, with the error's message for the caller.
pub(crate) fn try_transaction<R>(slot: usize, what: &str, f: impl FnOnce() -> Result<R>) -> std::result::Result<R, String> {
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
            status::failed(slot, &format!("{what}: {message}"));
            Err(message)
        }
    }
}
