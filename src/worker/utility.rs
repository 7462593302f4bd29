//! A utility hook, so the workers follow the databases: `DROP DATABASE` first stops the
//! worker connected to that database (a plain DROP DATABASE refuses while any session is
//! connected), and `CREATE EXTENSION eventstore` or `CREATE DATABASE` ask the launcher to look
//! at the databases at once.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::runtime::slots;

/// How long the launcher starts no worker for a database being dropped.
const DROPPING_SECONDS: i64 = 30;
/// How long DROP DATABASE waits for the worker to stop before it goes on anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

pub fn install() {
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let node = unsafe { (*pstmt).utilityStmt };
    let tag = if node.is_null() { pg_sys::NodeTag::T_Invalid } else { unsafe { (*node).type_ } };
    if tag == pg_sys::NodeTag::T_DropdbStmt {
        let name = unsafe { (*(node as *mut pg_sys::DropdbStmt)).dbname };
        if !name.is_null() {
            let oid = unsafe { pg_sys::get_database_oid(name, true) };
            if oid != pg_sys::InvalidOid {
                stop_worker(oid);
            }
        }
    }
    unsafe {
        match PREVIOUS {
            Some(previous) => previous(pstmt, query, read_only_tree, context, params, env, dest, qc),
            None => pg_sys::standard_ProcessUtility(pstmt, query, read_only_tree, context, params, env, dest, qc),
        }
    }
    let wake = match tag {
        pg_sys::NodeTag::T_CreatedbStmt => true,
        pg_sys::NodeTag::T_CreateExtensionStmt => {
            let name = unsafe { (*(node as *mut pg_sys::CreateExtensionStmt)).extname };
            !name.is_null() && unsafe { CStr::from_ptr(name) }.to_bytes() == b"eventstore"
        }
        _ => false,
    };
    if wake {
        // the launcher looks before the creating transaction may have committed; a worker
        // that finds nothing yet exits, and this asks again when the transaction is over
        slots::wake_launcher();
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, slots::wake_launcher);
    }
}

/// Stops the worker of `database_oid` (if one runs) and keeps the launcher from starting
/// another one while the database is dropped.
fn stop_worker(database_oid: pg_sys::Oid) {
    slots::dropping(database_oid, DROPPING_SECONDS);
    let Some((_, slot)) = slots::of(database_oid) else { return };
    if slot.pid == 0 {
        return;
    }
    unsafe {
        unsafe extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        kill(slot.pid, 15);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while slots::of(database_oid).is_some_and(|(_, s)| s.pid != 0) && Instant::now() < deadline {
        unsafe { pg_sys::pg_usleep(10_000) };
        pg_sys::check_for_interrupts!();
    }
}
