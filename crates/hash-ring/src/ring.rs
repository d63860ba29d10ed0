//! The ring itself: building sorted vnode positions, lookups and shares.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::config::{MAX_VNODES, MAX_WEIGHT};
use crate::{NodeSpec, RingConfig, RingError};

/// Size of the `u32` hash space.
const HASH_SPACE: u64 = 1 << 32;

/// An immutable consistent-hash ring.
///
/// Vnodes are kept as two parallel arrays (positions ascending, owners) so
/// the binary search of a lookup only touches the 4-byte positions.
#[derive(Debug, Clone)]
pub struct HashRing {
    config: RingConfig,
    /// Real nodes sorted by id.
    nodes: Vec<NodeSpec>,
    /// Vnode positions, ascending; ties ordered by node id then vnode number.
    positions: Vec<u32>,
    /// `owners[k]` is the index into `nodes` of the vnode at `positions[k]`.
    owners: Vec<u32>,
}

impl HashRing {
    /// Build the ring. Nodes may be given in any order; an empty node list
    /// gives an empty ring whose lookups return `None`.
    ///
    /// Fails if `config.vnodes` is outside `1..=MAX_VNODES`, a node id is
    /// empty or repeated, or a weight is outside `1..=MAX_WEIGHT`.
    pub fn new(
        config: RingConfig,
        nodes: impl IntoIterator<Item = NodeSpec>,
    ) -> Result<Self, RingError> {
        if !(1..=MAX_VNODES).contains(&config.vnodes) {
            return Err(RingError::InvalidVnodes(config.vnodes));
        }
        let mut nodes: Vec<NodeSpec> = nodes.into_iter().collect();
        let mut seen = HashSet::with_capacity(nodes.len());
        for node in &nodes {
            if node.id.is_empty() {
                return Err(RingError::EmptyNodeId);
            }
            if !(1..=MAX_WEIGHT).contains(&node.weight) {
                return Err(RingError::InvalidWeight {
                    id: node.id.clone(),
                    weight: node.weight,
                });
            }
            if !seen.insert(node.id.as_str()) {
                return Err(RingError::DuplicateNodeId(node.id.clone()));
            }
        }
        drop(seen);
        nodes.sort_unstable_by(|a, b| a.id.cmp(&b.id));

        let total: usize = nodes
            .iter()
            .map(|n| config.vnodes as usize * n.weight as usize)
            .sum();
        // (position, node index, vnode number): node index order is id
        // order, so sorting the whole tuple gives the documented tie-break.
        let mut vnodes: Vec<(u32, u32, u32)> = Vec::with_capacity(total);
        let mut seed = String::new();
        for (idx, node) in nodes.iter().enumerate() {
            let idx = u32::try_from(idx).expect("node count fits in u32");
            for i in 1..=config.vnodes * node.weight {
                seed.clear();
                write!(seed, "{i}{}", node.id).expect("writing to a String cannot fail");
                vnodes.push((config.hash.hash_bytes(seed.as_bytes()), idx, i));
            }
        }
        vnodes.sort_unstable();
        let (positions, owners) = vnodes.into_iter().map(|(pos, idx, _)| (pos, idx)).unzip();

        Ok(Self {
            config,
            nodes,
            positions,
            owners,
        })
    }

    /// The configuration the ring was built with.
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// The real nodes, sorted by id.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// True when the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of virtual nodes: the sum of `vnodes * weight` over all nodes.
    pub fn vnode_count(&self) -> usize {
        self.positions.len()
    }

    /// Hash of the shard key `"{host_id}:{timestamp}"` with the ring's
    /// algorithm; never allocates for host ids up to 235 bytes.
    #[inline]
    pub fn hash_point(&self, host_id: &str, timestamp: i64) -> u32 {
        self.config.hash.hash_point(host_id, timestamp)
    }

