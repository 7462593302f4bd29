//! The limits every JSON value and program is held to (see docs/architecture.md, "Limits"):
//! nesting depth, steps per program, segments and bytes per path. Checked when something is
//! written, and again wherever a value could have slipped past them, so that no walk over a
//! value ever recurses deeper than the limits allow.

use serde_json::Value;

/// Most steps one program (a reducer rule or a transform) may have.
pub const MAX_STEPS: usize = 256;
/// Most segments one dotted path may have.
pub const MAX_PATH_SEGMENTS: usize = 32;
/// Longest dotted path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Where a value passed the depth limit: the path to the first container too deep (`.a.b[3]`,
/// relative to the value's root) and its depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooDeep {
    pub path: String,
    pub depth: usize,
}

/// One step on the way down, for naming the place where a limit was passed.
#[derive(Debug, Clone, Copy)]
pub enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `.key` and `[index]` joined, shortened in the middle when it would be very long.
pub fn format_path<'a>(segments: impl IntoIterator<Item = Segment<'a>>) -> String {
    const KEEP: usize = 120;
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.len() > 2 * KEEP + 3 {
        let head = floor_char_boundary(&out, KEEP);
        let tail = ceil_char_boundary(&out, out.len() - KEEP);
        out = format!("{}...{}", &out[..head], &out[tail..]);
    }
    out
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The depth of a value: the number of nested arrays and objects on the way to its deepest
/// value (`1` and `"a"` are 0, `{}` and `{"a": 1}` are 1, `[[]]` is 2). Iterative: any depth.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, above)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(above + 1);
                stack.extend(items.iter().filter(|v| is_container(v)).map(|v| (v, above + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(above + 1);
                stack.extend(map.values().filter(|v| is_container(v)).map(|v| (v, above + 1)));
            }
            _ => {}
        }
    }
    deepest
}

fn is_container(value: &Value) -> bool {
    matches!(value, Value::Array(_) | Value::Object(_))
}

/// `None` when `value` is at most `max` deep; otherwise where it first goes deeper.
/// Iterative, and it stops at the first container past the limit.
pub fn too_deep(value: &Value, max: usize) -> Option<TooDeep> {
    // (value, depth of the containers above it, index of its parent entry, its segment)
    let mut nodes: Vec<(Option<usize>, Segment<'_>)> = Vec::new();
    let mut stack: Vec<(&Value, usize, Option<usize>)> = vec![(value, 0, None)];
    while let Some((value, above, node)) = stack.pop() {
        let depth = above + 1;
        let children: Box<dyn Iterator<Item = (Segment<'_>, &Value)>> = match value {
            Value::Array(items) => Box::new(items.iter().enumerate().map(|(i, v)| (Segment::Index(i), v))),
            Value::Object(map) => Box::new(map.iter().map(|(k, v)| (Segment::Key(k.as_str()), v))),
            _ => continue,
        };
        if depth > max {
            let mut segments = Vec::new();
            let mut at = node;
            while let Some(i) = at {
                segments.push(nodes[i].1);
                at = nodes[i].0;
            }
            segments.reverse();
            return Some(TooDeep { path: format_path(segments), depth });
        }
        for (segment, child) in children {
            if is_container(child) {
                nodes.push((node, segment));
                stack.push((child, depth, Some(nodes.len() - 1)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!({"a": v});
        }
        v
    }

    #[test]
    fn depth_counts_containers_on_the_way() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!("x")), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": 1})), 1);
        assert_eq!(depth(&json!({"a": {}})), 2);
        assert_eq!(depth(&json!([[]])), 2);
        assert_eq!(depth(&json!({"a": [1, {"b": [2]}], "c": {}})), 4);
        assert_eq!(depth(&nested(500)), 500);
    }

    #[test]
    fn too_deep_names_the_first_place_past_the_limit() {
        assert_eq!(too_deep(&nested(3), 3), None);
        assert_eq!(too_deep(&nested(4), 3), Some(TooDeep { path: ".a.a.a".into(), depth: 4 }));
        let v = json!({"x": 1, "list": [0, {"deep": {"er": {}}}]});
        assert_eq!(depth(&v), 5);
        assert_eq!(too_deep(&v, 5), None);
        assert_eq!(too_deep(&v, 3), Some(TooDeep { path: ".list[1].deep".into(), depth: 4 }));
        assert_eq!(too_deep(&json!({}), 0), Some(TooDeep { path: String::new(), depth: 1 }));
        assert_eq!(too_deep(&json!(7), 0), None);
    }

    #[test]
    fn long_paths_are_shortened_in_the_middle() {
        let deep = too_deep(&nested(1000), 900).unwrap();
        assert_eq!(deep.depth, 901);
        assert!(deep.path.len() < 260, "{}", deep.path.len());
        assert!(deep.path.starts_with(".a.a") && deep.path.contains("...") && deep.path.ends_with(".a"));
        let keys = format_path([Segment::Key(&"é".repeat(200)), Segment::Index(3)]);
        assert!(keys.ends_with("[3]") && keys.contains("..."));
    }
}
