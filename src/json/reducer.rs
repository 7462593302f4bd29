//! Reducers: how one event changes an aggregate's state.
//!
//! A state of `None` is a deleted stream (SQL NULL). A reducer never fails when it runs: every
//! mistake in a program is rejected by `ReducerProgram::compile`, at registration.

use serde_json::{Number, Value};

use super::ProgramError;
use super::merge::merge_patch;
use super::path::{self, Path};
use super::step::{Step, compile_all};

/// The reducer for an event type without a rule: the payload merged into the state as an RFC 7396
/// merge patch. A deleted stream (`None`) stays deleted.
pub fn default_reduce(state: Option<Value>, payload: Value) -> Option<Value> {
    let mut state = state?;
    super::merge::merge_patch_owned(&mut state, payload);
    Some(state)
}

/// A compiled declarative reducer rule: a JSON array of steps applied in order to the state, each
/// taking its operand from the event payload (`"from": path`) or from the rule (`"value": json`).
///
/// - `{"op":"set","path":P,"from"|"value"}` writes the operand at P, creating missing objects
///   on the way (a non-object on the way is replaced by an object).
/// - `{"op":"unset","path":P}` removes P; a missing P is left alone.
/// - `{"op":"merge","path":P?,"from"|"value"}` merge-patches (RFC 7396) the operand into the
///   value at P, the whole state by default. A `null` operand removes P, as the patch
///   `{P: null}` would; at the root it makes the state JSON `null` (not deleted).
/// - `{"op":"append","path":P,"from"|"value"}` pushes the operand onto the array at P; a
///   missing, `null` or non-array value becomes a new one-element array.
/// - `{"op":"remove","path":P,"key":K,"from"|"value"}` drops the elements of the array at P
///   that are objects whose member K equals the operand (numbers compare by value, so 1 equals
///   1.0); without an array at P nothing happens.
/// - `{"op":"increment","path":P,"from"|"value"}` adds the operand to the number at P (missing
///   or not a number counts as 0). Two integers give an integer, falling back to a float when the
///   sum leaves i64; a float on either side gives a float. A non-numeric operand does nothing, and
///   so does a sum that is not a finite number.
/// - `{"op":"$delete"}` makes the state `None`: the stream is deleted from this event on. The
///   steps after it in the rule are not run, and every later event leaves the state `None`.
///
/// A `"from"` path that is missing in the payload makes its step do nothing; a `"from"` that
/// holds `null` is the operand `null`. Any step on a `None` state leaves it `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReducerProgram {
    ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Set { path: Path, operand: Operand },
    Unset { path: Path },
    Merge { path: Option<Path>, operand: Operand },
    Append { path: Path, operand: Operand },
    Remove { path: Path, key: String, operand: Operand },
    Increment { path: Path, operand: Operand },
    Delete,
}

/// Where a step's operand comes from.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    From(Path),
    Value(Value),
}

impl Operand {
    fn compile(step: &Step<'_>) -> Result<Operand, ProgramError> {
        match (step.optional("from"), step.optional("value")) {
            (Some(_), None) => Ok(Operand::From(step.path("from")?)),
            (None, Some(value)) => Ok(Operand::Value(value.clone())),
            (Some(_), Some(_)) => {
                Err(ProgramError::new(format!("\"{}\" takes \"from\" or \"value\", not both", step.op())))
            }
            (None, None) => Err(ProgramError::new(format!("\"{}\" needs \"from\" or \"value\"", step.op()))),
        }
    }

    /// The operand for this event; `None` when a `from` path is missing in the payload.
    fn resolve<'a>(&'a self, payload: &'a Value) -> Option<&'a Value> {
        match self {
            Operand::From(path) => path::get(payload, path),
            Operand::Value(value) => Some(value),
        }
    }
}

const OPERAND: [&str; 3] = ["path", "from", "value"];

