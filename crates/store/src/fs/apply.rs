//! [`apply`]: one [`FsOp`] against a [`FsStore`], with the kernel's checks
//! and errnos (the order of checks follows `fs/namei.c`, so the first error
//! a caller sees is the one Linux would give).

use std::collections::{BTreeMap, BTreeSet};

use super::slices::{self, Slice};
use super::{
    Ctx, Dentry, Errno, FileKind, FsOp, FsReply, FsStore, Inode, RenameMode, SetAttr, SetTime,
    StoreError, Time, XattrMode, ROOT_INO,
};
use crate::placement::ChunkId;

/// Longest name of a directory entry, in bytes.
pub const MAX_NAME: usize = 255;
/// Longest xattr name, in bytes.
pub const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value, in bytes.
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Longest symlink target, in bytes.
pub const MAX_SYMLINK: usize = 4095;
/// Most bytes of inline chunks one `AppendSlices` may carry.
pub const MAX_INLINE: usize = 64 * 1024;
/// Largest file size (8 EiB would overflow offsets in places; 2^50 is
/// plenty and leaves headroom).
pub const MAX_FILE_SIZE: u64 = 1 << 50;

const MAY_READ: u32 = 4;
const MAY_WRITE: u32 = 2;
const MAY_EXEC: u32 = 1;

/// Why [`apply`] failed: the op is refused (an errno for the caller), or
/// the store itself failed (the op must be retried or the node stopped).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The operation is invalid in the current state; nothing changed.
    #[error("{0}")]
    Errno(Errno),
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Errno> for ApplyError {
    fn from(e: Errno) -> Self {
        ApplyError::Errno(e)
    }
}

type R<T> = Result<T, ApplyError>;

/// Creates the root directory if the store is empty. Idempotent.
pub fn init_root(store: &mut impl FsStore, now: Time) -> Result<(), StoreError> {
    if store.inode(ROOT_INO)?.is_some() {
        return Ok(());
    }
    let root = Inode {
        ino: ROOT_INO,
        kind: FileKind::Directory,
        perm: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 2,
        rdev: 0,
        atime: now,
        mtime: now,
        ctime: now,
        parent: ROOT_INO,
        target: Vec::new(),
        xattrs: BTreeMap::new(),
    };
    store.put_inode(&root)?;
    // Reserve ROOT_INO in the allocator.
    while store.next_ino()? < ROOT_INO {}
    Ok(())
}

/// Applies `op` as `ctx` to `store`. All checks happen before the first
/// write, so on `Err` nothing was changed (stores that can also abort).
pub fn apply(store: &mut impl FsStore, op: FsOp, ctx: &Ctx) -> Result<FsReply, ApplyError> {
    let mut tx = Tx {
        store,
        cache: BTreeMap::new(),
        dirty: BTreeSet::new(),
    };
    let reply = tx.run(op, ctx)?;
    tx.flush()?;
    Ok(reply)
}

