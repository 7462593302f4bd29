//! route_api_call's usage where the request log cannot be written: in a read-only transaction
//! and on a hot standby. Such a call still answers (`meta.logged = false`) and is counted here,
//! in memory, so that `get_api_usage` of that server shows it beside the logged calls.
//!
//! The counts are keyed like the rows of get_api_usage: (tenant, UTC day, version, rpc). Each
//! key keeps calls, errors (status 400 and above), the total, smallest and largest duration and
//! a histogram of durations (buckets a factor of √2 apart from 0.01 ms), from which p95 is
//! estimated within one bucket (exact when the calls of a key all took the same time).
//!
//! With `shared_preload_libraries = 'eventstore'` the table is in shared memory, one for the
//! whole server (all backends, all databases: each database sees its own), `TABLE_ENTRIES`
//! keys. Without it there is no shared memory: each backend counts its own calls in a table of
//! `LOCAL_ENTRIES` keys, which its get_api_usage shows and which ends with the session.
//! Nothing here survives a restart.
//!
//! When the table is full, a new key takes the place of the least recently used key of an
//! earlier day; when every key is of today, the call is not counted (it still answers) and
//! the server log says so once a day.
//!
//! Self-contained: `read_only()`, `count()` and `merge_into()` are all that route_api_call and
//! get_api_usage use. The table logic is pure and tested with plain `#[test]`s.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::lwlock::PgLwLock;
use pgrx::pg_guard;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;
use sha2::{Digest, Sha256};

/// Keys of the server-wide table (about 0.5 kB each).
pub const TABLE_ENTRIES: usize = 512;
/// Keys of a backend's own table when the library is not preloaded.
pub const LOCAL_ENTRIES: usize = 64;
/// Bytes of a name kept for display; longer names are told apart by a hash of the whole.
const TENANT_BYTES: usize = 128;
const VERSION_BYTES: usize = 64;
const RPC_BYTES: usize = 128;
const BUCKETS: usize = 48;
/// The upper bound of bucket 0, in milliseconds.
const FIRST_BOUND_MS: f64 = 0.01;

/// A name as kept in shared memory: a prefix that fits, the whole name's length and hash.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Name<const N: usize> {
    present: bool,
    len: usize,
    hash: u64,
    kept: u16,
    bytes: [u8; N],
}

impl<const N: usize> Name<N> {
    const NONE: Self = Name { present: false, len: 0, hash: 0, kept: 0, bytes: [0; N] };

    fn of(text: Option<&str>) -> Self {
        let Some(text) = text else { return Self::NONE };
        let mut kept = text.len().min(N);
        while !text.is_char_boundary(kept) {
            kept -= 1;
        }
        let mut bytes = [0; N];
        bytes[..kept].copy_from_slice(&text.as_bytes()[..kept]);
        let digest = Sha256::digest(text.as_bytes());
        let hash = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
        Name { present: true, len: text.len(), hash, kept: kept as u16, bytes }
    }

    fn text(&self) -> Option<String> {
        self.present.then(|| String::from_utf8_lossy(&self.bytes[..self.kept as usize]).into_owned())
    }
}

/// What one call is counted under.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    database: u32,
    day: i32,
    tenant: Name<TENANT_BYTES>,
    version: Name<VERSION_BYTES>,
    rpc: Name<RPC_BYTES>,
}

#[derive(Clone, Copy)]
struct Entry {
    used: bool,
    key: Key,
    last_used: u64,
    calls: u64,
    errors: u64,
    total_ms: f64,
    min_ms: f64,
    max_ms: f64,
    buckets: [u32; BUCKETS],
}

impl Entry {
    const EMPTY: Entry = Entry {
        used: false,
        key: Key { database: 0, day: 0, tenant: Name::NONE, version: Name::NONE, rpc: Name::NONE },
        last_used: 0,
        calls: 0,
        errors: 0,
        total_ms: 0.0,
        min_ms: 0.0,
        max_ms: 0.0,
        buckets: [0; BUCKETS],
    };

