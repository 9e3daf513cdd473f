//! Tests of the namespace state machine: POSIX cases one by one, and random
//! op sequences against a simple tree model and across the two stores.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::placement::ChunkId;

fn t(secs: i64) -> Time {
    Time { secs, nanos: 0 }
}

fn root() -> Ctx {
    Ctx::root(t(100))
}

fn user(uid: u32, gid: u32) -> Ctx {
    Ctx {
        uid,
        gid,
        groups: vec![],
        now: t(200),
    }
}

fn fresh() -> MemStore {
    MemStore::new(t(1))
}

fn ok(s: &mut MemStore, op: FsOp, ctx: &Ctx) -> FsReply {
    match apply(s, op.clone(), ctx) {
        Ok(r) => r,
        Err(e) => panic!("{op:?} failed: {e}"),
    }
}

fn err(s: &mut MemStore, op: FsOp, ctx: &Ctx) -> Errno {
    match apply(s, op.clone(), ctx) {
        Ok(r) => panic!("{op:?} succeeded: {r:?}"),
        Err(ApplyError::Errno(e)) => e,
        Err(e) => panic!("{op:?}: store error {e}"),
    }
}

fn mkdir(s: &mut MemStore, parent: u64, name: &str, mode: u32, ctx: &Ctx) -> Inode {
    ok(
        s,
        FsOp::Mkdir {
            parent,
            name: name.into(),
            mode,
        },
        ctx,
    )
    .inode
    .unwrap()
}

fn create(s: &mut MemStore, parent: u64, name: &str, mode: u32, ctx: &Ctx) -> Inode {
    ok(
        s,
        FsOp::Mknod {
            parent,
            name: name.into(),
            mode: libc::S_IFREG | mode,
            rdev: 0,
        },
        ctx,
    )
    .inode
    .unwrap()
}

fn get(s: &MemStore, ino: u64) -> Inode {
    s.inode(ino).unwrap().unwrap()
}

fn chunk(n: u8) -> ChunkId {
    ChunkId([n; 16])
}

#[test]
fn create_lookup_unlink_lifecycle() {
    let mut s = fresh();
    let f = create(&mut s, ROOT_INO, "f", 0o644, &root());
    assert_eq!(f.nlink, 1);
    assert_eq!(f.perm, 0o644);
    assert_eq!(s.dentry(ROOT_INO, b"f").unwrap().unwrap().ino, f.ino);
    assert_eq!(get(&s, ROOT_INO).mtime, t(100));
    let e = err(
        &mut s,
        FsOp::Mknod {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            mode: 0o644,
            rdev: 0,
        },
        &root(),
    );
    assert_eq!(e, Errno::EEXIST);
    let r = ok(
        &mut s,
        FsOp::Unlink {
            parent: ROOT_INO,
            name: b"f".to_vec(),
        },
        &root(),
    );
    assert_eq!(r.orphaned, vec![f.ino]);
    // Still readable while open, until purged.
    assert_eq!(get(&s, f.ino).nlink, 0);
    ok(&mut s, FsOp::Purge { ino: f.ino }, &root());
    assert!(s.inode(f.ino).unwrap().is_none());
    assert_eq!(s.inode_count(), 1);
}

#[test]
fn names_are_bytes_with_limits() {
    let mut s = fresh();
    let bad_utf8 = vec![0xff, 0xfe, b'x'];
    ok(
        &mut s,
        FsOp::Mknod {
            parent: ROOT_INO,
            name: bad_utf8.clone(),
            mode: 0o600,
            rdev: 0,
        },
        &root(),
    );
    assert!(s.dentry(ROOT_INO, &bad_utf8).unwrap().is_some());
    let long = vec![b'a'; 256];
    let e = err(
        &mut s,
        FsOp::Mkdir {
            parent: ROOT_INO,
            name: long,
            mode: 0o755,
        },
        &root(),
    );
    assert_eq!(e, Errno::ENAMETOOLONG);
    ok(
        &mut s,
        FsOp::Mkdir {
            parent: ROOT_INO,
            name: vec![b'a'; 255],
            mode: 0o755,
        },
        &root(),
    );
    for bad in [&b"a/b"[..], b".", b"..", b"a\0"] {
        let e = err(
            &mut s,
            FsOp::Mkdir {
                parent: ROOT_INO,
                name: bad.to_vec(),
                mode: 0o755,
            },
            &root(),
        );
        assert_eq!(e, Errno::EINVAL, "{bad:?}");
    }
}

