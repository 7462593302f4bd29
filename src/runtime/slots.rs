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
    /// when a worker that restarted too quickly starts working again (0: it is working)
    pub backing_off_until: i64,
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
            backing_off_until: 0,
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
    pgrx::pg_shmem_init!(NOTICES);
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

/// The worker waits before working, after restarting too quickly.
pub fn backing_off(slot: usize, message: &str, wait: std::time::Duration) {
    failed(slot, message);
    STATUS.exclusive().slots[slot].backing_off_until = now() + wait.as_micros() as i64;
}

pub fn backed_off(slot: usize) {
    STATUS.exclusive().slots[slot].backing_off_until = 0;
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

/// Notifications appenders leave for the worker of their database, which sends them: NOTIFY
/// from every appending transaction would serialize all their commits on the notification
/// queue's lock; here only the worker takes it.
pub const NOTICES_PER_WORKER: usize = 64;
const TENANT: usize = 128;
const TYPES: usize = 384;

#[derive(Clone, Copy)]
pub struct Notice {
    pub tenant: [u8; TENANT],
    /// aggregate types, comma-separated
    pub types: [u8; TYPES],
    /// false when the types did not fit: "some aggregate types"
    pub types_complete: bool,
}

#[derive(Clone, Copy)]
pub struct NoticeQueue {
    pub len: usize,
    /// a notice did not fit: the worker says "something changed" without saying what
    pub overflowed: bool,
    pub notices: [Notice; NOTICES_PER_WORKER],
}

#[derive(Clone, Copy)]
pub struct Notices {
    pub queues: [NoticeQueue; MAX_WORKERS],
}

impl Default for Notices {
    fn default() -> Self {
        let notice = Notice { tenant: [0; TENANT], types: [0; TYPES], types_complete: true };
        let queue = NoticeQueue { len: 0, overflowed: false, notices: [notice; NOTICES_PER_WORKER] };
        Notices { queues: [queue; MAX_WORKERS] }
    }
}

unsafe impl PGRXSharedMemory for Notices {}

pub static NOTICES: PgLwLock<Notices> = unsafe { PgLwLock::new(c"eventstore_worker_notices") };

/// Leaves the tenants and aggregate types a committed transaction touched for worker `slot`.
/// Never fails (it runs after the commit): what does not fit marks the queue overflowed.
pub fn leave_notices(slot: usize, touched: &[(String, Vec<String>)]) {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    for (tenant, types) in touched {
        if tenant.len() >= TENANT {
            queue.overflowed = true;
            continue;
        }
        let index = match (0..queue.len).find(|i| text(&queue.notices[*i].tenant) == *tenant) {
            Some(i) => i,
            None if queue.len < NOTICES_PER_WORKER => {
                let i = queue.len;
                queue.len += 1;
                let notice = &mut queue.notices[i];
                put(&mut notice.tenant, tenant);
                put(&mut notice.types, "");
                notice.types_complete = true;
                i
            }
            None => {
                queue.overflowed = true;
                continue;
            }
        };
        let notice = &mut queue.notices[index];
        let mut all: std::collections::BTreeSet<String> =
            text(&notice.types).split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect();
        all.extend(types.iter().cloned());
        let joined = all.into_iter().collect::<Vec<_>>().join(",");
        if joined.len() < TYPES {
            put(&mut notice.types, &joined);
        } else {
            notice.types_complete = false;
        }
    }
}

/// Takes what appenders left for worker `slot`: (tenant, types or None when incomplete), and
/// whether some notices were lost.
pub fn take_notices(slot: usize) -> (Vec<(String, Option<Vec<String>>)>, bool) {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    let taken = (0..queue.len)
        .map(|i| {
            let n = &queue.notices[i];
            let types = n.types_complete.then(|| text(&n.types).split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect());
            (text(&n.tenant), types)
        })
        .collect();
    let overflowed = queue.overflowed;
    queue.len = 0;
    queue.overflowed = false;
    (taken, overflowed)
}
