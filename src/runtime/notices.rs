//! What committing appenders leave for the worker of their database: the tenants and aggregate
//! types to notify (NOTIFY from every appending transaction would make all their commits take
//! turns on the notification queue's lock; here only the worker takes it), and the fact that
//! events were committed at all. An appender wakes the worker only when it sleeps: a worker
//! that is working looks at its queue again before it sleeps.
//!
//! The queue is under a lock, but a committer whose tenant and aggregate types are in it already
//! (the common case under load: the same ones, again and again, until the worker takes them)
//! takes no lock: the queue's generation, bumped by every take, tells it that what it left in
//! this generation is still there, and `pending` and `sleeping` are atomics.
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::SeqCst};

use pgrx::PgAtomic;
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
            notices: [notice; NOTICES_PER_WORKER],
        };
        Notices { queues: [queue; MAX_WORKERS] }
    }
}

unsafe impl PGRXSharedMemory for Notices {}

pub static NOTICES: PgLwLock<Notices> = unsafe { PgLwLock::new(c"eventstore_worker_notices") };

/// What committers read and set without the lock, per queue.
#[derive(Default)]
pub struct Flag {
    /// bumped when the worker takes the queue or a worker opens it: what a committer left in an
    /// earlier generation is gone
    generation: AtomicU64,
    /// events were committed since the worker last took the queue
    pending: AtomicBool,
    /// the worker is about to sleep or sleeps: the committer that clears this sets its latch
    sleeping: AtomicBool,
    latch: AtomicPtr<pg_sys::Latch>,
}

pub struct Flags {
    queues: [Flag; MAX_WORKERS],
}

impl Default for Flags {
    fn default() -> Self {
        Flags { queues: std::array::from_fn(|_| Flag::default()) }
    }
}

unsafe impl PGRXSharedMemory for Flags {}

static FLAGS: PgAtomic<Flags> = unsafe { PgAtomic::new(c"eventstore_worker_notice_flags") };

pub(super) fn init() {
    pgrx::pg_shmem_init!(NOTICES);
    pgrx::pg_shmem_init!(FLAGS);
}

fn flag(slot: usize) -> &'static Flag {
    &FLAGS.get().queues[slot]
}

thread_local! {
    /// what this backend left in the queue of (slot, generation): tenant -> aggregate types
    static LEFT: RefCell<(usize, u64, Vec<(String, Vec<String>)>)> = const { RefCell::new((usize::MAX, 0, Vec::new())) };
}

/// The worker of `slot` starts: its queue starts empty, for its database.
pub fn open(slot: usize, database_oid: pg_sys::Oid) {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    queue.database_oid = database_oid;
    queue.len = 0;
    queue.overflowed = false;
    let flag = flag(slot);
    flag.generation.fetch_add(1, SeqCst);
    // what was committed before the worker started is found by its first round anyway
    flag.pending.store(true, SeqCst);
    flag.sleeping.store(false, SeqCst);
    flag.latch.store(unsafe { &raw mut (*pg_sys::MyProc).procLatch }, SeqCst);
}

/// The worker of `slot` stops: committers leave nothing more.
pub fn close(slot: usize) {
    let mut notices = NOTICES.exclusive();
    let queue = &mut notices.queues[slot];
    queue.database_oid = pg_sys::InvalidOid;
    let flag = flag(slot);
    flag.generation.fetch_add(1, SeqCst);
    flag.latch.store(std::ptr::null_mut(), SeqCst);
    flag.sleeping.store(false, SeqCst);
}

/// Leaves the tenants and aggregate types a committed transaction of database `database_oid`
/// touched for the worker of `slot`, and wakes it if it sleeps. Never fails (it runs after the
/// commit): what does not fit marks the queue overflowed.
pub fn leave(slot: usize, database_oid: pg_sys::Oid, touched: &[(String, Vec<String>)]) {
    let flag = flag(slot);
    // read after this transaction's commit: a take that bumps it later takes what this backend
    // left in this generation, and notifies after this commit
    let generation = flag.generation.load(SeqCst);
    let covered = LEFT.with(|left| {
        let left = left.borrow();
        left.0 == slot && left.1 == generation && touched.iter().all(|(tenant, types)| {
            left.2.iter().any(|(t, known)| t == tenant && types.iter().all(|ty| known.contains(ty)))
        })
    });
    if !covered {
        let mut notices = NOTICES.exclusive();
        let queue = &mut notices.queues[slot];
        if queue.database_oid != database_oid {
            return;
        }
        for (tenant, types) in touched {
            add(queue, tenant, types);
        }
        // under the lock, no take can come between the adds and this
        let generation = flag.generation.load(SeqCst);
        LEFT.with(|left| {
            let mut left = left.borrow_mut();
            if left.0 != slot || left.1 != generation {
                *left = (slot, generation, Vec::new());
            }
            for (tenant, types) in touched {
                match left.2.iter_mut().find(|(t, _)| t == tenant) {
                    Some((_, known)) => known.extend(types.iter().filter(|ty| !known.contains(ty)).cloned().collect::<Vec<_>>()),
                    None => left.2.push((tenant.clone(), types.clone())),
                }
            }
        });
    }
    if !flag.pending.load(SeqCst) {
        flag.pending.store(true, SeqCst);
    }
    // after `pending` is set: a worker that set `sleeping` before that is woken here, one that
    // sets it later sees `pending` and does not sleep
    if flag.sleeping.load(SeqCst) && flag.sleeping.swap(false, SeqCst) {
        let latch = flag.latch.load(SeqCst);
        if !latch.is_null() {
            unsafe { pg_sys::SetLatch(latch) };
        }
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
    let flag = flag(slot);
    flag.pending.store(false, SeqCst);
    flag.generation.fetch_add(1, SeqCst);
    taken
}

/// The worker of `slot` is about to sleep: true when it may (nothing was committed since it
/// took the queue); from now on the next committer wakes it.
pub fn going_to_sleep(slot: usize) -> bool {
    let flag = flag(slot);
    flag.sleeping.store(true, SeqCst);
    if flag.pending.load(SeqCst) {
        flag.sleeping.store(false, SeqCst);
        return false;
    }
    true
}

/// The worker of `slot` woke up.
pub fn awake(slot: usize) {
    flag(slot).sleeping.store(false, SeqCst);
}
