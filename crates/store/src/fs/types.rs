//! Values of the namespace: inodes, entries, operations, replies, errnos.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::slices::Slice;
use crate::placement::ChunkId;

/// A kernel errno (positive), as the filesystem returns it to callers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time {
    /// Seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, < 1e9.
    pub nanos: u32,
}

impl Time {
    /// The current wall-clock time. Only I/O layers call this; the state
    /// machine gets time through [`Ctx::now`].
    pub fn now() -> Self {
        Self::from_system(std::time::SystemTime::now())
    }

    /// Converts a `SystemTime`.
    pub fn from_system(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Time {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Time { secs, nanos }
            }
        }
    }

    /// Converts to a `SystemTime`.
    pub fn to_system(self) -> std::time::SystemTime {
        let base = std::time::UNIX_EPOCH;
        if self.secs >= 0 {
            base + std::time::Duration::new(self.secs as u64, self.nanos)
        } else {
            base - std::time::Duration::from_secs(self.secs.unsigned_abs())
                + std::time::Duration::from_nanos(u64::from(self.nanos))
        }
    }
}

/// Kind of an inode (the `S_IFMT` part of a mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// Kind from the `S_IFMT` bits of `mode`; `None` for an unknown type.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            0 => FileKind::Regular,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }
}

/// One inode: a file, directory, symlink or special file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Inode number (never reused).
    pub ino: u64,
    /// What it is.
    pub kind: FileKind,
    /// Permission bits including set-uid, set-gid and sticky (`0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (symlinks: length of the target; dirs: 0).
    pub size: u64,
    /// Hard links (directories: 2 + number of subdirectories).
    pub nlink: u32,
    /// Device number of character and block devices.
    pub rdev: u32,
    /// Last access.
    pub atime: Time,
    /// Last content change.
    pub mtime: Time,
    /// Last inode change.
    pub ctime: Time,
    /// Directories: the parent (itself for the root). Others: 0.
    pub parent: u64,
    /// Symlinks: the target, as raw bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<u8>,
    /// Extended attributes, name → value, raw bytes.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "xattr_pairs"
    )]
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Inode {
    /// Full `st_mode`: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | (self.perm & 0o7777)
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }
}

/// A directory entry: the inode a name points at, and its kind (so `readdir`
/// needs no inode reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dentry {
    /// Target inode.
    pub ino: u64,
    /// Its kind.
    pub kind: FileKind,
}

/// Who performs an operation, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ctx {
    /// Effective (filesystem) user id.
    pub uid: u32,
    /// Effective (filesystem) group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Time stamped on the operation by whoever proposes it (the client or
    /// the Raft leader), so every replica applies the same time.
    pub now: Time,
}

impl Ctx {
    /// The superuser at time `now`.
    pub fn root(now: Time) -> Self {
        Ctx {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            now,
        }
    }

    /// Whether the caller is in group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// How a time is set by [`FsOp::SetAttr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// The operation's time ([`Ctx::now`]).
    Now,
    /// An explicit time.
    At(Time),
}

/// The attribute changes of one `setattr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits (`0o7777` part used).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend with a hole).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// New change time (only honoured for root; otherwise ctime = now).
    pub ctime: Option<Time>,
    /// The caller holds an open file handle (write access to the file was
    /// checked at open, as for `ftruncate`).
    pub via_handle: bool,
}

/// Flags of [`FsOp::Rename`] (Linux `renameat2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Replace the target if it exists.
    #[default]
    Replace,
    /// Fail with EEXIST if the target exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap source and target, both must exist (`RENAME_EXCHANGE`).
    Exchange,
}

/// How [`FsOp::SetXattr`] treats an existing attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Any,
    /// Fail with EEXIST if it exists (`XATTR_CREATE`).
    Create,
    /// Fail with ENODATA if it does not exist (`XATTR_REPLACE`).
    Replace,
}

