//! Webhooks in the Standard Webhooks format: signing and secrets, address checks, retry
//! schedules and the frozen body of an event just appended are pure and tested with plain #[test]s; `http` makes one call. The SQL surface is
//! src/api/webhooks.rs, the statements src/store/webhook_queue.rs and
//! src/store/webhook_delivery.rs, and the worker's delivery rounds src/worker/delivery.rs.

pub mod address;
pub mod body;
pub mod http;
pub mod schedule;
pub mod signing;
