//! Per-backend caches of definitions (aggregates, reducers, event schemas, upcasters). A
//! `register_*`/`define_*` call sends a relcache invalidation for its definition table; when any
//! backend commits one, every backend's caches start over.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

use pgrx::pg_sys;

use crate::error::Result;

/// The definition tables whose changes invalidate the caches.
const WATCHED_TABLES: [&std::ffi::CStr; 11] =
    [c"aggregates", c"reducers", c"event_schemas", c"upcasters", c"projections", c"webhook_endpoints",
     c"api_versions", c"api_routes", c"api_changes", c"active_api_version", c"pinned_roles"];

thread_local! {
    static GENERATION: Cell<u64> = const { Cell::new(1) };
    static WATCHED: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
}

/// Registered once per backend, from _PG_init. A changed function body (a reducer handler
/// replaced with CREATE OR REPLACE) counts too: it changes the reducers' hash.
pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_invalidation), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(pg_sys::SysCacheIdentifier::PROCOID as i32, Some(on_function_change), pg_sys::Datum::from(0));
    }
}

unsafe extern "C-unwind" fn on_function_change(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    GENERATION.with(|g| g.set(g.get() + 1));
}

unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // no catalog access allowed here: compare with the OIDs resolved when the caches filled
    let ours = WATCHED.with(|w| match w.try_borrow() {
        Ok(w) => relid == pg_sys::InvalidOid || w.is_empty() || w.contains(&relid),
        Err(_) => true,
    });
    if ours {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
}

/// The oid of table `eventstore.<name>`; InvalidOid when it does not exist (also: a schema of
/// an earlier version, before ALTER EXTENSION UPDATE added it).
pub fn table_oid(name: &std::ffi::CStr) -> pg_sys::Oid {
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"eventstore".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_relname_relid(name.as_ptr(), namespace)
    }
}

/// Tells every backend, when this transaction commits, that the definitions in `table` changed.
pub fn invalidate(table: &std::ffi::CStr) {
    let oid = table_oid(table);
    if oid != pg_sys::InvalidOid {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    }
    // this backend's own caches must not serve the old definition for the rest of the transaction
    GENERATION.with(|g| g.set(g.get() + 1));
}

/// A memo of loaded definitions, emptied whenever the definitions change.
pub struct Memo<K, V> {
    generation: Cell<u64>,
    entries: RefCell<HashMap<K, Rc<V>>>,
}

impl<K: Eq + Hash + Clone, V> Memo<K, V> {
    pub fn new() -> Self {
        Memo { generation: Cell::new(0), entries: RefCell::new(HashMap::new()) }
    }

    /// The cached value for `key`, loading it (from the database) when absent or stale.
    pub fn get(&self, key: &K, load: impl FnOnce() -> Result<V>) -> Result<Rc<V>> {
        let current = GENERATION.with(Cell::get);
        if self.generation.get() != current {
            self.entries.borrow_mut().clear();
            self.generation.set(current);
            // resolve first: the lookups may run invalidation callbacks, which read WATCHED
            let oids: Vec<pg_sys::Oid> = WATCHED_TABLES.iter().map(|t| table_oid(t)).collect();
            WATCHED.with(|w| *w.borrow_mut() = oids);
        }
        if let Some(hit) = self.entries.borrow().get(key) {
            return Ok(hit.clone());
        }
        let value = Rc::new(load()?);
        // a load that raced an invalidation is served once but not kept
        if GENERATION.with(Cell::get) == current {
            self.entries.borrow_mut().insert(key.clone(), value.clone());
        }
        Ok(value)
    }
}
