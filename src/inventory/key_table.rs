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

    fn position(&self, key: ObjectKey) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&key, |(held, _)| *held)
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.entries.capacity()
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
