//! What each worker is doing, in shared memory, for eventstore.worker_status().

use pgrx::lwlock::PgLwLock;
use pgrx::pg_guard;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;

/// Databases one server can have workers for.
pub const MAX_WORKERS: usize = 8;
const TEXT: usize = 256;

#[derive(Clone, Copy)]
pub struct Slot {
    pub pid: i32,
    /// the worker's process latch (in shared memory): set by committing appenders
    pub latch: *mut pg_sys::Latch,
    pub database: [u8; 64],
    pub started_at: i64,
    pub last_run_at: i64,
    pub runs: u64,
    pub events_applied: u64,
    pub errors: u64,
    pub last_error: [u8; TEXT],
    pub last_error_at: i64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            pid: 0,
            latch: std::ptr::null_mut(),
            database: [0; 64],
            started_at: 0,
            last_run_at: 0,
            runs: 0,
            events_applied: 0,
            errors: 0,
            last_error: [0; TEXT],
            last_error_at: 0,
        }
    }
}

#[derive(Clone, Copy, Default)]
pub struct Status {
    pub slots: [Slot; MAX_WORKERS],
}

unsafe impl PGRXSharedMemory for Status {}

pub static STATUS: PgLwLock<Status> = unsafe { PgLwLock::new(c"eventstore_worker_status") };

/// From _PG_init, when preloaded: reserves the shared memory.
pub fn init() {
    pgrx::pg_shmem_init!(STATUS);
}

fn put(buf: &mut [u8], text: &str) {
    let n = text.len().min(buf.len() - 1);
    buf.fill(0);
    buf[..n].copy_from_slice(&text.as_bytes()[..n]);
}

pub fn text(buf: &[u8]) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

pub fn started(slot: usize, database: &str) {
    let mut status = STATUS.exclusive();
    let s = &mut status.slots[slot];
    *s = Slot::default();
    s.pid = unsafe { pg_sys::MyProcPid };
    s.latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch };
    s.started_at = now();
    put(&mut s.database, database);
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

pub fn stopped(slot: usize) {
    let mut status = STATUS.exclusive();
    status.slots[slot].pid = 0;
    status.slots[slot].latch = std::ptr::null_mut();
}

/// Wakes every worker: events were just committed.
pub fn wake_all() {
    let status = STATUS.share();
    for slot in status.slots.iter().filter(|s| s.pid != 0 && !s.latch.is_null()) {
        unsafe { pg_sys::SetLatch(slot.latch) };
    }
}

/// The slot of the worker serving `database`, if any.
pub fn of(database: &str) -> Option<Slot> {
    STATUS.share().slots.iter().find(|s| text(&s.database) == database).copied()
}
