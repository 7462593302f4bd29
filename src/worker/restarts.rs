//! Restarts that come too quickly. A worker that crashes takes every backend of the server
//! with it, and the postmaster starts it again at once: one poisoned definition would restart
//! the server several times a second, for good. Each worker notes when it started (keyed by its database's oid) in a small
//! file in the data directory (shared memory does not survive the crash); a start soon after
//! the previous one waits first, twice as long each time, up to a minute. A worker that ran
//! for a while, or stopped cleanly, starts at once the next time.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgrx::pg_sys;

/// A start counts as quick when the previous one, after its own wait, ran less than this.
const STEADY: Duration = Duration::from_secs(10);
const LONGEST_WAIT: Duration = Duration::from_secs(60);

fn file(database_oid: u32) -> Option<PathBuf> {
    let dir = unsafe { pg_sys::DataDir };
    if dir.is_null() {
        return None;
    }
    let dir = unsafe { std::ffi::CStr::from_ptr(dir) }.to_string_lossy().into_owned();
    Some(PathBuf::from(dir).join("eventstore").join(format!("worker-{database_oid}.restarts")))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// (quick restarts in a row, started at ms, waited ms) as the file keeps them.
fn read(database_oid: u32) -> (u32, u64, u64) {
    let text = file(database_oid).and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
    let (quick, started, waited) = (fields.next(), fields.next(), fields.next());
    (quick.unwrap_or(0) as u32, started.unwrap_or(0), waited.unwrap_or(0))
}

fn write(database_oid: u32, quick: u32, started: u64, waited: u64) {
    let Some(path) = file(database_oid) else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // best effort: without the file a crash loop is merely not slowed down
    let _ = std::fs::write(path, format!("{quick} {started} {waited}\n"));
}

/// How long to wait before a start that comes `quick` quick restarts in a row.
pub fn wait_for(quick: u32) -> Duration {
    if quick == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1).saturating_mul(1 << (quick - 1).min(16)).min(LONGEST_WAIT)
}

/// Whether a start at `now` comes quickly after one at `started` that first waited `waited`.
pub fn is_quick(now: u64, started: u64, waited: u64) -> bool {
    started != 0 && now >= started && now - started < waited + STEADY.as_millis() as u64
}

/// Notes this start; returns the quick restarts in a row and how long to wait before working.
pub fn on_start(database_oid: u32) -> (u32, Duration) {
    let (quick, started, waited) = read(database_oid);
    let now = now_ms();
    let quick = if is_quick(now, started, waited) { quick.saturating_add(1) } else { 0 };
    let wait = wait_for(quick);
    write(database_oid, quick, now, wait.as_millis() as u64);
    (quick, wait)
}

/// A clean stop (SIGTERM): the next start is not a crash loop.
pub fn on_clean_exit(database_oid: u32) {
    write(database_oid, 0, 0, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_a_minute() {
        let waits: Vec<u64> = (0..9).map(|q| wait_for(q).as_secs()).collect();
        assert_eq!(waits, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(wait_for(u32::MAX), LONGEST_WAIT);
    }

    #[test]
    fn quick_means_soon_after_the_previous_wait() {
        assert!(!is_quick(50_000, 0, 0), "no previous start");
        assert!(is_quick(1_000 + 9_999, 1_000, 0));
        assert!(!is_quick(1_000 + 10_000, 1_000, 0), "ran ten seconds");
        assert!(is_quick(1_000 + 60_000 + 9_000, 1_000, 60_000), "the wait does not count as running");
        assert!(!is_quick(500, 1_000, 0), "a clock that went back");
    }
}
