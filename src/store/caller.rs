//! User code (reducer handlers, projection and API handlers) runs as the role that called the
//! extension, or in the worker as the role that registered it, never as the extension's owner:
//! a handler can do no more than that role could.

use std::panic::AssertUnwindSafe;

use pgrx::PgTryBuilder;
use pgrx::pg_sys;

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

/// Runs `f` as the role that was current outside the SECURITY DEFINER function.
pub fn as_caller<R>(f: impl FnOnce() -> R) -> R {
    as_role(unsafe { pg_sys::GetOuterUserId() }, f)
}
