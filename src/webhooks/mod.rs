//! Webhooks in the Standard Webhooks format: signing and secrets, address
//! checks and retry schedules are pure and tested with plain #[test]s; `http` makes one call;
//! `deliver` is the worker's part: claim, call outside any transaction, record.

pub mod address;
pub mod deliver;
pub mod http;
pub mod schedule;
pub mod signing;