    fn add(&mut self, ms: f64, error: bool) {
        let ms = if ms.is_finite() && ms > 0.0 { ms } else { 0.0 };
        if self.calls == 0 {
            (self.min_ms, self.max_ms) = (ms, ms);
        }
        self.calls += 1;
        self.errors += u64::from(error);
        self.total_ms += ms;
        self.min_ms = self.min_ms.min(ms);
        self.max_ms = self.max_ms.max(ms);
        let b = &mut self.buckets[bucket(ms)];
        *b = b.saturating_add(1);
    }

    /// The 95th percentile as percentile_cont computes it (position 0.95·(n-1) of the sorted
    /// durations), located in its bucket and interpolated geometrically inside it, within the
    /// smallest and largest duration seen.
    fn p95(&self) -> f64 {
        if self.calls == 0 {
            return 0.0;
        }
        let rank = 0.95 * (self.calls - 1) as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            let n = u64::from(n);
            if n > 0 && (below + n) as f64 > rank {
                let (lo, hi) = bounds(i);
                let (lo, hi) = (lo.max(self.min_ms), hi.min(self.max_ms));
                let within = if n > 1 { (rank - below as f64) / (n - 1) as f64 } else { 0.5 };
                let estimate = if lo > 0.0 { lo * (hi / lo).powf(within.clamp(0.0, 1.0)) } else { lo + (hi - lo) * within };
                return estimate.clamp(self.min_ms, self.max_ms);
            }
            below += n;
        }
        self.max_ms
    }
}

/// The histogram bucket of a duration: 0 below 0.01 ms, then one per factor of √2.
fn bucket(ms: f64) -> usize {
    if ms < FIRST_BOUND_MS {
        return 0;
    }
    let steps = (2.0 * (ms / FIRST_BOUND_MS).log2()).floor();
    (1 + steps as usize).min(BUCKETS - 1)
}

/// The durations bucket `i` holds: [lower, upper).
fn bounds(i: usize) -> (f64, f64) {
    let at = |k: usize| FIRST_BOUND_MS * 2f64.powf(k as f64 / 2.0);
    match i {
        0 => (0.0, FIRST_BOUND_MS),
        i if i == BUCKETS - 1 => (at(i - 1), f64::INFINITY),
        i => (at(i - 1), at(i)),
    }
}

/// One row as get_api_usage returns it: day (days since 2000-01-01), version, rpc, calls,
/// errors, avg_ms, p95_ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub day: i32,
    pub version: Option<String>,
    pub rpc: Option<String>,
    pub calls: i64,
    pub errors: i64,
    pub avg_ms: f64,
    pub p95_ms: f64,
}

/// What a full table did with a call.
#[derive(Debug, PartialEq, Eq)]
enum Counted {
    Yes,
    /// every key is of today: not counted
    Dropped,
}

/// The table: a fixed array searched linearly (a few hundred keys, compared by hash first).
#[derive(Clone, Copy)]
pub struct Table<const N: usize> {
    tick: u64,
    /// the last day a dropped call was reported in the server log
    warned_day: i32,
    dropped: u64,
    entries: [Entry; N],
}

impl<const N: usize> Default for Table<N> {
    fn default() -> Self {
        Table { tick: 0, warned_day: i32::MIN, dropped: 0, entries: [Entry::EMPTY; N] }
    }
}

unsafe impl<const N: usize> PGRXSharedMemory for Table<N> {}

impl<const N: usize> Table<N> {
    fn record(&mut self, key: &Key, ms: f64, error: bool) -> Counted {
        self.tick += 1;
        let tick = self.tick;
        let found = self.entries.iter().position(|e| e.used && e.key == *key);
        let slot = found.or_else(|| self.entries.iter().position(|e| !e.used)).or_else(|| {
            // the least recently used key of an earlier day gives way
            self.entries.iter().enumerate().filter(|(_, e)| e.key.day < key.day).min_by_key(|(_, e)| e.last_used).map(|(i, _)| i)
        });
        let Some(slot) = slot else {
            self.dropped += 1;
            return Counted::Dropped;
        };
        let entry = &mut self.entries[slot];
        if found.is_none() {
            *entry = Entry { used: true, key: *key, ..Entry::EMPTY };
        }
        entry.last_used = tick;
        entry.add(ms, error);
        Counted::Yes
    }

