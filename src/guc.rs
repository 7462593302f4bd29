//! Every setting of the extension, in one place. The `eventstore.` prefix is reserved, so a typo
//! in a setting name is an error rather than silence.

use std::ffi::{CStr, CString};
use std::time::Duration;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `eventstore.tenant_id`: the tenant of this session or transaction (`SET LOCAL` works behind
/// a transaction-pooling pooler). Empty means: look at the JWT claims.
static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `eventstore.tenant_claim`: the claim inside PostgREST's `request.jwt.claims` that names the
/// tenant; a dotted path such as `app_metadata.org_id` is followed. Superuser-only (set it in
/// the server configuration, or with ALTER ROLE/DATABASE ... SET).
static TENANT_CLAIM: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"tenant_id"));

/// `eventstore.require_tenant`: when on, a call without a tenant fails (42501) instead of
/// using the tenant `default`. Superuser-only, like `tenant_claim`.
static REQUIRE_TENANT: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `eventstore.redacting`: set (transaction-locally) only by the redaction functions, which run
/// as the extension owner; lets their UPDATE of eventstore.events past the append-only trigger.
/// Superuser-only, so no application role can set it.
static REDACTING: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `message_store.sql_condition`: as in Message DB, the `condition` argument of the
/// message_store read functions (SQL appended to their query, run as the caller) is refused
/// unless this is on. Anyone may set it; sql/message_store.sql reads it with current_setting().
static SQL_CONDITION: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `eventstore.database`: when set, the only database(s) the background workers serve,
/// comma-separated. Empty (the default): every database in which eventstore is installed.
static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `eventstore.max_workers`: how many databases the launcher starts workers for, at most.
static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(8);

/// `eventstore.worker_poll_interval`: how long the worker sleeps when there is nothing to do,
/// in milliseconds.
static WORKER_POLL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(200);

/// `eventstore.worker_batch_size`: events one projection applies in one transaction.
static WORKER_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);

/// `eventstore.projection_max_attempts`: failures of one event before an async projection
/// parks it and goes on.
static PROJECTION_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);

/// `eventstore.webhook_allowed_hosts`: hosts (names or addresses, comma-separated) that
/// webhooks may reach even though they are private, loopback or link-local. Config file only.
static WEBHOOK_ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `eventstore.webhook_timeout`: how long one webhook call may take, in milliseconds.
static WEBHOOK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(15_000);

/// `eventstore.webhook_max_in_flight`: endpoints called at the same time by the worker.
static WEBHOOK_MAX_IN_FLIGHT: GucSetting<i32> = GucSetting::<i32>::new(16);

/// `eventstore.webhook_batch_size`: deliveries per endpoint claimed in one round.
static WEBHOOK_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100);

/// `eventstore.max_json_depth`: how deeply payloads, metadata, states, rules, transforms and
/// schemas may nest (arrays and objects on the way to the deepest value). Superuser-only: a
/// value stored under a higher limit is an error, never a crash, and readable again when it is
/// raised.
static MAX_JSON_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(64);

/// The bounds of `eventstore.max_json_depth`: the walks over JSON stay far from the stack's end.
pub const MAX_JSON_DEPTH_RANGE: (i32, i32) = (1, 1000);

/// The bounds of the other integer settings, used both to register them and in their
/// accessors below, so a call site never restates a minimum.
const WORKER_POLL_INTERVAL_RANGE: (i32, i32) = (10, 60_000);
const MAX_WORKERS_RANGE: (i32, i32) = (1, crate::runtime::slots::MAX_WORKERS as i32);
const WORKER_BATCH_SIZE_RANGE: (i32, i32) = (1, 100_000);
const PROJECTION_MAX_ATTEMPTS_RANGE: (i32, i32) = (1, 1000);
const WEBHOOK_TIMEOUT_RANGE: (i32, i32) = (100, 300_000);
const WEBHOOK_MAX_IN_FLIGHT_RANGE: (i32, i32) = (1, 256);
const WEBHOOK_BATCH_SIZE_RANGE: (i32, i32) = (1, 10_000);

fn bounded(setting: &GucSetting<i32>, range: (i32, i32)) -> i32 {
    setting.get().clamp(range.0, range.1)
}

