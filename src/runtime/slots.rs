//! The worker slots in shared memory: which database each worker serves and what it is doing
//! (for `eventstore.worker_status()`), and where the launcher is. The launcher assigns a slot
//! before it starts a worker and frees it when the worker has stopped.

use pgrx::lwlock::PgLwLock;
use pgrx::pg_guard;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;

/// Databases one server can have workers for (`eventstore.max_workers` is at most this).
pub const MAX_WORKERS: usize = 32;
const TEXT: usize = 256;

#[derive(Clone, Copy)]
pub struct Slot {
    /// the database the slot is assigned to (InvalidOid: free)
    pub database_oid: pg_sys::Oid,
    pub database: [u8; 64],
    pub pid: i32,
    /// the worker's process latch (in shared memory)
    pub latch: *mut pg_sys::Latch,
    pub started_at: i64,
    pub last_run_at: i64,
    pub runs: u64,
    pub events_applied: u64,
    pub errors: u64,
    pub last_error: [u8; TEXT],
    pub last_error_at: i64,
    /// when a worker that restarted too quickly starts working again (0: it is working)
    pub backing_off_until: i64,
    /// the worker found no eventstore in its database and exits
    pub absent: bool,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            database_oid: pg_sys::InvalidOid,
            database: [0; 64],
            pid: 0,
            latch: std::ptr::null_mut(),
            started_at: 0,
            last_run_at: 0,
            runs: 0,
            events_applied: 0,
            errors: 0,
            last_error: [0; TEXT],
            last_error_at: 0,
            backing_off_until: 0,
            absent: false,
        }
    }
}

#[derive(Clone, Copy)]
pub struct Status {
    pub slots: [Slot; MAX_WORKERS],
    pub launcher_pid: i32,
    pub launcher_latch: *mut pg_sys::Latch,
    /// a backend asked the launcher to look at the databases again (CREATE EXTENSION, a call
    /// in a database without a worker)
    pub look_again: bool,
    /// a database being dropped: the launcher starts no worker for it until this time
    pub dropping: pg_sys::Oid,
    pub dropping_until: i64,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            slots: [Slot::default(); MAX_WORKERS],
            launcher_pid: 0,
            launcher_latch: std::ptr::null_mut(),
            look_again: false,
            dropping: pg_sys::InvalidOid,
            dropping_until: 0,
        }
    }
}

unsafe impl PGRXSharedMemory for Status {}

pub static STATUS: PgLwLock<Status> = unsafe { PgLwLock::new(c"eventstore_worker_status") };

pub(super) fn init() {
    pgrx::pg_shmem_init!(STATUS);
}

pub(crate) fn put(buf: &mut [u8], text: &str) {
    let mut n = text.len().min(buf.len() - 1);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    buf.fill(0);
    buf[..n].copy_from_slice(&text.as_bytes()[..n]);
}

pub fn text(buf: &[u8]) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub(crate) fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

// --- the launcher ------------------------------------------------------------------------------

/// The launcher takes a free slot for `database`; None when every slot is taken.
pub fn assign(database_oid: pg_sys::Oid, database: &str) -> Option<usize> {
    let mut status = STATUS.exclusive();
    let slot = status.slots.iter().position(|s| s.database_oid == pg_sys::InvalidOid)?;
    let s = &mut status.slots[slot];
    *s = Slot::default();
    s.database_oid = database_oid;
    put(&mut s.database, database);
    Some(slot)
}

/// The launcher frees a slot whose worker has stopped; returns whether that worker found no
/// eventstore in its database.
pub fn free(slot: usize) -> bool {
    let mut status = STATUS.exclusive();
    let absent = status.slots[slot].absent;
    status.slots[slot] = Slot::default();
    absent
}

pub fn launcher_started() {
    let mut status = STATUS.exclusive();
    status.launcher_pid = unsafe { pg_sys::MyProcPid };
    status.launcher_latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch };
    // a launcher that starts again (after a crash of the server) finds no worker of its own
    for s in status.slots.iter_mut() {
        *s = Slot::default();
    }
}

pub fn launcher_stopped() {
    let mut status = STATUS.exclusive();
    status.launcher_pid = 0;
    status.launcher_latch = std::ptr::null_mut();
}

/// Asks the launcher to look at the databases again now.
pub fn wake_launcher() {
    let mut status = STATUS.exclusive();
    status.look_again = true;
    if !status.launcher_latch.is_null() {
        unsafe { pg_sys::SetLatch(status.launcher_latch) };
    }
}

/// Whether a backend asked the launcher to look again (and forgets the request).
pub fn take_look_again() -> bool {
    std::mem::take(&mut STATUS.exclusive().look_again)
}

/// `DROP DATABASE` is about to run: no worker may start for it for a while.
pub fn dropping(database_oid: pg_sys::Oid, seconds: i64) {
    let mut status = STATUS.exclusive();
    status.dropping = database_oid;
    status.dropping_until = now() + seconds * 1_000_000;
}

/// Whether `database_oid` is being dropped.
pub fn is_dropping(database_oid: pg_sys::Oid) -> bool {
    let status = STATUS.share();
    status.dropping == database_oid && status.dropping_until > now()
}

// --- a worker --------------------------------------------------------------------------------

pub fn started(slot: usize) {
    let mut status = STATUS.exclusive();
    let s = &mut status.slots[slot];
    s.pid = unsafe { pg_sys::MyProcPid };
    s.latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch };
    s.started_at = now();
}

pub fn ran(slot: usize, applied: u64) {
    let mut status = STATUS.exclusive();
    let s = &mut status.slots[slot];
    s.last_run_at = now();
    s.runs += 1;
    s.events_applied += applied;
}

pub fn failed(slot: usize, error: &str) {
    let mut status = STATUS.exclusive();
    let s = &mut status.slots[slot];
    s.errors += 1;
    s.last_error_at = now();
    put(&mut s.last_error, error);
}

/// The worker waits before working, after restarting too quickly.
pub fn backing_off(slot: usize, message: &str, wait: std::time::Duration) {
    failed(slot, message);
    STATUS.exclusive().slots[slot].backing_off_until = now() + wait.as_micros() as i64;
}

pub fn backed_off(slot: usize) {
    STATUS.exclusive().slots[slot].backing_off_until = 0;
}

/// The worker found no eventstore in its database.
pub fn absent(slot: usize) {
    STATUS.exclusive().slots[slot].absent = true;
}

pub fn stopped(slot: usize) {
    let mut status = STATUS.exclusive();
    status.slots[slot].pid = 0;
    status.slots[slot].latch = std::ptr::null_mut();
}

/// The slot assigned to the database `database_oid`, if any, with what it holds.
pub fn of(database_oid: pg_sys::Oid) -> Option<(usize, Slot)> {
    let status = STATUS.share();
    status.slots.iter().enumerate().find(|(_, s)| s.database_oid == database_oid).map(|(i, s)| (i, *s))
}

/// How many slots are taken.
pub fn taken() -> usize {
    STATUS.share().slots.iter().filter(|s| s.database_oid != pg_sys::InvalidOid).count()
}
