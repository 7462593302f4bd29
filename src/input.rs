//! Validation of what callers send, before anything is written. Pure Rust: a
//! bad argument becomes a 22023 error that says which argument and why.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest aggregate type, aggregate id or event type, in characters.
pub const MAX_NAME_CHARS: usize = 255;
/// Most events one call may append.
pub const MAX_BATCH: usize = 10_000;
/// Most rows one read may ask for.
pub const MAX_READ: i32 = 10_000;

/// A required argument: NULL is 22023 naming it.
pub fn required<T>(value: Option<T>, what: &str) -> Result<T> {
    value.ok_or_else(|| Error::invalid(format!("{what} must not be null")))
}

/// A required, non-empty, bounded name.
pub fn name(what: &str, value: Option<&str>) -> Result<String> {
    let value = required(value, what)?;
    if value.trim().is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    let chars = value.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(Error::invalid(format!("{what} is too long"))
            .detail(format!("{what} has {chars} characters; at most {MAX_NAME_CHARS} are allowed")));
    }
    Ok(value.to_owned())
}

/// An array argument (`text[]`, `int[]`), which must hold no NULL element (22023 naming the
/// first). A NULL array stays `None`.
pub fn no_nulls<T>(what: &str, list: Option<Vec<Option<T>>>) -> Result<Option<Vec<T>>> {
    let Some(list) = list else { return Ok(None) };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        // SQL arrays count from 1
        out.push(item.ok_or_else(|| {
            Error::invalid(format!("{what} must not contain NULL")).detail(format!("{what}[{}] is NULL", i + 1))
        })?);
    }
    Ok(Some(out))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object, or a 22023 saying what it was instead.
pub fn object<'a>(what: &str, value: Option<&'a Value>) -> Result<&'a Map<String, Value>> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(Error::invalid(format!("{what} must be a JSON object"))
            .detail(format!("{what} is {}", json_kind(other)))),
        None => Err(Error::invalid(format!("{what} must be a JSON object")).detail(format!("{what} is null"))),
    }
}

/// `expected_version`: NULL (any), 0 (must not exist), -1 (must exist) or an exact version.
pub fn expected_version(v: Option<i64>) -> Result<Option<i64>> {
    match v {
        Some(n) if n < -1 => Err(Error::invalid("expected_version is out of range")
            .detail(format!("expected_version is {n}"))
            .hint("Use NULL for any version, 0 for a new stream, -1 for an existing stream, or the exact version.")),
        other => Ok(other),
    }
}

/// `max_count` of a read: 1 to MAX_READ.
pub fn max_count(v: Option<i32>) -> Result<i32> {
    match v {
        Some(n) if (1..=MAX_READ).contains(&n) => Ok(n),
        Some(n) => Err(Error::invalid("max_count is out of range")
            .detail(format!("max_count is {n}; it must be between 1 and {MAX_READ}"))),
        None => Err(Error::invalid("max_count must not be null")),
    }
}

/// The metadata keys that are lifted into their own columns.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Lifted {
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub actor: Option<String>,
    /// RFC 3339 text, checked here and cast by PostgreSQL.
    pub occurred_at: Option<String>,
}

fn uuid_at(what: &str, key: &str, v: Option<&Value>) -> Result<Option<Uuid>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| Error::invalid(format!("{what}.{key} must be a UUID")).detail(format!("{what}.{key} is \"{s}\""))),
        Some(other) => Err(Error::invalid(format!("{what}.{key} must be a UUID string"))
            .detail(format!("{what}.{key} is {}", json_kind(other)))),
    }
}

/// Lifts `correlation_id`, `causation_id`, `actor` and `occurred_at` out of an event's metadata.
pub fn lift(what: &str, metadata: &Map<String, Value>) -> Result<Lifted> {
    let actor = match metadata.get("actor") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(Error::invalid(format!("{what}.actor must be a string"))
                .detail(format!("{what}.actor is {}", json_kind(other))));
        }
    };
    let occurred_at = match metadata.get("occurred_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_rfc3339(s) => Some(s.clone()),
        Some(other) => {
            return Err(Error::invalid(format!("{what}.occurred_at must be an RFC 3339 timestamp"))
                .detail(format!("{what}.occurred_at is {other}"))
                .hint("For example \"2024-05-01T12:30:00Z\" or \"2024-05-01T14:30:00.250+02:00\"."));
        }
    };
    Ok(Lifted {
        correlation_id: uuid_at(what, "correlation_id", metadata.get("correlation_id"))?,
        causation_id: uuid_at(what, "causation_id", metadata.get("causation_id"))?,
        actor,
        occurred_at,
    })
}

/// One event of an append, validated. Payload and metadata stay in the caller's JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    /// Whether the caller chose the id (only then can a re-send be recognised).
    pub id_supplied: bool,
    pub event_type: String,
    pub schema_version: Option<i32>,
    pub lifted: Lifted,
}

