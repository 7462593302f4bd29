//! Dotted paths into JSON objects (`"address.city"`): parsed once, then read and written.
//!
//! Every segment is an object key, taken literally (`"items.0"` is the key `"0"`, not an array
//! index); a key that contains a dot cannot be addressed.

use std::fmt;

use serde_json::{Map, Value};

use super::ProgramError;
use super::limits::{MAX_PATH_BYTES, MAX_PATH_SEGMENTS};

/// A parsed dotted path: one or more non-empty object keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    segments: Box<[String]>,
}

impl Path {
    /// Parses `"a.b.c"`; an empty path or an empty segment (`"a..b"`, `".a"`, `"a."`) is an error.
    pub fn parse(text: &str) -> Result<Path, ProgramError> {
        Self::parse_named("path", text)
    }

    /// Like `parse`, naming the thing parsed (`"from"`, `"to"`) in the message.
    pub(super) fn parse_named(what: &str, text: &str) -> Result<Path, ProgramError> {
        if text.is_empty() {
            return Err(ProgramError::new(format!("{what} must not be empty")));
        }
        let count = text.split('.').count();
        if count > MAX_PATH_SEGMENTS {
            return Err(ProgramError::new(format!(
                "{what} has {count} segments; a path has at most {MAX_PATH_SEGMENTS} segments"
            )));
        }
        if text.len() > MAX_PATH_BYTES {
            return Err(ProgramError::new(format!(
                "{what} is {} bytes long; a path has at most {MAX_PATH_BYTES} bytes",
                text.len()
            )));
        }
        let segments: Box<[String]> = text.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(ProgramError::new(format!("{what} has an empty segment in \"{text}\"")));
        }
        Ok(Path { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The keys of the objects on the way, and the key of the value itself.
    fn split(&self) -> (&[String], &str) {
        let (last, parents) = self.segments.split_last().expect("a parsed path has a segment");
        (parents, last)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// The value at `path`, if every step on the way is an object that has the key.
pub fn get<'a>(root: &'a Value, path: &Path) -> Option<&'a Value> {
    path.segments.iter().try_fold(root, |v, key| v.as_object()?.get(key))
}

/// The value at `path` for writing, if it exists.
pub fn get_mut<'a>(root: &'a mut Value, path: &Path) -> Option<&'a mut Value> {
    path.segments.iter().try_fold(root, |v, key| v.as_object_mut()?.get_mut(key))
}

/// Writes `value` at `path`, creating missing objects on the way; a value on the way that is not
/// an object (the root included) is replaced by an object.
pub fn set(root: &mut Value, path: &Path, value: Value) {
    let (parents, last) = path.split();
    let map = force_object(walk_creating(root, parents));
    if let Some(slot) = map.get_mut(last) {
        *slot = value;
    } else {
        map.insert(last.to_owned(), value);
    }
}

/// The value at `path` for writing, created as `null` (with objects on the way, as `set`) when
/// missing.
pub fn get_or_insert_null<'a>(root: &'a mut Value, path: &Path) -> &'a mut Value {
    let (parents, last) = path.split();
    let map = force_object(walk_creating(root, parents));
    // Two lookups, because returning the first borrow from one branch does not pass the checker.
    if !map.contains_key(last) {
        map.insert(last.to_owned(), Value::Null);
    }
    map.get_mut(last).expect("just inserted")
}

/// Writes a clone of `value` at `path` only when nothing is there. Missing objects on the way are
/// created, but nothing that exists is replaced: a non-object on the way leaves the document as
/// it was. Returns whether it wrote.
pub fn insert_if_absent(root: &mut Value, path: &Path, value: &Value) -> bool {
    let (parents, last) = path.split();
    let mut current = root;
    for key in parents {
        let Value::Object(map) = current else { return false };
        if !map.contains_key(key.as_str()) {
            map.insert(key.clone(), Value::Object(Map::new()));
        }
        current = map.get_mut(key.as_str()).expect("present or just inserted");
    }
    let Value::Object(map) = current else { return false };
    if map.contains_key(last) {
        return false;
    }
    map.insert(last.to_owned(), value.clone());
    true
}

/// Removes and returns the value at `path`; nothing changes when it is not there.
pub fn remove(root: &mut Value, path: &Path) -> Option<Value> {
    let (parents, last) = path.split();
    let parent = parents.iter().try_fold(root, |v, key| v.as_object_mut()?.get_mut(key))?;
    parent.as_object_mut()?.remove(last)
}