#[test]
fn directories_count_links_and_refuse_wrong_removal() {
    let mut s = fresh();
    let d = mkdir(&mut s, ROOT_INO, "d", 0o755, &root());
    assert_eq!(get(&s, ROOT_INO).nlink, 3);
    mkdir(&mut s, d.ino, "sub", 0o755, &root());
    create(&mut s, d.ino, "f", 0o644, &root());
    assert_eq!(get(&s, d.ino).nlink, 3);
    let rmdir = |name: &str| FsOp::Rmdir {
        parent: ROOT_INO,
        name: name.into(),
    };
    assert_eq!(err(&mut s, rmdir("d"), &root()), Errno::ENOTEMPTY);
    assert_eq!(err(&mut s, rmdir("nope"), &root()), Errno::ENOENT);
    let e = err(
        &mut s,
        FsOp::Unlink {
            parent: ROOT_INO,
            name: b"d".to_vec(),
        },
        &root(),
    );
    assert_eq!(e, Errno::EISDIR);
    let e = err(
        &mut s,
        FsOp::Rmdir {
            parent: d.ino,
            name: b"f".to_vec(),
        },
        &root(),
    );
    assert_eq!(e, Errno::ENOTDIR);
    // Creating below a file.
    let f = s.dentry(d.ino, b"f").unwrap().unwrap().ino;
    let e = err(
        &mut s,
        FsOp::Mkdir {
            parent: f,
            name: b"x".to_vec(),
            mode: 0o755,
        },
        &root(),
    );
    assert_eq!(e, Errno::ENOTDIR);
    ok(
        &mut s,
        FsOp::Rmdir {
            parent: d.ino,
            name: b"sub".to_vec(),
        },
        &root(),
    );
    ok(
        &mut s,
        FsOp::Unlink {
            parent: d.ino,
            name: b"f".to_vec(),
        },
        &root(),
    );
    ok(&mut s, rmdir("d"), &root());
    assert_eq!(get(&s, ROOT_INO).nlink, 2);
    // Through the removed directory (a process's cwd): ENOENT, no hang.
    let e = err(
        &mut s,
        FsOp::Mknod {
            parent: d.ino,
            name: b"late".to_vec(),
            mode: 0o644,
            rdev: 0,
        },
        &root(),
    );
    assert_eq!(e, Errno::ENOENT);
}

#[test]
fn hard_links_share_the_inode() {
    let mut s = fresh();
    let f = create(&mut s, ROOT_INO, "a", 0o644, &root());
    let r = ok(
        &mut s,
        FsOp::Link {
            ino: f.ino,
            parent: ROOT_INO,
            name: b"b".to_vec(),
        },
        &root(),
    );
    assert_eq!(r.inode.unwrap().nlink, 2);
    let d = mkdir(&mut s, ROOT_INO, "d", 0o755, &root());
    let e = err(
        &mut s,
        FsOp::Link {
            ino: d.ino,
            parent: ROOT_INO,
            name: b"dl".to_vec(),
        },
        &root(),
    );
    assert_eq!(e, Errno::EPERM);
    let r = ok(
        &mut s,
        FsOp::Unlink {
            parent: ROOT_INO,
            name: b"a".to_vec(),
        },
        &root(),
    );
    assert!(r.orphaned.is_empty());
    assert_eq!(get(&s, f.ino).nlink, 1);
    // Renaming one name of an inode onto another name of it: no-op.
    ok(
        &mut s,
        FsOp::Link {
            ino: f.ino,
            parent: ROOT_INO,
            name: b"c".to_vec(),
        },
        &root(),
    );
    ok(
        &mut s,
        FsOp::Rename {
            parent: ROOT_INO,
            name: b"b".to_vec(),
            new_parent: ROOT_INO,
            new_name: b"c".to_vec(),
            mode: RenameMode::Replace,
        },
        &root(),
    );
    assert!(s.dentry(ROOT_INO, b"b").unwrap().is_some());
    assert_eq!(get(&s, f.ino).nlink, 2);
}

