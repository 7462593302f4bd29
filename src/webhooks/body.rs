//! The body a delivery freezes at queue time, written in Rust for an event the append has in
//! hand: `{"data": {...}, "type": ..., "timestamp": ...}`, the very text that
//! `jsonb_build_object(...)::text` gives in src/store/webhook_queue.rs (`frozen_body!`), which
//! queues stored events: members in jsonb's order (shorter keys first, then bytewise), `", "`
//! and `": "` between them, strings escaped as PostgreSQL's `escape_json` does, and the
//! timestamp as `to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`.
//! tests/client/test_webhooks.py checks the two against each other.

use std::fmt::Write;

use crate::calendar::{MICROS_PER_DAY, civil_from_days};

/// What the body says of one event. `payload` and `metadata` are their jsonb text.
pub struct Event<'a> {
    pub event_type: &'a str,
    /// microseconds since 2000-01-01 00:00 UTC (PostgreSQL's timestamptz)
    pub recorded_at: i64,
    pub event_id: uuid::Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub aggregate_version: i64,
    pub global_position: i64,
    pub payload: &'a str,
    pub metadata: &'a str,
}

pub fn body(e: &Event<'_>) -> String {
    let mut out = String::with_capacity(220 + e.payload.len() + e.metadata.len() + e.aggregate_id.len());
    out.push_str("{\"data\": {\"payload\": ");
    out.push_str(e.payload);
    let _ = write!(out, ", \"event_id\": \"{}\", \"metadata\": ", e.event_id.hyphenated());
    out.push_str(e.metadata);
    out.push_str(", \"aggregate_id\": ");
    push_string(&mut out, e.aggregate_id);
    out.push_str(", \"aggregate_type\": ");
    push_string(&mut out, e.aggregate_type);
    let _ = write!(out, ", \"global_position\": {}, \"aggregate_version\": {}}}, \"type\": ", e.global_position, e.aggregate_version);
    push_string(&mut out, e.event_type);
    out.push_str(", \"timestamp\": \"");
    push_timestamp(&mut out, e.recorded_at);
    out.push_str("\"}");
    out
}

/// A JSON string as PostgreSQL's `escape_json` writes it.
fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;

fn push_timestamp(out: &mut String, micros: i64) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days + POSTGRES_EPOCH_DAYS);
    let seconds = of_day / 1_000_000;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        of_day % 1_000_000
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(aggregate_id: &'a str, recorded_at: i64) -> Event<'a> {
        Event {
            event_type: "Deposited",
            recorded_at,
            event_id: uuid::Uuid::parse_str("0193a5b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b").unwrap(),
            aggregate_type: "account",
            aggregate_id,
            aggregate_version: 7,
            global_position: 1234,
            payload: "{\"amount\": 125.50}",
            metadata: "{}",
        }
    }

    #[test]
    fn members_come_in_jsonb_order() {
        // 2026-12-01 16:03:29.525053 UTC
        let at = (days_from(2026, 12, 1) * 86_400 + 16 * 3600 + 3 * 60 + 29) * 1_000_000 + 525_053;
        assert_eq!(
            body(&event("42", at)),
            "{\"data\": {\"payload\": {\"amount\": 125.50}, \"event_id\": \"0193a5b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b\", \
             \"metadata\": {}, \"aggregate_id\": \"42\", \"aggregate_type\": \"account\", \"global_position\": 1234, \
             \"aggregate_version\": 7}, \"type\": \"Deposited\", \"timestamp\": \"2026-12-01T16:03:29.525053Z\"}"
        );
    }

    fn days_from(y: i64, m: i64, d: i64) -> i64 {
        crate::calendar::days_from_civil(y, m, d) - POSTGRES_EPOCH_DAYS
    }

    #[test]
    fn strings_are_escaped_as_postgres_does() {
        let mut out = String::new();
        push_string(&mut out, "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}j é ✓ \u{7f}");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0001i\\u001fj é ✓ \u{7f}\"");
    }

    #[test]
    fn timestamps_before_2000_and_at_midnight() {
        let mut out = String::new();
        push_timestamp(&mut out, -1);
        assert_eq!(out, "1999-12-31T23:59:59.999999Z");
        out.clear();
        push_timestamp(&mut out, days_from(2024, 2, 29) * MICROS_PER_DAY);
        assert_eq!(out, "2024-02-29T00:00:00.000000Z");
    }
}