/// One namespace mutation. Names are raw bytes (any byte but `/` and NUL,
/// at most [`super::MAX_NAME`] of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// A regular file, FIFO, socket or device node (`mode` includes the type
    /// bits; no type bits means a regular file).
    Mknod {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        rdev: u32,
    },
    /// A directory.
    Mkdir {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
    },
    /// A symbolic link to `target`.
    Symlink {
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    /// A new name for inode `ino`.
    Link {
        ino: u64,
        parent: u64,
        name: Vec<u8>,
    },
    /// Removes a non-directory name.
    Unlink { parent: u64, name: Vec<u8> },
    /// Removes an empty directory.
    Rmdir { parent: u64, name: Vec<u8> },
    /// Moves `parent/name` to `new_parent/new_name`.
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        mode: RenameMode,
    },
    /// chmod / chown / truncate / utimens.
    SetAttr { ino: u64, attr: SetAttr },
    /// Sets an extended attribute.
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        mode: XattrMode,
    },
    /// Removes an extended attribute.
    RemoveXattr { ino: u64, name: Vec<u8> },
    /// Commits written data: appends `slices` (newest last) to the file,
    /// raises its size to at least `size`, sets mtime/ctime to now and
    /// clears set-uid/set-gid as a write by a non-owner must. `inline`
    /// carries the bytes of small chunks that live in the metadata itself
    /// instead of the chunk store (at most [`super::MAX_INLINE`] bytes in
    /// total): a small file costs one metadata commit and no chunk write.
    AppendSlices {
        ino: u64,
        slices: Vec<Slice>,
        size: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "inline_b64")]
        inline: Vec<(ChunkId, Vec<u8>)>,
    },
    /// Replaces the slice list of `ino` by `new` if it is still `expect`
    /// (compaction: same content, fewer slices). EAGAIN when the file
    /// changed meanwhile.
    ReplaceSlices {
        ino: u64,
        expect: Vec<Slice>,
        new: Vec<Slice>,
    },
    /// Deletes orphan `ino` (nlink 0, no longer open) and its slices.
    Purge { ino: u64 },
}

impl FsOp {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            FsOp::Mknod { .. } => "mknod",
            FsOp::Mkdir { .. } => "mkdir",
            FsOp::Symlink { .. } => "symlink",
            FsOp::Link { .. } => "link",
            FsOp::Unlink { .. } => "unlink",
            FsOp::Rmdir { .. } => "rmdir",
            FsOp::Rename { .. } => "rename",
            FsOp::SetAttr { .. } => "setattr",
            FsOp::SetXattr { .. } => "setxattr",
            FsOp::RemoveXattr { .. } => "removexattr",
            FsOp::AppendSlices { .. } => "append_slices",
            FsOp::ReplaceSlices { .. } => "replace_slices",
            FsOp::Purge { .. } => "purge",
        }
    }
}

/// What a successful [`FsOp`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsReply {
    /// The inode created or changed (Mknod, Mkdir, Symlink, Link, SetAttr,
    /// SetXattr, AppendSlices), as it is after the op.
    pub inode: Option<Inode>,
    /// Inodes whose last link went away with this op; they stay readable
    /// until a [`FsOp::Purge`] (sent when no handle has them open).
    pub orphaned: Vec<u64>,
    /// Chunks no file references any more; the caller deletes them.
    pub freed: Vec<ChunkId>,
}

/// Xattrs as a list of (name, value) pairs: JSON map keys must be strings,
/// and names are arbitrary bytes.
mod xattr_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<Vec<u8>, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(&Vec<u8>, &Vec<u8>)> = m.iter().collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, D::Error> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

/// Inline file data in the (JSON) Raft log and RPCs as base64 strings: a
/// third larger than the bytes instead of three to four times as an array
/// of numbers. Arrays (what older nodes wrote) are still read.
mod inline_b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::placement::ChunkId;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bytes {
        Text(String),
        Numbers(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(v: &[(ChunkId, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<(&ChunkId, String)> = v.iter().map(|(id, b)| (id, B64.encode(b))).collect();
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, D::Error> {
        let raw: Vec<(ChunkId, Bytes)> = Vec::deserialize(d)?;
        raw.into_iter()
            .map(|(id, b)| match b {
                Bytes::Numbers(v) => Ok((id, v)),
                Bytes::Text(t) => B64
                    .decode(t.as_bytes())
                    .map(|v| (id, v))
                    .map_err(serde::de::Error::custom),
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::super::FsOp;
        use crate::placement::ChunkId;

        #[test]
        fn inline_data_is_base64_and_old_arrays_still_read() {
            let op = FsOp::AppendSlices {
                ino: 7,
                slices: Vec::new(),
                size: 1024,
                inline: vec![(ChunkId([3; 16]), vec![0xff; 1024])],
            };
            let json = serde_json::to_string(&op).unwrap();
            assert!(json.len() < 1600, "{} bytes", json.len());
            assert_eq!(serde_json::from_str::<FsOp>(&json).unwrap(), op);
            let old = json.replace(
                &format!(
                    "\"{}\"",
                    base64::Engine::encode(&super::B64, [0xffu8; 1024])
                ),
                &serde_json::to_string(&vec![0xffu8; 1024]).unwrap(),
            );
            assert!(old.len() > 3000);
            assert_eq!(serde_json::from_str::<FsOp>(&old).unwrap(), op);
            assert!(serde_json::from_str::<FsOp>(&json.replace("/w==", "!!!!")).is_err());
        }
    }
}