impl ReducerProgram {
    /// Checks and compiles a rule; any mistake is an error naming the step.
    pub fn compile(program: &Value) -> Result<ReducerProgram, ProgramError> {
        let ops = compile_all(program, |step| {
            let op = match step.op() {
                "set" | "append" | "increment" => {
                    step.only(&OPERAND)?;
                    let (path, operand) = (step.path("path")?, Operand::compile(step)?);
                    match step.op() {
                        "set" => Op::Set { path, operand },
                        "append" => Op::Append { path, operand },
                        _ => Op::Increment { path, operand },
                    }
                }
                "unset" => {
                    step.only(&["path"])?;
                    Op::Unset { path: step.path("path")? }
                }
                "merge" => {
                    step.only(&OPERAND)?;
                    Op::Merge { path: step.optional_path("path")?, operand: Operand::compile(step)? }
                }
                "remove" => {
                    step.only(&["path", "key", "from", "value"])?;
                    let path = step.path("path")?;
                    let key = step.string("key")?.to_owned();
                    Op::Remove { path, key, operand: Operand::compile(step)? }
                }
                "$delete" => {
                    step.only(&[])?;
                    Op::Delete
                }
                _ => return Err(step.unknown_op()),
            };
            Ok(op)
        })?;
        Ok(ReducerProgram { ops })
    }

    /// The state after one event. Never fails; see the type's documentation for each step.
    pub fn apply(&self, state: Option<Value>, payload: &Value) -> Option<Value> {
        let mut state = state?;
        for op in &self.ops {
            if matches!(op, Op::Delete) {
                return None;
            }
            op.apply(&mut state, payload);
        }
        Some(state)
    }
}

impl Op {
    fn apply(&self, state: &mut Value, payload: &Value) {
        match self {
            Op::Delete => {}
            Op::Unset { path } => {
                path::remove(state, path);
            }
            Op::Set { path, operand } => {
                if let Some(value) = operand.resolve(payload) {
                    path::set(state, path, value.clone());
                }
            }
            Op::Merge { path, operand } => match (operand.resolve(payload), path) {
                (None, _) => {}
                (Some(patch), None) => merge_patch(state, patch),
                (Some(Value::Null), Some(path)) => {
                    path::remove(state, path);
                }
                (Some(patch), Some(path)) => merge_patch(path::get_or_insert_null(state, path), patch),
            },
            Op::Append { path, operand } => {
                if let Some(value) = operand.resolve(payload) {
                    match path::get_or_insert_null(state, path) {
                        Value::Array(items) => items.push(value.clone()),
                        other => *other = Value::Array(vec![value.clone()]),
                    }
                }
            }
            Op::Remove { path, key, operand } => {
                let Some(value) = operand.resolve(payload) else { return };
                if let Some(Value::Array(items)) = path::get_mut(state, path) {
                    items.retain(|item| !item.get(key).is_some_and(|field| same(field, value)));
                }
            }
            Op::Increment { path, operand } => {
                if let Some(Value::Number(by)) = operand.resolve(payload) {
                    // Written in place: a slot created here always receives the operand.
                    let slot = path::get_or_insert_null(state, path);
                    if let Some(sum) = add(slot.as_number(), by) {
                        *slot = Value::Number(sum);
                    }
                }
            }
        }
    }
}

/// `current + by`, with a missing current as 0; `None` when the sum is not a finite number.
fn add(current: Option<&Number>, by: &Number) -> Option<Number> {
    let Some(current) = current else { return Some(by.clone()) };
    if let (Some(a), Some(b)) = (current.as_i64(), by.as_i64())
        && let Some(sum) = a.checked_add(b)
    {
        return Some(sum.into());
    }
    Number::from_f64(current.as_f64()? + by.as_f64()?)
}

