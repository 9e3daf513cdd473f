//! An in-memory [`FsStore`] for tests and models.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Dentry, FsRead, FsStore, Inode, Slice, StoreError};
use crate::placement::ChunkId;

/// The whole namespace in ordinary collections. Never fails.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inodes: HashMap<u64, Inode>,
    dentries: BTreeMap<(u64, Vec<u8>), Dentry>,
    slices: HashMap<u64, Vec<Slice>>,
    orphans: BTreeSet<u64>,
    inline: HashMap<ChunkId, Vec<u8>>,
    last_ino: u64,
}

impl MemStore {
    /// An empty store with a root directory created at `now`.
    pub fn new(now: super::Time) -> Self {
        let mut s = MemStore::default();
        // A MemStore never fails.
        let _ = super::apply::init_root(&mut s, now);
        s
    }

    /// Number of inodes (for leak checks in tests).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Number of inline chunks (for leak checks in tests).
    pub fn inline_count(&self) -> usize {
        self.inline.len()
    }
}

impl FsRead for MemStore {
    fn inode(&self, ino: u64) -> Result<Option<Inode>, StoreError> {
        Ok(self.inodes.get(&ino).cloned())
    }

    fn dentry(&self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, StoreError> {
        Ok(self.dentries.get(&(parent, name.to_vec())).copied())
    }

    fn list_dir(
        &self,
        parent: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded((parent, a.to_vec())),
            None => Bound::Included((parent, Vec::new())),
        };
        Ok(self
            .dentries
            .range((start, Bound::Unbounded))
            .take_while(|((p, _), _)| *p == parent)
            .take(limit)
            .map(|((_, n), d)| (n.clone(), *d))
            .collect())
    }

    fn slices(&self, ino: u64) -> Result<Vec<Slice>, StoreError> {
        Ok(self.slices.get(&ino).cloned().unwrap_or_default())
    }

    fn orphans(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.orphans.iter().copied().collect())
    }

    fn inline_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inline.get(id).cloned())
    }
}

impl FsStore for MemStore {
    fn put_inode(&mut self, inode: &Inode) -> Result<(), StoreError> {
        self.inodes.insert(inode.ino, inode.clone());
        Ok(())
    }

    fn delete_inode(&mut self, ino: u64) -> Result<(), StoreError> {
        self.inodes.remove(&ino);
        self.slices.remove(&ino);
        Ok(())
    }

    fn put_dentry(&mut self, parent: u64, name: &[u8], entry: Dentry) -> Result<(), StoreError> {
        self.dentries.insert((parent, name.to_vec()), entry);
        Ok(())
    }

    fn delete_dentry(&mut self, parent: u64, name: &[u8]) -> Result<(), StoreError> {
        self.dentries.remove(&(parent, name.to_vec()));
        Ok(())
    }

    fn put_slices(&mut self, ino: u64, slices: &[Slice]) -> Result<(), StoreError> {
        if slices.is_empty() {
            self.slices.remove(&ino);
        } else {
            self.slices.insert(ino, slices.to_vec());
        }
        Ok(())
    }

    fn set_orphan(&mut self, ino: u64, orphan: bool) -> Result<(), StoreError> {
        if orphan {
            self.orphans.insert(ino);
        } else {
            self.orphans.remove(&ino);
        }
        Ok(())
    }

    fn next_ino(&mut self) -> Result<u64, StoreError> {
        self.last_ino += 1;
        Ok(self.last_ino)
    }

    fn put_inline(&mut self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        self.inline.insert(*id, data.to_vec());
        Ok(())
    }

    fn delete_inline(&mut self, id: &ChunkId) -> Result<(), StoreError> {
        self.inline.remove(id);
        Ok(())
    }
}
