//! User code (reducer handlers, projection and API handlers) runs as the role that called the
//! extension, or in the worker as the role that registered it, never as the extension's owner:
//! a handler can do no more than that role could. Where a failing handler must not fail the
//! caller (async projections, API routes) it runs in a subtransaction.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::{PgSqlErrorCode, PgTryBuilder, pg_sys};

use crate::error::{Error, Result};

/// Runs `f` as `role`, restoring the current role afterwards, error or not.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let (mut current, mut context) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut current, &mut context);
        pg_sys::SetUserIdAndSecContext(role, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    PgTryBuilder::new(AssertUnwindSafe(f))
        .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(current, context) })
        .execute()
}

/// Runs a definition's handler as the role that registered it, the way PostgreSQL runs index
/// expressions and materialized views during maintenance: a security-restricted operation (no
/// `SET ROLE`, no temporary objects, no cursors left open) in which setting changes end with
/// the call. So a superuser who reads a state or appends an event never runs another role's
/// code with superuser rights.
pub fn as_registrant<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let (mut current, mut context) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut current, &mut context);
        pg_sys::SetUserIdAndSecContext(
            role,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    PgTryBuilder::new(AssertUnwindSafe(f))
        .finally(|| unsafe {
            pg_sys::AtEOXact_GUC(false, nest);
            pg_sys::SetUserIdAndSecContext(current, context);
        })
        .execute()
}

/// Runs `f` as the role that was current outside the SECURITY DEFINER function.
pub fn as_caller<R>(f: impl FnOnce() -> R) -> R {
    as_role(unsafe { pg_sys::GetOuterUserId() }, f)
}

/// What a failed handler raised.
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// The five characters of a SQLSTATE.
fn sqlstate(code: PgSqlErrorCode) -> String {
    let packed = code as isize as i64;
    (0..5).map(|i| ((((packed >> (6 * i)) & 0x3F) as u8) + b'0') as char).collect()
}

enum Caught {
    Ours(Error),
    Raised(CaughtError),
}

/// Runs `f` in a subtransaction, as PL/pgSQL runs an exception block: on error only its work is
/// rolled back and the error comes back. A cancel (statement timeout, pg_cancel_backend) is not
/// an answer: it is raised again once the subtransaction is rolled back.
pub fn subtransaction<R>(f: impl FnOnce() -> Result<R>) -> std::result::Result<R, Failure> {
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = PgTryBuilder::new(AssertUnwindSafe(|| f().map_err(Caught::Ours)))
            .catch_others(|caught| Err(Caught::Raised(caught)))
            .execute();
        match result {
            Ok(value) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
                Ok(value)
            }
            Err(caught) => {
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
                match caught {
                    Caught::Ours(e) => Err(Failure {
                        sqlstate: "XX000".into(),
                        message: e.message,
                        detail: e.detail,
                        hint: e.hint,
                    }),
                    Caught::Raised(caught) => {
                        let report = match &caught {
                            CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e,
                            CaughtError::RustPanic { ereport, .. } => ereport,
                        };
                        if report.sql_error_code() == PgSqlErrorCode::ERRCODE_QUERY_CANCELED {
                            caught.rethrow();
                        }
                        Err(Failure {
                            sqlstate: sqlstate(report.sql_error_code()),
                            message: report.message().to_owned(),
                            detail: report.detail().map(str::to_owned),
                            hint: report.hint().map(str::to_owned),
                        })
                    }
                }
            }
        }
    }
}