#[test]
fn rename_cases() {
    let mut s = fresh();
    let a = mkdir(&mut s, ROOT_INO, "a", 0o755, &root());
    let b = mkdir(&mut s, ROOT_INO, "b", 0o755, &root());
    let sub = mkdir(&mut s, a.ino, "sub", 0o755, &root());
    let f = create(&mut s, a.ino, "f", 0o644, &root());
    let g = create(&mut s, b.ino, "g", 0o644, &root());
    let ren = |p: u64, n: &str, np: u64, nn: &str, mode| FsOp::Rename {
        parent: p,
        name: n.into(),
        new_parent: np,
        new_name: nn.into(),
        mode,
    };
    use RenameMode::*;
    // Into its own subtree.
    assert_eq!(
        err(&mut s, ren(ROOT_INO, "a", sub.ino, "x", Replace), &root()),
        Errno::EINVAL
    );
    assert_eq!(
        err(&mut s, ren(ROOT_INO, "a", a.ino, "x", Replace), &root()),
        Errno::EINVAL
    );
    // Dir over file, file over dir, dir over non-empty dir.
    assert_eq!(
        err(&mut s, ren(a.ino, "sub", b.ino, "g", Replace), &root()),
        Errno::ENOTDIR
    );
    assert_eq!(
        err(&mut s, ren(b.ino, "g", a.ino, "sub", Replace), &root()),
        Errno::EISDIR
    );
    assert_eq!(
        err(&mut s, ren(a.ino, "sub", ROOT_INO, "b", Replace), &root()),
        Errno::ENOTEMPTY
    );
    assert_eq!(
        err(&mut s, ren(b.ino, "g", a.ino, "f", NoReplace), &root()),
        Errno::EEXIST
    );
    assert_eq!(
        err(&mut s, ren(b.ino, "g", a.ino, "zz", Exchange), &root()),
        Errno::ENOENT
    );
    assert_eq!(
        err(&mut s, ren(b.ino, "nope", a.ino, "zz", Replace), &root()),
        Errno::ENOENT
    );
    // File over file across directories: target orphaned.
    let r = ok(&mut s, ren(b.ino, "g", a.ino, "f", Replace), &root());
    assert_eq!(r.orphaned, vec![f.ino]);
    assert_eq!(s.dentry(a.ino, b"f").unwrap().unwrap().ino, g.ino);
    assert!(s.dentry(b.ino, b"g").unwrap().is_none());
    // Directory across directories: link counts and parent move.
    ok(&mut s, ren(a.ino, "sub", b.ino, "sub2", Replace), &root());
    assert_eq!(get(&s, a.ino).nlink, 2);
    assert_eq!(get(&s, b.ino).nlink, 3);
    assert_eq!(get(&s, sub.ino).parent, b.ino);
    // Directory over an empty directory.
    let e = mkdir(&mut s, a.ino, "empty", 0o755, &root());
    ok(&mut s, ren(b.ino, "sub2", a.ino, "empty", Replace), &root());
    assert!(s.inode(e.ino).unwrap().is_none());
    assert_eq!(get(&s, a.ino).nlink, 3);
    assert_eq!(get(&s, b.ino).nlink, 2);
    // Exchange a file and a directory across parents.
    create(&mut s, b.ino, "h", 0o644, &root());
    ok(&mut s, ren(a.ino, "empty", b.ino, "h", Exchange), &root());
    assert_eq!(s.dentry(b.ino, b"h").unwrap().unwrap().ino, sub.ino);
    assert_eq!(get(&s, sub.ino).parent, b.ino);
    assert_eq!(get(&s, a.ino).nlink, 2);
    assert_eq!(get(&s, b.ino).nlink, 3);
    // A directory below itself: EINVAL; over its own ancestor: ENOTEMPTY.
    assert_eq!(
        err(&mut s, ren(ROOT_INO, "b", b.ino, "h", Replace), &root()),
        Errno::EINVAL
    );
    assert_eq!(
        err(&mut s, ren(b.ino, "h", ROOT_INO, "b", Replace), &root()),
        Errno::ENOTEMPTY
    );
}

#[test]
fn permissions_follow_the_kernel() {
    let mut s = fresh();
    let alice = user(1000, 1000);
    let bob = user(1001, 1001);
    // Root-owned 0755 root: users cannot create.
    let e = err(
        &mut s,
        FsOp::Mkdir {
            parent: ROOT_INO,
            name: b"x".to_vec(),
            mode: 0o755,
        },
        &alice,
    );
    assert_eq!(e, Errno::EACCES);
    // Sticky world-writable /tmp.
    let tmp = mkdir(&mut s, ROOT_INO, "tmp", 0o1777, &root());
    create(&mut s, tmp.ino, "a", 0o644, &alice);
    let unlink = FsOp::Unlink {
        parent: tmp.ino,
        name: b"a".to_vec(),
    };
    assert_eq!(err(&mut s, unlink.clone(), &bob), Errno::EPERM);
    let ren = FsOp::Rename {
        parent: tmp.ino,
        name: b"a".to_vec(),
        new_parent: tmp.ino,
        new_name: b"b".to_vec(),
        mode: RenameMode::Replace,
    };
    assert_eq!(err(&mut s, ren, &bob), Errno::EPERM);
    ok(&mut s, unlink, &alice);
    // chmod only by the owner; chown only by root; chgrp to own groups.
    let f = create(&mut s, tmp.ino, "f", 0o644, &alice);
    let chmod = |mode| FsOp::SetAttr {
        ino: f.ino,
        attr: SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        },
    };
    assert_eq!(err(&mut s, chmod(0o777), &bob), Errno::EPERM);
    ok(&mut s, chmod(0o600), &alice);
    let chown = |uid, gid| FsOp::SetAttr {
        ino: f.ino,
        attr: SetAttr {
            uid,
            gid,
            ..SetAttr::default()
        },
    };
    assert_eq!(err(&mut s, chown(Some(1001), None), &alice), Errno::EPERM);
    assert_eq!(err(&mut s, chown(None, Some(1001)), &alice), Errno::EPERM);
    let mut alice_in_1001 = alice.clone();
    alice_in_1001.groups = vec![1001];
    ok(&mut s, chown(None, Some(1001)), &alice_in_1001);
    ok(&mut s, chown(Some(1001), None), &root());
    // Read/write bits.
    let i = get(&s, f.ino);
    assert_eq!((i.uid, i.gid, i.perm), (1001, 1001, 0o600));
    assert_eq!(check_access(&i, &alice, 4), Err(Errno::EACCES));
    assert_eq!(check_access(&i, &bob, 6), Ok(()));
    assert_eq!(check_access(&i, &root(), 6), Ok(()));
    assert_eq!(check_access(&i, &root(), 1), Err(Errno::EACCES));
    // Truncate needs write permission unless done through a handle.
    let trunc = |via_handle| FsOp::SetAttr {
        ino: f.ino,
        attr: SetAttr {
            size: Some(0),
            via_handle,
            ..SetAttr::default()
        },
    };
    assert_eq!(err(&mut s, trunc(false), &alice), Errno::EACCES);
    ok(&mut s, trunc(true), &alice);
    // utimes: explicit times need ownership, "now" needs write access.
    let utime = |t: SetTime| FsOp::SetAttr {
        ino: f.ino,
        attr: SetAttr {
            atime: Some(t),
            mtime: Some(t),
            ..SetAttr::default()
        },
    };
    assert_eq!(err(&mut s, utime(SetTime::At(t(5))), &alice), Errno::EPERM);
    assert_eq!(err(&mut s, utime(SetTime::Now), &alice), Errno::EACCES);
    ok(&mut s, utime(SetTime::At(t(5))), &bob);
    assert_eq!(get(&s, f.ino).mtime, t(5));
}

