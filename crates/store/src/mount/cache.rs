//! A bounded, least-recently-used cache of whole chunks in memory.
//!
//! Chunks are immutable, so a cached chunk is never stale: only the slice
//! lists (metadata) decide which chunks a read uses. That is what makes
//! caching safe across nodes without invalidation traffic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

use crate::placement::ChunkId;

/// Chunk id → bytes, at most `capacity` bytes in total.
#[derive(Debug)]
pub struct ChunkCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<ChunkId, (Bytes, u64)>,
    lru: BTreeMap<u64, ChunkId>,
    bytes: usize,
    tick: u64,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes (0 disables it).
    pub fn new(capacity: usize) -> Self {
        ChunkCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every
        // mutation below is completed before any call that could panic).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk, if cached (and marks it recently used).
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let (bytes, old) = {
            let e = g.map.get_mut(id)?;
            let old = e.1;
            e.1 = tick;
            (e.0.clone(), old)
        };
        g.lru.remove(&old);
        g.lru.insert(tick, *id);
        Some(bytes)
    }

    /// Adds a chunk, evicting the least recently used ones beyond capacity.
    pub fn insert(&self, id: ChunkId, data: Bytes) {
        if data.len() > self.capacity {
            return;
        }
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        if let Some((old, t)) = g.map.remove(&id) {
            g.bytes -= old.len();
            g.lru.remove(&t);
        }
        g.bytes += data.len();
        g.map.insert(id, (data, tick));
        g.lru.insert(tick, id);
        while g.bytes > self.capacity {
            let Some((_, victim)) = g.lru.pop_first() else {
                break;
            };
            if let Some((b, _)) = g.map.remove(&victim) {
                g.bytes -= b.len();
            }
        }
    }

    /// Forgets a chunk (deleted).
    pub fn remove(&self, id: &ChunkId) {
        let mut g = self.lock();
        if let Some((b, t)) = g.map.remove(id) {
            g.bytes -= b.len();
            g.lru.remove(&t);
        }
    }

    /// Bytes currently cached.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let c = ChunkCache::new(10);
        let id = |n| ChunkId([n; 16]);
        c.insert(id(1), Bytes::from(vec![1; 4]));
        c.insert(id(2), Bytes::from(vec![2; 4]));
        assert!(c.get(&id(1)).is_some());
        c.insert(id(3), Bytes::from(vec![3; 4]));
        assert!(c.get(&id(2)).is_none(), "2 was least recently used");
        assert!(c.get(&id(1)).is_some());
        assert!(c.get(&id(3)).is_some());
        assert!(c.bytes() <= 10);
        c.insert(id(4), Bytes::from(vec![4; 11]));
        assert!(c.get(&id(4)).is_none(), "larger than the cache: not kept");
        c.remove(&id(1));
        assert_eq!(c.bytes(), 4);
    }
}
