//! On-disk chunks: immutable blobs of at most [`MAX_CHUNK`] bytes.
//!
//! Layout under `<data-dir>/chunks/`: two levels of fan-out directories
//! named after the first hex digits of the id (`ab/cd/abcd…`), so no
//! directory grows past a few thousand entries. Each file holds the chunk's
//! bytes followed by their crc32 (4 bytes, little endian) — the checksum
//! lives beside the data in the same file, so one atomic rename publishes
//! both. A write goes to `tmp/` first, is fsynced, then renamed into place
//! and the directory fsynced: after `put` returns, the chunk survives a
//! crash; before, it is either absent or complete, never partial.
//!
//! The crc is checked on write (against the sender's crc), on every read,
//! and by the receiver of every transfer. All calls are blocking; async
//! callers use `tokio::task::spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::placement::ChunkId;

/// Largest chunk accepted (4 MiB).
pub const MAX_CHUNK: usize = 4 << 20;

/// Errors of the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// No chunk with that id here.
    #[error("chunk {0} is not stored on this node")]
    NotFound(ChunkId),
    /// Stored or received bytes do not match their checksum.
    #[error("chunk {id} at {path}: crc32 mismatch (expected {expected:08x}, got {actual:08x}); the copy is corrupt, read another replica")]
    Corrupt {
        /// Chunk id.
        id: ChunkId,
        /// File or source of the bad bytes.
        path: String,
        /// Checksum that should have matched.
        expected: u32,
        /// Checksum of the bytes actually seen.
        actual: u32,
    },
    /// Chunk larger than [`MAX_CHUNK`].
    #[error("chunk {id} is {len} bytes, more than the {MAX_CHUNK}-byte limit; split the data")]
    TooLarge {
        /// Chunk id.
        id: ChunkId,
        /// Its length.
        len: usize,
    },
    /// The data directory's disk is full.
    #[error("no space left on {path} while storing a chunk; free space or add capacity (nothing was acknowledged)")]
    NoSpace {
        /// Where.
        path: String,
    },
    /// Any other I/O failure.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ChunkError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return ChunkError::NoSpace {
                path: path.display().to_string(),
            };
        }
        ChunkError::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Usage of the chunk directory.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Chunks stored.
    pub chunks: u64,
    /// Bytes of chunk data stored (without checksums).
    pub bytes: u64,
    /// Size of the filesystem holding the data directory.
    pub fs_total: u64,
    /// Space available to us on it.
    pub fs_avail: u64,
}

/// The chunk directory of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: Arc<PathBuf>,
}

