//! fuser's [`Filesystem`] over the [`Client`]: translation of kernel
//! requests into client calls and replies, nothing more.
//!
//! Permission checks: the mount uses `default_permissions`, so the kernel
//! checks mode bits with the caller's full credentials before a request
//! reaches us; the state machine checks again (with the supplementary
//! groups read from `/proc/<pid>/status`) because other clients (the object
//! API, other nodes) go through it without a kernel in front.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::client::Client;
use crate::fs::locks::{Lock, LockKind, Locks};
use crate::fs::{
    check_access, check_xattr, Ctx, Errno, FileKind, FsOp, Inode, RenameMode, SetAttr, SetTime,
    Time, XattrMode, MAX_NAME,
};

/// Name of the virtual xattr that returns a file's slices and chunk
/// locations as JSON (used by `store fs stat`). Not listed by listxattr.
pub const STAT_XATTR: &str = "b3.store.stat";

/// Largest request the kernel sends (`max_pages_limit` 256 × 4 KiB).
pub const MAX_WRITE: u32 = 1 << 20;

/// Mount-time settings of the FUSE layer.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// Kernel attribute and entry cache lifetime.
    pub ttl: Duration,
    /// Bypass the kernel page cache (`FOPEN_DIRECT_IO`).
    pub direct_io: bool,
    /// Send `flock` locks to [`Locks`] too (the cluster: exclusion across
    /// nodes). fuser does not say whether a lock request is an flock or an
    /// fcntl lock, so both then share one table and an flock conflicts
    /// with another process's overlapping fcntl write lock on the same
    /// file; without it flock stays inside this kernel (one node only).
    pub flock: bool,
}

/// One `opendir`'s snapshot of a directory (POSIX allows entries added or
/// removed during a listing to appear or not; a snapshot gives stable
/// offsets even while `rm -r` deletes what it reads).
struct DirSnapshot {
    entries: Vec<(Vec<u8>, u64, FileKind)>,
}

