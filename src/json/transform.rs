//! Transforms: the reshaping of one JSON document, used to upcast
//! old events and to move API requests and responses between versions.
//!
//! A transform never fails when it runs: every mistake in a program is rejected by
//! `TransformProgram::compile`, at registration, and a step whose source is missing does nothing.

use serde_json::{Map, Value};

use super::ProgramError;
use super::limits::{self, TooDeep};
use super::path::{self, Path};
use super::step::compile_all;

/// A compiled transform: a JSON array of steps applied in order to one document.
///
/// - `{"op":"rename","from":P,"to":Q}` (also `"move"`) moves the value at P to Q, creating
///   missing objects on the way to Q and replacing whatever was at Q (or a non-object on the
///   way). A missing P does nothing, and leaves Q alone.
/// - `{"op":"set_default","path":P,"value":V}` writes V at P only when P is absent (`null` counts
///   as present). Missing objects on the way are created, but nothing is ever replaced: a
///   non-object on the way makes the step do nothing.
/// - `{"op":"remove","path":P}` removes P; a missing P is left alone.
/// - `{"op":"map_values","path":P,"map":{old:new,...}}` replaces the value at P by `map[old]`
///   when it is a string equal to `old`, or a number or boolean whose JSON text equals `old`
///   (`1` matches `"1"`, `true` matches `"true"`). For an array, each element is mapped that way.
///   Values without an entry, `null`, objects and nested arrays stay as they are.
/// - `{"op":"wrap","path":P,"into":K}` makes the value at P the object `{K: value}`; K is one
///   key, taken literally (dots included). A missing P does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformProgram {
    ops: Vec<Op>,
}

/// How much deeper one step can make a document: by `grows` levels more than it was, or to
/// `reaches` levels at most (a constant written at a path), whichever is more.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Growth {
    grows: usize,
    reaches: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Rename { from: Path, to: Path },
    SetDefault { path: Path, value: Value },
    Remove { path: Path },
    MapValues { path: Path, map: Map<String, Value> },
    Wrap { path: Path, into: String },
}

impl TransformProgram {
    /// Checks and compiles a transform; any mistake is an error naming the step.
    pub fn compile(program: &Value) -> Result<TransformProgram, ProgramError> {
        let ops = compile_all(program, |step| {
            let op = match step.op() {
                "rename" | "move" => {
                    step.only(&["from", "to"])?;
                    Op::Rename { from: step.path("from")?, to: step.path("to")? }
                }
                "set_default" => {
                    step.only(&["path", "value"])?;
                    Op::SetDefault { path: step.path("path")?, value: step.value("value")?.clone() }
                }
                "remove" => {
                    step.only(&["path"])?;
                    Op::Remove { path: step.path("path")? }
                }
                "map_values" => {
                    step.only(&["path", "map"])?;
                    Op::MapValues { path: step.path("path")?, map: step.object("map")?.clone() }
                }
                "wrap" => {
                    step.only(&["path", "into"])?;
                    Op::Wrap { path: step.path("path")?, into: step.string("into")?.to_owned() }
                }
                _ => return Err(step.unknown_op()),
            };
            Ok(op)
        })?;
        Ok(TransformProgram { ops })
    }

    /// Reshapes `doc` in place; see the type's documentation for each step. It fails only when
    /// the document would grow deeper than `max_depth` (steps that move values deeper or write
    /// constants can do that), and then stops at the step that went past it: no document
    /// deeper than `max_depth` plus one step's growth is ever built.
    pub fn apply(&self, doc: &mut Value, max_depth: usize) -> Result<(), TooDeep> {
        // an upper bound of the document's depth, measured only when it could be past the limit
        let mut bound = None;
        for op in &self.ops {
            op.apply(doc);
            let growth = op.growth();
            if growth == Growth::default() {
                continue;
            }
            let before = *bound.get_or_insert_with(|| limits::depth(doc));
            let estimate = (before + growth.grows).max(growth.reaches);
            if estimate <= max_depth {
                bound = Some(estimate);
                continue;
            }
            if let Some(deep) = limits::too_deep(doc, max_depth) {
                return Err(deep);
            }
            bound = Some(limits::depth(doc));
        }
        Ok(())
    }
}