impl ChunkStore {
    /// Opens (creating if needed) the chunk directory `root` and removes
    /// temporary files left by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ChunkError> {
        let root = root.into();
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| ChunkError::io("creating", &tmp, e))?;
        let entries = fs::read_dir(&tmp).map_err(|e| ChunkError::io("listing", &tmp, e))?;
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(Self {
            root: Arc::new(root),
        })
    }

    /// The chunk directory `root` as it is, without the clean-up of
    /// [`ChunkStore::open`]: for reading chunks of a directory another
    /// process (the local server) owns — a mount on the same host.
    pub fn reader(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Arc::new(root.into()),
        }
    }

    /// Root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of chunk `id`'s file.
    pub fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_string();
        self.root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    /// Stores `data` durably, after checking it against `crc`. Storing an id
    /// that is already present replaces it (same id, same bytes: harmless).
    pub fn put(&self, id: &ChunkId, data: &[u8], crc: u32) -> Result<(), ChunkError> {
        if data.len() > MAX_CHUNK {
            return Err(ChunkError::TooLarge {
                id: *id,
                len: data.len(),
            });
        }
        let actual = crc32fast::hash(data);
        if actual != crc {
            return Err(ChunkError::Corrupt {
                id: *id,
                path: "received data".into(),
                expected: crc,
                actual,
            });
        }
        let dest = self.path(id);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| ChunkError::io("creating", &dir, e))?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{id}.{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(|e| ChunkError::io("creating", &tmp, e))?;
            f.write_all(data)
                .and_then(|()| f.write_all(&crc.to_le_bytes()))
                .and_then(|()| f.sync_all())
                .map_err(|e| ChunkError::io("writing", &tmp, e))?;
            fs::rename(&tmp, &dest).map_err(|e| ChunkError::io("renaming into", &dest, e))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| ChunkError::io("syncing", &dir, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads chunk `id` and checks its crc. Returns the data and its crc.
    pub fn get(&self, id: &ChunkId) -> Result<(Bytes, u32), ChunkError> {
        let path = self.path(id);
        let mut raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ChunkError::NotFound(*id)),
            Err(e) => return Err(ChunkError::io("reading", &path, e)),
        };
        let corrupt = |expected, actual| ChunkError::Corrupt {
            id: *id,
            path: path.display().to_string(),
            expected,
            actual,
        };
        if raw.len() < 4 {
            return Err(corrupt(0, 0));
        }
        let split = raw.len() - 4;
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(&raw[split..]);
        let expected = u32::from_le_bytes(crc_bytes);
        raw.truncate(split);
        let actual = crc32fast::hash(&raw);
        if actual != expected {
            return Err(corrupt(expected, actual));
        }
        Ok((Bytes::from(raw), expected))
    }

    /// Whether chunk `id` is present (not checked).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path(id).is_file()
    }

    /// Removes chunk `id`; `Ok(false)` when it was not there.
    pub fn delete(&self, id: &ChunkId) -> Result<bool, ChunkError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ChunkError::io("removing", &path, e)),
        }
    }

    /// Ids of all chunks stored here (walks the fan-out directories).
    pub fn list(&self) -> Result<Vec<ChunkId>, ChunkError> {
        let mut out = Vec::new();
        for l1 in read_dirs(&self.root)? {
            if l1.file_name().is_some_and(|n| n == "tmp") {
                continue;
            }
            for l2 in read_dirs(&l1)? {
                let entries = fs::read_dir(&l2).map_err(|e| ChunkError::io("listing", &l2, e))?;
                for e in entries.flatten() {
                    if let Some(id) = e.file_name().to_str().and_then(|s| ChunkId::parse(s).ok()) {
                        out.push(id);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Chunk count and bytes, plus free space of the filesystem.
    pub fn usage(&self) -> Result<Usage, ChunkError> {
        let mut usage = Usage::default();
        for id in self.list()? {
            if let Ok(m) = fs::metadata(self.path(&id)) {
                usage.chunks += 1;
                usage.bytes += m.len().saturating_sub(4);
            }
        }
        let (total, avail) = fs_space(&self.root);
        usage.fs_total = total;
        usage.fs_avail = avail;
        Ok(usage)
    }
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>, ChunkError> {
    let entries = fs::read_dir(dir).map_err(|e| ChunkError::io("listing", dir, e))?;
    Ok(entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect())
}

/// (total, available) bytes of the filesystem holding `path`; zeros when
/// unknown.
pub fn fs_space(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return (0, 0);
    }
    let frsize = st.f_frsize as u64;
    (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path().join("chunks")).unwrap();
        (dir, s)
    }

    #[test]
    fn put_get_delete_round_trip() {
        let (_d, s) = store();
        let id = ChunkId::random();
        let data = b"hello chunk".repeat(1000);
        s.put(&id, &data, crc32fast::hash(&data)).unwrap();
        let (got, crc) = s.get(&id).unwrap();
        assert_eq!(&got[..], &data[..]);
        assert_eq!(crc, crc32fast::hash(&data));
        assert_eq!(s.list().unwrap(), vec![id]);
        assert_eq!(s.usage().unwrap().bytes, data.len() as u64);
        assert!(s.delete(&id).unwrap());
        assert!(matches!(s.get(&id), Err(ChunkError::NotFound(_))));
        assert!(!s.delete(&id).unwrap());
    }

    #[test]
    fn bad_crc_on_write_is_refused_and_nothing_is_stored() {
        let (_d, s) = store();
        let id = ChunkId::random();
        let err = s.put(&id, b"data", 1234).unwrap_err();
        assert!(matches!(err, ChunkError::Corrupt { .. }), "{err}");
        assert!(!s.contains(&id));
    }

    #[test]
    fn corrupt_file_is_detected_on_read() {
        let (_d, s) = store();
        let id = ChunkId::random();
        let data = vec![7u8; 10_000];
        s.put(&id, &data, crc32fast::hash(&data)).unwrap();
        let path = s.path(&id);
        let mut raw = fs::read(&path).unwrap();
        raw[5000] ^= 0xff;
        fs::write(&path, &raw).unwrap();
        let err = s.get(&id).unwrap_err();
        assert!(matches!(err, ChunkError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("another replica"), "{err}");
        // Truncated to less than a checksum: still a clean error.
        fs::write(&path, b"ab").unwrap();
        assert!(matches!(s.get(&id), Err(ChunkError::Corrupt { .. })));
    }

    #[test]
    fn oversized_chunk_is_refused() {
        let (_d, s) = store();
        let data = vec![0u8; MAX_CHUNK + 1];
        let err = s
            .put(&ChunkId::random(), &data, crc32fast::hash(&data))
            .unwrap_err();
        assert!(matches!(err, ChunkError::TooLarge { .. }));
    }

    #[test]
    fn leftover_temp_files_are_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("chunks");
        ChunkStore::open(&root).unwrap();
        fs::write(root.join("tmp").join("half-written"), b"x").unwrap();
        ChunkStore::open(&root).unwrap();
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }
}
