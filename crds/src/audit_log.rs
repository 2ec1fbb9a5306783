//! The audit log format: an append-only Merkle tree with RFC 6962 / RFC 9162 hashing, signed
//! tree heads (ed25519), and inclusion and consistency proofs.
//!
//! This module is pure: it defines how entries, tree heads and proofs are hashed, signed and
//! verified, so the audit service that writes the log and an auditor who verifies an evidence
//! bundle offline compute exactly the same thing. Verification uses the `ct-merkle` crate;
//! proofs are produced here from the leaf hashes (RFC 9162 §2.1.3.1 and §2.1.4.1).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2_merkle::{Digest, Sha256};
use thiserror::Error;

use crate::audit_retention::SignedTreeHead;

/// First line of every signed tree head: names the log format, so a signature over a head of
/// another log or format never verifies here.
pub const LOG_ORIGIN: &str = "portcullis.dev/audit-log/v1";

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Leaf hash of an entry: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// Interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Hash of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::new().finalize().into()
}

/// Computes the root of a growing tree from its leaf hashes in O(log n) memory, so a verifier
/// can walk a log of any size once.
#[derive(Clone, Debug, Default)]
pub struct TreeBuilder {
    // Roots of the perfect subtrees covering the leaves so far, largest first, with their
    // heights.
    stack: Vec<(Hash, u32)>,
    size: u64,
}

impl TreeBuilder {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (leaf, 0u32);
        while let Some(&(top, height)) = self.stack.last() {
            if height != node.1 {
                break;
            }
            self.stack.pop();
            node = (node_hash(&top, &node.0), height + 1);
        }
        self.stack.push(node);
        self.size += 1;
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Merkle tree hash of the leaves so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.stack.iter().rev();
        let Some(&(mut acc, _)) = iter.next() else {
            return empty_root();
        };
        for (left, _) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Merkle tree hash of a list of leaf hashes.
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut b = TreeBuilder::new();
    for l in leaves {
        b.push(*l);
    }
    b.root()
}

fn split_point(n: usize) -> usize {
    // Largest power of two smaller than n (n >= 2).
    let mut k = 1usize;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Inclusion proof (audit path) of leaf `index` in the tree of `leaves`, bottom-up
/// (RFC 9162 §2.1.3.1). `None` when `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Option<Vec<Hash>> {
    let index = usize::try_from(index).ok()?;
    if index >= leaves.len() {
        return None;
    }
    fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
        let n = leaves.len();
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            path(m, &leaves[..k], out);
            out.push(root_of(&leaves[k..]));
        } else {
            path(m - k, &leaves[k..], out);
            out.push(root_of(&leaves[..k]));
        }
    }
    let mut out = Vec::new();
    path(index, leaves, &mut out);
    Some(out)
}

/// Consistency proof that the first `old_size` leaves are a prefix of `leaves`
/// (RFC 9162 §2.1.4.1). `None` unless `0 < old_size <= leaves.len()`.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Option<Vec<Hash>> {
    let m = usize::try_from(old_size).ok()?;
    if m == 0 || m > leaves.len() {
        return None;
    }
    fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
        let n = leaves.len();
        if m == n {
            if !complete {
                out.push(root_of(leaves));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            subproof(m, &leaves[..k], complete, out);
            out.push(root_of(&leaves[k..]));
        } else {
            subproof(m - k, &leaves[k..], false, out);
            out.push(root_of(&leaves[..k]));
        }
    }
    let mut out = Vec::new();
    subproof(m, leaves, true, &mut out);
    Some(out)
}

/// The state of the log at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of entries.
    pub tree_size: u64,
    /// Merkle tree hash of the entries.
    pub root_hash: Hash,
    /// When the head was made, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl TreeHead {
    /// The bytes that are signed: a text checkpoint of the origin, size, root and time.
    pub fn signing_payload(&self) -> Vec<u8> {
        format!(
            "{LOG_ORIGIN}\n{}\n{}\n{}\n",
            self.tree_size,
            BASE64.encode(self.root_hash),
            self.timestamp_ms
        )
        .into_bytes()
    }
}