#[test]
fn setgid_directories_and_suid_clearing() {
    let mut s = fresh();
    let alice = user(1000, 1000);
    let shared = mkdir(&mut s, ROOT_INO, "shared", 0o2777, &root());
    ok(
        &mut s,
        FsOp::SetAttr {
            ino: shared.ino,
            attr: SetAttr {
                gid: Some(50),
                ..SetAttr::default()
            },
        },
        &root(),
    );
    let d = mkdir(&mut s, shared.ino, "d", 0o755, &alice);
    assert_eq!((d.gid, d.perm), (50, 0o2755));
    let f = create(&mut s, shared.ino, "f", 0o2755, &alice);
    // Not in group 50: set-gid on the new file is dropped.
    assert_eq!((f.gid, f.perm), (50, 0o755));
    // A write by a non-root user clears set-uid.
    let g = create(&mut s, ROOT_INO, "g", 0o4755, &root());
    ok(
        &mut s,
        FsOp::SetAttr {
            ino: g.ino,
            attr: SetAttr {
                uid: Some(1000),
                ..SetAttr::default()
            },
        },
        &root(),
    );
    assert_eq!(get(&s, g.ino).perm, 0o755, "chown clears set-uid");
    ok(
        &mut s,
        FsOp::SetAttr {
            ino: g.ino,
            attr: SetAttr {
                mode: Some(0o4755),
                ..SetAttr::default()
            },
        },
        &alice,
    );
    ok(
        &mut s,
        FsOp::AppendSlices {
            ino: g.ino,
            slices: vec![Slice {
                off: 0,
                len: 1,
                chunk: chunk(1),
                chunk_off: 0,
            }],
            size: 1,
            inline: vec![],
        },
        &alice,
    );
    assert_eq!(get(&s, g.ino).perm, 0o755);
}

#[test]
fn xattrs() {
    let mut s = fresh();
    let alice = user(1000, 1000);
    let f = create(&mut s, ROOT_INO, "f", 0o644, &root());
    let set = |name: &str, mode| FsOp::SetXattr {
        ino: f.ino,
        name: name.into(),
        value: b"v".to_vec(),
        mode,
    };
    ok(&mut s, set("user.a", XattrMode::Create), &root());
    assert_eq!(
        err(&mut s, set("user.a", XattrMode::Create), &root()),
        Errno::EEXIST
    );
    assert_eq!(
        err(&mut s, set("user.b", XattrMode::Replace), &root()),
        Errno::ENODATA
    );
    assert_eq!(
        err(&mut s, set("user.b", XattrMode::Any), &alice),
        Errno::EACCES
    );
    assert_eq!(
        err(&mut s, set("trusted.b", XattrMode::Any), &alice),
        Errno::EPERM
    );
    assert_eq!(
        err(
            &mut s,
            set("system.posix_acl_access", XattrMode::Any),
            &root()
        ),
        Errno::EOPNOTSUPP
    );
    let e = err(
        &mut s,
        FsOp::SetXattr {
            ino: f.ino,
            name: b"user.big".to_vec(),
            value: vec![0; MAX_XATTR_VALUE + 1],
            mode: XattrMode::Any,
        },
        &root(),
    );
    assert_eq!(e, Errno::E2BIG);
    assert_eq!(
        get(&s, f.ino).xattrs.get(&b"user.a"[..]),
        Some(&b"v".to_vec())
    );
    let rm = |name: &str| FsOp::RemoveXattr {
        ino: f.ino,
        name: name.into(),
    };
    ok(&mut s, rm("user.a"), &root());
    assert_eq!(err(&mut s, rm("user.a"), &root()), Errno::ENODATA);
}