/// The FUSE filesystem.
pub struct StoreFs {
    client: Arc<Client>,
    locks: Arc<dyn Locks>,
    opts: FuseOptions,
    dirs: Mutex<HashMap<u64, Arc<DirSnapshot>>>,
    next_fh: AtomicU64,
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// Kernel attributes of an inode.
pub fn attr(i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(i.ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime.to_system(),
        mtime: i.mtime.to_system(),
        ctime: i.ctime.to_system(),
        crtime: i.ctime.to_system(),
        kind: kind(i.kind),
        perm: (i.perm & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: MAX_WRITE,
        flags: 0,
    }
}

/// Supplementary groups of process `pid` (empty when unknown).
fn groups_of(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        groups: if req.uid() == 0 {
            Vec::new()
        } else {
            groups_of(req.pid())
        },
        now: Time::now(),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(Time::from_system(t)),
    }
}

impl StoreFs {
    /// A filesystem over `client`.
    pub fn new(client: Arc<Client>, locks: Arc<dyn Locks>, opts: FuseOptions) -> Self {
        StoreFs {
            client,
            locks,
            opts,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// The client behind this filesystem.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Inode, Errno>) {
        match r {
            Ok(i) => reply.entry(&self.opts.ttl, &attr(&i), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn created(&self, op: FsOp, req: &Request) -> Result<Inode, Errno> {
        self.client.submit(op, &ctx(req))?.inode.ok_or(Errno::EIO)
    }

    fn open_flags(&self) -> FopenFlags {
        if self.opts.direct_io {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            // No FOPEN_KEEP_CACHE: the kernel drops this file's cached pages
            // at open, which is what makes close-to-open hold.
            FopenFlags::empty()
        }
    }

    fn snapshot(&self, ino: u64) -> Result<DirSnapshot, Errno> {
        let dir = self.client.meta().inode(ino)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (b".".to_vec(), ino, FileKind::Directory),
            (b"..".to_vec(), dir.parent.max(1), FileKind::Directory),
        ];
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self.client.meta().list_dir(ino, after.as_deref(), 1024)?;
            let Some(last) = batch.last() else { break };
            after = Some(last.0.clone());
            entries.extend(batch.into_iter().map(|(n, d)| (n, d.ino, d.kind)));
        }
        Ok(DirSnapshot { entries })
    }

    fn dir_snapshot(&self, ino: u64, fh: u64, offset: u64) -> Result<Arc<DirSnapshot>, Errno> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        // Offset 0 is a (re)start: take a fresh snapshot (rewinddir).
        if offset == 0 || !dirs.contains_key(&fh) {
            let s = Arc::new(self.snapshot(ino)?);
            dirs.insert(fh, s.clone());
            return Ok(s);
        }
        dirs.get(&fh).cloned().ok_or(Errno::EBADF)
    }
}

impl Filesystem for StoreFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // POSIX locks go through `Locks` (the cluster makes them exclusive
        // across nodes) instead of staying inside this kernel. flock stays
        // in the kernel: fuser 0.18 does not pass FUSE_LK_FLOCK, and flock
        // and fcntl locks must not conflict with each other.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS);
        if self.opts.flock {
            let _ = config.add_capabilities(InitFlags::FUSE_FLOCK_LOCKS);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.client.flush_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(
            reply,
            self.client
                .meta()
                .lookup(parent.0, name.as_bytes())
                .map(|i| self.with_dirty(i)),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.client.getattr(ino.0) {
            Ok(i) => reply.attr(&self.opts.ttl, &attr(&i)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime: ctime.map(Time::from_system),
            via_handle: fh.is_some(),
        };
        match self.client.setattr(ino.0, a, &ctx(req)) {
            Ok(i) => reply.attr(&self.opts.ttl, &attr(&i)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.client.meta().inode(ino.0) {
            Ok(i) if i.kind == FileKind::Symlink => reply.data(&i.target),
            Ok(_) => reply.error(fuser::Errno::EINVAL),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let op = FsOp::Mknod {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
            mode,
            rdev,
        };
        self.entry(reply, self.created(op, req));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let op = FsOp::Mkdir {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
            mode,
        };
        self.entry(reply, self.created(op, req));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = FsOp::Unlink {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
        };
        match self.client.submit(op, &ctx(req)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = FsOp::Rmdir {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
        };
        match self.client.submit(op, &ctx(req)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let op = FsOp::Symlink {
            parent: parent.0,
            name: link_name.as_bytes().to_vec(),
            target: target.as_os_str().as_bytes().to_vec(),
        };
        self.entry(reply, self.created(op, req));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(fuser::Errno::EINVAL);
        };
        let op = FsOp::Rename {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
            new_parent: newparent.0,
            new_name: newname.as_bytes().to_vec(),
            mode,
        };
        match self.client.submit(op, &ctx(req)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let op = FsOp::Link {
            ino: ino.0,
            parent: newparent.0,
            name: newname.as_bytes().to_vec(),
        };
        self.entry(reply, self.created(op, req));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Close-to-open: see every change committed before this open.
        if let Err(e) = self.client.meta().refresh(ino.0) {
            return reply.error(errno(e));
        }
        match self.client.meta().inode(ino.0) {
            Ok(i) if i.is_dir() => reply.error(fuser::Errno::EISDIR),
            Ok(_) => {
                self.client.open(ino.0);
                reply.opened(FileHandle(self.fh()), self.open_flags());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.client.read(ino.0, offset, size.min(MAX_WRITE)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.client.write(ino.0, offset, data, &ctx(req)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.client.flush(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(owner) = lock_owner {
            // The kernel asks to drop the open file's flock locks.
            let all = Lock {
                owner: owner.0,
                start: 0,
                end: u64::MAX,
                kind: LockKind::Unlock,
                pid: 0,
            };
            self.locks.set(ino.0, all, false, Box::new(|_| {}));
        }
        match self.client.release(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Chunks are fsynced when stored and every metadata op is durable
        // when it returns: committing the buffer is all fsync needs.
        match self.client.flush(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.client.meta().refresh(ino.0) {
            return reply.error(errno(e));
        }
        match self.client.meta().inode(ino.0) {
            Ok(i) if i.is_dir() => reply.opened(FileHandle(self.fh()), FopenFlags::empty()),
            Ok(_) => reply.error(fuser::Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let snap = match self.dir_snapshot(ino.0, fh.0, offset) {
            Ok(s) => s,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, (name, child, k)) in snap.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(*child),
                (i + 1) as u64,
                kind(*k),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let snap = match self.dir_snapshot(ino.0, fh.0, offset) {
            Ok(s) => s,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, (name, child, _)) in snap.entries.iter().enumerate().skip(offset as usize) {
            // Entries removed since the snapshot are skipped.
            let Ok(inode) = self.client.getattr(*child) else {
                continue;
            };
            let full = reply.add(
                INodeNo(*child),
                (i + 1) as u64,
                OsStr::from_bytes(name),
                &self.opts.ttl,
                &attr(&inode),
                Generation(0),
            );
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.client.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        let (total, avail) = self.client.chunks().space();
        reply.statfs(
            total / BSIZE,
            avail / BSIZE,
            avail / BSIZE,
            u64::from(u32::MAX),
            u64::from(u32::MAX),
            BSIZE as u32,
            MAX_NAME as u32,
            BSIZE as u32,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = if flags & libc::XATTR_CREATE != 0 {
            XattrMode::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            XattrMode::Replace
        } else {
            XattrMode::Any
        };
        let op = FsOp::SetXattr {
            ino: ino.0,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            mode,
        };
        match self.client.submit(op, &ctx(req)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = if name.as_bytes() == STAT_XATTR.as_bytes() {
            self.stat_json(ino.0)
        } else {
            self.client.meta().inode(ino.0).and_then(|i| {
                check_xattr(&i, &ctx(req), name.as_bytes(), false)?;
                i.xattrs.get(name.as_bytes()).cloned().ok_or(Errno::ENODATA)
            })
        };
        match value {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.client.meta().inode(ino.0) {
            Ok(i) => {
                let mut out = Vec::new();
                for k in i.xattrs.keys() {
                    out.extend_from_slice(k);
                    out.push(0);
                }
                xattr_reply(reply, size, &out);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = FsOp::RemoveXattr {
            ino: ino.0,
            name: name.as_bytes().to_vec(),
        };
        match self.client.submit(op, &ctx(req)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.client.meta().inode(ino.0) {
            Ok(i) => match check_access(&i, &ctx(req), mask.bits() as u32) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let op = FsOp::Mknod {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
            mode: libc::S_IFREG | (mode & 0o7777),
            rdev: 0,
        };
        match self.created(op, req) {
            Ok(i) => {
                self.client.open(i.ino);
                reply.created(
                    &self.opts.ttl,
                    &attr(&i),
                    Generation(0),
                    FileHandle(self.fh()),
                    self.open_flags(),
                );
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Terminal and filesystem-specific ioctls: not a tty, nothing to do.
        reply.error(fuser::Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // ENOSYS makes the kernel seek by itself (SEEK_DATA/SEEK_HOLE then
        // treat the whole file as data, which is correct if not optimal).
        reply.error(fuser::Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // ENOSYS: the kernel falls back to reading and writing.
        reply.error(fuser::Errno::ENOSYS);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Some(req) = lock_request(lock_owner, start, end, typ, pid) else {
            return reply.error(fuser::Errno::EINVAL);
        };
        match self.locks.test(ino.0, &req) {
            Ok(Some(l)) => reply.locked(l.start, l.end, l.kind.to_fcntl(), l.pid),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(req) = lock_request(lock_owner, start, end, typ, pid) else {
            return reply.error(fuser::Errno::EINVAL);
        };
        // A waiting request is answered later, from whichever thread frees
        // the conflicting lock; this worker thread moves on.
        self.locks.set(
            ino.0,
            req,
            sleep,
            Box::new(move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }),
        );
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Space is not reserved (chunks are written on commit); plain
        // fallocate only extends the size, KEEP_SIZE is a no-op.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(fuser::Errno::EOPNOTSUPP);
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.ok();
        }
        let Some(end) = offset.checked_add(length) else {
            return reply.error(fuser::Errno::EFBIG);
        };
        let r = self.client.getattr(ino.0).and_then(|i| {
            if end <= i.size {
                return Ok(());
            }
            let a = SetAttr {
                size: Some(end),
                via_handle: true,
                ..SetAttr::default()
            };
            self.client.setattr(ino.0, a, &ctx(req)).map(|_| ())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl StoreFs {
    /// Lookups report buffered (uncommitted) sizes of files open here.
    fn with_dirty(&self, i: Inode) -> Inode {
        self.client.with_buffered(i)
    }

    /// JSON description of a file's slices and where their chunks are.
    fn stat_json(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let i = self.client.getattr(ino)?;
        let slices = self.client.meta().slices(ino)?;
        let list: Vec<serde_json::Value> = slices
            .iter()
            .map(|s| {
                serde_json::json!({
                    "offset": s.off,
                    "length": s.len,
                    "chunk": s.chunk.to_string(),
                    "chunk_offset": s.chunk_off,
                    "locations": if super::client::maybe_inline(&s.chunk)
                        && matches!(self.client.meta().inline_chunk(&s.chunk), Ok(Some(_)))
                    {
                        vec!["inline (in the metadata)".to_string()]
                    } else {
                        self.client.chunks().locate(&s.chunk)
                    },
                })
            })
            .collect();
        let v = serde_json::json!({
            "ino": i.ino,
            "size": i.size,
            "nlink": i.nlink,
            "slices": list,
        });
        serde_json::to_vec_pretty(&v).map_err(|_| Errno::EIO)
    }
}

/// A lock request from the kernel's fields; `None` for an unknown type.
fn lock_request(owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32) -> Option<Lock> {
    Some(Lock {
        owner: owner.0,
        start,
        end,
        kind: LockKind::from_fcntl(typ)?,
        pid,
    })
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(fuser::Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
