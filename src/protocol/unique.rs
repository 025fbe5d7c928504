//! tv4's `uniqueItems` in linear time. tv4 compares every pair `i < j` in order and reports the
//! first equal one: the first item that has an equal later one, with the first such later one.
//! That is the first occurrence of a repeated value, the earliest of them, with its second
//! occurrence, which one pass with a map from value to first index finds.
//!
//! Items are compared as serde_json compares [`Value`]s (as the schema check always has): an
//! object's key order does not matter, and `1` and `1.0` differ. The hash agrees with that `==`.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde_json::{Number, Value};

/// The pair of indices tv4 reports for `items`, or `None` when no two are equal.
pub(super) fn first_duplicate(items: &[Value]) -> Option<(usize, usize)> {
    let mut first_at: HashMap<Item<'_>, usize> = HashMap::with_capacity(items.len());
    let mut found: Option<(usize, usize)> = None;
    for (j, item) in items.iter().enumerate() {
        match first_at.entry(Item(item)) {
            Entry::Vacant(entry) => {
                entry.insert(j);
            }
            // Later occurrences of this value have the same first index: never strictly less.
            Entry::Occupied(entry) => {
                let i = *entry.get();
                if found.is_none_or(|(earliest, _)| i < earliest) {
                    found = Some((i, j));
                }
            }
        }
    }
    found
}

/// A value as a map key, equal as serde_json's `==` says.
struct Item<'a>(&'a Value);

impl PartialEq for Item<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Item<'_> {}

impl Hash for Item<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_value(self.0, state);
    }
}

fn hash_value<H: Hasher>(value: &Value, state: &mut H) {
    std::mem::discriminant(value).hash(state);
    match value {
        Value::Null => {}
        Value::Bool(b) => b.hash(state),
        Value::Number(n) => hash_number(n, state),
        Value::String(s) => s.hash(state),
        Value::Array(items) => {
            items.len().hash(state);
            items.iter().for_each(|item| hash_value(item, state));
        }
        Value::Object(map) => {
            // Equal maps may list their keys in another order: entries combine commutatively.
            let entries = map.iter().fold(0u64, |sum, (key, value)| {
                let mut entry = DefaultHasher::new();
                key.hash(&mut entry);
                hash_value(value, &mut entry);
                sum.wrapping_add(entry.finish())
            });
            map.len().hash(state);
            entries.hash(state);
        }
    }
}

/// serde_json's numbers are equal within a kind (non-negative integer, negative integer,
/// float) and never across kinds; floats by `==`, so `-0.0` is `0.0`.
fn hash_number<H: Hasher>(n: &Number, state: &mut H) {
    if let Some(u) = n.as_u64() {
        (0u8, u).hash(state);
    } else if let Some(i) = n.as_i64() {
        (1u8, i).hash(state);
    } else {
        let f = n.as_f64().unwrap_or_default();
        (2u8, if f == 0.0 { 0.0f64 } else { f }.to_bits()).hash(state);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::Rng;

    /// The check as it was (tv4's own loop): quadratic.
    fn quadratic(items: &[Value]) -> Option<(usize, usize)> {
        for i in 0..items.len() {
            for j in i + 1..items.len() {
                if items[i] == items[j] {
                    return Some((i, j));
                }
            }
        }
        None
    }

    #[test]
    fn reports_the_pair_tv4_reports() {
        let cases = [
            (json!(["a", "b", "a"]), Some((0, 2))),
            (json!(["a", "b", "b", "a"]), Some((0, 3))),
            (json!(["x", "b", "c", "b", "c", "x"]), Some((0, 5))),
            (json!(["x", "b", "c", "c", "b"]), Some((1, 4))),
            (json!(["a", "b", "c"]), None),
            (json!([1, 1.0, "1"]), None),
            (json!([0.0, -0.0]), Some((0, 1))),
            (json!([{"a": 1, "b": 2}, {"b": 2, "a": 1}]), Some((0, 1))),
            (json!([[1, 2], [2, 1], [1, 2]]), Some((0, 2))),
            (json!([null, true, false, null]), Some((0, 3))),
        ];
        for (items, pair) in cases {
            let Value::Array(items) = items else { unreachable!() };
            assert_eq!(first_duplicate(&items), pair, "{items:?}");
        }
    }

    fn random_item(rng: &mut Rng, depth: usize) -> Value {
        let alphabet = ["a", "b", "c", "é", ""];
        match rng.below(if depth == 0 { 6 } else { 8 }) {
            0..=2 => Value::String((0..rng.below(3)).map(|_| *rng.pick(&alphabet)).collect()),
            3 => json!(rng.below(3)),
            4 => json!(*rng.pick(&[0.0, -0.0, 1.0, 2.5, -1.0])),
            5 => json!(*rng.pick(&[-1i64, -2])),
            6 => Value::Array((0..rng.below(3)).map(|_| random_item(rng, depth - 1)).collect()),
            _ => {
                // The same keys in either order, so that equal objects may list them differently.
                let mut keys = ["k", "l", "m"][..rng.below(4)].to_vec();
                if rng.chance(50) {
                    keys.reverse();
                }
                let map = keys.iter().map(|k| (k.to_string(), random_item(rng, depth - 1)));
                Value::Object(map.collect())
            }
        }
    }

    #[test]
    fn agrees_with_the_quadratic_check_on_random_lists() {
        let mut rng = Rng::new(42);
        let mut duplicated = 0;
        for round in 0..20_000 {
            let len = rng.below(12);
            let items: Vec<Value> = (0..len).map(|_| random_item(&mut rng, 2)).collect();
            let expected = quadratic(&items);
            assert_eq!(first_duplicate(&items), expected, "round {round}: {items:?}");
            duplicated += usize::from(expected.is_some_and(|(i, _)| i > 0));
        }
        assert!(duplicated > 5_000, "the lists exercise later first pairs too ({duplicated})");
    }
}