impl NewEvent {
    pub fn new(event_type: String, event_id: Option<Uuid>, schema_version: Option<i32>, lifted: Lifted) -> Self {
        NewEvent {
            event_id: event_id.unwrap_or_else(crate::ids::new_v7),
            id_supplied: event_id.is_some(),
            event_type,
            schema_version,
            lifted,
        }
    }
}

const BATCH_KEYS: [&str; 5] = ["event_type", "payload", "metadata", "event_id", "schema_version"];

/// The `events` argument of `append_events`: a non-empty array of at most MAX_BATCH objects.
pub fn batch(events: Option<&Value>) -> Result<Vec<NewEvent>> {
    let items = match events {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(Error::invalid("events must be a JSON array of event objects")
                .detail(format!("events is {}", json_kind(other))));
        }
        None => return Err(Error::invalid("events must not be null")),
    };
    if items.is_empty() {
        return Err(Error::invalid("events must not be empty"));
    }
    if items.len() > MAX_BATCH {
        return Err(Error::invalid("too many events in one call")
            .detail(format!("{} events; at most {MAX_BATCH} may be appended in one call", items.len()))
            .hint("Split the batch; each call is one transaction step."));
    }
    let mut out = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let what = format!("events[{i}]");
        let obj = object(&what, Some(item))?;
        if let Some(key) = obj.keys().find(|k| !BATCH_KEYS.contains(&k.as_str())) {
            return Err(Error::invalid(format!("{what} has an unknown key \"{key}\""))
                .hint("An event is {\"event_type\", \"payload\", \"metadata\"?, \"event_id\"?, \"schema_version\"?}."));
        }
        let event_type = match obj.get("event_type") {
            Some(Value::String(s)) => name(&format!("{what}.event_type"), Some(s))?,
            Some(other) => {
                return Err(Error::invalid(format!("{what}.event_type must be a string"))
                    .detail(format!("{what}.event_type is {}", json_kind(other))));
            }
            None => return Err(Error::invalid(format!("{what}.event_type is missing"))),
        };
        object(&format!("{what}.payload"), obj.get("payload"))?;
        let lifted = match obj.get("metadata") {
            None | Some(Value::Null) => Lifted::default(),
            Some(m) => lift(&format!("{what}.metadata"), object(&format!("{what}.metadata"), Some(m))?)?,
        };
        let event_id = uuid_at(&what, "event_id", obj.get("event_id"))?;
        if let Some(id) = event_id {
            if !seen.insert(id) {
                return Err(Error::new(crate::error::Kind::Duplicate, format!("{what}.event_id appears twice in the batch"))
                    .detail(format!("event id {id}")));
            }
        }
        let schema_version = match obj.get("schema_version") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if (1..=i32::MAX as i64).contains(&v) => Some(v as i32),
                _ => return Err(Error::invalid(format!("{what}.schema_version must be a positive integer")).detail(format!("{what}.schema_version is {n}"))),
            },
            Some(other) => {
                return Err(Error::invalid(format!("{what}.schema_version must be a positive integer"))
                    .detail(format!("{what}.schema_version is {}", json_kind(other))));
            }
        };
        out.push(NewEvent::new(event_type, event_id, schema_version, lifted));
    }
    Ok(out)
}