impl Op {
    fn growth(&self) -> Growth {
        match self {
            Op::Rename { from, to } => Growth { grows: to.segments().len().saturating_sub(from.segments().len()), reaches: 0 },
            Op::SetDefault { path, value } => Growth { grows: 0, reaches: path.segments().len() + limits::depth(value) },
            Op::Remove { .. } => Growth::default(),
            Op::MapValues { path, map } => Growth {
                grows: 0,
                // an array at the path holds the mapped values one level further down
                reaches: path.segments().len() + 1 + map.values().map(limits::depth).max().unwrap_or(0),
            },
            Op::Wrap { .. } => Growth { grows: 1, reaches: 0 },
        }
    }

    fn apply(&self, doc: &mut Value) {
        match self {
            Op::Rename { from, to } => {
                if let Some(value) = path::remove(doc, from) {
                    path::set(doc, to, value);
                }
            }
            Op::SetDefault { path, value } => {
                path::insert_if_absent(doc, path, value);
            }
            Op::Remove { path } => {
                path::remove(doc, path);
            }
            Op::MapValues { path, map } => match path::get_mut(doc, path) {
                Some(Value::Array(items)) => items.iter_mut().for_each(|item| map_one(map, item)),
                Some(value) => map_one(map, value),
                None => {}
            },
            Op::Wrap { path, into } => {
                if let Some(slot) = path::get_mut(doc, path) {
                    let inner = slot.take();
                    *slot = Value::Object(Map::from_iter([(into.clone(), inner)]));
                }
            }
        }
    }
}