#[test]
fn writes_truncates_and_purges_free_chunks() {
    let mut s = fresh();
    let f = create(&mut s, ROOT_INO, "f", 0o644, &root());
    let sl = |off, len, c| Slice {
        off,
        len,
        chunk: chunk(c),
        chunk_off: 0,
    };
    let append = |slices, size| FsOp::AppendSlices {
        ino: f.ino,
        slices,
        size,
        inline: vec![],
    };
    let r = ok(
        &mut s,
        append(vec![sl(0, 100, 1), sl(100, 100, 2)], 200),
        &root(),
    );
    assert_eq!(r.inode.unwrap().size, 200);
    assert!(r.freed.is_empty());
    // Overwriting all of chunk 1 frees it.
    let r = ok(&mut s, append(vec![sl(0, 100, 3)], 100), &root());
    assert_eq!(r.freed, vec![chunk(1)]);
    assert_eq!(r.inode.unwrap().size, 200, "a write never shrinks");
    // Truncate to 50 drops chunk 2 and clips chunk 3.
    let r = ok(
        &mut s,
        FsOp::SetAttr {
            ino: f.ino,
            attr: SetAttr {
                size: Some(50),
                ..SetAttr::default()
            },
        },
        &root(),
    );
    assert_eq!(r.freed, vec![chunk(2)]);
    assert_eq!(s.slices(f.ino).unwrap(), vec![sl(0, 50, 3)]);
    // Compaction refuses a stale expectation.
    let e = err(
        &mut s,
        FsOp::ReplaceSlices {
            ino: f.ino,
            expect: vec![],
            new: vec![],
        },
        &root(),
    );
    assert_eq!(e, Errno::EAGAIN);
    let r = ok(
        &mut s,
        FsOp::ReplaceSlices {
            ino: f.ino,
            expect: vec![sl(0, 50, 3)],
            new: vec![sl(0, 50, 4)],
        },
        &root(),
    );
    assert_eq!(r.freed, vec![chunk(3)]);
    ok(
        &mut s,
        FsOp::Unlink {
            parent: ROOT_INO,
            name: b"f".to_vec(),
        },
        &root(),
    );
    let r = ok(&mut s, FsOp::Purge { ino: f.ino }, &root());
    assert_eq!(r.freed, vec![chunk(4)]);
    // Writing to a directory.
    let e = err(
        &mut s,
        FsOp::AppendSlices {
            ino: ROOT_INO,
            slices: vec![],
            size: 1,
            inline: vec![],
        },
        &root(),
    );
    assert_eq!(e, Errno::EISDIR);
}

#[test]
fn inline_chunks_live_and_die_with_their_slices() {
    let mut s = fresh();
    let f = create(&mut s, ROOT_INO, "f", 0o644, &root());
    let sl = |off, len, c, co| Slice {
        off,
        len,
        chunk: chunk(c),
        chunk_off: co,
    };
    let r = ok(
        &mut s,
        FsOp::AppendSlices {
            ino: f.ino,
            slices: vec![sl(0, 5, 1, 0), sl(5, 3, 1, 5)],
            size: 8,
            inline: vec![(chunk(1), b"hello wo".to_vec())],
        },
        &root(),
    );
    assert!(r.freed.is_empty());
    assert_eq!(s.inline_chunk(&chunk(1)).unwrap().unwrap(), b"hello wo");
    // A slice past the inline bytes, or too much inline data: refused.
    let bad = FsOp::AppendSlices {
        ino: f.ino,
        slices: vec![sl(0, 9, 2, 0)],
        size: 9,
        inline: vec![(chunk(2), b"short".to_vec())],
    };
    assert_eq!(err(&mut s, bad, &root()), Errno::EINVAL);
    let big = FsOp::AppendSlices {
        ino: f.ino,
        slices: vec![],
        size: 0,
        inline: vec![(chunk(3), vec![0; MAX_INLINE + 1])],
    };
    assert_eq!(err(&mut s, big, &root()), Errno::EINVAL);
    assert_eq!(s.inline_count(), 1, "refused ops store nothing");
    // Overwritten: the inline chunk goes away and is not reported as a
    // chunk-store chunk to delete.
    let r = ok(
        &mut s,
        FsOp::AppendSlices {
            ino: f.ino,
            slices: vec![sl(0, 8, 4, 0)],
            size: 8,
            inline: vec![],
        },
        &root(),
    );
    assert!(r.freed.is_empty());
    assert_eq!(s.inline_count(), 0);
    // Purge of a file with inline data leaves nothing behind.
    let g = create(&mut s, ROOT_INO, "g", 0o644, &root());
    ok(
        &mut s,
        FsOp::AppendSlices {
            ino: g.ino,
            slices: vec![sl(0, 2, 5, 0)],
            size: 2,
            inline: vec![(chunk(5), b"hi".to_vec())],
        },
        &root(),
    );
    ok(
        &mut s,
        FsOp::Unlink {
            parent: ROOT_INO,
            name: b"g".to_vec(),
        },
        &root(),
    );
    let r = ok(&mut s, FsOp::Purge { ino: g.ino }, &root());
    assert!(r.freed.is_empty());
    assert_eq!(s.inline_count(), 0);
}

