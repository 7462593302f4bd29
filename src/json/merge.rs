//! JSON merge patch (RFC 7396), in place: the default reducer and the `merge` step.

use serde_json::{Map, Value};

use super::path::force_object;

/// Applies `patch` to `target` as RFC 7396 says: an object patch merges key by key into the
/// target (a non-object target counts as `{}`), a `null` member deletes that key, and any other
/// patch replaces the target whole. Only the patch values that end up in the target are cloned.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    let target = force_object(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match target.get_mut(key) {
            Some(existing) => merge_patch(existing, value),
            None => {
                target.insert(key.clone(), without_nulls(value));
            }
        }
    }
}

/// `merge_patch` with a patch the caller is done with: its values are moved, not copied.
pub fn merge_patch_owned(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    let target = force_object(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(&key);
            continue;
        }
        match target.get_mut(&key) {
            Some(existing) => merge_patch_owned(existing, value),
            None => {
                target.insert(key, without_nulls_owned(value));
            }
        }
    }
}

fn without_nulls_owned(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, without_nulls_owned(v))).collect()),
        other => other,
    }
}

/// A patch value merged into nothing: objects lose their `null` members, all the way down.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(mut target: Value, patch: Value) -> Value {
        merge_patch(&mut target, &patch);
        target
    }

    /// RFC 7396 Appendix A, every row: (target, patch, result).
    fn rfc_vectors() -> Vec<(Value, Value, Value)> {
        vec![
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ]
    }

    #[test]
    fn rfc_7396_appendix_a() {
        for (target, patch, expected) in rfc_vectors() {
            assert_eq!(merged(target.clone(), patch.clone()), expected, "{target} + {patch}");
        }
    }

    #[test]
    fn the_owned_merge_gives_the_same() {
        for (target, patch, expected) in rfc_vectors() {
            let mut owned = target.clone();
            merge_patch_owned(&mut owned, patch.clone());
            assert_eq!(owned, expected, "{target} + {patch}");
        }
    }

    #[test]
    fn rfc_7396_section_3_example() {
        let target = json!({
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged"
        });
        let patch = json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null},
            "tags": ["example"]
        });
        let expected = json!({
            "title": "Hello!",
            "author": {"givenName": "John"},
            "tags": ["example"],
            "content": "This will be unchanged",
            "phoneNumber": "+01-123-456-7890"
        });
        assert_eq!(merged(target, patch), expected);
    }

    #[test]
    fn nulls_inside_arrays_and_new_subtrees() {
        assert_eq!(merged(json!({}), json!({"a": [null, {"b": null}]})), json!({"a": [null, {"b": null}]}));
        assert_eq!(merged(json!({}), json!({"a": {"b": {"c": null, "d": 1}}})), json!({"a": {"b": {"d": 1}}}));
        assert_eq!(merged(json!({"a": 1}), json!({"a": {"b": null}})), json!({"a": {}}));
        assert_eq!(merged(json!(null), json!({"a": 1})), json!({"a": 1}));
        assert_eq!(merged(json!({"a": 1}), json!({})), json!({"a": 1}));
    }

    use crate::json::random::Gen;

    const KEYS: &[&str] = &["a", "b", "c", "d"];

    #[test]
    fn applying_a_patch_twice_equals_once() {
        let mut g = Gen(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let (target, patch) = (g.value(3, KEYS), g.value(3, KEYS));
            let once = merged(target, patch.clone());
            assert_eq!(merged(once.clone(), patch.clone()), once, "patch {patch}");
        }
        for (target, patch, _) in rfc_vectors() {
            let once = merged(target, patch.clone());
            assert_eq!(merged(once.clone(), patch), once);
        }
    }

    #[test]
    fn object_patches_delete_nulls_and_set_everything_else() {
        let mut g = Gen(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..2000 {
            let (target, patch) = (g.value(3, KEYS), g.value(3, KEYS));
            let Value::Object(members) = &patch else { continue };
            let result = merged(target, patch.clone());
            let result = result.as_object().expect("an object patch gives an object");
            for (key, value) in members {
                match value {
                    Value::Null => assert!(!result.contains_key(key), "{key} of {patch}"),
                    Value::Object(_) => assert!(result[key].is_object(), "{key} of {patch}"),
                    other => assert_eq!(&result[key], other, "{key} of {patch}"),
                }
            }
        }
    }
}
