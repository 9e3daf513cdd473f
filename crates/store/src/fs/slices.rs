//! File content as a list of slices over immutable chunks.
//!
//! A slice maps `len` bytes of a file, starting at file offset `off`, to the
//! bytes of chunk `chunk` starting at `chunk_off`. A file's slices are kept
//! in commit order; where they overlap the newest (last) wins. Ranges no
//! slice covers are holes and read as zeros. Pure functions, no I/O.

use serde::{Deserialize, Serialize};

use crate::placement::ChunkId;

/// Slices above this count make a file worth compacting.
pub const COMPACT_THRESHOLD: usize = 48;

/// One range of a file stored in (a part of) a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slice {
    /// File offset of the first byte.
    pub off: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// Chunk holding the bytes.
    pub chunk: ChunkId,
    /// Offset of the first byte inside the chunk.
    pub chunk_off: u64,
}

impl Slice {
    /// One past the last file offset.
    pub fn end(&self) -> u64 {
        self.off.saturating_add(self.len)
    }
}

/// A piece of a read: `len` bytes at file offset `off`, either from a chunk
/// or a hole (zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// File offset.
    pub off: u64,
    /// Length.
    pub len: u64,
    /// `(chunk, offset in chunk)`, or `None` for a hole.
    pub src: Option<(ChunkId, u64)>,
}

/// Resolves the file range `[off, off + len)` into pieces in file order,
/// newest slice winning on overlap. The caller clips `len` at the file size.
pub fn resolve(slices: &[Slice], off: u64, len: u64) -> Vec<Piece> {
    let end = off.saturating_add(len);
    let mut uncovered = vec![(off, end)];
    uncovered.retain(|(a, b)| a < b);
    let mut out = Vec::new();
    for s in slices.iter().rev() {
        if uncovered.is_empty() {
            break;
        }
        let (sa, sb) = (s.off, s.end());
        let mut next = Vec::with_capacity(uncovered.len() + 1);
        for &(a, b) in &uncovered {
            let (ca, cb) = (a.max(sa), b.min(sb));
            if ca >= cb {
                next.push((a, b));
                continue;
            }
            out.push(Piece {
                off: ca,
                len: cb - ca,
                src: Some((s.chunk, s.chunk_off + (ca - sa))),
            });
            if a < ca {
                next.push((a, ca));
            }
            if cb < b {
                next.push((cb, b));
            }
        }
        uncovered = next;
    }
    out.extend(uncovered.into_iter().map(|(a, b)| Piece {
        off: a,
        len: b - a,
        src: None,
    }));
    out.sort_by_key(|p| p.off);
    out
}

/// The slices that survive truncating the file to `size` (the rest of the
/// file then reads as zeros if it is extended again).
pub fn truncate(slices: &[Slice], size: u64) -> Vec<Slice> {
    slices
        .iter()
        .filter(|s| s.off < size)
        .map(|s| Slice {
            len: s.len.min(size - s.off),
            ..*s
        })
        .collect()
}

/// Drops slices that newer slices cover completely (no data is read from
/// them any more). Keeps order. Cheap, metadata-only compaction.
pub fn prune_shadowed(slices: &[Slice]) -> Vec<Slice> {
    // Merged coverage of the newer slices, sorted by start.
    let mut cover: Vec<(u64, u64)> = Vec::new();
    let mut keep = vec![false; slices.len()];
    for (i, s) in slices.iter().enumerate().rev() {
        let (a, b) = (s.off, s.end());
        let covered = cover.iter().any(|&(ca, cb)| ca <= a && b <= cb);
        if covered {
            continue;
        }
        keep[i] = true;
        cover.push((a, b));
        cover.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(cover.len());
        for (ca, cb) in cover.drain(..) {
            match merged.last_mut() {
                Some(last) if ca <= last.1 => last.1 = last.1.max(cb),
                _ => merged.push((ca, cb)),
            }
        }
        cover = merged;
    }
    slices
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(s, _)| *s)
        .collect()
}