#[test]
fn symlinks_and_special_files() {
    let mut s = fresh();
    let r = ok(
        &mut s,
        FsOp::Symlink {
            parent: ROOT_INO,
            name: b"l".to_vec(),
            target: b"/some/where\xff".to_vec(),
        },
        &root(),
    );
    let l = r.inode.unwrap();
    assert_eq!((l.kind, l.size, l.perm), (FileKind::Symlink, 12, 0o777));
    let fifo = ok(
        &mut s,
        FsOp::Mknod {
            parent: ROOT_INO,
            name: b"p".to_vec(),
            mode: libc::S_IFIFO | 0o600,
            rdev: 0,
        },
        &root(),
    );
    assert_eq!(fifo.inode.unwrap().kind, FileKind::Fifo);
    let tmp = mkdir(&mut s, ROOT_INO, "tmp", 0o777, &root());
    let dev = |parent| FsOp::Mknod {
        parent,
        name: b"dev".to_vec(),
        mode: libc::S_IFCHR | 0o600,
        rdev: 5,
    };
    assert_eq!(err(&mut s, dev(tmp.ino), &user(1000, 1000)), Errno::EPERM);
    let d = ok(&mut s, dev(tmp.ino), &root()).inode.unwrap();
    assert_eq!((d.kind, d.rdev), (FileKind::CharDevice, 5));
}

#[test]
fn inodes_with_binary_xattrs_survive_serialisation() {
    let mut s = fresh();
    let f = create(&mut s, ROOT_INO, "f", 0o644, &root());
    let r = ok(
        &mut s,
        FsOp::SetXattr {
            ino: f.ino,
            name: b"user.\xff".to_vec(),
            value: vec![0, 1, 255],
            mode: XattrMode::Any,
        },
        &root(),
    );
    let i = r.inode.unwrap();
    let json = serde_json::to_vec(&i).unwrap();
    assert_eq!(serde_json::from_slice::<Inode>(&json).unwrap(), i);
}

#[test]
fn redb_store_applies_atomically_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let ino;
    {
        let fs = RedbFs::open(&path).unwrap();
        let r = fs
            .apply(
                FsOp::Mkdir {
                    parent: ROOT_INO,
                    name: b"d".to_vec(),
                    mode: 0o755,
                },
                &root(),
            )
            .unwrap();
        ino = r.inode.unwrap().ino;
        let e = fs
            .apply(
                FsOp::Rmdir {
                    parent: ROOT_INO,
                    name: b"nope".to_vec(),
                },
                &root(),
            )
            .unwrap_err();
        assert!(matches!(e, ApplyError::Errno(Errno::ENOENT)));
    }
    let fs = RedbFs::open(&path).unwrap();
    let view = fs.read().unwrap();
    assert_eq!(view.dentry(ROOT_INO, b"d").unwrap().unwrap().ino, ino);
    assert_eq!(view.inode(ROOT_INO).unwrap().unwrap().nlink, 3);
    let listed = view.list_dir(ROOT_INO, None, 10).unwrap();
    assert_eq!(listed.len(), 1);
}

// ---- random op sequences ----------------------------------------------

/// Small name and path alphabet so ops collide often.
const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum ModelOp {
    Mkdir(Vec<usize>),
    Create(Vec<usize>),
    Unlink(Vec<usize>),
    Rmdir(Vec<usize>),
    Link(Vec<usize>, Vec<usize>),
    Rename(Vec<usize>, Vec<usize>, RenameMode),
}

fn arb_path() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..NAMES.len(), 1..4)
}

fn arb_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        arb_path().prop_map(ModelOp::Mkdir),
        arb_path().prop_map(ModelOp::Create),
        arb_path().prop_map(ModelOp::Unlink),
        arb_path().prop_map(ModelOp::Rmdir),
        (arb_path(), arb_path()).prop_map(|(a, b)| ModelOp::Link(a, b)),
        (
            arb_path(),
            arb_path(),
            prop_oneof![
                Just(RenameMode::Replace),
                Just(RenameMode::NoReplace),
                Just(RenameMode::Exchange)
            ]
        )
            .prop_map(|(a, b, m)| ModelOp::Rename(a, b, m)),
    ]
}

/// The model: a tree of nodes, written the obvious way.
#[derive(Clone, Debug, Default)]
struct Model {
    /// node id → children (directories) or `None` (files).
    nodes: HashMap<u32, Option<BTreeMap<String, u32>>>,
    next: u32,
}

impl Model {
    fn new() -> Self {
        let mut m = Model::default();
        m.nodes.insert(0, Some(BTreeMap::new()));
        m.next = 1;
        m
    }

    fn children(&self, id: u32) -> Option<&BTreeMap<String, u32>> {
        self.nodes.get(&id).and_then(|n| n.as_ref())
    }

    /// Resolves the parent directory of `path`; ENOENT/ENOTDIR on the way.
    fn parent(&self, path: &[usize]) -> Result<(u32, String), Errno> {
        let mut cur = 0u32;
        for &c in &path[..path.len() - 1] {
            let kids = self.children(cur).ok_or(Errno::ENOTDIR)?;
            cur = *kids.get(NAMES[c]).ok_or(Errno::ENOENT)?;
        }
        if self.children(cur).is_none() {
            return Err(Errno::ENOTDIR);
        }
        Ok((cur, NAMES[path[path.len() - 1]].to_string()))
    }

    fn lookup(&self, dir: u32, name: &str) -> Option<u32> {
        self.children(dir).and_then(|k| k.get(name).copied())
    }

