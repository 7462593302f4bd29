//! Hot statements are prepared once per backend and kept (SPI_keepplan); PostgreSQL's plan
//! cache revalidates them after DDL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::PgOid;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid as PgBuiltInOids;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};

use crate::error::Result;

/// One statement of the store: its text, parameter types, and whether it is volatile (writes,
/// locks, or must see what committed while it waited): those run with a fresh snapshot, the
/// others with the caller's.
pub struct Statement {
    pub sql: &'static str,
    pub args: &'static [PgBuiltInOids],
    pub volatile: bool,
}

thread_local! {
    static KEPT: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

fn kept(client: &SpiClient<'_>, stmt: &'static Statement) -> Result<Rc<OwnedPreparedStatement>> {
    // a statement is a `static`, so its address names it
    let key = stmt as *const Statement as usize;
    if let Some(plan) = KEPT.with(|k| k.borrow().get(&key).cloned()) {
        return Ok(plan);
    }
    let args: Vec<PgOid> = stmt.args.iter().map(|oid| PgOid::BuiltIn(*oid)).collect();
    let plan = if stmt.volatile { client.prepare_mut(stmt.sql, &args)? } else { client.prepare(stmt.sql, &args)? };
    let plan = Rc::new(plan.keep());
    KEPT.with(|k| k.borrow_mut().insert(key, plan.clone()));
    Ok(plan)
}

/// Runs a kept statement. `SpiClient::update` is not used: it assigns a transaction id up
/// front, which would make every reader hold back the feed.
pub fn run<'conn>(
    client: &SpiClient<'conn>,
    stmt: &'static Statement,
    args: &[DatumWithOid<'_>],
) -> Result<SpiTupleTable<'conn>> {
    let plan = kept(client, stmt)?;
    Ok(client.select(&*plan, None, args)?)
}

/// Opens a cursor on a kept statement, for results read in batches.
pub fn open_cursor<'conn>(
    client: &SpiClient<'conn>,
    stmt: &'static Statement,
    args: &[DatumWithOid<'_>],
) -> Result<pgrx::spi::SpiCursor<'conn>> {
    let plan = kept(client, stmt)?;
    Ok(client.try_open_cursor(&*plan, args)?)
}

thread_local! {
    static KEPT_DYNAMIC: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Runs a statement built at run time (a call of a user's handler), kept by its text.
pub fn run_dynamic<'conn>(
    client: &SpiClient<'conn>,
    sql: &str,
    arg_types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> Result<SpiTupleTable<'conn>> {
    let plan = match KEPT_DYNAMIC.with(|k| k.borrow().get(sql).cloned()) {
        Some(plan) => plan,
        None => {
            let plan = Rc::new(client.prepare_mut(sql, arg_types)?.keep());
            KEPT_DYNAMIC.with(|k| k.borrow_mut().insert(sql.to_owned(), plan.clone()));
            plan
        }
    };
    Ok(client.select(&*plan, None, args)?)
}

/// Runs a kept statement of the feed or a stream: their right plan is an ordered walk of an
/// index, whatever the table's statistics say (a table that has not been analyzed yet, or has
/// grown much since, would otherwise get a scan of everything after the cursor and a sort on
/// every page). The planner is told so while the statement is planned and run; its plan is
/// then the same for every cursor and filter, so it is planned once (generic).
pub fn run_ordered<'conn>(
    client: &SpiClient<'conn>,
    stmt: &'static Statement,
    args: &[DatumWithOid<'_>],
) -> Result<SpiTupleTable<'conn>> {
    run_with(client, stmt, args, &[
        (c"enable_seqscan", c"off"),
        (c"enable_bitmapscan", c"off"),
        (c"enable_sort", c"off"),
        (c"plan_cache_mode", c"force_generic_plan"),
    ])
}

/// Runs a kept statement with its generic plan, always. PostgreSQL plans a statement anew for
/// its parameters (a custom plan) as long as the generic plan's estimate is worse, and for a
/// parameter that is an array (`= ANY ($1)`) it stays worse: planned again on every run, a
/// one-row statement costs several times its execution. For statements whose plan does not
/// depend on the values.
pub fn run_generic<'conn>(
    client: &SpiClient<'conn>,
    stmt: &'static Statement,
    args: &[DatumWithOid<'_>],
) -> Result<SpiTupleTable<'conn>> {
    run_with(client, stmt, args, &[(c"plan_cache_mode", c"force_generic_plan")])
}

/// Runs a kept statement with planner settings in force while it is planned and run.
fn run_with<'conn>(
    client: &SpiClient<'conn>,
    stmt: &'static Statement,
    args: &[DatumWithOid<'_>],
    settings: &[(&std::ffi::CStr, &std::ffi::CStr)],
) -> Result<SpiTupleTable<'conn>> {
    use pgrx::pg_sys;
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in settings {
        unsafe {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
    let result = run(client, stmt, args);
    // on an error the (sub)transaction's abort puts the settings back
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    result
}
