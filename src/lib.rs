//! eventstore: event sourcing and API versioning inside PostgreSQL.
//!
//! A table of contents: the SQL surface is in `api`, statements and plans in `store`, pure
//! logic beside them, DDL in `sql/`.

use pgrx::prelude::*;

mod api;
mod append;
mod cache;
mod calendar;
mod datum;
mod error;
mod feed;
mod guc;
mod ids;
mod input;
mod json;
mod jsonb;
mod notify;
mod runtime;
mod store;
mod tenant;
mod versioning;
mod webhooks;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

// Tables, types, indexes and triggers first; RLS, policies and grants once every function exists.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/state.sql", name = "state", requires = ["schema"]);
extension_sql_file!("../sql/downstream.sql", name = "downstream", requires = ["schema"]);
extension_sql_file!("../sql/api.sql", name = "api", requires = ["schema"]);
extension_sql_file!("../sql/webhooks.sql", name = "webhooks", requires = ["schema"]);
extension_sql_file!("../sql/message_store.sql", name = "message_store", requires = ["schema", api::admin::current_tenant, api::message_store::_write_message, api::message_store::_position_horizon]);
extension_sql_file!("../sql/security.sql", name = "security", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    cache::init();
    worker::init();
    versioning::unlogged::init();
}

/// Hooks for `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'eventstore'"]
    }
}
