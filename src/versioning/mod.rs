//! API versioning without Postgres: semantic versions, the HTTP details of
//! PostgREST (request headers, `Accept`, response headers, dates), and the routing decision of
//! route_api_call. Tested with plain `#[test]`s; the SQL side is in src/store/versioning.rs.
//! `unlogged` counts the calls that cannot be logged (read-only, hot standby) in memory.

pub mod async_log;
pub mod call;
pub mod http;
pub mod route;
pub mod semver;
pub mod unlogged;