/// `eventstore.max_json_depth`, as a depth.
pub fn max_json_depth() -> usize {
    bounded(&MAX_JSON_DEPTH, MAX_JSON_DEPTH_RANGE) as usize
}

/// `eventstore.tenant_id`; `None` when unset or empty.
pub fn tenant_id() -> Option<String> {
    string(&TENANT_ID)
}

/// `eventstore.tenant_claim`, the dotted path of the tenant claim; `tenant_id` when empty.
pub fn tenant_claim() -> String {
    string(&TENANT_CLAIM).unwrap_or_else(|| "tenant_id".into())
}

/// `eventstore.require_tenant`.
pub fn require_tenant() -> bool {
    REQUIRE_TENANT.get()
}

/// `eventstore.worker_poll_interval`: how long an idle worker sleeps.
/// `eventstore.max_workers`: databases served at most.
pub fn max_workers() -> usize {
    bounded(&MAX_WORKERS, MAX_WORKERS_RANGE) as usize
}

pub fn worker_poll_interval() -> Duration {
    Duration::from_millis(bounded(&WORKER_POLL_INTERVAL, WORKER_POLL_INTERVAL_RANGE) as u64)
}

/// `eventstore.worker_batch_size`: events per projection transaction.
pub fn worker_batch_size() -> i32 {
    bounded(&WORKER_BATCH_SIZE, WORKER_BATCH_SIZE_RANGE)
}

/// `eventstore.projection_max_attempts`: failures of one event before it is parked.
pub fn projection_max_attempts() -> i32 {
    bounded(&PROJECTION_MAX_ATTEMPTS, PROJECTION_MAX_ATTEMPTS_RANGE)
}

/// `eventstore.webhook_allowed_hosts`, comma-separated; empty when unset.
pub fn webhook_allowed_hosts() -> String {
    string(&WEBHOOK_ALLOWED_HOSTS).unwrap_or_default()
}

/// `eventstore.webhook_timeout`: how long one webhook call may take.
pub fn webhook_timeout() -> Duration {
    Duration::from_millis(bounded(&WEBHOOK_TIMEOUT, WEBHOOK_TIMEOUT_RANGE) as u64)
}

/// `eventstore.webhook_max_in_flight`: endpoints called at the same time.
pub fn webhook_max_in_flight() -> usize {
    bounded(&WEBHOOK_MAX_IN_FLIGHT, WEBHOOK_MAX_IN_FLIGHT_RANGE) as usize
}

/// `eventstore.webhook_batch_size`: deliveries per endpoint claimed in one round.
pub fn webhook_batch_size() -> i32 {
    bounded(&WEBHOOK_BATCH_SIZE, WEBHOOK_BATCH_SIZE_RANGE)
}

