//! Merge patches (RFC 7396) composed newest first, for a replay that reads a stream backwards.
//!
//! Folding `merge_patch` over a stream's payloads converts every value of every payload, though
//! most are overwritten by a later event. Read newest first, a member that a newer patch has
//! already set or deleted can be skipped unread, and a payload that is not an object (which
//! replaces the whole state) ends the replay: nothing older can show. [`Underlay`] holds the
//! composition of the patches seen so far; [`Underlay::apply`] puts it over the state the
//! replay started from (the snapshot or the initial state), giving exactly what the forward
//! fold gives (`tests` check that on random streams).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::path::force_object;

/// A patch as the underlay reads it, so that only what is used gets converted: the serde
/// value itself in the tests, a jsonb value in place in a replay (src/jsonb.rs).
pub trait Patch: Sized {
    type Error;
    fn is_null(&self) -> bool;
    fn is_object(&self) -> bool;
    /// Calls `each` for every member of an object (for anything else, never).
    fn for_each_member(&self, each: &mut dyn FnMut(&str, Self) -> Result<(), Self::Error>) -> Result<(), Self::Error>;
    /// The whole value.
    fn to_value(&self) -> Result<Value, Self::Error>;
}

/// What the newer patches do to one place.
#[derive(Debug)]
enum Slot {
    /// Sets it to this value, whatever was there (never an object patch: those are `Merge`).
    Set(Value),
    /// Removes it (a `null` member).
    Deleted,
    /// Merges these members into it, as an object patch does (a non-object there counts as `{}`).
    Merge(BTreeMap<String, Slot>),
}

/// The patches seen so far, newest first, composed into one.
#[derive(Debug, Default)]
pub struct Underlay(Option<Slot>);

impl Underlay {
    pub fn new() -> Self {
        Self(None)
    }

    /// Whether older patches can no longer change the result: a payload that is not an object
    /// replaced the state whole.
    pub fn settled(&self) -> bool {
        matches!(self.0, Some(Slot::Set(_)))
    }

    /// Puts `patch`, older than every patch put before, beneath them.
    pub fn put_older<P: Patch>(&mut self, patch: P) -> Result<(), P::Error> {
        match &mut self.0 {
            None => {
                self.0 = Some(Slot::of(patch)?);
                Ok(())
            }
            Some(slot) => slot.beneath(patch),
        }
    }

    /// The state the replay started from with every patch applied, oldest first.
    pub fn apply(self, mut base: Value) -> Value {
        if let Some(slot) = self.0 {
            slot.apply_to(&mut base);
        }
        base
    }
}

impl Slot {
    /// A patch with nothing newer over it.
    fn of<P: Patch>(patch: P) -> Result<Slot, P::Error> {
        if !patch.is_object() {
            return Ok(Slot::Set(patch.to_value()?));
        }
        let mut members = BTreeMap::new();
        patch.for_each_member(&mut |key, value| {
            members.insert(key.to_owned(), Slot::of_member(value)?);
            Ok(())
        })?;
        Ok(Slot::Merge(members))
    }

    /// A member of an object patch: `null` removes the member.
    fn of_member<P: Patch>(value: P) -> Result<Slot, P::Error> {
        if value.is_null() { Ok(Slot::Deleted) } else { Slot::of(value) }
    }

    /// Composes an older patch of this place beneath what the newer ones do to it.
    fn beneath<P: Patch>(&mut self, older: P) -> Result<(), P::Error> {
        let Slot::Merge(members) = self else {
            // set or removed by a newer patch: the older one cannot show
            return Ok(());
        };
        if !older.is_object() {
            // the older patch leaves a non-object (or nothing) here, which the newer object
            // patches treat as `{}`: the result is theirs alone
            let Slot::Merge(members) = std::mem::replace(self, Slot::Deleted) else { unreachable!("matched above") };
            *self = Slot::Set(materialize(members));
            return Ok(());
        }
        older.for_each_member(&mut |key, value| match members.get_mut(key) {
            Some(slot) => slot.beneath(value),
            None => {
                members.insert(key.to_owned(), Slot::of_member(value)?);
                Ok(())
            }
        })
    }