    /// The rows of one tenant of one database between two days (inclusive).
    fn rows(&self, database: u32, tenant: &Name<TENANT_BYTES>, since: i32, until: i32) -> Vec<Usage> {
        self.entries
            .iter()
            .filter(|e| e.used && e.key.database == database && e.key.tenant == *tenant && (since..=until).contains(&e.key.day))
            .map(|e| Usage {
                day: e.key.day,
                version: e.key.version.text(),
                rpc: e.key.rpc.text(),
                calls: e.calls as i64,
                errors: e.errors as i64,
                avg_ms: e.total_ms / e.calls.max(1) as f64,
                p95_ms: e.p95(),
            })
            .collect()
    }

    /// Whether a dropped call should be reported in the server log (once a day).
    fn warn_today(&mut self, day: i32) -> bool {
        let warn = self.warned_day != day;
        self.warned_day = day;
        warn
    }
}

/// Adds the unlogged counts of a day, version and rpc to the row of the log for the same key,
/// or adds a row. Calls and errors add up and the average is weighted; the p95 of the two
/// parts together is not known, so the larger of the two is given (an upper bound of it).
/// Rows only the memory has are put in order: day, version, rpc (NULLs first, names in byte
/// order).
pub fn merge(rows: &mut Vec<Usage>, unlogged: Vec<Usage>) {
    let mut added = false;
    for u in unlogged {
        match rows.iter_mut().find(|r| r.day == u.day && r.version == u.version && r.rpc == u.rpc) {
            Some(r) => {
                let calls = r.calls + u.calls;
                r.avg_ms = if calls > 0 { (r.avg_ms * r.calls as f64 + u.avg_ms * u.calls as f64) / calls as f64 } else { 0.0 };
                r.p95_ms = r.p95_ms.max(u.p95_ms);
                r.calls = calls;
                r.errors += u.errors;
            }
            None => {
                rows.push(u);
                added = true;
            }
        }
    }
    if added {
        rows.sort_by(|a, b| (a.day, &a.version, &a.rpc).cmp(&(b.day, &b.version, &b.rpc)));
    }
}

// --- the server's table, or the backend's ----------------------------------------------------

static SHARED: PgLwLock<Table<TABLE_ENTRIES>> = unsafe { PgLwLock::new(c"eventstore_unlogged_api_usage") };
static IN_SHARED_MEMORY: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LOCAL: RefCell<Box<Table<LOCAL_ENTRIES>>> = RefCell::new(Box::default());
}

/// From _PG_init: reserves the shared table when the library is preloaded.
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    pgrx::pg_shmem_init!(SHARED);
    IN_SHARED_MEMORY.store(true, Ordering::Relaxed);
}

/// Whether this transaction cannot write the request log: a hot standby, or a read-only
/// transaction (`SET TRANSACTION READ ONLY`, `default_transaction_read_only`).
pub fn read_only() -> bool {
    unsafe { pg_sys::RecoveryInProgress() || pg_sys::XactReadOnly }
}

/// One call that was not logged. Never fails.
pub struct Call<'a> {
    /// microseconds since the Unix epoch
    pub at: i64,
    pub tenant: &'a str,
    pub version: Option<&'a str>,
    pub rpc: Option<&'a str>,
    pub duration_ms: f64,
    pub status: u16,
}

/// Days between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_DAYS: i64 = 10_957;

fn day_of(unix_micros: i64) -> i32 {
    (unix_micros.div_euclid(86_400_000_000) - PG_EPOCH_DAYS).clamp(i32::MIN as i64 + 1, i32::MAX as i64 - 1) as i32
}