    /// Hash of an arbitrary key with the ring's algorithm.
    #[inline]
    pub fn hash_bytes(&self, key: &[u8]) -> u32 {
        self.config.hash.hash_bytes(key)
    }

    /// Index into [`nodes`](Self::nodes) of the owner of `hash`: the node of
    /// the first vnode at a position `>= hash`, wrapping to the first vnode
    /// past the end. `None` for an empty ring.
    #[inline]
    pub fn owner_index(&self, hash: u32) -> Option<usize> {
        if self.positions.is_empty() {
            return None;
        }
        let k = self.positions.partition_point(|&p| p < hash);
        let k = if k == self.positions.len() { 0 } else { k };
        Some(self.owners[k] as usize)
    }

    /// Index into [`nodes`](Self::nodes) of the owner of a data point.
    #[inline]
    pub fn owner_index_of_point(&self, host_id: &str, timestamp: i64) -> Option<usize> {
        if self.positions.is_empty() {
            return None;
        }
        self.owner_index(self.hash_point(host_id, timestamp))
    }

    /// The node that owns a data point.
    #[inline]
    pub fn owner_of_point(&self, host_id: &str, timestamp: i64) -> Option<&NodeSpec> {
        self.owner_index_of_point(host_id, timestamp)
            .map(|i| &self.nodes[i])
    }

    /// Indexes into [`nodes`](Self::nodes) of every node in the order a key
    /// with this `hash` falls back to them: the owner first (the same as
    /// [`owner_index`](Self::owner_index)), then each *distinct* node met
    /// walking the vnodes clockwise. Every node appears exactly once, so the
    /// iterator is exactly `nodes().len()` long (empty for an empty ring).
    ///
    /// The `k+1`-th item is the owner of `hash` in the ring without the
    /// first `k` nodes: skipping unavailable nodes in this order sends a
    /// key where it would go if they left the ring, so each node's share
    /// spreads over its ring successors instead of landing on one node.
    ///
    /// Never allocates for rings of up to 64 nodes; larger rings allocate a
    /// bitset on the second item, never for the first.
    pub fn owners(&self, hash: u32) -> Owners<'_> {
        let start = if self.positions.is_empty() {
            0
        } else {
            let k = self.positions.partition_point(|&p| p < hash);
            if k == self.positions.len() { 0 } else { k }
        };
        let seen = if self.nodes.len() <= SMALL_RING {
            Seen::Bits(0)
        } else {
            Seen::Heap(Vec::new())
        };
        Owners {
            ring: self,
            next: start,
            remaining: self.positions.len(),
            yielded: 0,
            first: u32::MAX,
            seen,
        }
    }

    /// [`owners`](Self::owners) of a data point's hash: its owner first
    /// (the same as [`owner_index_of_point`](Self::owner_index_of_point)),
    /// then every other node once, in ring order.
    #[inline]
    pub fn owners_of_point(&self, host_id: &str, timestamp: i64) -> Owners<'_> {
        let hash = if self.positions.is_empty() {
            0
        } else {
            self.hash_point(host_id, timestamp)
        };
        self.owners(hash)
    }

    /// Fraction of the 2^32 hash space each node owns, in
    /// [`nodes`](Self::nodes) order; sums to 1.0 (up to rounding) unless the
    /// ring is empty.
    pub fn shares(&self) -> Vec<(String, f64)> {
        let mut owned = vec![0u64; self.nodes.len()];
        let Some(&last) = self.positions.last() else {
            return Vec::new();
        };
        // vnode k owns (positions[k-1], positions[k]]; vnode 0 also owns the
        // wrap-around arc (last, 2^32).
        let mut prev = u64::from(last);
        for (k, (&pos, &owner)) in self.positions.iter().zip(&self.owners).enumerate() {
            let pos = u64::from(pos);
            owned[owner as usize] += if k == 0 {
                HASH_SPACE - prev + pos
            } else {
                pos - prev
            };
            prev = pos;
        }
        debug_assert_eq!(owned.iter().sum::<u64>(), HASH_SPACE);
        self.nodes
            .iter()
            .zip(owned)
            .map(|(n, o)| (n.id.clone(), o as f64 / HASH_SPACE as f64))
            .collect()
    }
}

