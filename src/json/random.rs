//! A small deterministic generator for property tests without dependencies (xorshift64), and
//! the JSON values the merge tests draw from it: few keys, so that patches overlap.

use serde_json::{Map, Value, json};

pub struct Gen(pub u64);

impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value at most `depth` containers deep; objects have up to 3 members named from `keys`.
    pub fn value(&mut self, depth: u32, keys: &[&str]) -> Value {
        match self.next() % if depth == 0 { 4 } else { 7 } {
            0 => Value::Null,
            1 => json!(self.next() % 3),
            2 => json!(["x", "y"][(self.next() % 2) as usize]),
            3 => json!(self.next().is_multiple_of(2)),
            4 => json!([self.value(depth - 1, keys)]),
            _ => {
                let n = self.next() % 4;
                let map: Map<String, Value> = (0..n)
                    .map(|_| (keys[(self.next() % keys.len() as u64) as usize].to_owned(), self.value(depth - 1, keys)))
                    .collect();
                Value::Object(map)
            }
        }
    }
}