fn database() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Counts a call that could not be logged.
pub fn count(call: &Call<'_>) {
    let key = Key {
        database: database(),
        day: day_of(call.at),
        tenant: Name::of(Some(call.tenant)),
        version: Name::of(call.version),
        rpc: Name::of(call.rpc),
    };
    let error = call.status >= 400;
    let (counted, warn, dropped) = if IN_SHARED_MEMORY.load(Ordering::Relaxed) {
        let mut table = SHARED.exclusive();
        let counted = table.record(&key, call.duration_ms, error);
        let warn = counted == Counted::Dropped && table.warn_today(key.day);
        (counted, warn, table.dropped)
    } else {
        LOCAL.with(|t| {
            let mut table = t.borrow_mut();
            let counted = table.record(&key, call.duration_ms, error);
            let warn = counted == Counted::Dropped && table.warn_today(key.day);
            (counted, warn, table.dropped)
        })
    };
    if warn {
        let entries = if IN_SHARED_MEMORY.load(Ordering::Relaxed) { TABLE_ENTRIES } else { LOCAL_ENTRIES };
        pgrx::warning!(
            "eventstore: route_api_call usage that cannot be logged is no longer counted today: all {entries} keys of the in-memory table are in use ({dropped} calls not counted since the server started)"
        );
    }
    let _ = counted;
}

