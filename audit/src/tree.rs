//! The Merkle tree of the log in memory: every leaf hash and the root of every complete
//! (power-of-two, aligned) subtree, so any root, inclusion proof or consistency proof for any
//! tree size up to the current one takes O(log² n) hashing. Memory: about 64 bytes per entry.

use portcullis_crds::audit_log::{empty_root, node_hash, Hash, TreeHead};

/// Leaf hashes and complete-subtree roots.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    // levels[h][i]: root of the perfect subtree over leaves [i * 2^h, (i + 1) * 2^h).
    levels: Vec<Vec<Hash>>,
}

fn split_point(n: u64) -> u64 {
    let mut k = 1u64;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            levels: vec![Vec::new()],
        }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Append a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut h = 0;
        while self.levels[h].len().is_multiple_of(2) {
            let n = self.levels[h].len();
            let parent = node_hash(&self.levels[h][n - 2], &self.levels[h][n - 1]);
            if self.levels.len() == h + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[h + 1].push(parent);
            h += 1;
        }
    }

    /// Leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// Merkle tree hash of leaves `[start, end)`, where the range is one the RFC 6962
    /// decomposition of a tree produces (its left edge aligned to its largest power of two).
    fn range_root(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let h = n.trailing_zeros() as usize;
            if let Some(hash) = self
                .levels
                .get(h)
                .and_then(|level| level.get((start >> h) as usize))
            {
                return *hash;
            }
        }
        let k = split_point(n);
        node_hash(
            &self.range_root(start, start + k),
            &self.range_root(start + k, end),
        )
    }

    /// Root of the tree of the first `size` leaves (`None` if larger than the tree).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        match size {
            0 => Some(empty_root()),
            s if s <= self.size() => Some(self.range_root(0, s)),
            _ => None,
        }
    }

    /// The head of the tree of the first `size` leaves.
    pub fn head_at(&self, size: u64, timestamp_ms: u64) -> Option<TreeHead> {
        Some(TreeHead {
            tree_size: size,
            root_hash: self.root_at(size)?,
            timestamp_ms,
        })
    }

    /// Inclusion proof of `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.size() {
            return None;
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out);
        Some(out)
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.range_root(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.range_root(start, start + k));
        }
    }

    /// Consistency proof between the trees of the first `old` and first `size` leaves.
    pub fn consistency_proof(&self, old: u64, size: u64) -> Option<Vec<Hash>> {
        if old == 0 || old > size || size > self.size() {
            return None;
        }
        let mut out = Vec::new();
        self.subproof(old, 0, size, true, &mut out);
        Some(out)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.range_root(start, end));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, out);
            out.push(self.range_root(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.range_root(start, start + k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crds::audit_log::{
        consistency_proof, inclusion_proof, leaf_hash, root_of, verify_consistency,
        verify_inclusion,
    };

    #[test]
    fn matches_the_reference_functions_at_every_size() {
        let entries: Vec<Vec<u8>> = (0..67).map(|i| format!("e{i}").into_bytes()).collect();
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let mut tree = Tree::new();
        for l in &leaves {
            tree.push(*l);
        }
        for size in 1..=67u64 {
            let s = size as usize;
            assert_eq!(tree.root_at(size), Some(root_of(&leaves[..s])));
            let head = tree.head_at(size, 0).expect("head");
            for index in [0, size / 2, size - 1] {
                let proof = tree.inclusion_proof(index, size).expect("proof");
                assert_eq!(Some(proof.clone()), inclusion_proof(&leaves[..s], index));
                verify_inclusion(&head, &entries[index as usize], index, &proof).expect("verifies");
            }
            for old in [1, size / 3 + 1, size] {
                let proof = tree.consistency_proof(old, size).expect("proof");
                assert_eq!(Some(proof.clone()), consistency_proof(&leaves[..s], old));
                let old_head = tree.head_at(old, 0).expect("old head");
                verify_consistency(&old_head, &head, &proof).expect("consistent");
            }
        }
        assert!(tree.inclusion_proof(67, 67).is_none());
        assert!(tree.consistency_proof(0, 5).is_none());
        assert_eq!(Tree::new().root_at(0), Some(empty_root()));
    }
}