    fn is_dir(&self, id: u32) -> bool {
        self.children(id).is_some()
    }

    fn kids_mut(&mut self, id: u32) -> &mut BTreeMap<String, u32> {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.as_mut())
            .expect("a directory")
    }

    /// Whether `anc` is `id` or above it (directories have one parent).
    fn is_ancestor(&self, anc: u32, id: u32) -> bool {
        if anc == id {
            return true;
        }
        let Some(kids) = self.children(anc) else {
            return false;
        };
        kids.values()
            .any(|&k| self.is_dir(k) && self.is_ancestor(k, id))
    }

    fn apply(&mut self, op: &ModelOp) -> Result<(), Errno> {
        match op {
            ModelOp::Mkdir(p) | ModelOp::Create(p) => {
                let (dir, name) = self.parent(p)?;
                if self.lookup(dir, &name).is_some() {
                    return Err(Errno::EEXIST);
                }
                let id = self.next;
                self.next += 1;
                let node = matches!(op, ModelOp::Mkdir(_)).then(BTreeMap::new);
                self.nodes.insert(id, node);
                self.kids_mut(dir).insert(name, id);
                Ok(())
            }
            ModelOp::Unlink(p) | ModelOp::Rmdir(p) => {
                let (dir, name) = self.parent(p)?;
                let id = self.lookup(dir, &name).ok_or(Errno::ENOENT)?;
                match (op, self.is_dir(id)) {
                    (ModelOp::Unlink(_), true) => return Err(Errno::EISDIR),
                    (ModelOp::Rmdir(_), false) => return Err(Errno::ENOTDIR),
                    (ModelOp::Rmdir(_), true)
                        if !self.children(id).is_some_and(|k| k.is_empty()) =>
                    {
                        return Err(Errno::ENOTEMPTY)
                    }
                    _ => {}
                }
                self.kids_mut(dir).remove(&name);
                Ok(())
            }
            ModelOp::Link(src, dst) => {
                let (sd, sn) = self.parent(src)?;
                let id = self.lookup(sd, &sn).ok_or(Errno::ENOENT)?;
                let (dd, dn) = self.parent(dst)?;
                if self.lookup(dd, &dn).is_some() {
                    return Err(Errno::EEXIST);
                }
                if self.is_dir(id) {
                    return Err(Errno::EPERM);
                }
                self.kids_mut(dd).insert(dn, id);
                Ok(())
            }
            ModelOp::Rename(src, dst, mode) => {
                let (sd, sn) = self.parent(src)?;
                let (dd, dn) = self.parent(dst)?;
                let s = self.lookup(sd, &sn).ok_or(Errno::ENOENT)?;
                let d = self.lookup(dd, &dn);
                match (mode, d) {
                    (RenameMode::NoReplace, Some(_)) => return Err(Errno::EEXIST),
                    (RenameMode::Exchange, None) => return Err(Errno::ENOENT),
                    _ => {}
                }
                if self.is_dir(s) && self.is_ancestor(s, dd) {
                    return Err(Errno::EINVAL);
                }
                if let Some(d) = d {
                    if self.is_dir(d) && self.is_ancestor(d, sd) {
                        return Err(if *mode == RenameMode::Exchange {
                            Errno::EINVAL
                        } else {
                            Errno::ENOTEMPTY
                        });
                    }
                    if d == s {
                        return Ok(());
                    }
                    if *mode != RenameMode::Exchange {
                        if self.is_dir(s) && !self.is_dir(d) {
                            return Err(Errno::ENOTDIR);
                        }
                        if !self.is_dir(s) && self.is_dir(d) {
                            return Err(Errno::EISDIR);
                        }
                        if self.is_dir(d) && !self.children(d).is_some_and(|k| k.is_empty()) {
                            return Err(Errno::ENOTEMPTY);
                        }
                    }
                }
                if *mode == RenameMode::Exchange {
                    let d = d.ok_or(Errno::ENOENT)?;
                    self.kids_mut(sd).insert(sn, d);
                    self.kids_mut(dd).insert(dn, s);
                } else {
                    self.kids_mut(sd).remove(&sn);
                    self.kids_mut(dd).insert(dn, s);
                }
                Ok(())
            }
        }
    }

    /// (path, is_dir, nlink) of everything, computed from scratch.
    fn listing(&self) -> Vec<(String, bool, u32)> {
        let mut names_of: HashMap<u32, u32> = HashMap::new();
        let mut stack = vec![0u32];
        while let Some(d) = stack.pop() {
            for &k in self.children(d).into_iter().flat_map(|k| k.values()) {
                *names_of.entry(k).or_default() += 1;
                if self.is_dir(k) {
                    stack.push(k);
                }
            }
        }
        let mut out = Vec::new();
        self.walk(0, String::new(), &names_of, &mut out);
        out.sort();
        out
    }

    fn walk(
        &self,
        d: u32,
        prefix: String,
        names_of: &HashMap<u32, u32>,
        out: &mut Vec<(String, bool, u32)>,
    ) {
        for (n, &k) in self.children(d).into_iter().flat_map(|k| k.iter()) {
            let path = format!("{prefix}/{n}");
            if let Some(kids) = self.children(k) {
                let subdirs = kids.values().filter(|&&c| self.is_dir(c)).count() as u32;
                out.push((path.clone(), true, 2 + subdirs));
                self.walk(k, path, names_of, out);
            } else {
                out.push((path, false, names_of[&k]));
            }
        }
    }
}

