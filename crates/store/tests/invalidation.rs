//! Changes made by another client reach this mount's kernel caches: the
//! backend reports them through `Meta::subscribe`, the mount invalidates
//! the cached attributes and names at once instead of after the TTL. The
//! "other client" here writes straight into the metadata store behind the
//! mount's back, as another node would.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::fs::locks::LocalLocks;
use store::fs::{
    Change, Ctx, Dentry, Errno, FsOp, FsReply, Inode, LocalChunks, LocalMeta, Meta, RenameMode,
    SetAttr, Slice, Time, ROOT_INO,
};
use store::mount::client::{Client, ClientOptions};
use store::mount::fuse::{FuseOptions, StoreFs};

/// A local backend that lets the test play "another node".
struct OtherNode {
    inner: LocalMeta,
    rx: Mutex<Option<Receiver<Change>>>,
}

impl Meta for OtherNode {
    fn submit(&self, op: FsOp, ctx: &Ctx) -> Result<FsReply, Errno> {
        self.inner.submit(op, ctx)
    }
    fn inode(&self, ino: u64) -> Result<Inode, Errno> {
        self.inner.inode(ino)
    }
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, Errno> {
        self.inner.lookup(parent, name)
    }
    fn list_dir(
        &self,
        dir: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>, Errno> {
        self.inner.list_dir(dir, after, limit)
    }
    fn slices(&self, ino: u64) -> Result<Vec<Slice>, Errno> {
        self.inner.slices(ino)
    }
    fn orphans(&self) -> Result<Vec<u64>, Errno> {
        self.inner.orphans()
    }
    fn inline_chunk(&self, id: &store::placement::ChunkId) -> Result<Option<bytes::Bytes>, Errno> {
        self.inner.inline_chunk(id)
    }
    fn subscribe(&self) -> Option<Receiver<Change>> {
        self.rx.lock().ok()?.take()
    }
}

/// Unmounts on drop, also when the test panics.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn mode(p: &Path) -> std::io::Result<u32> {
    std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777)
}

#[test]
fn other_clients_changes_invalidate_cached_attributes_and_names() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (tx, rx): (SyncSender<Change>, _) = sync_channel(64);
    let meta = Arc::new(OtherNode {
        inner: LocalMeta::open(&dir.path().join("meta.redb")).unwrap(),
        rx: Mutex::new(Some(rx)),
    });
    let chunks = Arc::new(LocalChunks::open(&dir.path().join("chunks")).unwrap());
    let client = Client::new(meta.clone(), chunks, ClientOptions::default());
    let fs = StoreFs::new(
        client,
        Arc::new(LocalLocks::new()),
        FuseOptions {
            flock: false,
            // Long enough that only an invalidation can explain a fresh view.
            ttl: Duration::from_secs(60),
            direct_io: false,
        },
    );
    let session = store::mount::serve(&mnt, fs, 2, "store:test").unwrap();
    let _unmount = Unmount(mnt.clone());

    let f = mnt.join("f");
    std::fs::write(&f, b"x").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(mode(&f).unwrap(), 0o644);
    let ino = meta.inner.lookup(ROOT_INO, b"f").unwrap().ino;
    let other = Ctx::root(Time::now());

    // Another node changes the mode: the kernel still has the old one.
    let chmod = FsOp::SetAttr {
        ino,
        attr: SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    };
    meta.inner.submit(chmod, &other).unwrap();
    assert_eq!(
        mode(&f).unwrap(),
        0o644,
        "attributes are cached for the TTL"
    );
    tx.send(Change::Inode(ino)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        mode(&f).unwrap(),
        0o600,
        "invalidated attributes are fetched again"
    );

    // Another node renames the file: the cached name goes with the change.
    let rename = FsOp::Rename {
        parent: ROOT_INO,
        name: b"f".to_vec(),
        new_parent: ROOT_INO,
        new_name: b"g".to_vec(),
        mode: RenameMode::Replace,
    };
    meta.inner.submit(rename, &other).unwrap();
    assert!(f.exists(), "the name is cached for the TTL");
    tx.send(Change::Entry {
        parent: ROOT_INO,
        name: b"f".to_vec(),
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!f.exists(), "invalidated name is looked up again");
    assert_eq!(std::fs::read(mnt.join("g")).unwrap(), b"x");
    drop(_unmount);
    drop(session);
}
