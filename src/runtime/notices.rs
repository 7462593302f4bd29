//! What committing appenders leave for the worker of their database: the tenants and aggregate
//! types to notify (NOTIFY from every appending transaction would make all their commits take
//! turns on the notification queue's lock; here only the worker takes it), and the fact that
//! events were committed at all. An appender wakes the worker only when it sleeps: a worker
//! that is working looks at its queue again before it sleeps.

use std::collections::BTreeSet;

use pgrx::lwlock::PgLwLock;
use pgrx::pg_guard;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;

use super::slots::{MAX_WORKERS, put, text};

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
    /// the database of the worker this queue is for (a committer of another database, which
    /// looked up the slot before it was given to this one, leaves nothing)
    pub database_oid: pg_sys::Oid,
    pub len: usize,
    /// a notice did not fit: the worker says "something changed" without saying what
    pub overflowed: bool,
    /// events were committed since the worker last took the queue
    pub pending: bool,
    /// the worker is about to sleep or sleeps: the next committer sets its latch
    pub sleeping: bool,
    pub latch: *mut pg_sys::Latch,
    pub notices: [Notice; NOTICES_PER_WORKER],
}

#[derive(Clone, Copy)]
pub struct Notices {
    pub queues: [NoticeQueue; MAX_WORKERS],
}

impl Default for Notices {
    fn default() -> Self {
        let notice = Notice { tenant: [0; TENANT], types: [0; TYPES], types_complete: true };
        let queue = NoticeQueue {
            database_oid: pg_sys::InvalidOid,
            len: 0,
            overflowed: false,
            pending: false,
            sleeping: false,
            latch: std::ptr::null_mut(),
            notices: [notice; NOTICES_PER_WORKER],
        };
        Notices { queues: [queue; MAX_WORKERS] }
    }
}

unsafe impl PGRXSharedMemory for Notices {}

pub static NOTICES: PgLwLock<Notices> = unsafe { PgLwLock::new(c"eventstore_worker_notices") };

pub(super) fn init() {
    pgrx::pg_shmem_init!(NOTICES);
}

/// The worker of `slot` starts: its queue starts empty, for its database.
pub fn open(slot: usize, database_oid: pg_sys::Oid) {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    queue.database_oid = database_oid;
    queue.len = 0;
    queue.overflowed = false;
    // what was committed before the worker started is found by its first round anyway
    queue.pending = true;
    queue.sleeping = false;
    queue.latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch };
}

/// The worker of `slot` stops: committers leave nothing more.
pub fn close(slot: usize) {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    queue.database_oid = pg_sys::InvalidOid;
    queue.latch = std::ptr::null_mut();
    queue.sleeping = false;
}

/// Leaves the tenants and aggregate types a committed transaction of database `database_oid`
/// touched for the worker of `slot`, and wakes it if it sleeps. Never fails (it runs after the
/// commit): what does not fit marks the queue overflowed.
pub fn leave(slot: usize, database_oid: pg_sys::Oid, touched: &[(String, Vec<String>)]) {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    if queue.database_oid != database_oid {
        return;
    }
    queue.pending = true;
    for (tenant, types) in touched {
        add(queue, tenant, types);
    }
    if queue.sleeping && !queue.latch.is_null() {
        queue.sleeping = false;
        unsafe { pg_sys::SetLatch(queue.latch) };
    }
}

fn add(queue: &mut NoticeQueue, tenant: &str, types: &[String]) {
    if tenant.len() >= TENANT {
        queue.overflowed = true;
        return;
    }
    let index = match (0..queue.len).find(|i| text(&queue.notices[*i].tenant) == tenant) {
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
            return;
        }
    };
    let notice = &mut queue.notices[index];
    if !notice.types_complete {
        return;
    }
    let mut all: BTreeSet<String> = text(&notice.types).split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect();
    all.extend(types.iter().cloned());
    let joined = all.into_iter().collect::<Vec<_>>().join(",");
    if joined.len() < TYPES {
        put(&mut notice.types, &joined);
    } else {
        notice.types_complete = false;
    }
}

/// What the worker of `slot` takes at the start of a round.
pub struct Taken {
    /// (tenant, types or None when they did not fit)
    pub notices: Vec<(String, Option<Vec<String>>)>,
    /// some notices were lost
    pub overflowed: bool,
}

pub fn take(slot: usize) -> Taken {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    let taken = (0..queue.len)
        .map(|i| {
            let n = &queue.notices[i];
            let types = n.types_complete.then(|| text(&n.types).split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect());
            (text(&n.tenant), types)
        })
        .collect();
    let taken = Taken { notices: taken, overflowed: queue.overflowed };
    queue.len = 0;
    queue.overflowed = false;
    queue.pending = false;
    taken
}

/// The worker of `slot` is about to sleep: true when it may (nothing was committed since it
/// took the queue); from now on the next committer wakes it.
pub fn going_to_sleep(slot: usize) -> bool {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    queue.sleeping = !queue.pending;
    queue.sleeping
}

/// The worker of `slot` woke up.
pub fn awake(slot: usize) {
    NOTICES.exclusive().queues[slot].sleeping = false;
}
