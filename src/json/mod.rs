//! The JSON engine: dotted paths, RFC 7396 merge patch (forwards, and composed newest first for
//! a replay read backwards), and the two kinds of declarative program
//! (see docs/architecture.md, "JSON programs"): reducer rules (how an event changes an aggregate's state) and transforms
//! (how a payload, request or response is reshaped between versions). Pure Rust on serde_json,
//! without Postgres, so it is tested with plain `#[test]`s; a program is checked once, when it is
//! compiled at registration, and running it never fails.

// Wired in by the state and versioning code; until then parts are unused.
#![allow(dead_code, unused_imports)]

mod error;
pub mod limits;
mod merge;
pub mod path;
#[cfg(any(test, feature = "pg_test"))]
pub mod random;
mod reducer;
mod step;
mod transform;
mod underlay;

pub use error::ProgramError;
pub use merge::merge_patch;
pub use path::Path;
pub use reducer::{ReducerProgram, default_reduce};
pub use transform::TransformProgram;
pub use underlay::{Patch, Underlay};