/// The unlogged counts of `tenant` in this database between two days (days since 2000-01-01,
/// inclusive; infinities as PostgreSQL stores them).
pub fn usage(tenant: &str, since: i32, until: i32) -> Vec<Usage> {
    let tenant = Name::of(Some(tenant));
    if IN_SHARED_MEMORY.load(Ordering::Relaxed) {
        SHARED.share().rows(database(), &tenant, since, until)
    } else {
        LOCAL.with(|t| t.borrow().rows(database(), &tenant, since, until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(day: i32, tenant: &str, version: Option<&str>, rpc: Option<&str>) -> Key {
        Key { database: 1, day, tenant: Name::of(Some(tenant)), version: Name::of(version), rpc: Name::of(rpc) }
    }

    #[test]
    fn buckets_are_root_two_apart() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(0.009), 0);
        assert_eq!(bucket(0.01), 1);
        assert_eq!(bucket(0.0141), 1);
        assert_eq!(bucket(0.0142), 2);
        assert_eq!(bucket(1e12), BUCKETS - 1);
        for ms in [0.005, 0.01, 0.3, 1.0, 7.5, 250.0, 9_000.0] {
            let (lo, hi) = bounds(bucket(ms));
            assert!(lo <= ms && ms < hi, "{ms} in [{lo}, {hi})");
        }
    }

    #[test]
    fn counts_calls_errors_and_durations_per_key() {
        let mut t = Table::<8>::default();
        let k = key(9000, "acme", Some("2.0"), Some("get_user"));
        for (ms, status) in [(1.0, 200), (3.0, 500), (2.0, 404)] {
            assert_eq!(t.record(&k, ms, status >= 400), Counted::Yes);
        }
        t.record(&key(9000, "acme", Some("1.0"), Some("get_user")), 5.0, false);
        t.record(&key(9000, "other", Some("2.0"), Some("get_user")), 5.0, false);
        let rows = t.rows(1, &Name::of(Some("acme")), 9000, 9000);
        assert_eq!(rows.len(), 2);
        let r = rows.iter().find(|r| r.version.as_deref() == Some("2.0")).unwrap();
        assert_eq!((r.calls, r.errors, r.avg_ms), (3, 2, 2.0));
        assert!(r.p95_ms > 2.0 && r.p95_ms <= 3.0, "{}", r.p95_ms);
        assert!(t.rows(2, &Name::of(Some("acme")), 9000, 9000).is_empty(), "another database");
        assert!(t.rows(1, &Name::of(Some("acme")), 9001, i32::MAX).is_empty(), "other days");
    }

    #[test]
    fn p95_is_exact_for_equal_durations_and_close_otherwise() {
        let mut e = Entry::EMPTY;
        for _ in 0..50 {
            e.add(4.2, false);
        }
        assert_eq!(e.p95(), 4.2);
        let mut e = Entry::EMPTY;
        let mut all: Vec<f64> = (1..=1000).map(|i| i as f64 / 10.0).collect();
        for ms in &all {
            e.add(*ms, false);
        }
        all.sort_by(f64::total_cmp);
        let exact = all[949] + 0.05 * (all[950] - all[949]);
        let p95 = e.p95();
        assert!((p95 / exact - 1.0).abs() < 0.42, "{p95} vs {exact}");
        assert!(p95 <= 100.0 && p95 >= 0.1);
        assert_eq!(Entry::EMPTY.p95(), 0.0);
    }

    #[test]
    fn long_names_are_told_apart_and_nulls_kept() {
        let long_a = format!("{}a", "t".repeat(300));
        let long_b = format!("{}b", "t".repeat(300));
        assert!(Name::<TENANT_BYTES>::of(Some(&long_a)) != Name::of(Some(&long_b)));
        assert_eq!(Name::<4>::of(Some("abcdé")).text().as_deref(), Some("abcd"));
        assert_eq!(Name::<5>::of(Some("abcdé")).text().as_deref(), Some("abcd"), "cut on a character boundary");
        assert_eq!(Name::<4>::of(None).text(), None);
        let mut t = Table::<4>::default();
        t.record(&key(1, &long_a, None, None), 1.0, true);
        assert!(t.rows(1, &Name::of(Some(&long_b)), 0, 9).is_empty());
        let rows = t.rows(1, &Name::of(Some(&long_a)), 0, 9);
        assert_eq!((rows[0].version.clone(), rows[0].rpc.clone(), rows[0].errors), (None, None, 1));
    }

    #[test]
    fn a_full_table_gives_up_old_days_first_then_drops() {
        let mut t = Table::<3>::default();
        t.record(&key(10, "a", None, Some("x")), 1.0, false);
        t.record(&key(11, "a", None, Some("y")), 1.0, false);
        t.record(&key(10, "a", None, Some("z")), 1.0, false);
        t.record(&key(10, "a", None, Some("x")), 1.0, false); // x is now the most recently used
        assert_eq!(t.record(&key(12, "a", None, Some("new")), 1.0, false), Counted::Yes);
        let rpcs = |t: &Table<3>| {
            let mut r: Vec<_> = t.rows(1, &Name::of(Some("a")), 0, 99).into_iter().map(|r| r.rpc.unwrap()).collect();
            r.sort();
            r
        };
        assert_eq!(rpcs(&t), ["new", "x", "z"], "the least recently used key of an earlier day gave way");
        t.record(&key(12, "a", None, Some("n2")), 1.0, false);
        t.record(&key(12, "a", None, Some("n3")), 1.0, false);
        assert_eq!(t.record(&key(12, "a", None, Some("n4")), 1.0, false), Counted::Dropped);
        assert_eq!(t.record(&key(12, "a", None, Some("n3")), 1.0, false), Counted::Yes, "a known key still counts");
        assert_eq!(t.dropped, 1);
        assert!(t.warn_today(12) && !t.warn_today(12) && t.warn_today(13));
    }

    #[test]
    fn merge_adds_to_logged_rows_and_keeps_the_order() {
        let row = |day, version: Option<&str>, rpc: Option<&str>, calls, errors, avg_ms, p95_ms| Usage {
            day,
            version: version.map(str::to_owned),
            rpc: rpc.map(str::to_owned),
            calls,
            errors,
            avg_ms,
            p95_ms,
        };
        let mut rows = vec![row(5, Some("1"), Some("a"), 3, 1, 2.0, 4.0), row(6, Some("1"), Some("a"), 1, 0, 1.0, 1.0)];
        merge(&mut rows, vec![row(5, Some("1"), Some("a"), 1, 1, 6.0, 6.0), row(5, None, None, 2, 2, 0.5, 0.5)]);
        assert_eq!(rows, vec![
            row(5, None, None, 2, 2, 0.5, 0.5),
            row(5, Some("1"), Some("a"), 4, 2, 3.0, 6.0),
            row(6, Some("1"), Some("a"), 1, 0, 1.0, 1.0),
        ]);
    }

    #[test]
    fn days_are_utc_days_since_2000() {
        assert_eq!(day_of(946_684_800_000_000), 0);
        assert_eq!(day_of(946_684_800_000_000 + 86_400_000_000 - 1), 0);
        assert_eq!(day_of(946_684_800_000_000 - 1), -1);
    }
}