/// Kernel-style permission check of `mask` (4 read, 2 write, 1 exec/search)
/// on `inode` for `ctx` (`generic_permission`: root may do anything except
/// execute a file without any execute bit).
pub fn check_access(inode: &Inode, ctx: &Ctx, mask: u32) -> Result<(), Errno> {
    let mask = mask & 7;
    if ctx.uid == 0 {
        if mask & MAY_EXEC != 0 && !inode.is_dir() && inode.perm & 0o111 == 0 {
            return Err(Errno::EACCES);
        }
        return Ok(());
    }
    let bits = if ctx.uid == inode.uid {
        (inode.perm >> 6) & 7
    } else if ctx.in_group(inode.gid) {
        (inode.perm >> 3) & 7
    } else {
        inode.perm & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

/// The VFS's `xattr_permission` for reading (`write == false`) or writing
/// attribute `name` of `inode`.
pub fn check_xattr(inode: &Inode, ctx: &Ctx, name: &[u8], write: bool) -> Result<(), Errno> {
    let denied = if write { Errno::EPERM } else { Errno::ENODATA };
    if name.starts_with(b"security.") {
        return Ok(());
    }
    if name.starts_with(b"system.") {
        // POSIX ACLs are not supported.
        return Err(Errno::EOPNOTSUPP);
    }
    if name.starts_with(b"trusted.") {
        return if ctx.uid == 0 { Ok(()) } else { Err(denied) };
    }
    if name.starts_with(b"user.") {
        if !matches!(inode.kind, FileKind::Regular | FileKind::Directory) {
            return Err(denied);
        }
        if write && inode.is_dir() && inode.perm & 0o1000 != 0 && !owner_or_root(inode, ctx) {
            return Err(Errno::EPERM);
        }
    }
    check_access(inode, ctx, if write { MAY_WRITE } else { MAY_READ })
}

fn owner_or_root(inode: &Inode, ctx: &Ctx) -> bool {
    ctx.uid == 0 || ctx.uid == inode.uid
}

/// Length and character checks of one path component.
fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > MAX_NAME {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() {
        return Err(Errno::ENOENT);
    }
    if name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Sticky-directory rule: in a sticky `dir`, only the owner of the entry,
/// the owner of the directory or root may remove or rename it.
fn sticky_ok(dir: &Inode, victim: &Inode, ctx: &Ctx) -> bool {
    dir.perm & 0o1000 == 0 || ctx.uid == 0 || ctx.uid == dir.uid || ctx.uid == victim.uid
}

/// The working set of one `apply`: inodes read once, changed in memory,
/// written at the end (so updating one parent twice is one write).
struct Tx<'a, S: FsStore> {
    store: &'a mut S,
    cache: BTreeMap<u64, Option<Inode>>,
    dirty: BTreeSet<u64>,
}

impl<S: FsStore> Tx<'_, S> {
    fn get(&mut self, ino: u64) -> R<Inode> {
        if !self.cache.contains_key(&ino) {
            let i = self.store.inode(ino)?;
            self.cache.insert(ino, i);
        }
        match self.cache.get(&ino) {
            Some(Some(i)) => Ok(i.clone()),
            _ => Err(Errno::ENOENT.into()),
        }
    }

    fn put(&mut self, inode: Inode) {
        self.dirty.insert(inode.ino);
        self.cache.insert(inode.ino, Some(inode));
    }

    fn remove(&mut self, ino: u64) {
        self.dirty.insert(ino);
        self.cache.insert(ino, None);
    }

    /// A live directory (ENOTDIR if not one, ENOENT if removed).
    fn dir(&mut self, ino: u64) -> R<Inode> {
        let d = self.get(ino)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR.into());
        }
        if d.nlink == 0 {
            return Err(Errno::ENOENT.into());
        }
        Ok(d)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        for ino in std::mem::take(&mut self.dirty) {
            match self.cache.get(&ino) {
                Some(Some(i)) => self.store.put_inode(i)?,
                _ => self.store.delete_inode(ino)?,
            }
        }
        Ok(())
    }

    fn touch_dir(&mut self, ino: u64, now: Time, nlink_delta: i64) -> R<()> {
        let mut d = self.get(ino)?;
        d.mtime = now;
        d.ctime = now;
        d.nlink = (i64::from(d.nlink) + nlink_delta).clamp(0, i64::from(u32::MAX)) as u32;
        self.put(d);
        Ok(())
    }

    /// Common checks of creating `name` in `parent`; returns the parent.
    fn may_create(&mut self, parent: u64, name: &[u8], ctx: &Ctx) -> R<Inode> {
        check_name(name)?;
        let p = self.dir(parent)?;
        check_access(&p, ctx, MAY_EXEC)?;
        if self.store.dentry(parent, name)?.is_some() {
            return Err(Errno::EEXIST.into());
        }
        check_access(&p, ctx, MAY_WRITE | MAY_EXEC)?;
        Ok(p)
    }

    /// A new inode owned by the caller, with the set-gid directory rules of
    /// `inode_init_owner`.
    fn new_inode(&mut self, parent: &Inode, kind: FileKind, perm: u32, ctx: &Ctx) -> R<Inode> {
        let ino = self.store.next_ino()?;
        let mut perm = perm & 0o7777;
        let mut gid = ctx.gid;
        if parent.perm & 0o2000 != 0 {
            gid = parent.gid;
            if kind == FileKind::Directory {
                perm |= 0o2000;
            } else if perm & 0o2010 == 0o2010 && ctx.uid != 0 && !ctx.in_group(gid) {
                perm &= !0o2000;
            }
        }
        Ok(Inode {
            ino,
            kind,
            perm,
            uid: ctx.uid,
            gid,
            size: 0,
            nlink: if kind == FileKind::Directory { 2 } else { 1 },
            rdev: 0,
            atime: ctx.now,
            mtime: ctx.now,
            ctime: ctx.now,
            parent: if kind == FileKind::Directory {
                parent.ino
            } else {
                0
            },
            target: Vec::new(),
            xattrs: BTreeMap::new(),
        })
    }

    fn link_new(&mut self, parent: u64, name: &[u8], inode: Inode, ctx: &Ctx) -> R<FsReply> {
        self.store.put_dentry(
            parent,
            name,
            Dentry {
                ino: inode.ino,
                kind: inode.kind,
            },
        )?;
        let delta = i64::from(inode.is_dir());
        self.touch_dir(parent, ctx.now, delta)?;
        self.put(inode.clone());
        Ok(FsReply {
            inode: Some(inode),
            ..FsReply::default()
        })
    }

    /// Looks up `name` in `parent` for removal or rename; checks search and
    /// write permission on the parent and the sticky bit.
    fn may_delete(&mut self, parent: u64, name: &[u8], ctx: &Ctx) -> R<(Inode, Inode)> {
        check_name(name)?;
        let p = self.dir(parent)?;
        check_access(&p, ctx, MAY_EXEC)?;
        let d = self.store.dentry(parent, name)?.ok_or(Errno::ENOENT)?;
        let victim = self.get(d.ino)?;
        check_access(&p, ctx, MAY_WRITE | MAY_EXEC)?;
        if !sticky_ok(&p, &victim, ctx) {
            return Err(Errno::EPERM.into());
        }
        Ok((p, victim))
    }

    fn dir_is_empty(&self, ino: u64) -> R<bool> {
        Ok(self.store.list_dir(ino, None, 1)?.is_empty())
    }

    /// Whether directory `anc` is `ino` or one of its ancestors.
    fn is_ancestor(&mut self, anc: u64, mut ino: u64) -> R<bool> {
        // Bounded walk: a cycle (corrupt store) must not hang the node.
        for _ in 0..100_000 {
            if ino == anc {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            ino = self.get(ino)?.parent;
        }
        Err(StoreError::Corrupt(format!(
            "directory {ino}: parent chain does not reach the root"
        ))
        .into())
    }

    /// Deletes the inline ones among chunks no longer referenced; returns
    /// the rest (for the caller to delete from the chunk store).
    fn release(&mut self, ids: Vec<ChunkId>) -> R<Vec<ChunkId>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if self.store.inline_chunk(&id)?.is_some() {
                self.store.delete_inline(&id)?;
            } else {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Drops one link of a non-directory; orphans it at zero.
    fn drop_link(&mut self, mut victim: Inode, now: Time, reply: &mut FsReply) -> R<()> {
        victim.nlink = victim.nlink.saturating_sub(1);
        victim.ctime = now;
        if victim.nlink == 0 {
            self.store.set_orphan(victim.ino, true)?;
            reply.orphaned.push(victim.ino);
        }
        self.put(victim);
        Ok(())
    }

    fn run(&mut self, op: FsOp, ctx: &Ctx) -> R<FsReply> {
        let now = ctx.now;
        match op {
            FsOp::Mknod {
                parent,
                name,
                mode,
                rdev,
            } => {
                let kind = FileKind::from_mode(mode).ok_or(Errno::EINVAL)?;
                if matches!(kind, FileKind::Directory | FileKind::Symlink) {
                    return Err(Errno::EINVAL.into());
                }
                let p = self.may_create(parent, &name, ctx)?;
                if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) && ctx.uid != 0 {
                    return Err(Errno::EPERM.into());
                }
                let mut i = self.new_inode(&p, kind, mode, ctx)?;
                if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
                    i.rdev = rdev;
                }
                self.link_new(parent, &name, i, ctx)
            }
            FsOp::Mkdir { parent, name, mode } => {
                let p = self.may_create(parent, &name, ctx)?;
                let i = self.new_inode(&p, FileKind::Directory, mode & 0o7777, ctx)?;
                self.link_new(parent, &name, i, ctx)
            }
            FsOp::Symlink {
                parent,
                name,
                target,
            } => {
                check_name(&name)?;
                if target.is_empty() {
                    return Err(Errno::ENOENT.into());
                }
                if target.len() > MAX_SYMLINK {
                    return Err(Errno::ENAMETOOLONG.into());
                }
                let p = self.may_create(parent, &name, ctx)?;
                let mut i = self.new_inode(&p, FileKind::Symlink, 0o777, ctx)?;
                i.size = target.len() as u64;
                i.target = target;
                self.link_new(parent, &name, i, ctx)
            }
            FsOp::Link { ino, parent, name } => {
                check_name(&name)?;
                let mut src = self.get(ino)?;
                let _ = self.may_create(parent, &name, ctx)?;
                if src.is_dir() {
                    return Err(Errno::EPERM.into());
                }
                if src.nlink == 0 {
                    return Err(Errno::ENOENT.into());
                }
                if src.nlink == u32::MAX {
                    return Err(Errno::EMLINK.into());
                }
                src.nlink += 1;
                src.ctime = now;
                self.store.put_dentry(
                    parent,
                    &name,
                    Dentry {
                        ino,
                        kind: src.kind,
                    },
                )?;
                self.touch_dir(parent, now, 0)?;
                self.put(src.clone());
                Ok(FsReply {
                    inode: Some(src),
                    ..FsReply::default()
                })
            }
            FsOp::Unlink { parent, name } => {
                let (_, victim) = self.may_delete(parent, &name, ctx)?;
                if victim.is_dir() {
                    return Err(Errno::EISDIR.into());
                }
                let mut reply = FsReply::default();
                self.store.delete_dentry(parent, &name)?;
                self.touch_dir(parent, now, 0)?;
                self.drop_link(victim, now, &mut reply)?;
                Ok(reply)
            }
            FsOp::Rmdir { parent, name } => {
                let (_, victim) = self.may_delete(parent, &name, ctx)?;
                if !victim.is_dir() {
                    return Err(Errno::ENOTDIR.into());
                }
                if !self.dir_is_empty(victim.ino)? {
                    return Err(Errno::ENOTEMPTY.into());
                }
                self.store.delete_dentry(parent, &name)?;
                self.touch_dir(parent, now, -1)?;
                self.remove(victim.ino);
                Ok(FsReply::default())
            }
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
            } => self.rename(parent, &name, new_parent, &new_name, mode, ctx),
            FsOp::SetAttr { ino, attr } => self.setattr(ino, attr, ctx),
            FsOp::SetXattr {
                ino,
                name,
                value,
                mode,
            } => {
                if name.is_empty() || name.len() > MAX_XATTR_NAME {
                    return Err(Errno::ERANGE.into());
                }
                if value.len() > MAX_XATTR_VALUE {
                    return Err(Errno::E2BIG.into());
                }
                let mut i = self.get(ino)?;
                check_xattr(&i, ctx, &name, true)?;
                let exists = i.xattrs.contains_key(&name);
                match mode {
                    XattrMode::Create if exists => return Err(Errno::EEXIST.into()),
                    XattrMode::Replace if !exists => return Err(Errno::ENODATA.into()),
                    _ => {}
                }
                i.xattrs.insert(name, value);
                i.ctime = now;
                self.put(i.clone());
                Ok(FsReply {
                    inode: Some(i),
                    ..FsReply::default()
                })
            }
            FsOp::RemoveXattr { ino, name } => {
                if name.is_empty() || name.len() > MAX_XATTR_NAME {
                    return Err(Errno::ERANGE.into());
                }
                let mut i = self.get(ino)?;
                check_xattr(&i, ctx, &name, true)?;
                if i.xattrs.remove(&name).is_none() {
                    return Err(Errno::ENODATA.into());
                }
                i.ctime = now;
                self.put(i.clone());
                Ok(FsReply {
                    inode: Some(i),
                    ..FsReply::default()
                })
            }
            FsOp::AppendSlices {
                ino,
                slices,
                size,
                inline,
            } => {
                let mut i = self.get(ino)?;
                match i.kind {
                    FileKind::Regular => {}
                    FileKind::Directory => return Err(Errno::EISDIR.into()),
                    _ => return Err(Errno::EINVAL.into()),
                }
                let end = slices.iter().map(Slice::end).max().unwrap_or(0).max(size);
                if end > MAX_FILE_SIZE {
                    return Err(Errno::EFBIG.into());
                }
                if slices.iter().any(|s| s.len == 0)
                    || inline.iter().map(|(_, d)| d.len()).sum::<usize>() > MAX_INLINE
                {
                    return Err(Errno::EINVAL.into());
                }
                // Slices into inline chunks must stay inside their bytes.
                for s in &slices {
                    if let Some((_, d)) = inline.iter().find(|(id, _)| *id == s.chunk) {
                        if s.chunk_off.saturating_add(s.len) > d.len() as u64 {
                            return Err(Errno::EINVAL.into());
                        }
                    }
                }
                for (id, d) in &inline {
                    self.store.put_inline(id, d)?;
                }
                let old = self.store.slices(ino)?;
                let mut all = old.clone();
                all.extend_from_slice(&slices);
                let kept = slices::prune_shadowed(&all);
                let freed = slices::unreferenced(&all, &kept);
                let freed = self.release(freed)?;
                self.store.put_slices(ino, &kept)?;
                i.size = i.size.max(end);
                i.mtime = now;
                i.ctime = now;
                if ctx.uid != 0 {
                    kill_suid(&mut i);
                }
                self.put(i.clone());
                Ok(FsReply {
                    inode: Some(i),
                    freed,
                    ..FsReply::default()
                })
            }
            FsOp::ReplaceSlices { ino, expect, new } => {
                let i = self.get(ino)?;
                if self.store.slices(ino)? != expect {
                    return Err(Errno::EAGAIN.into());
                }
                let freed = slices::unreferenced(&expect, &new);
                let freed = self.release(freed)?;
                self.store.put_slices(ino, &new)?;
                Ok(FsReply {
                    inode: Some(i),
                    freed,
                    ..FsReply::default()
                })
            }
            FsOp::Purge { ino } => {
                let mut reply = FsReply::default();
                let Some(i) = self.store.inode(ino)? else {
                    return Ok(reply);
                };
                if i.nlink > 0 || i.is_dir() {
                    return Ok(reply);
                }
                let freed = slices::unreferenced(&self.store.slices(ino)?, &[]);
                reply.freed = self.release(freed)?;
                self.store.set_orphan(ino, false)?;
                self.remove(ino);
                Ok(reply)
            }
        }
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
        ctx: &Ctx,
    ) -> R<FsReply> {
        let now = ctx.now;
        check_name(name)?;
        check_name(new_name)?;
        let op = self.dir(parent)?;
        let np = self.dir(new_parent)?;
        check_access(&op, ctx, MAY_EXEC)?;
        check_access(&np, ctx, MAY_EXEC)?;
        let src_d = self.store.dentry(parent, name)?.ok_or(Errno::ENOENT)?;
        let dst_d = self.store.dentry(new_parent, new_name)?;
        match (mode, dst_d) {
            (RenameMode::NoReplace, Some(_)) => return Err(Errno::EEXIST.into()),
            (RenameMode::Exchange, None) => return Err(Errno::ENOENT.into()),
            _ => {}
        }
        let src = self.get(src_d.ino)?;
        let dst = match dst_d {
            Some(d) => Some(self.get(d.ino)?),
            None => None,
        };
        // Moving a directory below itself.
        if src.is_dir() && self.is_ancestor(src.ino, new_parent)? {
            return Err(Errno::EINVAL.into());
        }
        if let Some(t) = &dst {
            if t.is_dir() && self.is_ancestor(t.ino, parent)? {
                return Err(if mode == RenameMode::Exchange {
                    Errno::EINVAL
                } else {
                    Errno::ENOTEMPTY
                }
                .into());
            }
            // Two names of the same inode: POSIX says do nothing.
            if t.ino == src.ino {
                return Ok(FsReply::default());
            }
        }
        check_access(&op, ctx, MAY_WRITE | MAY_EXEC)?;
        if !sticky_ok(&op, &src, ctx) {
            return Err(Errno::EPERM.into());
        }
        if let Some(t) = &dst {
            check_access(&np, ctx, MAY_WRITE | MAY_EXEC)?;
            if !sticky_ok(&np, t, ctx) {
                return Err(Errno::EPERM.into());
            }
            if mode != RenameMode::Exchange {
                if src.is_dir() && !t.is_dir() {
                    return Err(Errno::ENOTDIR.into());
                }
                if !src.is_dir() && t.is_dir() {
                    return Err(Errno::EISDIR.into());
                }
            }
        } else {
            check_access(&np, ctx, MAY_WRITE | MAY_EXEC)?;
        }
        let cross = parent != new_parent;
        if cross && src.is_dir() {
            check_access(&src, ctx, MAY_WRITE)?;
        }
        if let (true, Some(t), RenameMode::Exchange) = (cross, &dst, mode) {
            if t.is_dir() {
                check_access(t, ctx, MAY_WRITE)?;
            }
        }
        if let (Some(t), RenameMode::Replace) = (&dst, mode) {
            if t.is_dir() && !self.dir_is_empty(t.ino)? {
                return Err(Errno::ENOTEMPTY.into());
            }
        }

        // All checks passed: mutate.
        let mut reply = FsReply::default();
        let src_entry = Dentry {
            ino: src.ino,
            kind: src.kind,
        };
        if mode == RenameMode::Exchange {
            let Some(t) = dst else {
                return Err(Errno::ENOENT.into());
            };
            self.store.put_dentry(
                parent,
                name,
                Dentry {
                    ino: t.ino,
                    kind: t.kind,
                },
            )?;
            self.store.put_dentry(new_parent, new_name, src_entry)?;
            let (sd, td) = (i64::from(src.is_dir()), i64::from(t.is_dir()));
            if cross {
                self.touch_dir(parent, now, td - sd)?;
                self.touch_dir(new_parent, now, sd - td)?;
            } else {
                self.touch_dir(parent, now, 0)?;
            }
            let mut s = self.get(src.ino)?;
            s.ctime = now;
            if s.is_dir() {
                s.parent = new_parent;
            }
            self.put(s);
            let mut t = self.get(t.ino)?;
            t.ctime = now;
            if t.is_dir() {
                t.parent = parent;
            }
            self.put(t);
            return Ok(reply);
        }
        let mut new_parent_delta = 0i64;
        if let Some(t) = dst {
            if t.is_dir() {
                self.remove(t.ino);
                new_parent_delta -= 1;
            } else {
                self.drop_link(t, now, &mut reply)?;
            }
        }
        self.store.delete_dentry(parent, name)?;
        self.store.put_dentry(new_parent, new_name, src_entry)?;
        if src.is_dir() {
            if cross {
                self.touch_dir(parent, now, -1)?;
                new_parent_delta += 1;
            }
        } else if cross {
            self.touch_dir(parent, now, 0)?;
        }
        self.touch_dir(new_parent, now, new_parent_delta)?;
        let mut s = self.get(src.ino)?;
        s.ctime = now;
        if s.is_dir() {
            s.parent = new_parent;
        }
        self.put(s);
        Ok(reply)
    }

    fn setattr(&mut self, ino: u64, a: SetAttr, ctx: &Ctx) -> R<FsReply> {
        let now = ctx.now;
        let mut i = self.get(ino)?;
        let mut reply = FsReply::default();
        // chown / chgrp (setattr_prepare's chown_ok / chgrp_ok).
        if let Some(uid) = a.uid {
            if ctx.uid != 0 && !(ctx.uid == i.uid && uid == i.uid) {
                return Err(Errno::EPERM.into());
            }
        }
        if let Some(gid) = a.gid {
            let ok = ctx.uid == 0 || (ctx.uid == i.uid && (gid == i.gid || ctx.in_group(gid)));
            if !ok {
                return Err(Errno::EPERM.into());
            }
        }
        if let Some(mode) = a.mode {
            // A non-owner may only drop set-uid/set-gid bits: that is what
            // the kernel sends when a write or truncate by another user
            // kills privileges.
            let only_drops = (i.perm & !0o6000) == (mode & 0o7777) && mode & !i.perm & 0o7777 == 0;
            if !owner_or_root(&i, ctx) && !only_drops {
                return Err(Errno::EPERM.into());
            }
        }
        let explicit_time =
            matches!(a.atime, Some(SetTime::At(_))) || matches!(a.mtime, Some(SetTime::At(_)));
        if explicit_time && !owner_or_root(&i, ctx) {
            return Err(Errno::EPERM.into());
        }
        if !explicit_time && (a.atime.is_some() || a.mtime.is_some()) && !owner_or_root(&i, ctx) {
            check_access(&i, ctx, MAY_WRITE)?;
        }
        if let Some(size) = a.size {
            match i.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(Errno::EISDIR.into()),
                _ => return Err(Errno::EINVAL.into()),
            }
            if !a.via_handle {
                check_access(&i, ctx, MAY_WRITE)?;
            }
            if size > MAX_FILE_SIZE {
                return Err(Errno::EFBIG.into());
            }
        }

        // Apply.
        if let Some(size) = a.size {
            if size < i.size {
                let old = self.store.slices(ino)?;
                let kept = slices::truncate(&old, size);
                reply.freed = self.release(slices::unreferenced(&old, &kept))?;
                self.store.put_slices(ino, &kept)?;
            }
            i.size = size;
            i.mtime = now;
            if ctx.uid != 0 {
                kill_suid(&mut i);
            }
        }
        if let Some(mode) = a.mode {
            let mut perm = mode & 0o7777;
            let gid = a.gid.unwrap_or(i.gid);
            if ctx.uid != 0 && !ctx.in_group(gid) {
                perm &= !0o2000;
            }
            i.perm = perm;
        }
        if a.uid.is_some() || a.gid.is_some() {
            if !i.is_dir() {
                kill_suid(&mut i);
            }
            if let Some(uid) = a.uid {
                i.uid = uid;
            }
            if let Some(gid) = a.gid {
                i.gid = gid;
            }
        }
        if let Some(t) = a.atime {
            i.atime = match t {
                SetTime::Now => now,
                SetTime::At(t) => t,
            };
        }
        if let Some(t) = a.mtime {
            i.mtime = match t {
                SetTime::Now => now,
                SetTime::At(t) => t,
            };
        }
        i.ctime = match a.ctime {
            Some(t) if ctx.uid == 0 => t,
            _ => now,
        };
        self.put(i.clone());
        reply.inode = Some(i);
        Ok(reply)
    }
}

/// Clears set-uid, and set-gid when group-execute is set (a set-gid file
/// without group-execute marks mandatory locking and keeps the bit).
fn kill_suid(i: &mut Inode) {
    i.perm &= !0o4000;
    if i.perm & 0o2010 == 0o2010 {
        i.perm &= !0o2000;
    }
}