/// Why a tree head, a proof or a key was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LogError {
    /// A field of a signed tree head is malformed.
    #[error("signed tree head is malformed: {0}")]
    Malformed(String),
    /// The signature does not verify with the public key.
    #[error("signature of the tree head of size {0} does not verify with the given public key")]
    BadSignature(u64),
    /// The head was signed by another key.
    #[error("tree head was signed by key {found}, expected key {expected}")]
    WrongKey {
        /// Key id in the head.
        found: String,
        /// Key id of the public key.
        expected: String,
    },
    /// An inclusion proof does not lead to the root.
    #[error("entry {index} is not included in the tree of size {tree_size}: {reason}")]
    NotIncluded {
        /// Leaf index.
        index: u64,
        /// Tree size.
        tree_size: u64,
        /// What failed.
        reason: String,
    },
    /// A consistency proof does not connect the two heads.
    #[error("tree of size {old_size} is not a prefix of the tree of size {new_size}: {reason}")]
    Inconsistent {
        /// Older size.
        old_size: u64,
        /// Newer size.
        new_size: u64,
        /// What failed.
        reason: String,
    },
    /// A private key could not be read.
    #[error("signing key is not an ed25519 PKCS#8 document: {0}")]
    BadKey(String),
}

/// Identifier of a public key: the first 16 hex characters of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    let digest: Hash = Sha256::digest(public_key).into();
    hex::encode(digest)[..16].to_owned()
}

/// An ed25519 key that signs tree heads.
pub struct LogSigner {
    pair: Ed25519KeyPair,
}

impl LogSigner {
    /// Load a key from its PKCS#8 (v1 or v2) document.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, LogError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|pair| Self { pair })
            .map_err(|e| LogError::BadKey(e.to_string()))
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Sign a payload of another kind than a tree head (its first line must name that kind,
    /// never [`LOG_ORIGIN`]); the signature in base64.
    pub fn sign_other(&self, payload: &[u8]) -> Result<String, LogError> {
        if payload.starts_with(LOG_ORIGIN.as_bytes()) {
            return Err(LogError::Malformed(
                "only tree heads are signed under the log origin".into(),
            ));
        }
        Ok(BASE64.encode(self.pair.sign(payload).as_ref()))
    }

    /// Sign a tree head.
    pub fn sign(&self, head: &TreeHead) -> SignedTreeHead {
        let signature = self.pair.sign(&head.signing_payload());
        SignedTreeHead {
            tree_size: i64::try_from(head.tree_size).unwrap_or(i64::MAX),
            root_hash: hex::encode(head.root_hash),
            timestamp: timestamp_ms_to_rfc3339(head.timestamp_ms),
            signature: BASE64.encode(signature.as_ref()),
            key_id: key_id(self.public_key()),
        }
    }
}

fn timestamp_ms_to_rfc3339(ms: u64) -> String {
    let ts = k8s_openapi::jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    format!("{ts:.3}")
}

fn rfc3339_to_timestamp_ms(s: &str) -> Result<u64, LogError> {
    let ts: k8s_openapi::jiff::Timestamp = s
        .parse()
        .map_err(|e| LogError::Malformed(format!("timestamp {s:?}: {e}")))?;
    u64::try_from(ts.as_millisecond())
        .map_err(|_| LogError::Malformed(format!("timestamp {s:?} is before 1970")))
}

/// Check a signed tree head against a raw ed25519 public key and return the head it signs.
pub fn verify_tree_head(sth: &SignedTreeHead, public_key: &[u8]) -> Result<TreeHead, LogError> {
    let expected = key_id(public_key);
    if sth.key_id != expected {
        return Err(LogError::WrongKey {
            found: sth.key_id.clone(),
            expected,
        });
    }
    let tree_size = u64::try_from(sth.tree_size)
        .map_err(|_| LogError::Malformed(format!("treeSize {} is negative", sth.tree_size)))?;
    let root: Hash = hex::decode(&sth.root_hash)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            LogError::Malformed(format!("rootHash {:?} is not 32 hex bytes", sth.root_hash))
        })?;
    let head = TreeHead {
        tree_size,
        root_hash: root,
        timestamp_ms: rfc3339_to_timestamp_ms(&sth.timestamp)?,
    };
    let signature = BASE64
        .decode(&sth.signature)
        .map_err(|e| LogError::Malformed(format!("signature: {e}")))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&head.signing_payload(), &signature)
        .map_err(|_| LogError::BadSignature(tree_size))?;
    Ok(head)
}