/// Resolves a path's parent in the state machine by lookups, as the kernel
/// would, returning the errno a path walk gives.
fn sm_parent(s: &impl FsRead, path: &[usize]) -> Result<(u64, Vec<u8>), Errno> {
    let mut cur = ROOT_INO;
    for &c in &path[..path.len() - 1] {
        let d = s
            .dentry(cur, NAMES[c].as_bytes())
            .unwrap()
            .ok_or(Errno::ENOENT)?;
        if d.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        cur = d.ino;
    }
    Ok((cur, NAMES[path[path.len() - 1]].as_bytes().to_vec()))
}

fn to_fsop(s: &impl FsRead, op: &ModelOp) -> Result<FsOp, Errno> {
    Ok(match op {
        ModelOp::Mkdir(p) => {
            let (parent, name) = sm_parent(s, p)?;
            FsOp::Mkdir {
                parent,
                name,
                mode: 0o755,
            }
        }
        ModelOp::Create(p) => {
            let (parent, name) = sm_parent(s, p)?;
            FsOp::Mknod {
                parent,
                name,
                mode: libc::S_IFREG | 0o644,
                rdev: 0,
            }
        }
        ModelOp::Unlink(p) => {
            let (parent, name) = sm_parent(s, p)?;
            FsOp::Unlink { parent, name }
        }
        ModelOp::Rmdir(p) => {
            let (parent, name) = sm_parent(s, p)?;
            FsOp::Rmdir { parent, name }
        }
        ModelOp::Link(a, b) => {
            let (sp, sn) = sm_parent(s, a)?;
            let ino = s.dentry(sp, &sn).unwrap().ok_or(Errno::ENOENT)?.ino;
            let (parent, name) = sm_parent(s, b)?;
            FsOp::Link { ino, parent, name }
        }
        ModelOp::Rename(a, b, mode) => {
            let (parent, name) = sm_parent(s, a)?;
            let (new_parent, new_name) = sm_parent(s, b)?;
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode: *mode,
            }
        }
    })
}

fn sm_listing(s: &impl FsRead) -> Vec<(String, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for (name, e) in s.list_dir(d, None, usize::MAX).unwrap() {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&name));
            let i = s
                .inode(e.ino)
                .unwrap()
                .expect("entry points at a live inode");
            assert_eq!(i.kind, e.kind);
            if i.is_dir() {
                assert_eq!(i.parent, d, "{path}: parent pointer");
                stack.push((e.ino, path.clone()));
            }
            out.push((path, i.is_dir(), i.nlink));
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_ops_agree_with_the_tree_model(ops in prop::collection::vec(arb_op(), 1..40)) {
        let mut model = Model::new();
        let mut s = fresh();
        for op in &ops {
            let want = model.apply(op);
            let got = match to_fsop(&s, op) {
                Ok(fsop) => match apply(&mut s, fsop, &root()) {
                    Ok(r) => {
                        for ino in r.orphaned {
                            apply(&mut s, FsOp::Purge { ino }, &root()).unwrap();
                        }
                        Ok(())
                    }
                    Err(ApplyError::Errno(e)) => Err(e),
                    Err(e) => panic!("store error {e}"),
                },
                Err(e) => Err(e),
            };
            prop_assert_eq!(got, want, "op {:?}", op);
            prop_assert_eq!(sm_listing(&s), model.listing(), "after {:?}", op);
        }
        // No leaked inodes: everything reachable, orphans purged.
        prop_assert_eq!(s.inode_count(), 1 + {
            let mut inos: Vec<u64> = Vec::new();
            let mut stack = vec![ROOT_INO];
            while let Some(d) = stack.pop() {
                for (_, e) in s.list_dir(d, None, usize::MAX).unwrap() {
                    if e.kind == FileKind::Directory { stack.push(e.ino); }
                    inos.push(e.ino);
                }
            }
            inos.sort_unstable();
            inos.dedup();
            inos.len()
        });
    }

    #[test]
    fn redb_and_memory_stores_agree(ops in prop::collection::vec(arb_op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbFs::open(&dir.path().join("m.redb")).unwrap();
        let mut mem = fresh();
        for op in &ops {
            let m = to_fsop(&mem, op).and_then(|o| apply(&mut mem, o, &root()).map(|r| r.orphaned).map_err(|e| match e {
                ApplyError::Errno(e) => e,
                e => panic!("{e}"),
            }));
            let view = redb.read().unwrap();
            let r = to_fsop(&view, op).and_then(|o| redb.apply(o, &root()).map(|r| r.orphaned).map_err(|e| match e {
                ApplyError::Errno(e) => e,
                e => panic!("{e}"),
            }));
            prop_assert_eq!(&m, &r);
            prop_assert_eq!(sm_listing(&mem), sm_listing(&redb.read().unwrap()));
        }
    }
}
