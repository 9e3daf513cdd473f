//! Where a chunk lives: chunk id → placement group → ordered replica set.
//!
//! Pure functions, no I/O. A chunk id is hashed to one of a fixed number of
//! placement groups (PGs); a PG is mapped to nodes by *weighted rendezvous
//! hashing* (highest random weight): every node gets a score
//! `-ln(u) / weight` where `u ∈ (0, 1]` is a hash of (pg, node id), and the
//! lowest scores win. At most one replica is placed per failure domain.
//!
//! Why rendezvous: it needs no table, every node computes the same answer
//! from the cluster map alone, and adding or removing a node only moves the
//! PGs whose top-`size` set that node enters or leaves (the minimum).

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Default number of placement groups.
pub const DEFAULT_PG_COUNT: u32 = 256;

/// Identity of a chunk: 16 random bytes, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ChunkId(pub [u8; 16]);

impl ChunkId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Parses 32 hex digits.
    pub fn parse(s: &str) -> Result<Self, InvalidChunkId> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| InvalidChunkId(s.chars().take(64).collect()))?;
        Ok(Self(out))
    }

    /// Placement group of this chunk.
    pub fn pg(&self, pg_count: u32) -> u32 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        (mix(u64::from_le_bytes(b)) % u64::from(pg_count.max(1))) as u32
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl From<ChunkId> for String {
    fn from(id: ChunkId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for ChunkId {
    type Error = InvalidChunkId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ChunkId::parse(&s)
    }
}

/// A chunk id that is not 32 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("chunk id {0:?} is not 32 hexadecimal digits")]
pub struct InvalidChunkId(pub String);

/// What placement needs to know about one node of the cluster map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Node id.
    pub id: u64,
    /// Relative capacity; 0 means "holds no data".
    pub weight: u64,
    /// Failure domain (host by default): at most one replica per domain.
    pub domain: String,
}

/// Ordered replica set (primary first) of placement group `pg`: at most
/// `size` nodes, each from a different failure domain. Fewer are returned
/// when there are fewer domains with positive weight than `size`.
pub fn replicas(pg: u32, nodes: &[Candidate], size: usize) -> Vec<u64> {
    let mut scored: Vec<(f64, &Candidate)> = nodes
        .iter()
        .filter(|n| n.weight > 0)
        .map(|n| (score(pg, n.id, n.weight), n))
        .collect();
    // Ties are practically impossible; break them by id for determinism.
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    let mut domains = HashSet::new();
    let mut out = Vec::with_capacity(size);
    for (_, n) in scored {
        if out.len() == size {
            break;
        }
        if domains.insert(n.domain.as_str()) {
            out.push(n.id);
        }
    }
    out
}

/// Rendezvous score: lower wins. `-ln(u)/w` is an exponential variable with
/// rate `w`, so the minimum falls on node `i` with probability `w_i / Σw`.
fn score(pg: u32, node: u64, weight: u64) -> f64 {
    let h = mix(mix(u64::from(pg) ^ 0x9e37_79b9_7f4a_7c15) ^ node);
    // Top 53 bits → (0, 1].
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    -u.ln() / weight as f64
}

