//! In-database tests of internals (`cargo pgrx test`). Behaviour that needs commits or several
//! sessions is tested from a client in tests/client; the SQL surface in tests/pg_regress.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::feed::Cursor;

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql).expect("query failed").expect("query returned NULL")
    }

    #[pg_test]
    fn cursors_written_by_sql_parse_in_rust_in_feed_order() {
        Spi::run("SELECT eventstore.append_events('a', '1', '[{\"event_type\":\"x\",\"payload\":{}},{\"event_type\":\"y\",\"payload\":{}}]')").unwrap();
        // the events of this open transaction are not in the feed yet: build cursors the way
        // READ_ALL does, from the stored rows
        let cursors: Vec<(String, i64, String)> = Spi::connect(|c| {
            c.select(
                "SELECT lpad(to_hex(transaction_id::text::bigint), 16, '0') || '-' || lpad(to_hex(global_position), 16, '0'),
                        global_position, transaction_id::text
                 FROM eventstore.events ORDER BY transaction_id, global_position",
                None,
                &[],
            )
            .unwrap()
            .map(|r| (r.get(1).unwrap().unwrap(), r.get(2).unwrap().unwrap(), r.get(3).unwrap().unwrap()))
            .collect()
        });
        assert_eq!(cursors.len(), 2);
        for (text, position, xid) in &cursors {
            let cursor = Cursor::parse(text).unwrap();
            assert_eq!(cursor.position, *position);
            assert_eq!(cursor.transaction_id.to_string(), *xid);
            assert_eq!(cursor.to_string(), *text);
        }
        assert!(Cursor::parse(&cursors[0].0).unwrap() < Cursor::parse(&cursors[1].0).unwrap());
    }

    #[pg_test]
    fn readers_never_take_a_transaction_id() {
        // a reader with an xid would hold back every feed reader until it ends
        // (Spi::run would take one itself, so the reads go through `select`)
        let xid = Spi::connect(|c| {
            for sql in [
                "SELECT * FROM eventstore.read_stream('a', '1')",
                "SELECT * FROM eventstore.read_all()",
                "SELECT eventstore.stream_version('a', '1')",
                "SELECT eventstore.get_event_store_stats()",
                "SELECT eventstore.feed_lag()",
            ] {
                c.select(sql, None, &[]).unwrap();
            }
            c.select("SELECT pg_current_xact_id_if_assigned()::text", None, &[]).unwrap().first().get_one::<String>().unwrap()
        });
        assert_eq!(xid, None);
    }

    #[pg_test]
    fn a_full_batch_gets_consecutive_versions_and_increasing_positions() {
        // positions only increase with the version: tests running beside this one draw from the
        // same sequence
        let sql = "SELECT count(*) FROM eventstore.append_events('big', '1',
                     (SELECT jsonb_agg(jsonb_build_object('event_type', 'n', 'payload', jsonb_build_object('i', i)))
                      FROM generate_series(1, 10000) i))";
        assert_eq!(one::<i64>(sql), 10_000);
        assert_eq!(one::<i64>("SELECT eventstore.stream_version('big', '1')"), 10_000);
        let gaps = "SELECT count(*) FROM (SELECT aggregate_version - lag(aggregate_version) OVER w AS dv,
                                                 global_position - lag(global_position) OVER w AS dp
                                          FROM eventstore.events WHERE aggregate_id = '1' AND aggregate_type = 'big'
                                          WINDOW w AS (ORDER BY aggregate_version)) t WHERE dv <> 1 OR dp < 1";
        assert_eq!(one::<i64>(gaps), 0);
        assert_eq!(one::<i64>("SELECT count(*) FROM eventstore.events WHERE aggregate_type = 'big' AND (payload->>'i')::bigint = aggregate_version"), 10_000);
    }

    #[pg_test]
    fn lifted_metadata_lands_in_columns() {
        Spi::run(
            "SELECT eventstore.append_event('a', '2', 't', '{}',
               '{\"correlation_id\":\"0b7d1d1e-6a1c-4a53-9b7c-0e6f3a8b9c10\",\"causation_id\":\"1b7d1d1e-6a1c-4a53-9b7c-0e6f3a8b9c10\",
                 \"actor\":\"ann\",\"occurred_at\":\"2020-01-02T03:04:05+02:00\"}')",
        )
        .unwrap();
        let row = "SELECT correlation_id::text || causation_id::text || actor || (occurred_at AT TIME ZONE 'UTC')::text
                   FROM eventstore.events WHERE aggregate_id = '2'";
        assert_eq!(
            one::<String>(row),
            "0b7d1d1e-6a1c-4a53-9b7c-0e6f3a8b9c101b7d1d1e-6a1c-4a53-9b7c-0e6f3a8b9c10ann2020-01-02 01:04:05"
        );
    }

    #[pg_test]
    fn the_tenant_follows_settings_and_claims() {
        assert_eq!(one::<String>("SELECT eventstore.current_tenant()"), "default");
        Spi::run("SELECT set_config('request.jwt.claims', '{\"org\":{\"id\":7}}', true)").unwrap();
        Spi::run("SET LOCAL eventstore.tenant_claim = 'org.id'").unwrap();
        assert_eq!(one::<String>("SELECT eventstore.current_tenant()"), "7");
        Spi::run("SET LOCAL eventstore.tenant_id = 't1'").unwrap();
        assert_eq!(one::<String>("SELECT eventstore.current_tenant()"), "t1");
        Spi::run("SELECT eventstore.append_event('a', '3', 't', '{}')").unwrap();
        assert_eq!(one::<String>("SELECT tenant_id FROM eventstore.events WHERE aggregate_id = '3'"), "t1");
    }

    #[pg_test(error = "request.jwt.claims is not valid JSON")]
    fn malformed_claims_are_refused() {
        Spi::run("SELECT set_config('request.jwt.claims', '{oops', true)").unwrap();
        Spi::run("SELECT eventstore.current_tenant()").unwrap();
    }

    #[pg_test(error = "wrong expected version for stream a/4")]
    fn a_stale_expected_version_is_refused() {
        Spi::run("SELECT eventstore.append_event('a', '4', 't', '{}')").unwrap();
        Spi::run("SELECT eventstore.append_event('a', '4', 't', '{}', expected_version => 0)").unwrap();
    }

    /// A replay of an undefined aggregate type reads newest first and converts only what it
    /// keeps (src/json/underlay.rs, the jsonb reader in src/jsonb.rs); it must give what folding
    /// every stored payload oldest first gives. Random streams: objects of up to 40 members
    /// (past the 32 entries after which a jsonb container stores offsets), nesting, nulls,
    /// arrays, numerics, booleans and non-ASCII keys (appends take only object payloads).
    #[pg_test]
    fn a_replay_newest_first_gives_what_the_forward_fold_gives() {
        use crate::json::random::Gen;
        use serde_json::{Map, Value, json};
        fn key(g: &mut Gen) -> String {
            ["a", "b", "ccc", "ключ", "k_with_a_long_name_to_shift_offsets"][(g.next() % 5) as usize].to_owned()
                + &(g.next() % 3).to_string()
        }
        fn value(g: &mut Gen, depth: u32) -> Value {
            match g.next() % if depth == 0 { 6 } else { 9 } {
                0 => Value::Null,
                1 => json!(g.next() % 1000),
                2 => serde_json::from_str("-12345678901234567890.125").unwrap(),
                3 => json!("text ✓ ".repeat((g.next() % 4) as usize)),
                4 => json!(g.next().is_multiple_of(2)),
                5 => json!(1.5),
                6 => json!([value(g, depth - 1), null]),
                _ => object(g, depth - 1, 6),
            }
        }
        fn object(g: &mut Gen, depth: u32, most: u64) -> Value {
            let n = g.next() % most;
            Value::Object((0..n).map(|_| (key(g), value(g, depth))).collect::<Map<String, Value>>())
        }
        /// 20 to 40 members: past 16, a container stores offsets every 32 entries
        fn wide(g: &mut Gen) -> Value {
            let n = 20 + g.next() % 21;
            Value::Object((0..n).map(|i| (format!("m{}", (i * 7 + g.next() % 5) % 45), value(g, 1))).collect::<Map<String, Value>>())
        }
        let mut g = Gen(0x51_7CC1_B727_220A);
        for s in 0..150 {
            let id = format!("r{s}");
            let n = 1 + g.next() % 12;
            for _ in 0..n {
                let payload = if g.next().is_multiple_of(4) { wide(&mut g) } else { object(&mut g, 2, 8) };
                Spi::run_with_args(
                    "SELECT eventstore.append_event('replay_check', $1, 'Changed', $2)",
                    &[id.as_str().into(), pgrx::JsonB(payload).into()],
                )
                .unwrap();
            }
            let stored: Vec<Value> = Spi::connect(|c| {
                c.select(
                    "SELECT payload FROM eventstore.events WHERE aggregate_type = 'replay_check' AND aggregate_id = $1
                     ORDER BY aggregate_version",
                    None,
                    &[id.as_str().into()],
                )
                .unwrap()
                .map(|r| r.get::<pgrx::JsonB>(1).unwrap().unwrap().0)
                .collect()
            });
            let mut forward = json!({});
            for payload in &stored {
                crate::json::merge_patch(&mut forward, payload);
            }
            let replayed = Spi::get_one_with_args::<pgrx::JsonB>(
                "SELECT (eventstore.get_aggregate_state('replay_check', $1)).state",
                &[id.as_str().into()],
            )
            .unwrap()
            .map(|j| j.0)
            .unwrap_or(Value::Null);
            assert_eq!(replayed, forward, "stream {id}: {stored:?}");
        }
    }
}
