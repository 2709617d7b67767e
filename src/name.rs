//! Names read from the cluster — namespaces, workloads, containers, images as written, secrets
//! — held once and shared: the store, the tracked inventory, the running pods and the series
//! each hold a pointer to the same text, not a copy of it (docs/architecture.md, "Footprint").
//! An [`Interner`] makes equal names one allocation across objects: fifty namespaces are fifty
//! strings, not one per workload.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::ops::Deref;
use std::sync::Arc;

/// A shared, immutable name. Compares, hashes and prints as its text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As an OpenTelemetry string value, sharing the text.
    pub fn to_otel(&self) -> opentelemetry::StringValue {
        opentelemetry::StringValue::from(self.0.clone())
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::from("")
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Self {
        Name(Arc::from(text))
    }
}

impl From<String> for Name {
    fn from(text: String) -> Self {
        Name(Arc::from(text))
    }
}

impl From<&String> for Name {
    fn from(text: &String) -> Self {
        Name(Arc::from(text.as_str()))
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Equal values as one allocation: names, and the container lists pods of one template
/// share. Values no one else holds any more are dropped now and then, so the table follows
/// the cluster instead of remembering everything it ever saw.
#[derive(Debug)]
pub struct Interner<T: ?Sized + Eq + Hash = str> {
    held: HashSet<Arc<T>>,
    /// The table's size after the last sweep: the next sweep comes when it has doubled.
    swept_at: usize,
}

impl<T: ?Sized + Eq + Hash> Default for Interner<T> {
    fn default() -> Self {
        Self { held: HashSet::new(), swept_at: 0 }
    }
}

/// Sweeps never run on a table smaller than this: a small table costs nothing to keep.
const SWEEP_FLOOR: usize = 1024;

impl<T: ?Sized + Eq + Hash> Interner<T> {
    /// The held value equal to `value`, else `value` itself, held from now on.
    pub fn share_arc(&mut self, value: &Arc<T>) -> Arc<T> {
        if let Some(held) = self.held.get(&**value) {
            return held.clone();
        }
        if self.held.len() >= SWEEP_FLOOR.max(self.swept_at * 2) {
            self.sweep();
        }
        self.held.insert(value.clone());
        value.clone()
    }

    /// The held value equal to `value`, if one is.
    pub fn get(&self, value: &T) -> Option<Arc<T>> {
        self.held.get(value).cloned()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Drops the values only this table holds.
    pub fn sweep(&mut self) {
        self.held.retain(|value| Arc::strong_count(value) > 1);
        self.held.shrink_to_fit();
        self.swept_at = self.held.len();
    }
}

impl Interner<str> {
    /// The same name, as the one held here (the given one stays valid either way).
    pub fn share(&mut self, name: &Name) -> Name {
        Name(self.share_arc(&name.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_are_one_allocation_until_no_one_holds_them() {
        let mut interner: Interner = Interner::default();
        let a = interner.share(&Name::from("team-a"));
        let b = interner.share(&Name::from(String::from("team-a")));
        assert!(Arc::ptr_eq(&a.0, &b.0), "one allocation for equal text");
        let fresh = Name::from("team-b");
        let shared = interner.share(&fresh);
        assert!(Arc::ptr_eq(&fresh.0, &shared.0), "an unknown name is kept as given");
        assert_eq!(interner.len(), 2);
        drop((b, fresh, shared));
        interner.sweep();
        assert_eq!(interner.len(), 1, "team-b is held by no one, team-a still is");
        assert_eq!(a, "team-a");
        assert_eq!(a.to_string(), "team-a");
        assert_eq!(format!("{a:?}"), "\"team-a\"");
    }

    #[test]
    fn sweeps_come_when_the_table_doubles() {
        let mut interner: Interner = Interner::default();
        for i in 0..SWEEP_FLOOR * 3 {
            drop(interner.share(&Name::from(format!("pod-{i}"))));
        }
        assert!(interner.len() < SWEEP_FLOOR * 2, "names no one holds were swept: {}", interner.len());
        let kept: Vec<Name> = (0..10).map(|i| interner.share(&Name::from(format!("kept-{i}")))).collect();
        interner.sweep();
        assert_eq!(interner.len(), kept.len());
    }
}
