//! The launcher: one background worker per server (registered when the library is preloaded)
//! that starts a worker for every database in which eventstore is installed, and starts it
//! again when it stops. It connects to no database; it reads the list of databases from the
//! shared catalog `pg_database`. A worker started in a database without eventstore says so and
//! exits; the launcher tries that database again when a backend asks (`CREATE EXTENSION`,
//! `CREATE DATABASE`, a call that needs a worker: src/worker/utility.rs, src/runtime/mod.rs) or
//! after `RECHECK`. `eventstore.database`, when set, narrows the databases;
//! `eventstore.max_workers` caps them, and a database left without a worker is named in the
//! server log.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::guc;
use crate::runtime::{self, slots};

/// How often the launcher looks at the databases when nobody asks it to.
const ROUND: Duration = Duration::from_secs(5);
/// How long a database found without eventstore is left alone (unless a backend asks).
const RECHECK: Duration = Duration::from_secs(60);

/// From _PG_init: registers the launcher.
pub fn register() {
    BackgroundWorkerBuilder::new("eventstore launcher")
        .set_type("eventstore launcher")
        .set_library("eventstore")
        .set_function("eventstore_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

struct Running {
    database_oid: pg_sys::Oid,
    handle: DynamicBackgroundWorker,
    started: Instant,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventstore_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // no database: pg_database is a shared catalog
    BackgroundWorker::connect_worker_to_spi(None, None);
    slots::launcher_started();
    let mut running: Vec<Option<Running>> = (0..slots::MAX_WORKERS).map(|_| None).collect();
    let mut absent: HashMap<pg_sys::Oid, Instant> = HashMap::new();
    let mut unserved_logged: BTreeSet<String> = BTreeSet::new();
    // when a backend last asked: a worker started before that may have looked too early
    let mut asked = Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // workers that stopped: their slots are free, and a database found without eventstore
        // is left alone for a while
        for (slot, entry) in running.iter_mut().enumerate() {
            let stopped = entry.as_ref().is_some_and(|r| r.handle.pid().is_err_and(|s| matches!(s, pgrx::bgworkers::BackgroundWorkerStatus::Stopped)));
            if stopped {
                let r = entry.take().expect("checked");
                if slots::free(slot) && r.started > asked {
                    absent.insert(r.database_oid, Instant::now());
                }
            }
        }
        if slots::take_look_again() {
            absent.clear();
            asked = Instant::now();
        }
        absent.retain(|_, since| since.elapsed() < RECHECK);
        let serving: HashSet<pg_sys::Oid> = running.iter().flatten().map(|r| r.database_oid).collect();
        for (database_oid, name) in databases() {
            if serving.contains(&database_oid) || absent.contains_key(&database_oid) || !runtime::allowed(&name) || slots::is_dropping(database_oid) {
                continue;
            }
            if running.iter().flatten().count() >= guc::max_workers() {
                if unserved_logged.insert(name.clone()) {
                    warning!("eventstore: no worker serves database \"{name}\": all eventstore.max_workers ({}) serve other databases", guc::max_workers());
                }
                continue;
            }
            let Some(slot) = slots::assign(database_oid, &name) else { continue };
            match start(slot, database_oid, &name) {
                Some(handle) => {
                    unserved_logged.remove(&name);
                    running[slot] = Some(Running { database_oid, handle, started: Instant::now() });
                }
                None => {
                    slots::free(slot);
                    if unserved_logged.insert(name.clone()) {
                        warning!("eventstore: could not start a worker for database \"{name}\"; max_worker_processes may be too low");
                    }
                }
            }
        }
        if !BackgroundWorker::wait_latch(Some(ROUND)) {
            break;
        }
    }
    // a launcher told to stop takes its workers with it (the postmaster stops them; at
    // shutdown it would not start anything the launcher waited for), and the next launcher
    // starts them afresh
    for entry in running.iter_mut() {
        if let Some(r) = entry.take() {
            let _ = r.handle.terminate();
        }
    }
    slots::launcher_stopped();
}

fn start(slot: usize, database_oid: pg_sys::Oid, name: &str) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("eventstore worker for {name}"))
        .set_type("eventstore worker")
        .set_library("eventstore")
        .set_function("eventstore_worker_main")
        .set_argument((slot as i32).into_datum())
        .set_extra(&database_oid.to_u32().to_string())
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// (oid, name) of every database that takes connections and is not a template, read from the
/// shared catalog.
fn databases() -> Vec<(pg_sys::Oid, String)> {
    let mut found = Vec::new();
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let header = (*tuple).t_data;
            let form = (header as *const u8).add((*header).t_hoff as usize) as *const pg_sys::FormData_pg_database;
            // datconnlimit -2: a database whose DROP was interrupted
            if (*form).datallowconn && !(*form).datistemplate && (*form).datconnlimit != -2 {
                let name = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr()).to_string_lossy().into_owned();
                found.push(((*form).oid, name));
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    found
}
