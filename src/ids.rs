//! Ids the extension makes: UUIDv7 (time-ordered, so the unique index on event ids grows at its
//! right edge). The 74 random bits come from the operating system's random source (as uuid's own
//! `now_v7` does), drawn 4 KiB at a time per backend instead of one system call per id.

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
            // fails only when the system has no random source at all
            getrandom::fill(bytes).expect("eventstore: no random source for UUIDs");
            *used = 0;
        }
        random.copy_from_slice(&bytes[*used..*used + RANDOM_BYTES]);
        *used += RANDOM_BYTES;
    });
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}
