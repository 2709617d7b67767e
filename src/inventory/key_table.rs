//! A table by [`ObjectKey`] kept as one sorted list, for what the store holds per pod and per
//! owned object (tens of thousands of small entries). A hash table held them at 50–87 % load,
//! so a pod's 32 bytes cost 53 at 20,000 pods; here they cost their size and at most an eighth
//! more as the table grows, a quarter as it shrinks (docs/architecture.md, "Footprint"). Lookups are binary searches; an insert or a
//! removal moves the entries after it, a memmove of a few hundred KiB at 20,000 pods, paid
//! only when a pod starts, stops or changes its digests, never for status churn.

use super::running::ObjectKey;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTable<V> {
    /// Sorted by key, each key once.
    entries: Vec<(ObjectKey, V)>,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<V> KeyTable<V> {
    /// From a list's entries in any order; of a key listed twice, the last is kept.
    pub fn from_entries(mut entries: Vec<(ObjectKey, V)>) -> Self {
        // Stable, so equal keys stay in list order and the last of them can be picked.
        entries.sort_by_key(|(key, _)| *key);
        entries.reverse();
        entries.dedup_by_key(|(key, _)| *key);
        entries.reverse();
        entries.shrink_to_fit();
        Self { entries }
    }

    pub fn get(&self, key: ObjectKey) -> Option<&V> {
        let at = self.position(key).ok()?;
        self.entries.get(at).map(|(_, value)| value)
    }

    /// Holds `value` under `key`; the value held before, if one was.
    pub fn insert(&mut self, key: ObjectKey, value: V) -> Option<V> {
        match self.position(key) {
            Ok(at) => self.entries.get_mut(at).map(|(_, held)| std::mem::replace(held, value)),
            Err(at) => {
                if self.entries.len() == self.entries.capacity() {
                    // An eighth at a time, not double: the slack is what this table saves.
                    self.entries.reserve_exact(grown_by(self.entries.len()));
                }
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: ObjectKey) -> Option<V> {
        let at = self.position(key).ok()?;
        let (_, value) = self.entries.remove(at);
        let len = self.entries.len();
        if self.entries.capacity() > len + 2 * grown_by(len) {
            self.entries.shrink_to(len + grown_by(len));
        }
        Some(value)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + Clone {
        self.entries.iter().map(|(_, value)| value)
    }

    fn get_mut(&mut self, key: ObjectKey) -> Option<&mut V> {
        let at = self.position(key).ok()?;
        self.entries.get_mut(at).map(|(_, value)| value)
    }

    fn position(&self, key: ObjectKey) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&key, |(held, _)| *held)
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}

/// A list under way into a held table. An entry already held is replaced in place (an equal
/// one changes nothing); a new one waits beside the table, so that a list of all-new entries is
/// one sort at the end, not an insert in the middle each; the keys listed are remembered. When
/// the list ends, what it did not name goes and the new entries come in. A relist so holds the
/// keys it saw (8 bytes each) and what is new, not a second copy of the table: that copy was
/// the peak of a forced relist at 150,000 pods (docs/architecture.md, "At Kubernetes' limits").
#[derive(Debug)]
pub struct Relist<V> {
    listed: Vec<ObjectKey>,
    added: Vec<(ObjectKey, V)>,
    changed: bool,
}

impl<V> Default for Relist<V> {
    fn default() -> Self {
        Self { listed: Vec::new(), added: Vec::new(), changed: false }
    }
}

impl<V: PartialEq> Relist<V> {
    /// A listed entry. `held` makes the value the one to hold (shares its parts), and is only
    /// called when the value is not the one held already.
    pub fn apply(&mut self, table: &mut KeyTable<V>, key: ObjectKey, value: V, held: impl FnOnce(V) -> V) {
        self.listed.push(key);
        match table.get_mut(key) {
            Some(current) if *current == value => {}
            Some(current) => {
                *current = held(value);
                self.changed = true;
            }
            None => self.added.push((key, held(value))),
        }
    }

    /// The list ended: `table` now holds exactly what it listed. Whether anything changed.
    pub fn finish(self, table: &mut KeyTable<V>) -> bool {
        let Relist { mut listed, added, changed } = self;
        listed.sort_unstable();
        let before = table.entries.len();
        table.entries.retain(|(key, _)| listed.binary_search(key).is_ok());
        drop(listed);
        let removed = table.entries.len() != before;
        let grew = !added.is_empty();
        if grew {
            // Held entries first, then the new ones in list order: a stable sort keeps, of a
            // key listed twice, the last.
            if table.entries.is_empty() {
                table.entries = added;
            } else {
                table.entries.extend(added);
            }
            *table = KeyTable::from_entries(std::mem::take(&mut table.entries));
        } else if removed {
            table.entries.shrink_to(table.entries.len() + grown_by(table.entries.len()));
        }
        changed || removed || grew
    }
}

/// Room added when a table of `len` entries is full: an eighth, and a few for small tables.
fn grown_by(len: usize) -> usize {
    len / 8 + 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::WorkloadKind;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::of(WorkloadKind::Pod, "ns", name)
    }

    #[test]
    fn a_sorted_table_answers_as_a_map_does() {
        let mut table = KeyTable::from_entries(vec![(key("b"), 2), (key("a"), 1), (key("b"), 3)]);
        assert_eq!(table.len(), 2, "a key listed twice is held once");
        assert_eq!(table.get(key("b")), Some(&3), "the last of a key listed twice");
        assert_eq!(table.insert(key("c"), 4), None);
        assert_eq!(table.insert(key("a"), 5), Some(1));
        assert_eq!(table.get(key("a")), Some(&5));
        assert_eq!(table.remove(key("b")), Some(3));
        assert_eq!(table.remove(key("b")), None);
        assert_eq!(table.get(key("zz")), None);
        let mut values: Vec<i32> = table.values().copied().collect();
        values.sort_unstable();
        assert_eq!(values, [4, 5]);
        let same = KeyTable::from_entries(vec![(key("c"), 4), (key("a"), 5)]);
        assert_eq!(table, same, "equal whatever the order things came in");
    }

    fn relisted(table: &mut KeyTable<i32>, entries: &[(&str, i32)]) -> bool {
        let mut relist = Relist::default();
        for (name, value) in entries {
            relist.apply(table, key(name), *value, |v| v);
        }
        relist.finish(table)
    }

    #[test]
    fn a_relist_leaves_exactly_what_it_listed() {
        let mut table = KeyTable::from_entries(vec![(key("a"), 1), (key("b"), 2), (key("c"), 3)]);
        let listed = [("c", 3), ("d", 4), ("a", 10), ("d", 5), ("e", 6)];
        assert!(relisted(&mut table, &listed), "b gone, a changed, d and e new");
        let fresh = KeyTable::from_entries(listed.iter().map(|(n, v)| (key(n), *v)).collect());
        assert_eq!(table, fresh, "as if built from the list alone; of d listed twice, the last");

        assert!(!relisted(&mut table, &[("e", 6), ("a", 10), ("c", 3), ("d", 5)]), "the same again: no change");
        assert!(relisted(&mut table, &[("e", 6), ("a", 10), ("c", 3)]), "d gone");
        assert_eq!(table.get(key("d")), None);
        assert!(relisted(&mut table, &[]), "an empty list empties the table");
        assert!(table.is_empty());
        assert!(relisted(&mut table, &[("x", 1), ("y", 2)]), "into an empty table, as a first list");
        assert_eq!(table, KeyTable::from_entries(vec![(key("y"), 2), (key("x"), 1)]));
    }

    #[test]
    fn a_relist_shares_only_what_changed() {
        let mut table = KeyTable::from_entries(vec![(key("a"), 1), (key("b"), 2)]);
        let mut relist = Relist::default();
        let mut made_held = 0;
        for (name, value) in [("a", 1), ("b", 3), ("c", 4)] {
            relist.apply(&mut table, key(name), value, |v| {
                made_held += 1;
                v
            });
        }
        assert_eq!(made_held, 2, "b changed and c is new; a is held as it is");
        assert!(relist.finish(&mut table));
    }

    #[test]
    fn room_grows_and_shrinks_by_an_eighth() {
        let mut table = KeyTable::default();
        for i in 0..10_000 {
            table.insert(key(&i.to_string()), i);
        }
        assert_eq!(table.len(), 10_000);
        assert!(table.capacity() <= 10_000 + grown_by(10_000), "slack {}", table.capacity() - 10_000);
        for i in 0..9_000 {
            assert_eq!(table.remove(key(&i.to_string())), Some(i));
        }
        assert!(table.capacity() <= 1_000 + 2 * grown_by(1_000), "given back: {}", table.capacity());
        assert!((9_000..10_000).all(|i| table.get(key(&i.to_string())) == Some(&i)));
    }
}
