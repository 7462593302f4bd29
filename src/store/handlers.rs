//! User functions registered as handlers (reducers, projections and their reset functions, API
//! routes): the one check made when one is registered, and the one error when one has gone.

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::pg_sys::{self, Oid};
use pgrx::spi::SpiClient;

use super::plans::{Statement, run};
use crate::datum::RegProcedure;
use crate::error::{Error, Kind, Result};

/// The name of the handler in column `$col`, as SQL that can call it, or NULL when the function
/// was dropped since (a bare `::regproc::text` would give its oid, which parses as a number).
macro_rules! handler_name {
    ($col:literal) => {
        concat!("(SELECT h.oid::regproc::text FROM pg_catalog.pg_proc h WHERE h.oid = ", $col, ")")
    };
}
pub(crate) use handler_name;

/// What a kind of handler must look like.
pub struct Shape {
    /// the argument types, in order, as `regtype` text
    pub args: &'static [&'static str],
    /// the result type as `regtype` text; `None`: any (the result is ignored)
    pub returns: Option<&'static str>,
    /// what the hint says such a handler is
    pub hint: &'static str,
}

pub const REDUCER: Shape = Shape {
    args: &["jsonb", "eventstore.event"],
    returns: Some("jsonb"),
    hint: "A reducer handler is a function (state jsonb, event eventstore.event) RETURNS jsonb.",
};
pub const PROJECTION: Shape = Shape {
    args: &["eventstore.event"],
    returns: None,
    hint: "a projection handler is a function (event eventstore.event); its result is ignored.",
};
pub const RESET: Shape = Shape {
    args: &[],
    returns: None,
    hint: "a reset function takes no arguments; its result is ignored.",
};
pub const API_ROUTE: Shape = Shape {
    args: &["jsonb"],
    returns: Some("jsonb"),
    hint: "An API handler is a function (payload jsonb) RETURNS jsonb.",
};

/// Why a function cannot be a handler of a shape, or NULL when it can.
static PROBLEM: Statement = Statement {
    sql: "SELECT CASE
                   WHEN p.prokind <> 'f' THEN 'is not a plain function'
                   WHEN p.proretset THEN 'returns a set'
                   WHEN n.nspname LIKE 'pg\\_temp\\_%' OR n.nspname LIKE 'pg\\_toast\\_temp\\_%'
                     THEN 'lives in a temporary schema'
                   -- oidvector counts from 0: compare as lists, not as arrays with their bounds
                   WHEN array_to_string(p.proargtypes::oid[], ',') <> array_to_string($2::regtype[]::oid[], ',')
                     THEN 'takes (' || pg_get_function_identity_arguments(p.oid) || ')'
                   WHEN $3::regtype IS NOT NULL AND p.prorettype <> $3::regtype
                     THEN 'returns ' || format_type(p.prorettype, NULL)
                 END,
                 p.oid::regprocedure::text
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE p.oid = $1",
    args: &[OIDOID, TEXTARRAYOID, TEXTOID],
    volatile: false,
};

/// 22023 unless `handler` has the `shape`, exists in a permanent schema and is a plain function.
/// `context` (an rpc and version, say) goes into DETAIL.
pub fn check(client: &SpiClient<'_>, handler: RegProcedure, shape: &Shape, context: Option<String>) -> Result<()> {
    let args: Vec<String> = shape.args.iter().map(|a| (*a).to_owned()).collect();
    let table = run(client, &PROBLEM, &[handler.0.into(), args.into(), shape.returns.into()])?;
    if table.is_empty() {
        return Err(Error::invalid("handler does not exist").detail(format!("no function with oid {}", handler.0)));
    }
    let row = table.first();
    let Some(problem) = row.get::<String>(1)? else { return Ok(()) };
    let name: String = row.get(2)?.unwrap_or_default();
    let hint = if problem == "lives in a temporary schema" {
        "A handler is used by other sessions and after this one ends: create it in a permanent schema."
    } else {
        shape.hint
    };
    let mut error = Error::invalid(format!("handler {name} {problem}")).hint(hint);
    if let Some(context) = context {
        error = error.detail(context);
    }
    Err(error)
}

/// 42883: the handler of `what` was dropped after it was registered.
pub fn missing(what: &str, oid: Option<Oid>) -> Error {
    let oid = oid.map_or(String::from("unknown"), |o| o.to_u32().to_string());
    Error::new(Kind::HandlerMissing, format!("the handler of {what} no longer exists"))
        .detail(format!("function oid {oid}"))
        .hint("Create the function again, or register the definition again with an existing handler.")
}

/// `name` of a handler read with `handler_name!`, or 42883 when it has gone.
pub fn callable(name: Option<String>, what: &str, oid: Option<pg_sys::Oid>) -> Result<String> {
    name.ok_or_else(|| missing(what, oid))
}