/// Replaces a string, number or boolean by its entry in `map`, if it has one.
fn map_one(map: &Map<String, Value>, value: &mut Value) {
    let new = match value {
        Value::String(s) => map.get(s.as_str()),
        Value::Number(n) => map.get(&n.to_string()),
        Value::Bool(b) => map.get(if *b { "true" } else { "false" }),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    };
    if let Some(new) = new {
        *value = new.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(program: Value, mut doc: Value) -> Value {
        TransformProgram::compile(&program)
            .unwrap_or_else(|e| panic!("{program} does not compile: {e}"))
            .apply(&mut doc, 64)
            .expect("within the depth limit");
        doc
    }

    fn error(program: Value) -> String {
        TransformProgram::compile(&program).expect_err("must not compile").to_string()
    }

    #[test]
    fn rename_and_move() {
        let doc = json!({"name": "Ann", "age": 3});
        assert_eq!(
            run(json!([{"op": "rename", "from": "name", "to": "full_name"}]), doc.clone()),
            json!({"full_name": "Ann", "age": 3})
        );
        assert_eq!(
            run(json!([{"op": "move", "from": "name", "to": "person.name"}]), doc),
            json!({"person": {"name": "Ann"}, "age": 3})
        );
        let doc = json!({"a": {"b": 1, "c": 2}});
        assert_eq!(run(json!([{"op": "move", "from": "a.b", "to": "b"}]), doc), json!({"a": {"c": 2}, "b": 1}));
    }

    #[test]
    fn rename_edge_cases() {
        let doc = json!({"x": 1, "to": "kept"});
        assert_eq!(
            run(json!([{"op": "rename", "from": "missing", "to": "to"}]), doc.clone()),
            doc,
            "a missing source does nothing"
        );
        assert_eq!(
            run(json!([{"op": "rename", "from": "x", "to": "to"}]), doc.clone()),
            json!({"to": 1}),
            "the target is replaced"
        );
        assert_eq!(run(json!([{"op": "rename", "from": "x", "to": "x"}]), doc.clone()), doc);
        assert_eq!(run(json!([{"op": "rename", "from": "x", "to": "to.deep"}]), doc), json!({"to": {"deep": 1}}));
        assert_eq!(run(json!([{"op": "rename", "from": "a", "to": "a.b"}]), json!({"a": 5})), json!({"a": {"b": 5}}));
        assert_eq!(
            run(json!([{"op": "rename", "from": "a.b", "to": "a"}]), json!({"a": {"b": 5, "c": 6}})),
            json!({"a": 5})
        );
        assert_eq!(
            run(json!([{"op": "rename", "from": "a", "to": "b"}]), json!([1])),
            json!([1]),
            "a non-object document"
        );
    }

    #[test]
    fn set_default_only_when_absent() {
        let program = json!([{"op": "set_default", "path": "currency", "value": "EUR"}]);
        assert_eq!(run(program.clone(), json!({})), json!({"currency": "EUR"}));
        assert_eq!(run(program.clone(), json!({"currency": "USD"})), json!({"currency": "USD"}));
        assert_eq!(run(program, json!({"currency": null})), json!({"currency": null}), "null is present");
        let program = json!([{"op": "set_default", "path": "a.b.c", "value": {"d": [1]}}]);
        assert_eq!(run(program.clone(), json!({"x": 1})), json!({"x": 1, "a": {"b": {"c": {"d": [1]}}}}));
        assert_eq!(run(program.clone(), json!({"a": {"b": 7}})), json!({"a": {"b": 7}}), "never replaces on the way");
        assert_eq!(run(program, json!("text")), json!("text"), "nor the document");
    }

    #[test]
    fn remove_paths() {
        let program = json!([{"op": "remove", "path": "a.secret"}]);
        assert_eq!(run(program.clone(), json!({"a": {"secret": 1, "b": 2}})), json!({"a": {"b": 2}}));
        assert_eq!(run(program.clone(), json!({"a": 1})), json!({"a": 1}));
        assert_eq!(run(program, json!({})), json!({}));
    }

    #[test]
    fn map_values_of_scalars() {
        let program = json!([{"op": "map_values", "path": "status", "map": {"open": "active", "1": "one", "true": "yes", "2.5": "x"}}]);
        assert_eq!(run(program.clone(), json!({"status": "open"})), json!({"status": "active"}));
        assert_eq!(run(program.clone(), json!({"status": "closed"})), json!({"status": "closed"}));
        assert_eq!(run(program.clone(), json!({"status": 1})), json!({"status": "one"}));
        assert_eq!(run(program.clone(), json!({"status": 1.0})), json!({"status": 1.0}), "1.0 is not the text \"1\"");
        assert_eq!(run(program.clone(), json!({"status": 2.5})), json!({"status": "x"}));
        assert_eq!(run(program.clone(), json!({"status": true})), json!({"status": "yes"}));
        assert_eq!(run(program.clone(), json!({"status": false})), json!({"status": false}));
        assert_eq!(run(program.clone(), json!({"status": null})), json!({"status": null}));
        assert_eq!(run(program.clone(), json!({"status": {"open": 1}})), json!({"status": {"open": 1}}));
        assert_eq!(run(program, json!({})), json!({}), "a missing path creates nothing");
        let program = json!([{"op": "map_values", "path": "n", "map": {"null": 0, "a": {"to": ["b"]}}}]);
        assert_eq!(run(program.clone(), json!({"n": null})), json!({"n": null}), "null is never mapped");
        assert_eq!(run(program, json!({"n": "a"})), json!({"n": {"to": ["b"]}}), "to any JSON value");
    }

    #[test]
    fn map_values_of_arrays() {
        let program = json!([{"op": "map_values", "path": "tags", "map": {"a": "A", "1": 10, "false": "no"}}]);
        let doc = json!({"tags": ["a", "b", 1, false, null, ["a"], {"a": 1}]});
        assert_eq!(run(program, doc), json!({"tags": ["A", "b", 10, "no", null, ["a"], {"a": 1}]}));
    }

    #[test]
    fn wrap_values() {
        let program = json!([{"op": "wrap", "path": "amount", "into": "value"}]);
        assert_eq!(run(program.clone(), json!({"amount": 5})), json!({"amount": {"value": 5}}));
        assert_eq!(run(program.clone(), json!({"amount": null})), json!({"amount": {"value": null}}));
        assert_eq!(run(program.clone(), json!({"x": 1})), json!({"x": 1}), "a missing path does nothing");
        let program = json!([{"op": "wrap", "path": "a.b", "into": "c.d"}]);
        assert_eq!(
            run(program, json!({"a": {"b": [1]}})),
            json!({"a": {"b": {"c.d": [1]}}}),
            "into is one literal key"
        );
    }

    #[test]
    fn an_upcaster_in_several_steps() {
        let program = json!([
            {"op": "rename", "from": "customer_name", "to": "customer.name"},
            {"op": "move", "from": "customer_email", "to": "customer.email"},
            {"op": "wrap", "path": "total", "into": "amount"},
            {"op": "set_default", "path": "total.currency", "value": "EUR"},
            {"op": "map_values", "path": "state", "map": {"new": "pending"}},
            {"op": "remove", "path": "legacy"}
        ]);
        let v1 = json!({"customer_name": "Ann", "customer_email": "a@x", "total": 12, "state": "new", "legacy": true});
        let v2 = json!({"customer": {"name": "Ann", "email": "a@x"}, "total": {"amount": 12, "currency": "EUR"}, "state": "pending"});
        assert_eq!(run(program, v1), v2);
        assert_eq!(run(json!([]), json!({"a": 1})), json!({"a": 1}), "an empty transform changes nothing");
    }

    #[test]
    fn a_transform_never_builds_a_document_past_the_limit() {
        // each step moves the value 31 levels deeper: 256 steps would make it ~8,000 deep
        let to = vec!["n"; 32].join(".");
        let steps: Vec<Value> = (0..256).map(|_| json!({"op": "move", "from": "n", "to": to})).collect();
        let program = TransformProgram::compile(&Value::Array(steps)).unwrap();
        let mut doc = json!({"n": 1});
        let deep = program.apply(&mut doc, 64).unwrap_err();
        assert_eq!(deep.depth, 65);
        assert!(limits::depth(&doc) <= 64 + 31, "stopped at the step that passed the limit");
        let mut doc = json!({"n": 1});
        let twenty = TransformProgram::compile(&Value::Array(
            (0..20).map(|_| json!({"op": "move", "from": "n", "to": to})).collect(),
        ))
        .unwrap();
        assert!(twenty.apply(&mut doc, 1_000).is_ok());
        assert_eq!(limits::depth(&doc), 1 + 20 * 31);

        let wrap = TransformProgram::compile(&json!([{"op": "wrap", "path": "a", "into": "b"}])).unwrap();
        let mut doc = json!({"a": {"c": 1}});
        assert_eq!(wrap.apply(&mut doc, 2).unwrap_err().path, ".a.b");
        let constant = TransformProgram::compile(&json!([{"op": "set_default", "path": "x.y", "value": [[1]]}])).unwrap();
        let mut doc = json!({});
        assert_eq!(constant.apply(&mut doc, 3).unwrap_err().depth, 4);
    }

    #[test]
    fn programs_and_paths_have_limits() {
        let steps = Value::Array(vec![json!({"op": "remove", "path": "a"}); 257]);
        assert_eq!(error(steps), "program has 257 steps; a program has at most 256 steps");
        assert!(TransformProgram::compile(&Value::Array(vec![json!({"op": "remove", "path": "a"}); 256])).is_ok());
        let path = vec!["a"; 100_000].join(".");
        assert_eq!(
            error(json!([{"op": "set_default", "path": path, "value": 1}])),
            "step 0: \"path\" has 100000 segments; a path has at most 32 segments"
        );
    }

    #[test]
    fn compile_errors() {
        assert_eq!(error(json!("rename")), "program must be a JSON array of steps, not a string");
        assert_eq!(error(json!([1])), "step 0: a step must be a JSON object with an \"op\", not a number");
        assert_eq!(
            error(json!([{"op": "remove", "path": "a"}, {"op": "drop", "path": "a"}])),
            "step 1: unknown op \"drop\""
        );
        assert_eq!(error(json!([{"op": "set", "path": "a", "value": 1}])), "step 0: unknown op \"set\"");
        assert_eq!(error(json!([{"op": "rename", "from": "a"}])), "step 0: \"rename\" needs \"to\"");
        assert_eq!(error(json!([{"op": "move", "to": "a"}])), "step 0: \"move\" needs \"from\"");
        assert_eq!(
            error(json!([{"op": "rename", "from": "a", "to": 2}])),
            "step 0: \"to\" must be a string, not a number"
        );
        assert_eq!(
            error(json!([{"op": "rename", "from": "a.", "to": "b"}])),
            "step 0: \"from\" has an empty segment in \"a.\""
        );
        assert_eq!(error(json!([{"op": "set_default", "path": "a"}])), "step 0: \"set_default\" needs \"value\"");
        assert_eq!(error(json!([{"op": "remove", "path": ""}])), "step 0: \"path\" must not be empty");
        assert_eq!(
            error(json!([{"op": "remove", "path": {"a": 1}}])),
            "step 0: \"path\" must be a string, not an object"
        );
        assert_eq!(error(json!([{"op": "map_values", "path": "a"}])), "step 0: \"map_values\" needs \"map\"");
        assert_eq!(
            error(json!([{"op": "map_values", "path": "a", "map": [1]}])),
            "step 0: \"map\" must be a JSON object, not an array"
        );
        assert_eq!(error(json!([{"op": "wrap", "path": "a"}])), "step 0: \"wrap\" needs \"into\"");
        assert_eq!(error(json!([{"op": "wrap", "path": "a", "into": ""}])), "step 0: \"into\" must not be empty");
        assert_eq!(
            error(json!([{"op": "remove", "path": "a", "key": "id"}])),
            "step 0: unknown key \"key\" in a \"remove\" step (it takes \"path\")"
        );
        assert_eq!(
            error(json!([{"op": "set_default", "path": "a", "value": 1, "default": 2}])),
            "step 0: unknown key \"default\" in a \"set_default\" step (it takes \"path\", \"value\")"
        );
    }
}
