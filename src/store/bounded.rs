//! A map with a capacity: once full, inserting a new key evicts the oldest inserted one. The
//! in-memory store keeps its records, dedup markers and idempotency records in these, so that a
//! long-running development process cannot grow without bound (`store.memory_max_entries`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A `HashMap` that holds at most `capacity` keys, evicting the oldest inserted first.
pub(super) struct Bounded<K, V> {
    map: HashMap<K, V>,
    /// Keys in insertion order; may hold keys removed since (skipped when evicting, dropped
    /// when the queue grows past twice the map).
    order: VecDeque<K>,
    capacity: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    /// An empty map holding at most `capacity` keys (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    pub(super) fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(keep);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// How many keys were evicted to make room, since the start.
    #[cfg(test)]
    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Inserts; a new key past the capacity evicts the oldest inserted keys first.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let previous = self.map.insert(key.clone(), value);
        if previous.is_some() {
            return previous;
        }
        self.order.push_back(key);
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    if self.map.remove(&oldest).is_some() {
                        self.evicted += 1;
                    }
                }
                None => break,
            }
        }
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_keys_go_first_and_the_map_stays_bounded() {
        let mut m = Bounded::new(3);
        for i in 0..10 {
            m.insert(i, i * 10);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.evicted(), 7);
        assert_eq!(
            (m.get(&7), m.get(&9), m.get(&6)),
            (Some(&70), Some(&90), None)
        );
        // Updating a key keeps its place; removed keys never count.
        m.insert(7, 71);
        m.remove(&8);
        m.insert(10, 100);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&7), Some(&71));
        for i in 11..10_000 {
            m.insert(i, i);
            m.remove(&i);
        }
        assert!(m.order.len() <= 2 * 3 + 1, "{}", m.order.len());
    }
}