/// splitmix64 finaliser: a fast, well-mixed, stable 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cluster(weights: &[u64]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Candidate {
                id: 100 + i as u64 * 7,
                weight: *w,
                domain: format!("host{i}"),
            })
            .collect()
    }

    #[test]
    fn one_replica_per_failure_domain() {
        let mut nodes = cluster(&[1, 1, 1, 1, 1]);
        nodes[1].domain = "host0".into();
        nodes[2].domain = "host0".into();
        for pg in 0..256 {
            let set = replicas(pg, &nodes, 3);
            assert_eq!(set.len(), 3);
            let domains: HashSet<_> = set
                .iter()
                .map(|id| &nodes.iter().find(|n| n.id == *id).unwrap().domain)
                .collect();
            assert_eq!(domains.len(), 3, "pg {pg}: {set:?}");
        }
        // Two domains only: never more than two replicas.
        let two = vec![nodes[0].clone(), nodes[1].clone(), nodes[3].clone()];
        assert_eq!(replicas(7, &two, 3).len(), 2);
    }

    #[test]
    fn weight_zero_holds_nothing() {
        let nodes = cluster(&[1, 0, 1, 1]);
        for pg in 0..256 {
            assert!(!replicas(pg, &nodes, 3).contains(&nodes[1].id));
        }
    }

    #[test]
    fn primaries_follow_weights_within_a_few_percent() {
        let weights = [1, 2, 3, 4];
        let nodes = cluster(&weights);
        let total: u64 = weights.iter().sum();
        let pgs = 200_000u32;
        let mut counts = vec![0u32; nodes.len()];
        for pg in 0..pgs {
            let p = replicas(pg, &nodes, 1)[0];
            counts[nodes.iter().position(|n| n.id == p).unwrap()] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let expected = f64::from(pgs) * *w as f64 / total as f64;
            let dev = (f64::from(counts[i]) - expected).abs() / expected;
            assert!(dev < 0.03, "node {i}: {} vs {expected}", counts[i]);
        }
    }

    #[test]
    fn equal_weights_balance_all_replicas() {
        let nodes = cluster(&[1; 5]);
        let mut counts = vec![0u32; 5];
        let pgs = 50_000u32;
        for pg in 0..pgs {
            for id in replicas(pg, &nodes, 3) {
                counts[nodes.iter().position(|n| n.id == id).unwrap()] += 1;
            }
        }
        let expected = f64::from(pgs) * 3.0 / 5.0;
        for c in counts {
            assert!(
                (f64::from(c) - expected).abs() / expected < 0.03,
                "{c} vs {expected}"
            );
        }
    }

    #[test]
    fn chunk_id_round_trips_and_rejects_garbage() {
        let id = ChunkId::random();
        assert_eq!(ChunkId::parse(&id.to_string()).unwrap(), id);
        let err = ChunkId::parse("../../etc/passwd").unwrap_err();
        assert!(err.to_string().contains("32 hexadecimal"), "{err}");
        assert!(id.pg(256) < 256);
    }

    proptest! {
        #[test]
        fn deterministic(weights in prop::collection::vec(1u64..100, 1..8), pg in 0u32..10_000) {
            let nodes = cluster(&weights);
            let mut shuffled = nodes.clone();
            shuffled.reverse();
            prop_assert_eq!(replicas(pg, &nodes, 3), replicas(pg, &shuffled, 3));
        }

        /// A joining node only takes PGs into which it enters; nothing else moves.
        #[test]
        fn join_moves_only_to_the_new_node(weights in prop::collection::vec(1u64..10, 3..8), new_w in 1u64..10) {
            let before = cluster(&weights);
            let mut after = before.clone();
            after.push(Candidate { id: 9999, weight: new_w, domain: "new".into() });
            for pg in 0..512 {
                let a = replicas(pg, &before, 3);
                let b = replicas(pg, &after, 3);
                if a != b {
                    prop_assert!(b.contains(&9999));
                    let kept: Vec<_> = b.iter().filter(|id| **id != 9999).collect();
                    // Exactly one replica moved (to the new node), order kept.
                    prop_assert_eq!(kept.len(), 2);
                    prop_assert!(kept.iter().all(|id| a.contains(id)));
                }
            }
        }

        /// A leaving node's PGs lose just that replica; other PGs do not move.
        #[test]
        fn leave_moves_only_the_leavers_pgs(weights in prop::collection::vec(1u64..10, 4..8), gone in 0usize..4) {
            let before = cluster(&weights);
            let mut after = before.clone();
            let removed = after.remove(gone).id;
            for pg in 0..512 {
                let a = replicas(pg, &before, 3);
                let b = replicas(pg, &after, 3);
                if a.contains(&removed) {
                    let survivors: Vec<_> = a.iter().filter(|id| **id != removed).copied().collect();
                    prop_assert_eq!(&b[..2], &survivors[..]);
                } else {
                    prop_assert_eq!(a, b);
                }
            }
        }
    }
}
