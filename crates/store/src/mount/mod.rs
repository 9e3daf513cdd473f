//! The FUSE client of `/data`: `store mount DIR`.
//!
//! Layers: [`cache`] (chunks in memory) → [`client`] (buffered writes,
//! reads through slices; no FUSE types) → [`fuse`] (fuser's `Filesystem`)
//! → [`run`] (mount point checks, the session, clean unmount on SIGTERM).

pub mod cache;
pub mod client;
pub mod fuse;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use b3_common::Shutdown;

use crate::fs::locks::Locks;
use crate::fs::{ChunkIo, LocalChunks, LocalMeta, Meta};
use client::{Client, ClientOptions};
use fuse::{FuseOptions, StoreFs};

/// Flags of `store mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// Empty directory to mount the filesystem on.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// Where files live. `cluster:DATA_DIR` uses the cluster of the
    /// `store server` whose data directory is DATA_DIR on this host (its
    /// certificate, then QUIC to it and, if it is down, to the other
    /// nodes). `local:PATH` keeps metadata (PATH/meta.redb) and chunks
    /// (PATH/chunks/) in a directory of this node, for one host only.
    #[arg(
        long,
        env = "STORE_BACKEND",
        default_value = "local:/var/lib/b3/store/fs",
        value_name = "KIND:WHERE",
        value_parser = Backend::parse
    )]
    pub backend: Backend,

    /// FUSE worker threads (requests served in parallel).
    #[arg(long, env = "STORE_MOUNT_THREADS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,

    /// Memory for cached chunks, in MiB (0 disables the read cache).
    #[arg(long, env = "STORE_MOUNT_CACHE_MB", default_value_t = 256)]
    pub cache_mb: usize,

    /// Bypass the kernel page cache: faster large sequential I/O, but
    /// every read reaches the client and shared writable mmap is refused.
    #[arg(long, env = "STORE_MOUNT_DIRECT_IO")]
    pub direct_io: bool,

    /// How long the kernel may cache attributes and names, in ms. Short
    /// keeps other nodes' changes visible quickly.
    #[arg(long, env = "STORE_MOUNT_TTL_MS", default_value_t = 1000)]
    pub ttl_ms: u64,
}

/// A storage backend named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Metadata and chunks in a local directory.
    Local(PathBuf),
    /// The cluster of the server with this data directory.
    Cluster(PathBuf),
}

impl Backend {
    /// Parses `local:PATH` or `cluster:DATA_DIR`.
    pub fn parse(s: &str) -> Result<Backend, String> {
        match s.split_once(':') {
            Some(("local", path)) if !path.is_empty() => Ok(Backend::Local(PathBuf::from(path))),
            Some(("cluster", path)) if !path.is_empty() => {
                Ok(Backend::Cluster(PathBuf::from(path)))
            }
            _ => Err(format!(
                "backend {s:?} is not understood; use cluster:DATA_DIR (the --data-dir of the store server on this host) or local:PATH (a directory for metadata and chunks)"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local(p) => write!(f, "local:{}", p.display()),
            Backend::Cluster(p) => write!(f, "cluster:{}", p.display()),
        }
    }
}

/// What a mount needs from a backend.
pub type Opened = (Arc<dyn Meta>, Arc<dyn ChunkIo>, Arc<dyn Locks>);

/// Opens a backend's metadata, chunk store and lock service.
pub fn open_backend(b: &Backend) -> anyhow::Result<Opened> {
    match b {
        Backend::Cluster(dir) => {
            let conn = crate::fs::cluster_backend::ClusterConn::connect(dir)?;
            Ok((
                Arc::new(crate::fs::cluster_backend::ClusterMeta(conn.clone())),
                Arc::new(crate::fs::cluster_backend::ClusterChunks(conn.clone())),
                Arc::new(crate::fs::cluster_backend::ClusterLocks::new(conn)),
            ))
        }
        Backend::Local(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the backend directory {}", dir.display()))?;
            let meta = LocalMeta::open(&dir.join("meta.redb")).with_context(|| {
                format!(
                    "opening {}/meta.redb (is another `store mount` using this backend?)",
                    dir.display()
                )
            })?;
            let chunks = LocalChunks::open(&dir.join("chunks"))
                .with_context(|| format!("opening the chunk directory {}/chunks", dir.display()))?;
            Ok((
                Arc::new(meta),
                Arc::new(chunks),
                Arc::new(crate::fs::locks::LocalLocks::new()),
            ))
        }
    }
}

fn cpath(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", p.display()))
}

/// Unmounts `dir`; lazily (detached) when busy. Not mounted is fine.
pub fn unmount(dir: &Path) -> anyhow::Result<()> {
    let c = cpath(dir)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        Some(libc::EBUSY) => {
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                tracing::warn!(dir = %dir.display(), "mount point busy: detached, the kernel finishes when the last file closes");
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
                    .with_context(|| format!("unmounting {}", dir.display()))
            }
        }
        _ => Err(e).with_context(|| format!("unmounting {}", dir.display())),
    }
}