pub fn init() {
    GucRegistry::define_string_guc(
        c"eventstore.tenant_id",
        c"Tenant of the current session or transaction.",
        c"When empty, the tenant comes from the JWT claim named by eventstore.tenant_claim.",
        &TENANT_ID,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"eventstore.tenant_claim",
        c"JWT claim (dotted path) in request.jwt.claims that names the tenant.",
        c"Read when eventstore.tenant_id is empty; PostgREST sets request.jwt.claims.",
        &TENANT_CLAIM,
        // a client that could change it could pick its tenant through its own claims
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"eventstore.require_tenant",
        c"Refuse calls that carry no tenant instead of using the tenant 'default'.",
        c"",
        &REQUIRE_TENANT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventstore.max_json_depth",
        c"How deeply JSON values and programs given to eventstore may nest.",
        c"Arrays and objects on the way to the deepest value; checked when a value is written.",
        &MAX_JSON_DEPTH,
        MAX_JSON_DEPTH_RANGE.0,
        MAX_JSON_DEPTH_RANGE.1,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"eventstore.redacting",
        c"Internal: set by eventstore.redact_event() while it erases a payload.",
        c"",
        &REDACTING,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL | GucFlags::NO_RESET_ALL,
    );
    GucRegistry::define_string_guc(
        c"eventstore.database",
        c"When set, the only database(s) eventstore background workers serve, comma-separated.",
        c"Empty: every database in which eventstore is installed gets a worker.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventstore.max_workers",
        c"How many databases eventstore background workers serve at most.",
        c"Each worker is one of max_worker_processes; the launcher is one more.",
        &MAX_WORKERS,
        MAX_WORKERS_RANGE.0,
        MAX_WORKERS_RANGE.1,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventstore.worker_poll_interval",
        c"How long the eventstore worker sleeps when idle.",
        c"",
        &WORKER_POLL_INTERVAL,
        WORKER_POLL_INTERVAL_RANGE.0,
        WORKER_POLL_INTERVAL_RANGE.1,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"eventstore.worker_batch_size",
        c"Events one projection applies in one worker transaction.",
        c"",
        &WORKER_BATCH_SIZE,
        WORKER_BATCH_SIZE_RANGE.0,
        WORKER_BATCH_SIZE_RANGE.1,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventstore.projection_max_attempts",
        c"Failures of one event before an async projection parks it and goes on.",
        c"",
        &PROJECTION_MAX_ATTEMPTS,
        PROJECTION_MAX_ATTEMPTS_RANGE.0,
        PROJECTION_MAX_ATTEMPTS_RANGE.1,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"eventstore.webhook_allowed_hosts",
        c"Hosts webhooks may reach although they are private, loopback or link-local.",
        c"Comma-separated names or addresses, e.g. 127.0.0.1 for tests.",
        &WEBHOOK_ALLOWED_HOSTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventstore.webhook_timeout",
        c"How long one webhook call may take.",
        c"",
        &WEBHOOK_TIMEOUT,
        WEBHOOK_TIMEOUT_RANGE.0,
        WEBHOOK_TIMEOUT_RANGE.1,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"eventstore.webhook_max_in_flight",
        c"Endpoints the worker calls at the same time.",
        c"",
        &WEBHOOK_MAX_IN_FLIGHT,
        WEBHOOK_MAX_IN_FLIGHT_RANGE.0,
        WEBHOOK_MAX_IN_FLIGHT_RANGE.1,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventstore.webhook_batch_size",
        c"Deliveries per endpoint claimed in one worker round.",
        c"",
        &WEBHOOK_BATCH_SIZE,
        WEBHOOK_BATCH_SIZE_RANGE.0,
        WEBHOOK_BATCH_SIZE_RANGE.1,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"message_store.sql_condition",
        c"Allow the condition argument of the Message DB read functions.",
        c"Off by default, as in Message DB: a condition is SQL text added to the query.",
        &SQL_CONDITION,
        GucContext::Userset,
        GucFlags::default(),
    );
    reserve_prefix(c"eventstore");
}

/// Whether `condition` is allowed in the Message DB read functions.
#[allow(dead_code)] // read in SQL (sql/message_store.sql), where Message DB reads it
pub fn sql_condition() -> bool {
    SQL_CONDITION.get()
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
fn reserve_prefix(prefix: &CStr) {
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(prefix.as_ptr()) }
}

#[cfg(any(feature = "pg13", feature = "pg14"))]
fn reserve_prefix(prefix: &CStr) {
    unsafe { pgrx::pg_sys::EmitWarningsOnPlaceholders(prefix.as_ptr()) }
}

/// A string setting as text; `None` when unset or empty.
fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|s| s.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
}

/// Any setting by name, including placeholders that other software defines (PostgREST's
/// `request.*`); `None` when unset or empty.
pub fn by_name(name: &CStr) -> Option<String> {
    let value = unsafe { pgrx::pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    let value = unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned();
    (!value.is_empty()).then_some(value)
}

/// The databases the worker serves, from `eventstore.database`.
pub fn databases() -> Vec<String> {
    string(&DATABASE)
        .unwrap_or_default()
        .split(',')
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .collect()
}

/// `set_config(name, value, true)`: a setting for the rest of the transaction (like `SET
/// LOCAL`), e.g. `response.status` for PostgREST.
pub fn set_local(name: &CStr, value: &str) {
    let Ok(value) = CString::new(value) else { return };
    unsafe {
        pgrx::pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pgrx::pg_sys::GucContext::PGC_USERSET,
            pgrx::pg_sys::GucSource::PGC_S_SESSION,
            pgrx::pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}