/// Rings with up to this many nodes track visited nodes in a `u64`.
const SMALL_RING: usize = 64;

/// Nodes already yielded by [`Owners`], except the first one (kept apart so
/// that the first item never allocates).
#[derive(Debug, Clone)]
enum Seen {
    /// Bit `i` set: node `i` seen (rings of up to [`SMALL_RING`] nodes).
    Bits(u64),
    /// One bit per node, allocated on first insertion.
    Heap(Vec<u64>),
}

impl Seen {
    /// Marks `node` seen; false if it already was.
    fn insert(&mut self, node: u32, nodes: usize) -> bool {
        let (word, bit) = ((node / 64) as usize, 1u64 << (node % 64));
        let w = match self {
            Seen::Bits(b) => b,
            Seen::Heap(v) => {
                if v.is_empty() {
                    v.resize(nodes.div_ceil(64), 0);
                }
                &mut v[word]
            }
        };
        let fresh = *w & bit == 0;
        *w |= bit;
        fresh
    }
}

/// Iterator over the nodes of a ring in fallback order for one hash,
/// returned by [`HashRing::owners`] and [`HashRing::owners_of_point`]:
/// indexes into [`HashRing::nodes`], the owner first, each node once.
#[derive(Debug, Clone)]
pub struct Owners<'a> {
    ring: &'a HashRing,
    /// Next vnode to look at.
    next: usize,
    /// Vnodes not yet looked at; the walk stops after one turn.
    remaining: usize,
    /// Nodes yielded so far.
    yielded: usize,
    /// The first node yielded (`u32::MAX` before it).
    first: u32,
    seen: Seen,
}