/// Whether `dir` is the mount point of a live `store mount`.
fn mounted_here(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = dir.to_string_lossy().replace(' ', "\\040");
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (source, point) = (f.next(), f.next());
        point == Some(want.as_str()) && source.is_some_and(|s| s.starts_with("store:"))
    })
}

/// Checks the mount point; clears a stale mount left by a killed client
/// ("Transport endpoint is not connected").
pub fn prepare_mountpoint(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(dir = %dir.display(), "clearing a stale mount left by a previous client");
            let c = cpath(dir)?;
            // SAFETY: valid path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!(
                        "{} is a stale mount and unmounting it failed; run `umount -l {}`",
                        dir.display(),
                        dir.display()
                    )
                });
            }
            prepare_mountpoint(dir)
        }
        Err(e) => Err(e)
            .with_context(|| format!("mount point {}: create the directory first", dir.display())),
        Ok(m) if !m.is_dir() => bail!("mount point {} is not a directory", dir.display()),
        Ok(_) if mounted_here(dir) => bail!(
            "{} is already mounted by another `store mount`; unmount it first (umount {})",
            dir.display(),
            dir.display()
        ),
        Ok(_) => Ok(()),
    }
}

/// Mounts `fs` on `dir` and serves it from `threads` worker threads in the
/// background; other clients' changes (if the backend reports them) are
/// turned into kernel cache invalidations. Dropping the session unmounts.
pub fn serve(
    dir: &Path,
    fs: StoreFs,
    threads: usize,
    fsname: &str,
) -> anyhow::Result<fuser::BackgroundSession> {
    let changes = fs.client().meta().subscribe();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(fsname.to_string()),
        fuser::MountOption::Subtype("store".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::new(fs, dir, &config)
        .with_context(|| format!("mounting on {} (needs root and /dev/fuse)", dir.display()))?;
    let notifier = session.notifier();
    let bg = session
        .spawn()
        .context("starting the FUSE worker threads")?;
    if let Some(rx) = changes {
        std::thread::Builder::new()
            .name("store-invalidate".into())
            .spawn(move || invalidate(&notifier, &rx))
            .context("starting the cache invalidation thread")?;
    }
    Ok(bg)
}

/// Drops kernel caches for every change reported by the backend. Runs on
/// its own thread: notifications must not be sent from a request handler.
fn invalidate(notifier: &fuser::Notifier, rx: &std::sync::mpsc::Receiver<crate::fs::Change>) {
    use crate::fs::Change;
    use std::ffi::OsStr;
    for change in rx {
        let r = match &change {
            Change::Inode(ino) => notifier.inval_inode(fuser::INodeNo(*ino), 0, 0),
            Change::Entry { parent, name } => {
                notifier.inval_entry(fuser::INodeNo(*parent), OsStr::from_bytes(name))
            }
        };
        match r {
            // Not cached by the kernel: nothing to drop.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return,
            Err(e) => tracing::debug!(?change, error = %e, "cache invalidation failed"),
            Ok(()) => {}
        }
    }
}

/// Runs `store mount` in the foreground until SIGTERM/SIGINT or an
/// external `umount`, then commits buffered writes and unmounts.
pub async fn run(args: MountArgs, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving the mount point {}", args.dir.display()))?;
    prepare_mountpoint(&dir)?;
    let backend = args.backend.clone();
    let (meta, chunks, locks) =
        tokio::task::spawn_blocking(move || open_backend(&backend)).await??;
    let client = Client::new(
        meta,
        chunks,
        ClientOptions {
            cache_bytes: args.cache_mb << 20,
            // Over the network: 4 chunks stored in parallel per commit.
            commit_bytes: match &args.backend {
                Backend::Cluster(_) => 4 * crate::chunk::MAX_CHUNK,
                Backend::Local(_) => 0,
            },
            ..ClientOptions::default()
        },
    );
    // The local backend has exactly one client: nothing can hold an
    // unlinked file open across a restart. (On a cluster another mount
    // may still have them open; they stay until purged there.)
    if let Backend::Local(_) = &args.backend {
        let c = client.clone();
        match tokio::task::spawn_blocking(move || c.purge_orphans()).await? {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                count = n,
                "deleted files unlinked while open before the last unmount"
            ),
            Err(e) => tracing::warn!(error = %e, "listing orphaned files failed"),
        }
    }
    let fs = StoreFs::new(
        client.clone(),
        locks,
        FuseOptions {
            ttl: Duration::from_millis(args.ttl_ms),
            direct_io: args.direct_io,
            flock: matches!(args.backend, Backend::Cluster(_)),
        },
    );
    let bg = serve(
        &dir,
        fs,
        usize::from(args.threads),
        &format!("store:{}", args.backend),
    )?;
    tracing::info!(dir = %dir.display(), backend = %args.backend, threads = args.threads, "mounted");
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if bg.guard.is_finished() {
                    tracing::info!(dir = %dir.display(), "unmounted from outside");
                    break;
                }
            }
        }
    }
    let flush_client = client.clone();
    tokio::task::spawn_blocking(move || flush_client.flush_all()).await?;
    // fuser unmounts and joins its workers; when files are still open the
    // unmount is refused (EBUSY) and we detach instead.
    let joined = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || bg.umount_and_join()),
    )
    .await;
    match joined {
        Ok(Ok(Ok(()))) => tracing::info!(dir = %dir.display(), "unmounted"),
        Ok(Ok(Err(e))) => {
            tracing::debug!(error = %e, "plain unmount refused");
            unmount(&dir)?;
            tracing::info!(dir = %dir.display(), "unmounted (detached)");
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "FUSE session thread failed");
            unmount(&dir)?;
        }
        Err(_) => {
            tracing::warn!("FUSE workers still busy after unmount; detaching and exiting");
            unmount(&dir)?;
        }
    }
    Ok(())
}