/// `value` as an object, replacing it with `{}` when it is anything else.
pub(super) fn force_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// Descends through `keys`, making each step an object and creating missing ones.
fn walk_creating<'a>(root: &'a mut Value, keys: &[String]) -> &'a mut Value {
    keys.iter().fold(root, |current, key| {
        let map = force_object(current);
        if !map.contains_key(key.as_str()) {
            map.insert(key.clone(), Value::Object(Map::new()));
        }
        map.get_mut(key.as_str()).expect("present or just inserted")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(text: &str) -> Path {
        Path::parse(text).unwrap()
    }

    #[test]
    fn parses_dotted_paths() {
        assert_eq!(p("a").segments(), ["a"]);
        assert_eq!(p("address.city").segments(), ["address", "city"]);
        assert_eq!(p("a.0. b").segments(), ["a", "0", " b"]);
        assert_eq!(p("address.city").to_string(), "address.city");
    }

    #[test]
    fn rejects_paths_over_the_limits() {
        let most = vec!["a"; MAX_PATH_SEGMENTS].join(".");
        assert_eq!(Path::parse(&most).unwrap().segments().len(), MAX_PATH_SEGMENTS);
        let over = vec!["a"; MAX_PATH_SEGMENTS + 1].join(".");
        assert_eq!(Path::parse(&over).unwrap_err().message, "path has 33 segments; a path has at most 32 segments");
        let huge = vec!["a"; 100_000].join(".");
        assert!(Path::parse(&huge).unwrap_err().message.contains("at most"));
        let long = "k".repeat(MAX_PATH_BYTES + 1);
        assert_eq!(Path::parse(&long).unwrap_err().message, "path is 1025 bytes long; a path has at most 1024 bytes");
        assert!(Path::parse(&"k".repeat(MAX_PATH_BYTES)).is_ok());
    }

    #[test]
    fn rejects_empty_paths_and_segments() {
        assert_eq!(Path::parse("").unwrap_err().to_string(), "path must not be empty");
        for bad in ["a..b", ".a", "a.", ".", "..", "a.b."] {
            assert_eq!(
                Path::parse(bad).unwrap_err().to_string(),
                format!("path has an empty segment in \"{bad}\""),
                "{bad}"
            );
        }
        assert_eq!(Path::parse_named("\"from\"", "").unwrap_err().message, "\"from\" must not be empty");
    }

    #[test]
    fn gets_nested_values() {
        let doc = json!({"a": {"b": {"c": 1}}, "s": "x", "arr": [1, 2]});
        assert_eq!(get(&doc, &p("a.b.c")), Some(&json!(1)));
        assert_eq!(get(&doc, &p("a.b")), Some(&json!({"c": 1})));
        assert_eq!(get(&doc, &p("a.x")), None);
        assert_eq!(get(&doc, &p("s.x")), None, "through a string");
        assert_eq!(get(&doc, &p("arr.0")), None, "segments are keys, not indexes");
        assert_eq!(get(&json!(5), &p("a")), None);
        assert_eq!(get(&json!({"n": null}), &p("n")), Some(&Value::Null));
    }

    #[test]
    fn get_mut_writes_in_place() {
        let mut doc = json!({"a": {"b": 1}});
        *get_mut(&mut doc, &p("a.b")).unwrap() = json!(2);
        assert_eq!(doc, json!({"a": {"b": 2}}));
        assert!(get_mut(&mut doc, &p("a.c")).is_none());
        assert!(get_mut(&mut doc, &p("a.b.c")).is_none());
    }

    #[test]
    fn set_creates_and_replaces_on_the_way() {
        let mut doc = json!({});
        set(&mut doc, &p("a.b.c"), json!(1));
        assert_eq!(doc, json!({"a": {"b": {"c": 1}}}));
        set(&mut doc, &p("a.b.d"), json!(2));
        assert_eq!(doc, json!({"a": {"b": {"c": 1, "d": 2}}}));
        set(&mut doc, &p("a.b"), json!("x"));
        assert_eq!(doc, json!({"a": {"b": "x"}}));
        set(&mut doc, &p("a.b.c"), json!(3));
        assert_eq!(doc, json!({"a": {"b": {"c": 3}}}), "a string on the way becomes an object");
        let mut scalar = json!([1]);
        set(&mut scalar, &p("k"), json!(null));
        assert_eq!(scalar, json!({"k": null}), "a non-object root becomes an object");
    }

    #[test]
    fn get_or_insert_null_creates_a_slot() {
        let mut doc = json!({"a": 1});
        assert_eq!(get_or_insert_null(&mut doc, &p("a")), &json!(1));
        assert_eq!(get_or_insert_null(&mut doc, &p("b.c")), &Value::Null);
        assert_eq!(doc, json!({"a": 1, "b": {"c": null}}));
    }

    #[test]
    fn insert_if_absent_never_replaces() {
        let mut doc = json!({"a": {"b": 1}, "s": "x", "n": null});
        assert!(!insert_if_absent(&mut doc, &p("a.b"), &json!(2)));
        assert!(!insert_if_absent(&mut doc, &p("n"), &json!(2)), "null is a value");
        assert!(!insert_if_absent(&mut doc, &p("s.t"), &json!(2)), "a string on the way stays");
        assert_eq!(doc, json!({"a": {"b": 1}, "s": "x", "n": null}));
        assert!(insert_if_absent(&mut doc, &p("a.c"), &json!(2)));
        assert!(insert_if_absent(&mut doc, &p("x.y.z"), &json!(3)));
        assert_eq!(doc, json!({"a": {"b": 1, "c": 2}, "s": "x", "n": null, "x": {"y": {"z": 3}}}));
        let mut array = json!([1]);
        assert!(!insert_if_absent(&mut array, &p("a"), &json!(1)));
        assert_eq!(array, json!([1]));
    }

    #[test]
    fn remove_takes_the_value_out() {
        let mut doc = json!({"a": {"b": 1, "c": 2}});
        assert_eq!(remove(&mut doc, &p("a.b")), Some(json!(1)));
        assert_eq!(doc, json!({"a": {"c": 2}}));
        assert_eq!(remove(&mut doc, &p("a.b")), None);
        assert_eq!(remove(&mut doc, &p("a.c.d")), None);
        assert_eq!(remove(&mut doc, &p("x.y")), None);
        assert_eq!(doc, json!({"a": {"c": 2}}), "a missing path creates nothing");
        assert_eq!(remove(&mut doc, &p("a")), Some(json!({"c": 2})));
        assert_eq!(doc, json!({}));
    }
}