impl Iterator for Owners<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let nodes = self.ring.nodes.len();
        // Stop as soon as every node was yielded instead of finishing the turn.
        while self.yielded < nodes && self.remaining > 0 {
            let owner = self.ring.owners[self.next];
            self.next += 1;
            if self.next == self.ring.owners.len() {
                self.next = 0;
            }
            self.remaining -= 1;
            let fresh = if self.yielded == 0 {
                self.first = owner;
                true
            } else {
                owner != self.first && self.seen.insert(owner, nodes)
            };
            if fresh {
                self.yielded += 1;
                return Some(owner as usize);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Every node has at least one vnode, so each one is met in a turn.
        let left = self.ring.nodes.len() - self.yielded;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Owners<'_> {}

impl std::iter::FusedIterator for Owners<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_VNODES, HashAlgorithm};

    fn nodes(n: usize) -> Vec<NodeSpec> {
        (1..=n)
            .map(|i| NodeSpec::new(format!("broker-{i}")))
            .collect()
    }

    fn cfg(vnodes: u32, hash: HashAlgorithm) -> RingConfig {
        RingConfig { vnodes, hash }
    }

    #[test]
    fn empty_ring() {
        let ring = HashRing::new(RingConfig::default(), []).unwrap();
        assert!(ring.is_empty());
        assert_eq!(ring.vnode_count(), 0);
        assert_eq!(ring.owner_index(0), None);
        assert_eq!(ring.owner_of_point("host-1", 1), None);
        assert_eq!(ring.owner_index_of_point("host-1", 1), None);
        assert!(ring.shares().is_empty());
    }

    #[test]
    fn validation() {
        let ok = nodes(2);
        for bad in [0, MAX_VNODES + 1] {
            assert_eq!(
                HashRing::new(cfg(bad, HashAlgorithm::Crc32), ok.clone()).unwrap_err(),
                RingError::InvalidVnodes(bad)
            );
        }
        assert_eq!(
            RingError::InvalidVnodes(0).to_string(),
            "vnodes must be between 1 and 10000, got 0"
        );
        let err = HashRing::new(RingConfig::default(), [NodeSpec::new("")]).unwrap_err();
        assert_eq!(err, RingError::EmptyNodeId);
        assert_eq!(err.to_string(), "node id is empty");
        let err = HashRing::new(
            RingConfig::default(),
            [NodeSpec::new("a"), NodeSpec::new("b"), NodeSpec::new("a")],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "duplicate node id \"a\"");
        for w in [0, MAX_WEIGHT + 1] {
            let err = HashRing::new(RingConfig::default(), [NodeSpec::new("x").with_weight(w)])
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("weight of node \"x\" must be 1..=100, got {w}")
            );
        }
        assert!(HashRing::new(cfg(1, HashAlgorithm::Crc32), ok.clone()).is_ok());
        assert!(HashRing::new(cfg(MAX_VNODES, HashAlgorithm::Crc32), ok).is_ok());
    }

    #[test]
    fn layout_matches_the_design() {
        let ring = HashRing::new(
            cfg(4, HashAlgorithm::Crc32),
            [
                NodeSpec::new("broker-2"),
                NodeSpec::new("broker-1").with_weight(2),
            ],
        )
        .unwrap();
        assert_eq!(ring.nodes()[0].id, "broker-1");
        assert_eq!(ring.vnode_count(), 12);
        let mut expected: Vec<(u32, u32)> = Vec::new();
        for (idx, (id, count)) in [("broker-1", 8), ("broker-2", 4)].into_iter().enumerate() {
            for i in 1..=count {
                let pos = HashAlgorithm::Crc32.hash_bytes(format!("{i}{id}").as_bytes());
                expected.push((pos, idx as u32));
            }
        }
        expected.sort_unstable();
        let got: Vec<(u32, u32)> = ring
            .positions
            .iter()
            .copied()
            .zip(ring.owners.iter().copied())
            .collect();
        assert_eq!(got, expected);
        // the first vnode is seeded by CRC32("1broker-1")
        let first = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(b"1broker-1");
        assert!(ring.positions.contains(&first));
    }

    #[test]
    fn lookup_is_clockwise_with_wrap() {
        let ring = HashRing::new(cfg(DEFAULT_VNODES, HashAlgorithm::Xxh3), nodes(3)).unwrap();
        let pos = &ring.positions;
        let own = |k: usize| Some(ring.owners[k] as usize);
        assert_eq!(ring.owner_index(0), own(0));
        assert_eq!(ring.owner_index(pos[0]), own(0));
        assert_eq!(ring.owner_index(pos[0] + 1), own(1));
        assert_eq!(ring.owner_index(pos[5]), own(5));
        let last = pos.len() - 1;
        assert_eq!(ring.owner_index(pos[last]), own(last));
        if pos[last] < u32::MAX {
            assert_eq!(ring.owner_index(pos[last] + 1), own(0));
            assert_eq!(ring.owner_index(u32::MAX), own(0));
        }
    }

    #[test]
    fn ties_are_broken_by_node_id_then_vnode() {
        // hand-made ring with a collision: broker-1 (lower id) must win the tie
        let mut ring = HashRing::new(cfg(1, HashAlgorithm::Crc32), nodes(2)).unwrap();
        ring.positions = vec![10, 10, 20];
        ring.owners = vec![0, 1, 1];
        assert_eq!(ring.owner_index(5), Some(0));
        assert_eq!(ring.owner_index(10), Some(0));
        assert_eq!(ring.owner_index(11), Some(1));
        let shares = ring.shares();
        assert_eq!(
            shares[0].1,
            (HASH_SPACE - 20 + 10) as f64 / HASH_SPACE as f64
        );
        assert_eq!(shares[1].1, 10.0 / HASH_SPACE as f64);
    }

    #[test]
    fn shares_match_lookup_counts() {
        // with few vnodes the arcs are large enough to check by sampling
        let ring = HashRing::new(cfg(3, HashAlgorithm::Crc32), nodes(4)).unwrap();
        let shares = ring.shares();
        let mut counts = [0u64; 4];
        let step = 1u64 << 16;
        let mut h = 0u64;
        while h < HASH_SPACE {
            counts[ring.owner_index(h as u32).unwrap()] += 1;
            h += step;
        }
        for (i, (id, share)) in shares.iter().enumerate() {
            assert_eq!(id, &ring.nodes()[i].id);
            let sampled = counts[i] as f64 / (HASH_SPACE / step) as f64;
            assert!((sampled - share).abs() < 1e-3, "{id}: {sampled} vs {share}");
        }
    }

    #[test]
    fn owners_follow_the_ring_and_skip_repeats() {
        // hand-made ring: positions 10 20 30 40 50 owned by 1 1 0 2 0
        let mut ring = HashRing::new(cfg(1, HashAlgorithm::Crc32), nodes(3)).unwrap();
        ring.positions = vec![10, 20, 30, 40, 50];
        ring.owners = vec![1, 1, 0, 2, 0];
        let all = |h: u32| ring.owners(h).collect::<Vec<_>>();
        assert_eq!(all(0), [1, 0, 2]);
        assert_eq!(all(10), [1, 0, 2]);
        assert_eq!(all(11), [1, 0, 2]);
        assert_eq!(all(21), [0, 2, 1]);
        assert_eq!(all(31), [2, 0, 1]);
        assert_eq!(all(41), [0, 1, 2]);
        // past the last vnode: wraps to the first
        assert_eq!(all(51), [1, 0, 2]);
        assert_eq!(all(u32::MAX), [1, 0, 2]);
        let mut it = ring.owners(31);
        assert_eq!(it.len(), 3);
        it.next();
        assert_eq!(it.size_hint(), (2, Some(2)));
        assert_eq!(it.by_ref().count(), 2);
        assert_eq!(it.next(), None);
    }

    #[test]
    fn owners_of_an_empty_ring_is_empty() {
        let ring = HashRing::new(RingConfig::default(), []).unwrap();
        assert_eq!(ring.owners(7).next(), None);
        assert_eq!(ring.owners_of_point("host-1", 1).len(), 0);
    }

    #[test]
    fn owners_of_large_rings() {
        // more nodes than the u64 bitset holds
        for n in [1, 2, 63, 64, 65, 200] {
            let ring = HashRing::new(cfg(8, HashAlgorithm::Xxh3), nodes(n)).unwrap();
            for ts in 0..20 {
                let got: Vec<usize> = ring.owners_of_point("host-1", ts).collect();
                assert_eq!(got.len(), n);
                assert_eq!(Some(got[0]), ring.owner_index_of_point("host-1", ts));
                let mut sorted = got.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn single_node_owns_everything() {
        let ring = HashRing::new(cfg(1, HashAlgorithm::Crc32), nodes(1)).unwrap();
        assert_eq!(ring.shares(), vec![("broker-1".to_owned(), 1.0)]);
        assert_eq!(ring.owner_of_point("any", -1).unwrap().id, "broker-1");
    }

    #[test]
    fn point_lookup_uses_the_point_hash() {
        for alg in HashAlgorithm::ALL {
            let ring = HashRing::new(cfg(DEFAULT_VNODES, alg), nodes(5)).unwrap();
            for ts in (1_640_995_200..).step_by(5).take(200) {
                let h = alg.hash_bytes(format!("host-9:{ts}").as_bytes());
                assert_eq!(ring.hash_point("host-9", ts), h);
                assert_eq!(ring.hash_bytes(format!("host-9:{ts}").as_bytes()), h);
                let idx = ring.owner_index(h);
                assert_eq!(ring.owner_index_of_point("host-9", ts), idx);
                assert_eq!(
                    ring.owner_of_point("host-9", ts),
                    idx.map(|i| &ring.nodes()[i])
                );
            }
        }
    }
}