/// Flags of `store fs`.
#[derive(Debug, Clone, clap::Args)]
pub struct FsArgs {
    #[command(subcommand)]
    pub command: FsCommand,
}

/// `store fs` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FsCommand {
    /// Show a file's slices and where their chunks live.
    Stat {
        /// A file on a `store mount`.
        path: PathBuf,
    },
}

/// Runs `store fs …`.
pub fn run_fs(args: FsArgs) -> anyhow::Result<()> {
    match args.command {
        FsCommand::Stat { path } => {
            let json = stat(&path)?;
            println!("{json}");
            Ok(())
        }
    }
}

/// The JSON `store fs stat` prints, read through the mount.
pub fn stat(path: &Path) -> anyhow::Result<String> {
    let c = cpath(path)?;
    let name = CString::new(fuse::STAT_XATTR).context("xattr name")?;
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => bail!(
                "{} is not on a `store mount` (no {} attribute)",
                path.display(),
                fuse::STAT_XATTR
            ),
            _ => Err(e).with_context(|| format!("reading {}", path.display())),
        };
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).context("stat output is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_parsing_names_the_fix() {
        assert_eq!(
            Backend::parse("local:/x").unwrap(),
            Backend::Local(PathBuf::from("/x"))
        );
        let e = Backend::parse("ceph:/x").unwrap_err();
        assert!(e.contains("local:PATH"), "{e}");
        assert!(Backend::parse("local:").is_err());
    }
}
