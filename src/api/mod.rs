//! The SQL surface: thin, typed #[pg_extern] functions, one file per area. Each validates its
//! arguments, resolves the tenant and hands over to the store.

pub mod admin;
pub mod append;
pub mod compat;
pub mod evolution;
pub mod gdpr;
pub mod message_store;
pub mod projections;
pub mod read;
pub mod state;
pub mod subscriptions;
pub mod versioning;
pub mod webhooks;

use crate::error::Result;
use crate::store::Stream;
use crate::{input, tenant};

/// The current tenant's stream named by the arguments, validated.
pub(crate) fn stream(aggregate_type: Option<&str>, aggregate_id: Option<&str>) -> Result<Stream> {
    Ok(Stream {
        aggregate_type: input::name("aggregate_type", aggregate_type)?,
        aggregate_id: input::name("aggregate_id", aggregate_id)?,
        tenant: tenant::current()?,
    })
}
