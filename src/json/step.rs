//! Strict reading of a program's steps, shared by the reducer and transform compilers: every
//! mistake is found here, at registration, so that running a program never fails.

use serde_json::{Map, Value};

use super::limits::MAX_STEPS;
use super::{Path, ProgramError};

/// Compiles every step of `program` (a JSON array of step objects) with `compile_step`, placing
/// each error at its step.
pub(super) fn compile_all<T>(
    program: &Value,
    compile_step: impl Fn(&Step<'_>) -> Result<T, ProgramError>,
) -> Result<Vec<T>, ProgramError> {
    let Value::Array(steps) = program else {
        return Err(ProgramError::new(format!("program must be a JSON array of steps, not {}", kind(program))));
    };
    if steps.len() > MAX_STEPS {
        return Err(ProgramError::new(format!(
            "program has {} steps; a program has at most {MAX_STEPS} steps",
            steps.len()
        )));
    }
    steps
        .iter()
        .enumerate()
        .map(|(index, value)| Step::read(value).and_then(|step| compile_step(&step)).map_err(|e| e.at(index)))
        .collect()
}

/// One step object, with its `"op"` read. Errors from its methods carry no index yet.
pub(super) struct Step<'a> {
    op: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> Step<'a> {
    fn read(value: &'a Value) -> Result<Self, ProgramError> {
        let Value::Object(fields) = value else {
            return Err(ProgramError::new(format!("a step must be a JSON object with an \"op\", not {}", kind(value))));
        };
        let op = match fields.get("op") {
            Some(Value::String(op)) => op,
            Some(other) => return Err(ProgramError::new(format!("\"op\" must be a string, not {}", kind(other)))),
            None => return Err(ProgramError::new("\"op\" is missing")),
        };
        Ok(Step { op, fields })
    }

    pub(super) fn op(&self) -> &'a str {
        self.op
    }

    /// The error for an op this kind of program does not have.
    pub(super) fn unknown_op(&self) -> ProgramError {
        ProgramError::new(format!("unknown op \"{}\"", self.op))
    }

    /// Rejects any key but `"op"` and `allowed`, so a misspelt key is not silently ignored.
    pub(super) fn only(&self, allowed: &[&str]) -> Result<(), ProgramError> {
        match self.fields.keys().find(|k| *k != "op" && !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(key) => {
                let takes = if allowed.is_empty() {
                    "only \"op\"".to_owned()
                } else {
                    allowed.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
                };
                Err(ProgramError::new(format!("unknown key \"{key}\" in a \"{}\" step (it takes {takes})", self.op)))
            }
        }
    }

    /// A required member of any JSON type (`null` included).
    pub(super) fn value(&self, key: &str) -> Result<&'a Value, ProgramError> {
        self.fields.get(key).ok_or_else(|| self.missing(key))
    }

    /// An optional member of any JSON type.
    pub(super) fn optional(&self, key: &str) -> Option<&'a Value> {
        self.fields.get(key)
    }

    /// A required non-empty string.
    pub(super) fn string(&self, key: &str) -> Result<&'a str, ProgramError> {
        match self.value(key)? {
            Value::String(s) if s.is_empty() => Err(ProgramError::new(format!("\"{key}\" must not be empty"))),
            Value::String(s) => Ok(s),
            other => Err(ProgramError::new(format!("\"{key}\" must be a string, not {}", kind(other)))),
        }
    }

    /// A required JSON object.
    pub(super) fn object(&self, key: &str) -> Result<&'a Map<String, Value>, ProgramError> {
        match self.value(key)? {
            Value::Object(map) => Ok(map),
            other => Err(ProgramError::new(format!("\"{key}\" must be a JSON object, not {}", kind(other)))),
        }
    }

    /// A required dotted path.
    pub(super) fn path(&self, key: &str) -> Result<Path, ProgramError> {
        Self::parse_path(key, self.value(key)?)
    }

    /// An optional dotted path.
    pub(super) fn optional_path(&self, key: &str) -> Result<Option<Path>, ProgramError> {
        self.fields.get(key).map(|v| Self::parse_path(key, v)).transpose()
    }

    fn parse_path(key: &str, value: &Value) -> Result<Path, ProgramError> {
        match value {
            Value::String(text) => Path::parse_named(&format!("\"{key}\""), text),
            other => Err(ProgramError::new(format!("\"{key}\" must be a string, not {}", kind(other)))),
        }
    }

    fn missing(&self, key: &str) -> ProgramError {
        ProgramError::new(format!("\"{}\" needs \"{key}\"", self.op))
    }
}

/// What a JSON value is, for messages.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
