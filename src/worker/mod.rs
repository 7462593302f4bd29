//! The background workers, registered only when the library is in `shared_preload_libraries`:
//! the launcher (`launcher.rs`) starts one worker per database that has eventstore. A worker
//! sends the notifications appenders left, applies async projections (`projections.rs`) and
//! delivers webhooks (`delivery.rs`); each step is its own short transaction, and a
//! failing step is logged and recorded, never the end of the loop. SIGHUP reloads the settings,
//! SIGTERM ends it promptly; the launcher starts it again after it stopped, and a worker that
//! keeps crashing backs off (`restarts.rs`).

mod delivery;
mod launcher;
mod projections;
mod restarts;
mod utility;

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::error::{Error, Result};
use crate::guc;
use crate::runtime::{self, notices, slots, transaction};

/// From _PG_init: shared memory, the launcher and the utility hook, when preloaded.
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    runtime::init();
    launcher::register();
    utility::install();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventstore_worker_main(arg: pg_sys::Datum) {
    let slot = unsafe { i32::from_datum(arg, false) }.unwrap_or(0) as usize;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database_oid = pg_sys::Oid::from(BackgroundWorker::get_extra().parse::<u32>().unwrap_or(0));
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database_oid), None);
    slots::started(slot);
    // a worker that keeps crashing (and with it, every backend of the server) waits longer
    // each time before it works again
    let (quick, wait) = restarts::on_start(database_oid.to_u32());
    if !wait.is_zero() {
        let message = format!("backing off {} s after {quick} quick restarts", wait.as_secs());
        warning!("eventstore worker for the database with oid {database_oid}: {message}");
        slots::backing_off(slot, &message, wait);
        let until = std::time::Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
            if !BackgroundWorker::wait_latch(Some(left.min(Duration::from_secs(1)))) {
                stop(slot);
                unsafe { pg_sys::proc_exit(1) };
            }
        }
        slots::backed_off(slot);
    }
    // the database's name needs the catalog, so a transaction
    let found = transaction(slot, "looking for eventstore", || Ok((crate::store::admin::installed()?, runtime::current_database())));
    let Some((true, database)) = found else {
        // the launcher leaves this database alone until eventstore is created in it
        slots::absent(slot);
        slots::stopped(slot);
        restarts::on_clean_exit(database_oid.to_u32());
        unsafe { pg_sys::proc_exit(0) };
    };
    notices::open(slot, database_oid);
    log!("eventstore worker started for database \"{database}\"");
    delivery::release_leases(slot);
    let mut idle = false;
    let mut last_round = std::time::Instant::now();
    // a rate-limited webhook endpoint's next turn
    let mut next_turn: Option<std::time::Instant> = None;
    // the first round delivers whatever is due (None: no round has yet)
    let mut last_delivery: Option<std::time::Instant> = None;
    let mut more_deliveries = false;
    loop {
        // an idle worker sleeps until a committer wakes it (only then: notices.rs) or the
        // poll interval passes (retries that come due, work of other kinds)
        let poll = match next_turn.map(|t| t.saturating_duration_since(std::time::Instant::now())) {
            Some(turn) => turn.min(guc::worker_poll_interval()),
            None => guc::worker_poll_interval(),
        };
        let wait = if idle && notices::going_to_sleep(slot) { poll } else { Duration::ZERO };
        let mut alive = BackgroundWorker::wait_latch(Some(wait));
        notices::awake(slot);
        // woken soon after its last round: the commits of the next moments join this round
        // (committers do not signal a worker that is awake), so a busy database gets at most
        // one round per COALESCE, not one per commit
        if alive && idle {
            if let Some(rest) = COALESCE.checked_sub(last_round.elapsed()).filter(|d| !d.is_zero()) {
                alive = BackgroundWorker::wait_latch(Some(rest));
            }
        }
        if !alive {
            break;
        }
        last_round = std::time::Instant::now();
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // one short transaction decides what this round has to do (cached: an idle round
        // runs no query but the extension check) and sends what appenders left to notify
        let Some(work) = transaction(slot, "looking for work", || look_for_work(slot)) else {
            idle = true;
            continue;
        };
        if !work.installed {
            log!("eventstore worker for database \"{database}\": eventstore was dropped, exiting");
            slots::absent(slot);
            break;
        }
        let applied = if work.projections { projections::round(slot) } else { projections::Outcome::default() };
        // deliveries come from appends of a tenant with endpoints (the notices say which), or are
        // due by time (retries, queued by hand, a rate-limited endpoint's next turn)
        let due = work.noticed_endpoints
            || more_deliveries
            || last_delivery.is_none_or(|t| t.elapsed() >= guc::worker_poll_interval())
            || next_turn.is_some_and(|t| t <= std::time::Instant::now());
        let delivered = if work.webhooks && due {
            last_delivery = Some(std::time::Instant::now());
            delivery::round(slot)
        } else {
            delivery::Round { next_turn, ..Default::default() }
        };
        more_deliveries = delivered.more;
        next_turn = delivered.next_turn;
        slots::ran(slot, applied.applied + delivered.attempted);
        idle = !applied.more && !delivered.more;
    }
    stop(slot);
    restarts::on_clean_exit(database_oid.to_u32());
    log!("eventstore worker for database \"{database}\" is exiting");
    unsafe { pg_sys::proc_exit(0) };
}

/// The shortest time between two rounds that committers asked for: what a notification, a
/// webhook or an async projection may wait at most on top of the round itself, under load.
const COALESCE: Duration = Duration::from_millis(5);

fn stop(slot: usize) {
    notices::close(slot);
    slots::stopped(slot);
}

/// What a round has to do.
struct Work {
    installed: bool,
    projections: bool,
    webhooks: bool,
    /// the notices name a tenant that has enabled endpoints
    noticed_endpoints: bool,
}

/// Sends the notifications appenders left (see src/notify.rs) and says whether there are async
/// projections or webhook endpoints to serve (per-backend caches, dropped when they change).
fn look_for_work(slot: usize) -> Result<Work> {
    // the notifications are the only thing this transaction writes (NOTIFY takes a
    // transaction id): its commit need not wait for a WAL flush, whatever the server's setting
    guc::set_local(c"synchronous_commit", "off");
    let taken = notices::take(slot);
    if !crate::store::admin::installed()? {
        return Ok(Work { installed: false, projections: false, webhooks: false, noticed_endpoints: false });
    }
    if !taken.notices.is_empty() || taken.overflowed {
        // when notes were lost, this is all that is said: something changed, somewhere
        crate::store::admin::notify(crate::notify::CHANNEL, crate::notify::SHARED_PAYLOAD)?;
    }
    for (tenant, types) in &taken.notices {
        // a schema not yet updated to 0.2.0 has no channels of its own: the shared one said it
        let Ok(channel) = crate::notify::channel(tenant) else { continue };
        crate::store::admin::notify(&channel, &crate::notify::payload(types.as_deref()))?;
    }
    let webhooks = crate::store::webhook_queue::any_endpoint()?;
    let mut noticed_endpoints = taken.overflowed;
    if webhooks && !noticed_endpoints {
        for (tenant, _) in &taken.notices {
            noticed_endpoints |= crate::store::webhook_queue::tenant_has_endpoints(tenant)?;
        }
    }
    Ok::<_, Error>(Work { installed: true, projections: crate::store::projections::any_async()?, webhooks, noticed_endpoints })
}
