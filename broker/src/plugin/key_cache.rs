//! Routing key -> binding ids, for plugins whose routing depends on the key alone.

use std::collections::HashMap;

use crate::exchange::BindingId;

/// A bounded cache. When full it starts over rather than tracking recency: hot keys
/// come back within a few messages, and clearing is O(1) amortised with no bookkeeping
/// on the hit path.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: HashMap<Box<str>, Box<[BindingId]>>,
    capacity: usize,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            entries: HashMap::new(),
            capacity,
        }
    }

    pub fn get(&self, key: &str) -> Option<&[BindingId]> {
        self.entries.get(key).map(|ids| &ids[..])
    }

    pub fn insert(&mut self, key: &str, ids: &[BindingId]) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(key.into(), ids.into());
    }

    /// Forgets everything; bindings changed.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_clearable() {
        let mut cache = KeyCache::new(2);
        cache.insert("a", &[1]);
        cache.insert("b", &[2, 3]);
        assert_eq!(cache.get("b"), Some(&[2, 3][..]));
        cache.insert("c", &[]);
        assert_eq!(cache.len(), 1, "a full cache starts over");
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("c"), Some(&[][..]));
        cache.clear();
        assert_eq!(cache.get("c"), None);
        let mut off = KeyCache::new(0);
        off.insert("a", &[1]);
        assert_eq!(off.get("a"), None);
    }
}