    fn apply_to(self, target: &mut Value) {
        match self {
            Slot::Set(value) => *target = value,
            Slot::Deleted => *target = Value::Null,
            Slot::Merge(members) => {
                let target = force_object(target);
                for (key, slot) in members {
                    match slot {
                        Slot::Deleted => {
                            target.remove(&key);
                        }
                        Slot::Set(value) => {
                            target.insert(key, value);
                        }
                        merge @ Slot::Merge(_) => match target.get_mut(&key) {
                            Some(existing) => merge.apply_to(existing),
                            None => {
                                let mut fresh = Value::Object(Map::new());
                                merge.apply_to(&mut fresh);
                                target.insert(key, fresh);
                            }
                        },
                    }
                }
            }
        }
    }
}

/// What object patches give applied to `{}`: their members without the removed ones.
fn materialize(members: BTreeMap<String, Slot>) -> Value {
    let mut value = Value::Object(Map::new());
    Slot::Merge(members).apply_to(&mut value);
    value
}

/// A serde value read as a patch.
impl Patch for &Value {
    type Error = std::convert::Infallible;

    fn is_null(&self) -> bool {
        Value::is_null(self)
    }

    fn is_object(&self) -> bool {
        Value::is_object(self)
    }

    fn for_each_member(&self, each: &mut dyn FnMut(&str, Self) -> Result<(), Self::Error>) -> Result<(), Self::Error> {
        if let Value::Object(members) = self {
            for (key, value) in members {
                each(key, value)?;
            }
        }
        Ok(())
    }

    fn to_value(&self) -> Result<Value, Self::Error> {
        Ok((*self).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::merge_patch;
    use serde_json::json;

    fn forward(base: &Value, patches: &[Value]) -> Value {
        let mut state = base.clone();
        for patch in patches {
            merge_patch(&mut state, patch);
        }
        state
    }

    fn backward(base: &Value, patches: &[Value]) -> Value {
        let mut underlay = Underlay::new();
        for patch in patches.iter().rev() {
            if underlay.settled() {
                break;
            }
            underlay.put_older(patch).unwrap();
        }
        underlay.apply(base.clone())
    }

    #[test]
    fn the_cases_that_differ_from_a_plain_overwrite() {
        let cases: Vec<(Value, Vec<Value>)> = vec![
            (json!({"a": 1}), vec![]),
            (json!({"a": 1}), vec![json!({})]),
            (json!({"a": 1}), vec![json!(5), json!({})]),
            (json!({"a": 1}), vec![json!({"a": {"b": 1}}), json!({"a": {"c": 2}})]),
            (json!({"a": 1}), vec![json!({"a": {"b": 1}}), json!({"a": null}), json!({"a": {"c": null}})]),
            (json!({"a": {"x": 1}}), vec![json!({"a": {"b": 1}}), json!({"a": 7}), json!({"a": {"c": 3}})]),
            (json!({"a": {"x": 1}}), vec![json!({"a": {"b": null, "c": {"d": null}}})]),
            (json!(null), vec![json!({"a": [null, {"b": null}]})]),
            (json!({"a": 1}), vec![json!(null)]),
            (json!({"a": 1}), vec![json!({"b": 2}), json!(null), json!({"c": 3})]),
            (json!({"a": 1}), vec![json!([1, 2]), json!({"b": 2})]),
        ];
        for (base, patches) in cases {
            assert_eq!(backward(&base, &patches), forward(&base, &patches), "{base} with {patches:?}");
        }
    }

    use crate::json::random::Gen;

    const KEYS: &[&str] = &["a", "b", "c"];

    /// Mostly objects, as payloads are.
    fn patch(g: &mut Gen) -> Value {
        if g.next().is_multiple_of(12) { g.value(0, KEYS) } else { g.value(3, KEYS) }
    }

    #[test]
    fn backwards_gives_what_forwards_gives_on_random_streams() {
        let mut g = Gen(0x2545_F491_4F6C_DD1D);
        for _ in 0..20_000 {
            let base = g.value(3, KEYS);
            let patches: Vec<Value> = (0..g.next() % 8).map(|_| patch(&mut g)).collect();
            assert_eq!(backward(&base, &patches), forward(&base, &patches), "{base} with {patches:?}");
        }
    }

    #[test]
    fn a_non_object_payload_settles_it() {
        let mut underlay = Underlay::new();
        underlay.put_older(&json!({"a": 1})).unwrap();
        assert!(!underlay.settled());
        underlay.put_older(&json!("x")).unwrap();
        assert!(underlay.settled());
        assert_eq!(underlay.apply(json!({"z": 0})), json!({"a": 1}));
    }
}