/// JSON equality where numbers compare by value (1 equals 1.0), as in jsonb.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn program(rule: Value) -> ReducerProgram {
        ReducerProgram::compile(&rule).unwrap_or_else(|e| panic!("{rule} does not compile: {e}"))
    }

    fn run(rule: Value, state: Value, payload: Value) -> Option<Value> {
        program(rule).apply(Some(state), &payload)
    }

    fn error(rule: Value) -> String {
        ReducerProgram::compile(&rule).expect_err("must not compile").to_string()
    }

    #[test]
    fn default_reduce_merges_the_payload() {
        let state = default_reduce(Some(json!({"a": 1, "b": {"c": 2}})), json!({"b": {"c": null, "d": 3}, "e": 4}));
        assert_eq!(state, Some(json!({"a": 1, "b": {"d": 3}, "e": 4})));
        assert_eq!(default_reduce(None, json!({"a": 1})), None, "a deleted stream stays deleted");
    }

    #[test]
    fn set_from_value_and_from_payload() {
        let s = run(json!([{"op": "set", "path": "status", "value": "open"}]), json!({}), json!({}));
        assert_eq!(s, Some(json!({"status": "open"})));
        let s = run(
            json!([{"op": "set", "path": "address.city", "from": "city"}]),
            json!({"a": 1}),
            json!({"city": "Oslo"}),
        );
        assert_eq!(s, Some(json!({"a": 1, "address": {"city": "Oslo"}})));
        let s =
            run(json!([{"op": "set", "path": "x", "from": "who.name"}]), json!({}), json!({"who": {"name": {"n": 1}}}));
        assert_eq!(s, Some(json!({"x": {"n": 1}})), "from takes a whole subtree");
    }

    #[test]
    fn set_with_a_missing_from_does_nothing_but_null_is_a_value() {
        let rule = json!([{"op": "set", "path": "city", "from": "address.city"}]);
        assert_eq!(run(rule.clone(), json!({"city": "Oslo"}), json!({})), Some(json!({"city": "Oslo"})));
        assert_eq!(run(rule.clone(), json!({"city": "Oslo"}), json!({"address": 5})), Some(json!({"city": "Oslo"})));
        assert_eq!(run(rule, json!({"city": "Oslo"}), json!({"address": {"city": null}})), Some(json!({"city": null})));
    }

    #[test]
    fn set_replaces_non_objects_on_the_way() {
        let s = run(json!([{"op": "set", "path": "a.b", "value": 1}]), json!({"a": [1, 2]}), json!({}));
        assert_eq!(s, Some(json!({"a": {"b": 1}})));
        let s = run(json!([{"op": "set", "path": "a", "value": 1}]), json!("text"), json!({}));
        assert_eq!(s, Some(json!({"a": 1})), "a non-object state becomes an object");
    }

    #[test]
    fn unset_removes_a_path() {
        let rule = json!([{"op": "unset", "path": "a.b"}]);
        assert_eq!(run(rule.clone(), json!({"a": {"b": 1, "c": 2}}), json!({})), Some(json!({"a": {"c": 2}})));
        assert_eq!(run(rule.clone(), json!({"x": 1}), json!({})), Some(json!({"x": 1})));
        assert_eq!(run(rule, json!({"a": 3}), json!({})), Some(json!({"a": 3})));
    }

    #[test]
    fn merge_at_the_root_and_at_a_path() {
        let s = run(
            json!([{"op": "merge", "from": "changes"}]),
            json!({"a": 1, "b": 2}),
            json!({"changes": {"b": null, "c": 3}}),
        );
        assert_eq!(s, Some(json!({"a": 1, "c": 3})));
        let s = run(
            json!([{"op": "merge", "path": "profile", "value": {"x": 1}}]),
            json!({"profile": {"y": 2}}),
            json!({}),
        );
        assert_eq!(s, Some(json!({"profile": {"x": 1, "y": 2}})));
        let s = run(json!([{"op": "merge", "path": "p.q", "value": {"x": null, "y": 1}}]), json!({}), json!({}));
        assert_eq!(s, Some(json!({"p": {"q": {"y": 1}}})), "a missing target counts as {{}}");
        let s = run(json!([{"op": "merge", "path": "p", "value": [1]}]), json!({"p": {"y": 2}}), json!({}));
        assert_eq!(s, Some(json!({"p": [1]})), "a non-object patch replaces");
    }

    #[test]
    fn merge_with_null() {
        let s = run(json!([{"op": "merge", "path": "p", "value": null}]), json!({"p": 1, "q": 2}), json!({}));
        assert_eq!(s, Some(json!({"q": 2})), "null removes the path");
        let s = run(json!([{"op": "merge", "path": "p.q", "value": null}]), json!({}), json!({}));
        assert_eq!(s, Some(json!({})), "and creates nothing");
        let s = run(json!([{"op": "merge", "value": null}]), json!({"a": 1}), json!({}));
        assert_eq!(s, Some(Value::Null), "at the root the state becomes JSON null, not deleted");
        let s = run(json!([{"op": "merge", "from": "missing"}]), json!({"a": 1}), json!({}));
        assert_eq!(s, Some(json!({"a": 1})));
    }

    #[test]
    fn append_to_arrays() {
        let rule = json!([{"op": "append", "path": "items", "from": "item"}]);
        let payload = json!({"item": {"sku": "a"}});
        assert_eq!(run(rule.clone(), json!({}), payload.clone()), Some(json!({"items": [{"sku": "a"}]})));
        assert_eq!(run(rule.clone(), json!({"items": null}), payload.clone()), Some(json!({"items": [{"sku": "a"}]})));
        assert_eq!(
            run(rule.clone(), json!({"items": [1]}), payload.clone()),
            Some(json!({"items": [1, {"sku": "a"}]}))
        );
        assert_eq!(run(rule.clone(), json!({"items": "x"}), payload), Some(json!({"items": [{"sku": "a"}]})));
        assert_eq!(run(rule, json!({"items": [1]}), json!({})), Some(json!({"items": [1]})), "missing from");
        let s = run(json!([{"op": "append", "path": "a.b", "value": null}]), json!({}), json!({}));
        assert_eq!(s, Some(json!({"a": {"b": [null]}})));
    }

    #[test]
    fn remove_from_arrays_by_key() {
        let rule = json!([{"op": "remove", "path": "items", "key": "sku", "from": "sku"}]);
        let state = json!({"items": [{"sku": "a", "n": 1}, {"sku": "b"}, {"sku": "a"}, "a", {"other": "a"}, ["a"]]});
        let s = run(rule.clone(), state.clone(), json!({"sku": "a"}));
        assert_eq!(s, Some(json!({"items": [{"sku": "b"}, "a", {"other": "a"}, ["a"]]})));
        assert_eq!(run(rule.clone(), state.clone(), json!({})), Some(state), "missing from");
        assert_eq!(
            run(rule.clone(), json!({"items": {"sku": "a"}}), json!({"sku": "a"})),
            Some(json!({"items": {"sku": "a"}}))
        );
        assert_eq!(run(rule, json!({}), json!({"sku": "a"})), Some(json!({})), "no array, nothing created");
    }

    #[test]
    fn remove_compares_numbers_by_value() {
        let rule = json!([{"op": "remove", "path": "xs", "key": "id", "value": 1}]);
        let s = run(rule, json!({"xs": [{"id": 1.0}, {"id": 1}, {"id": "1"}, {"id": 2}]}), json!({}));
        assert_eq!(s, Some(json!({"xs": [{"id": "1"}, {"id": 2}]})));
        let rule = json!([{"op": "remove", "path": "xs", "key": "id", "value": {"k": [1]}}]);
        let s = run(rule, json!({"xs": [{"id": {"k": [1]}}, {"id": {"k": [2]}}]}), json!({}));
        assert_eq!(s, Some(json!({"xs": [{"id": {"k": [2]}}]})), "structured values compare whole");
    }

    #[test]
    fn increment_integers_and_floats() {
        let rule = |by: Value| json!([{"op": "increment", "path": "n", "value": by}]);
        assert_eq!(run(rule(json!(2)), json!({"n": 40}), json!({})), Some(json!({"n": 42})));
        assert_eq!(run(rule(json!(-5)), json!({}), json!({})), Some(json!({"n": -5})), "missing counts as 0");
        assert_eq!(run(rule(json!(2)), json!({"n": "x"}), json!({})), Some(json!({"n": 2})), "non-number counts as 0");
        assert_eq!(run(rule(json!(2)), json!({"n": null}), json!({})), Some(json!({"n": 2})));
        assert_eq!(run(rule(json!(0.5)), json!({"n": 1}), json!({})), Some(json!({"n": 1.5})));
        assert_eq!(run(rule(json!(1)), json!({"n": 0.5}), json!({})), Some(json!({"n": 1.5})));
        let s = run(rule(json!(0.5)), json!({"n": 0.5}), json!({})).unwrap();
        assert!(s["n"].is_f64(), "a float stays a float even when whole");
        let s = run(rule(json!(2)), json!({"n": 40}), json!({})).unwrap();
        assert!(s["n"].is_i64());
    }

    #[test]
    fn increment_overflow_and_oddities() {
        let rule = |by: Value| json!([{"op": "increment", "path": "n", "value": by}]);
        let s = run(rule(json!(1)), json!({"n": i64::MAX}), json!({})).unwrap();
        assert_eq!(s["n"].as_f64(), Some(i64::MAX as f64 + 1.0), "overflow falls back to a float");
        assert!(s["n"].is_f64());
        let s = run(rule(json!(1)), json!({"n": u64::MAX}), json!({})).unwrap();
        assert!(s["n"].is_f64());
        let s = run(rule(json!(f64::MAX)), json!({"n": f64::MAX}), json!({})).unwrap();
        assert_eq!(s["n"], json!(f64::MAX), "an infinite sum leaves the value alone");
        assert_eq!(
            run(rule(json!("3")), json!({"n": 1}), json!({})),
            Some(json!({"n": 1})),
            "a string operand does nothing"
        );
        assert_eq!(run(rule(json!(null)), json!({}), json!({})), Some(json!({})), "and creates nothing");
        let s = run(json!([{"op": "increment", "path": "t.n", "from": "qty"}]), json!({"t": 1}), json!({"qty": 3}));
        assert_eq!(s, Some(json!({"t": {"n": 3}})));
        let s = run(json!([{"op": "increment", "path": "n", "from": "qty"}]), json!({"n": 1}), json!({}));
        assert_eq!(s, Some(json!({"n": 1})), "missing from");
    }

    #[test]
    fn delete_makes_the_state_none_for_good() {
        let deleting = program(
            json!([{"op": "set", "path": "a", "value": 1}, {"op": "$delete"}, {"op": "set", "path": "b", "value": 2}]),
        );
        assert_eq!(deleting.apply(Some(json!({})), &json!({})), None);
        let setting = program(json!([{"op": "set", "path": "a", "value": 1}]));
        assert_eq!(setting.apply(None, &json!({})), None, "a deleted stream stays deleted");
        let mut state = Some(json!({}));
        for rule in [&deleting, &setting, &setting] {
            state = rule.apply(state, &json!({}));
        }
        assert_eq!(state, None, "later events leave it deleted");
    }

    #[test]
    fn steps_run_in_order() {
        let rule = json!([
            {"op": "set", "path": "total", "value": 0},
            {"op": "increment", "path": "total", "from": "amount"},
            {"op": "increment", "path": "total", "from": "amount"},
            {"op": "append", "path": "log", "from": "amount"},
            {"op": "unset", "path": "draft"}
        ]);
        let s = run(rule, json!({"total": 100, "draft": true}), json!({"amount": 7}));
        assert_eq!(s, Some(json!({"total": 14, "log": [7]})));
        assert_eq!(
            run(json!([]), json!({"a": 1}), json!({"b": 2})),
            Some(json!({"a": 1})),
            "an empty rule ignores the event"
        );
    }

    #[test]
    fn replay_many_events() {
        let rule = program(
            json!([{"op": "increment", "path": "count", "value": 1}, {"op": "set", "path": "last", "from": "i"}]),
        );
        let mut state = Some(json!({}));
        for i in 0..100_000 {
            state = rule.apply(state, &json!({"i": i}));
        }
        assert_eq!(state, Some(json!({"count": 100_000, "last": 99_999})));
    }

    #[test]
    fn compile_errors_name_the_step() {
        assert_eq!(error(json!({"op": "set"})), "program must be a JSON array of steps, not an object");
        assert_eq!(error(json!(null)), "program must be a JSON array of steps, not null");
        assert_eq!(error(json!(["set"])), "step 0: a step must be a JSON object with an \"op\", not a string");
        assert_eq!(error(json!([{"path": "a"}])), "step 0: \"op\" is missing");
        assert_eq!(error(json!([{"op": 1}])), "step 0: \"op\" must be a string, not a number");
        let ok = json!({"op": "unset", "path": "a"});
        assert_eq!(
            error(json!([ok.clone(), ok, {"op": "sett", "path": "a", "value": 1}])),
            "step 2: unknown op \"sett\""
        );
        assert_eq!(error(json!([{"op": "rename", "from": "a", "to": "b"}])), "step 0: unknown op \"rename\"");
    }

    #[test]
    fn compile_errors_about_operands() {
        assert_eq!(error(json!([{"op": "set", "path": "a"}])), "step 0: \"set\" needs \"from\" or \"value\"");
        assert_eq!(error(json!([{"op": "merge"}])), "step 0: \"merge\" needs \"from\" or \"value\"");
        assert_eq!(
            error(json!([{"op": "increment", "path": "a", "from": "b", "value": 1}])),
            "step 0: \"increment\" takes \"from\" or \"value\", not both"
        );
        assert_eq!(
            error(json!([{"op": "append", "path": "a", "from": 3}])),
            "step 0: \"from\" must be a string, not a number"
        );
        assert_eq!(error(json!([{"op": "append", "path": "a", "from": ""}])), "step 0: \"from\" must not be empty");
    }

    #[test]
    fn compile_errors_about_paths_and_keys() {
        assert_eq!(error(json!([{"op": "set", "value": 1}])), "step 0: \"set\" needs \"path\"");
        assert_eq!(error(json!([{"op": "unset"}])), "step 0: \"unset\" needs \"path\"");
        assert_eq!(
            error(json!([{"op": "set", "path": ["a"], "value": 1}])),
            "step 0: \"path\" must be a string, not an array"
        );
        assert_eq!(
            error(json!([{"op": "merge", "path": null, "value": {}}])),
            "step 0: \"path\" must be a string, not null"
        );
        assert_eq!(error(json!([{"op": "set", "path": "", "value": 1}])), "step 0: \"path\" must not be empty");
        assert_eq!(
            error(json!([{"op": "unset", "path": "a..b"}])),
            "step 0: \"path\" has an empty segment in \"a..b\""
        );
        assert_eq!(
            error(json!([{"op": "set", "paht": "a", "value": 1}])),
            "step 0: unknown key \"paht\" in a \"set\" step (it takes \"path\", \"from\", \"value\")"
        );
        assert_eq!(
            error(json!([{"op": "$delete", "path": "a"}])),
            "step 0: unknown key \"path\" in a \"$delete\" step (it takes only \"op\")"
        );
        assert_eq!(error(json!([{"op": "remove", "path": "a", "value": 1}])), "step 0: \"remove\" needs \"key\"");
        assert_eq!(
            error(json!([{"op": "remove", "path": "a", "key": 1, "value": 1}])),
            "step 0: \"key\" must be a string, not a number"
        );
        assert_eq!(
            error(json!([{"op": "remove", "path": "a", "key": "", "value": 1}])),
            "step 0: \"key\" must not be empty"
        );
    }

    #[test]
    fn every_op_compiles() {
        let rule = json!([
            {"op": "set", "path": "a", "value": null},
            {"op": "set", "path": "a", "from": "x.y"},
            {"op": "unset", "path": "a"},
            {"op": "merge", "value": {}},
            {"op": "merge", "path": "m", "from": "p"},
            {"op": "append", "path": "a", "value": 1},
            {"op": "remove", "path": "a", "key": "id", "from": "id"},
            {"op": "increment", "path": "n", "value": 1},
            {"op": "$delete"}
        ]);
        assert_eq!(program(rule).ops.len(), 9);
        assert!(ReducerProgram::compile(&json!([])).is_ok());
    }
}
