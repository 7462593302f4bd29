//! In-database tests of internals (`cargo pgrx test`). Behaviour that needs commits or several
//! sessions is tested from a client in tests/client.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn append_then_read_back() {
        let v = Spi::get_one::<i64>(
            "SELECT (eventstore.append_event('order', 'o1', 'created', '{\"a\":1}')).aggregate_version",
        );
        assert_eq!(v, Ok(Some(1)));
    }
}
