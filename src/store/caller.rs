//! User code (reducer handlers, projection and API handlers) runs as the role that called the
//! extension, not as the extension's owner: the SECURITY DEFINER functions switch back to the
//! outer role around it, so a handler can do no more than its caller could.

use std::panic::AssertUnwindSafe;

use pgrx::PgTryBuilder;
use pgrx::pg_sys;

/// Runs `f` as the role that was current outside the SECURITY DEFINER function.
pub fn as_caller<R>(f: impl FnOnce() -> R) -> R {
    let (mut owner, mut context) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut owner, &mut context);
        let caller = pg_sys::GetOuterUserId();
        pg_sys::SetUserIdAndSecContext(caller, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    PgTryBuilder::new(AssertUnwindSafe(f))
        .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(owner, context) })
        .execute()
}