/// Chunks referenced by `old` but not by `new`, sorted, without duplicates.
pub fn unreferenced(old: &[Slice], new: &[Slice]) -> Vec<ChunkId> {
    let kept: std::collections::HashSet<ChunkId> = new.iter().map(|s| s.chunk).collect();
    let mut out: Vec<ChunkId> = old
        .iter()
        .map(|s| s.chunk)
        .filter(|c| !kept.contains(c))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether a file with these slices should be compacted.
pub fn needs_compaction(slices: &[Slice]) -> bool {
    slices.len() > COMPACT_THRESHOLD
}

/// Plans a compaction of a file of `size` bytes: the file ranges to copy
/// into new chunks, in order. The file is cut into `chunk_size` windows; a
/// window whose data comes from more than one slice (fragmented) becomes
/// one range from its first to its last data byte (holes inside are written
/// as zeros, which read the same). At most `max_windows` ranges, so one
/// compaction of a huge file stays bounded; windows already in one piece
/// are left alone. The caller stores each range as a new chunk and commits
/// `FsOp::ReplaceSlices` with `prune_shadowed(old ++ new)`.
pub fn plan_compaction(
    slices: &[Slice],
    size: u64,
    chunk_size: u64,
    max_windows: usize,
) -> Vec<(u64, u64)> {
    let chunk_size = chunk_size.max(1);
    // Per window: (first data byte, end of data, data pieces).
    let mut windows: Vec<(u64, u64, usize)> = Vec::new();
    for p in resolve(slices, 0, size) {
        if p.src.is_none() {
            continue;
        }
        let (mut a, end) = (p.off, p.off + p.len);
        while a < end {
            let b = end.min((a / chunk_size + 1) * chunk_size);
            match windows.last_mut() {
                Some(w) if w.0 / chunk_size == a / chunk_size => {
                    w.1 = b;
                    w.2 += 1;
                }
                _ => windows.push((a, b, 1)),
            }
            a = b;
        }
    }
    windows
        .into_iter()
        .filter(|w| w.2 > 1)
        .take(max_windows)
        .map(|(a, b, _)| (a, b - a))
        .collect()
}

/// Fixed-size binary encoding of a slice list (40 bytes a slice), used by
/// the redb store: compact and cheap to decode on every read.
pub fn encode(slices: &[Slice]) -> Vec<u8> {
    let mut out = Vec::with_capacity(slices.len() * 40);
    for s in slices {
        out.extend_from_slice(&s.off.to_le_bytes());
        out.extend_from_slice(&s.len.to_le_bytes());
        out.extend_from_slice(&s.chunk.0);
        out.extend_from_slice(&s.chunk_off.to_le_bytes());
    }
    out
}

/// Decodes [`encode`]'s output; `None` when the length is not a multiple
/// of 40 (a corrupt record).
pub fn decode(raw: &[u8]) -> Option<Vec<Slice>> {
    if raw.len() % 40 != 0 {
        return None;
    }
    let u64_at = |b: &[u8], i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    Some(
        raw.chunks_exact(40)
            .map(|b| {
                let mut id = [0u8; 16];
                id.copy_from_slice(&b[16..32]);
                Slice {
                    off: u64_at(b, 0),
                    len: u64_at(b, 8),
                    chunk: ChunkId(id),
                    chunk_off: u64_at(b, 32),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Byte-array model: chunk `i` holds bytes `(i, pos)` hashed to a u8.
    fn byte_of(chunk: ChunkId, pos: u64) -> u8 {
        chunk.0[0].wrapping_mul(31).wrapping_add(pos as u8) | 1
    }

    fn chunk(n: u8) -> ChunkId {
        let mut id = [0u8; 16];
        id[0] = n;
        ChunkId(id)
    }

    fn model(slices: &[Slice], size: u64) -> Vec<u8> {
        let mut out = vec![0u8; size as usize];
        for s in slices {
            for i in 0..s.len {
                let p = s.off + i;
                if p < size {
                    out[p as usize] = byte_of(s.chunk, s.chunk_off + i);
                }
            }
        }
        out
    }

    fn read(slices: &[Slice], off: u64, len: u64) -> Vec<u8> {
        let pieces = resolve(slices, off, len);
        let mut out = Vec::new();
        let mut pos = off;
        for p in pieces {
            assert_eq!(p.off, pos, "pieces are contiguous and ordered");
            for i in 0..p.len {
                out.push(match p.src {
                    Some((c, co)) => byte_of(c, co + i),
                    None => 0,
                });
            }
            pos += p.len;
        }
        assert_eq!(pos, off + len);
        out
    }

    fn arb_slices() -> impl Strategy<Value = Vec<Slice>> {
        prop::collection::vec((0u64..200, 1u64..60, 1u8..250, 0u64..50), 0..25).prop_map(|v| {
            v.into_iter()
                .map(|(off, len, c, co)| Slice {
                    off,
                    len,
                    chunk: chunk(c),
                    chunk_off: co,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn resolve_matches_byte_model(slices in arb_slices(), off in 0u64..260, len in 0u64..260) {
            let size = 260;
            let m = model(&slices, size);
            let got = read(&slices, off, len.min(size - off));
            prop_assert_eq!(&got[..], &m[off as usize..(off + len.min(size - off)) as usize]);
        }

        #[test]
        fn truncate_then_extend_reads_zeros(slices in arb_slices(), size in 0u64..260) {
            let t = truncate(&slices, size);
            let m = model(&slices, size);
            let got = read(&t, 0, 260);
            prop_assert_eq!(&got[..size as usize], &m[..]);
            prop_assert!(got[size as usize..].iter().all(|b| *b == 0));
        }

        #[test]
        fn pruning_keeps_content(slices in arb_slices()) {
            let p = prune_shadowed(&slices);
            prop_assert!(p.len() <= slices.len());
            prop_assert_eq!(read(&p, 0, 260), read(&slices, 0, 260));
            // Freed chunks are really not read any more.
            for c in unreferenced(&slices, &p) {
                prop_assert!(resolve(&slices, 0, 260).iter().all(|pc| pc.src.map(|s| s.0) != Some(c)));
            }
        }

        #[test]
        fn compaction_plan_covers_all_data(slices in arb_slices(), chunk_size in 1u64..100) {
            let size = 260;
            let plan = plan_compaction(&slices, size, chunk_size, 1000);
            prop_assert!(plan.len() as u64 <= size.div_ceil(chunk_size));
            // Rewrite each planned range as its own fresh chunk whose bytes are
            // the model's bytes; the result must read the same.
            let m = model(&slices, size);
            let mut fresh = Vec::new();
            let mut data = std::collections::HashMap::new();
            for (i, (off, len)) in plan.iter().enumerate() {
                prop_assert!(*len <= chunk_size && *len > 0);
                let id = ChunkId([i as u8 + 1; 16]);
                data.insert(id, m[*off as usize..(*off + *len) as usize].to_vec());
                fresh.push(Slice { off: *off, len: *len, chunk: id, chunk_off: 0 });
            }
            let mut all = slices.clone();
            all.extend_from_slice(&fresh);
            let new = prune_shadowed(&all);
            prop_assert!(new.len() <= slices.len() + fresh.len());
            let mut got = vec![0u8; size as usize];
            for p in resolve(&new, 0, size) {
                if let Some((c, co)) = p.src {
                    let range = p.off as usize..(p.off + p.len) as usize;
                    match data.get(&c) {
                        Some(d) => got[range].copy_from_slice(&d[co as usize..(co + p.len) as usize]),
                        None => {
                            for (i, b) in got[range].iter_mut().enumerate() {
                                *b = byte_of(c, co + i as u64);
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(got, m);
            // Compacting again finds nothing fragmented.
            let again = plan_compaction(&new, size, chunk_size, 1000);
            prop_assert!(again.is_empty(), "{:?}", again);
        }

        #[test]
        fn encoding_round_trips(slices in arb_slices()) {
            prop_assert_eq!(decode(&encode(&slices)), Some(slices));
        }
    }

    #[test]
    fn corrupt_encoding_is_rejected() {
        assert_eq!(decode(&[0u8; 39]), None);
    }

    #[test]
    fn hole_only_file_reads_as_one_hole() {
        assert_eq!(
            resolve(&[], 10, 5),
            vec![Piece {
                off: 10,
                len: 5,
                src: None
            }]
        );
        assert!(resolve(&[], 10, 0).is_empty());
    }
}