/// RFC 3339 date-time (`T` or a space between date and time), with a real calendar date.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0, |acc, d| acc * 10 + (d - b'0') as u32))
    };
    let (Some(year), Some(month), Some(day)) = (digits(0, 4), digits(5, 2), digits(8, 2)) else {
        return false;
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return false;
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11, 2), digits(14, 2), digits(17, 2)) else {
        return false;
    };
    let Some(days_in_month) = crate::calendar::days_in_month(year as i64, month as i64) else {
        return false;
    };
    if year == 0 || day == 0 || i64::from(day) > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && b[i + 3] == b':'
                && matches!((digits(i + 1, 2), digits(i + 4, 2)), (Some(h), Some(m)) if h <= 23 && m <= 59)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use serde_json::json;

    #[test]
    fn names_are_required_non_empty_and_bounded() {
        assert_eq!(name("aggregate_type", Some("order")).unwrap(), "order");
        assert!(name("aggregate_type", None).unwrap_err().message.contains("must not be null"));
        assert!(name("aggregate_type", Some("  ")).unwrap_err().message.contains("must not be empty"));
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let err = name("aggregate_id", Some(&long)).unwrap_err();
        assert_eq!(err.kind, Kind::InvalidArgument);
        assert!(err.message.contains("too long"));
        assert!(name("aggregate_id", Some(&"é".repeat(MAX_NAME_CHARS))).is_ok());
    }

    #[test]
    fn payload_must_be_an_object() {
        assert!(object("payload", Some(&json!({"a": 1}))).is_ok());
        let err = object("payload", Some(&json!([1]))).unwrap_err();
        assert_eq!(err.detail.as_deref(), Some("payload is an array"));
        assert!(object("payload", None).is_err());
    }

    #[test]
    fn expected_version_range() {
        for ok in [None, Some(-1), Some(0), Some(7)] {
            assert_eq!(expected_version(ok).unwrap(), ok);
        }
        assert_eq!(expected_version(Some(-2)).unwrap_err().kind, Kind::InvalidArgument);
    }

    #[test]
    fn metadata_lifting() {
        let m = json!({"correlation_id": "0b7d1d1e-6a1c-4a53-9b7c-0e6f3a8b9c10", "actor": "ann",
                       "occurred_at": "2024-02-29T10:00:00.5+01:00", "other": 1});
        let lifted = lift("metadata", m.as_object().unwrap()).unwrap();
        assert_eq!(lifted.actor.as_deref(), Some("ann"));
        assert!(lifted.correlation_id.is_some());
        assert_eq!(lifted.causation_id, None);
        assert_eq!(lifted.occurred_at.as_deref(), Some("2024-02-29T10:00:00.5+01:00"));
        let bad = json!({"causation_id": "nope"});
        assert!(lift("metadata", bad.as_object().unwrap()).unwrap_err().message.contains("causation_id"));
        let bad = json!({"actor": 5});
        assert!(lift("metadata", bad.as_object().unwrap()).is_err());
    }

    #[test]
    fn rfc3339() {
        for ok in ["2024-05-01T12:30:00Z", "2024-05-01 12:30:00+02:00", "2024-02-29T23:59:60.123456z", "1999-12-31T00:00:00-05:30"] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in ["2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-05-01", "2024-05-01T12:30:00", "2024-05-01T24:00:00Z",
                    "2024-05-01T12:30:00.Z", "2024-05-01T12:30:00+0200", "yesterday", "2024-05-01T12:30:00Zjunk"] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn batches() {
        let ok = json!([{"event_type": "a", "payload": {}}, {"event_type": "b", "payload": {"x": 1}, "schema_version": 2,
                         "event_id": "0b7d1d1e-6a1c-4a53-9b7c-0e6f3a8b9c10", "metadata": {"actor": "z"}}]);
        let events = batch(Some(&ok)).unwrap();
        assert_eq!(events.len(), 2);
        assert!(!events[0].id_supplied && events[1].id_supplied);
        assert_eq!(events[1].schema_version, Some(2));
        assert_eq!(events[1].lifted.actor.as_deref(), Some("z"));

        let cases = [
            (json!({}), "events must be a JSON array"),
            (json!([]), "events must not be empty"),
            (json!([1]), "events[0] must be a JSON object"),
            (json!([{"event_type": "a"}]), "events[0].payload must be a JSON object"),
            (json!([{"payload": {}}]), "events[0].event_type is missing"),
            (json!([{"event_type": "a", "payload": {}}, {"event_type": "", "payload": {}}]), "events[1].event_type must not be empty"),
            (json!([{"event_type": "a", "payload": {}, "typo": 1}]), "unknown key \"typo\""),
            (json!([{"event_type": "a", "payload": {}, "schema_version": 0}]), "schema_version must be a positive integer"),
            (json!([{"event_type": "a", "payload": {}, "event_id": "x"}]), "events[0].event_id must be a UUID"),
        ];
        for (input, message) in cases {
            let err = batch(Some(&input)).unwrap_err();
            assert_eq!(err.kind, Kind::InvalidArgument, "{input}");
            assert!(err.message.contains(message), "{input}: {}", err.message);
        }
        let twice = json!([{"event_type": "a", "payload": {}, "event_id": "0b7d1d1e-6a1c-4a53-9b7c-0e6f3a8b9c10"},
                           {"event_type": "a", "payload": {}, "event_id": "0b7d1d1e-6a1c-4a53-9b7c-0e6f3a8b9c10"}]);
        assert_eq!(batch(Some(&twice)).unwrap_err().kind, Kind::Duplicate);
        let too_many = Value::Array(vec![json!({"event_type": "a", "payload": {}}); MAX_BATCH + 1]);
        assert!(batch(Some(&too_many)).unwrap_err().message.contains("too many events"));
    }

    #[test]
    fn arrays_without_nulls() {
        assert_eq!(no_nulls::<i32>("a", None).unwrap(), None);
        assert_eq!(no_nulls("a", Some(vec![Some(1), Some(2)])).unwrap(), Some(vec![1, 2]));
        let err = no_nulls("event_types", Some(vec![Some("x".to_owned()), None])).unwrap_err();
        assert_eq!(err.kind, Kind::InvalidArgument);
        assert_eq!(err.message, "event_types must not contain NULL");
        assert_eq!(err.detail.as_deref(), Some("event_types[2] is NULL"));
    }

    #[test]
    fn read_bounds() {
        assert_eq!(max_count(Some(1)).unwrap(), 1);
        assert!(max_count(Some(0)).is_err());
        assert!(max_count(Some(MAX_READ + 1)).is_err());
    }
}
