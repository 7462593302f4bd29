//! Ids the extension makes: UUIDv7 (time-ordered, so the unique index on event ids grows at its
//! right edge). The 74 random bits come from PostgreSQL's strong random source, drawn 4 KiB at a
//! time per backend instead of one system call per id.

use std::cell::RefCell;

use uuid::Uuid;

const POOL: usize = 4096;

thread_local! {
    /// random bytes not yet used, and where the unused ones start
    static RANDOM: RefCell<([u8; POOL], usize)> = const { RefCell::new(([0; POOL], POOL)) };
}

/// A new UUIDv7 for now.
pub fn new_v7() -> Uuid {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    const RANDOM_BYTES: usize = 10;
    let mut random = [0u8; RANDOM_BYTES];
    RANDOM.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used + RANDOM_BYTES > POOL {
            // SAFETY: fills exactly the buffer given; it raises an ERROR only when the
            // server has no random source at all, as gen_random_uuid() would
            if !unsafe { pgrx::pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), POOL) } {
                pgrx::error!("eventstore: could not generate random bytes for a UUID");
            }
            *used = 0;
        }
        random.copy_from_slice(&bytes[*used..*used + RANDOM_BYTES]);
        *used += RANDOM_BYTES;
    });
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}