/// Check a base64 ed25519 signature over `payload` made by [`LogSigner::sign_other`].
pub fn verify_other(payload: &[u8], signature: &str, public_key: &[u8]) -> Result<(), LogError> {
    let signature = BASE64
        .decode(signature)
        .map_err(|e| LogError::Malformed(format!("signature: {e}")))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(payload, &signature)
        .map_err(|_| LogError::BadSignature(0))
}

fn root_hash(head: &TreeHead) -> RootHash<Sha256> {
    RootHash::new(head.root_hash.into(), head.tree_size)
}

fn digests(proof: &[Hash]) -> Vec<sha2_merkle::digest::Output<Sha256>> {
    proof.iter().map(|h| (*h).into()).collect()
}

/// Check that `entry` is leaf `index` of the tree described by `head`.
pub fn verify_inclusion(
    head: &TreeHead,
    entry: &[u8],
    index: u64,
    proof: &[Hash],
) -> Result<(), LogError> {
    let digests = digests(proof);
    root_hash(head)
        .verify_inclusion(&entry, index, &InclusionProof::from_digests(digests.iter()))
        .map_err(|e| LogError::NotIncluded {
            index,
            tree_size: head.tree_size,
            reason: e.to_string(),
        })
}

/// Check that the tree of `old` is a prefix of the tree of `new`.
pub fn verify_consistency(old: &TreeHead, new: &TreeHead, proof: &[Hash]) -> Result<(), LogError> {
    let err = |reason: String| LogError::Inconsistent {
        old_size: old.tree_size,
        new_size: new.tree_size,
        reason,
    };
    if old.tree_size == new.tree_size {
        return if old.root_hash == new.root_hash && proof.is_empty() {
            Ok(())
        } else {
            Err(err("same size, different roots".into()))
        };
    }
    let digests = digests(proof);
    root_hash(new)
        .verify_consistency(
            &root_hash(old),
            &ConsistencyProof::from_digests(digests.iter()),
        )
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_merkle::mem_backed_tree::MemoryBackedTree;

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{{\"seq\":{i}}}").into_bytes())
            .collect()
    }

    fn test_key() -> LogSigner {
        // A fixed PKCS#8 v1 document for ed25519 (RFC 8410 example private key).
        let der = hex::decode(
            "302e020100300506032b657004220420d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842",
        )
        .expect("hex");
        LogSigner::from_pkcs8(&der).expect("key")
    }

    #[test]
    fn roots_match_the_reference_implementation() {
        for n in [0usize, 1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 100] {
            let es = entries(n);
            let leaves: Vec<Hash> = es.iter().map(|e| leaf_hash(e)).collect();
            let mut reference = MemoryBackedTree::<Sha256, Vec<u8>>::new();
            for e in &es {
                reference.push(e.clone());
            }
            let expected: Hash = (*reference.root().as_bytes()).into();
            assert_eq!(root_of(&leaves), expected, "size {n}");
        }
        // RFC 6962 empty-tree hash.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn inclusion_proofs_verify_and_tampering_is_detected() {
        let es = entries(37);
        let leaves: Vec<Hash> = es.iter().map(|e| leaf_hash(e)).collect();
        let head = TreeHead {
            tree_size: 37,
            root_hash: root_of(&leaves),
            timestamp_ms: 1,
        };
        for i in 0..37u64 {
            let proof = inclusion_proof(&leaves, i).expect("in range");
            assert!(proof.len() <= 6, "O(log n) proof");
            verify_inclusion(&head, &es[i as usize], i, &proof).expect("verifies");
        }
        let proof = inclusion_proof(&leaves, 5).expect("in range");
        let err = verify_inclusion(&head, b"forged", 5, &proof).expect_err("forged entry");
        assert!(err
            .to_string()
            .starts_with("entry 5 is not included in the tree of size 37"));
        assert!(verify_inclusion(&head, &es[5], 6, &proof).is_err());
        assert!(inclusion_proof(&leaves, 37).is_none());
    }

    #[test]
    fn consistency_proofs_verify_and_rewrites_are_detected() {
        let es = entries(50);
        let leaves: Vec<Hash> = es.iter().map(|e| leaf_hash(e)).collect();
        let new = TreeHead {
            tree_size: 50,
            root_hash: root_of(&leaves),
            timestamp_ms: 2,
        };
        for m in 1..=50usize {
            let old = TreeHead {
                tree_size: m as u64,
                root_hash: root_of(&leaves[..m]),
                timestamp_ms: 1,
            };
            let proof = consistency_proof(&leaves, m as u64).expect("in range");
            verify_consistency(&old, &new, &proof).unwrap_or_else(|e| panic!("{m}: {e}"));
        }
        // A history rewritten after size 20 no longer extends the old head.
        let mut rewritten = leaves.clone();
        rewritten[10] = leaf_hash(b"rewritten");
        let forged_new = TreeHead {
            tree_size: 50,
            root_hash: root_of(&rewritten),
            timestamp_ms: 3,
        };
        let old = TreeHead {
            tree_size: 20,
            root_hash: root_of(&leaves[..20]),
            timestamp_ms: 1,
        };
        let proof = consistency_proof(&rewritten, 20).expect("in range");
        assert!(verify_consistency(&old, &forged_new, &proof).is_err());
    }

    #[test]
    fn signed_heads_verify_only_with_their_key_and_content() {
        let signer = test_key();
        let head = TreeHead {
            tree_size: 3,
            root_hash: root_of(&[leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]),
            timestamp_ms: 1_795_000_000_123,
        };
        let sth = signer.sign(&head);
        assert_eq!(sth.timestamp, "2026-11-18T11:06:40.123Z");
        assert_eq!(verify_tree_head(&sth, signer.public_key()), Ok(head));

        let mut bigger = sth.clone();
        bigger.tree_size = 4;
        assert_eq!(
            verify_tree_head(&bigger, signer.public_key()),
            Err(LogError::BadSignature(4))
        );
        let mut other_root = sth.clone();
        other_root.root_hash = hex::encode(leaf_hash(b"x"));
        assert!(matches!(
            verify_tree_head(&other_root, signer.public_key()),
            Err(LogError::BadSignature(3))
        ));
        let other_key = [7u8; 32];
        assert!(matches!(
            verify_tree_head(&sth, &other_key),
            Err(LogError::WrongKey { .. })
        ));
        let mut junk = sth.clone();
        junk.root_hash = "zz".into();
        assert!(matches!(
            verify_tree_head(&junk, signer.public_key()),
            Err(LogError::Malformed(_))
        ));
    }

    #[test]
    fn builder_matches_batch_root_at_every_size() {
        let leaves: Vec<Hash> = entries(70).iter().map(|e| leaf_hash(e)).collect();
        let mut b = TreeBuilder::new();
        for (i, l) in leaves.iter().enumerate() {
            b.push(*l);
            assert_eq!(b.root(), root_of(&leaves[..=i]));
            assert_eq!(b.size(), i as u64 + 1);
        }
    }
}
