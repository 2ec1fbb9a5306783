//! Pruning is a signed act. Before any segment is deleted, a prune entry is appended to the
//! log naming the boundary (entries before `keepFrom` go), the newest entry it retires and the
//! retention rule that allowed it (`retainFor`, `legalHold`, the AuditRetention). Segments
//! are deleted only once a signed tree head covers that entry. Verification requires, for the
//! entries a log no longer holds, a prune entry covered by a signed head whose boundary
//! reaches them, whose rule had no legal hold, and whose newest retired entry was older than
//! `retainFor` when it was written.
//!
//! ```json
//! {"id": "prune:1200", "receivedAt": "...", "prune": {"keepFrom": 1200,
//!  "newestPruned": "...", "retainFor": "400d", "legalHold": false, "retention": "ns/name"}}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::retention::parse_retain_for;
use crate::store::{Log, StoreError};

/// The rule a prune follows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Prune {
    /// Entries before this index are retired.
    pub keep_from: u64,
    /// When the newest retired entry was received.
    pub newest_pruned: String,
    /// The retention rule (`400d`, `72h`).
    pub retain_for: String,
    /// The legal hold when the prune was written (always false for a prune the service writes).
    pub legal_hold: bool,
    /// The AuditRetention (`namespace/name`) whose rule allowed it.
    pub retention: String,
    /// The rules of namespaces with an AuditRetention of their own whose records it retired:
    /// their `retainFor`, legal hold and newest retired record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespacePrune>,
}

/// A namespace's rule as a prune followed it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacePrune {
    /// The namespace's `retainFor` (the longer of it and the log's applies).
    pub retain_for: String,
    /// Its legal hold (always false for a prune the service writes).
    pub legal_hold: bool,
    /// When its newest retired record was received.
    pub newest_pruned: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PruneEntry {
    id: String,
    received_at: String,
    prune: Prune,
}

/// A prune entry found in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundPrune {
    /// Its log index.
    pub index: u64,
    /// When it was written.
    pub received_at: String,
    /// What it says.
    pub prune: Prune,
}

/// The prune an entry records, if it is a prune entry.
pub fn parse_prune(index: u64, entry: &[u8]) -> Option<FoundPrune> {
    if !entry.windows(8).any(|w| w == b"\"prune\":") && !entry.windows(2).any(|w| w == b"\\u") {
        return None;
    }
    let e: PruneEntry = serde_json::from_slice(entry).ok()?;
    Some(FoundPrune {
        index,
        received_at: e.received_at,
        prune: e.prune,
    })
}

fn received_at(entry: &[u8]) -> Option<Timestamp> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Received {
        received_at: String,
    }
    serde_json::from_slice::<Received>(entry)
        .ok()?
        .received_at
        .parse()
        .ok()
}

/// Check a prune against its own rule: no legal hold, and the newest retired entry older than
/// `retainFor` when the prune was written.
pub fn check_rule(p: &FoundPrune) -> Result<(), String> {
    if p.prune.legal_hold {
        return Err(format!(
            "prune entry {} retired entries under legal hold",
            p.index
        ));
    }
    let retain = parse_retain_for(&p.prune.retain_for).ok_or_else(|| {
        format!(
            "prune entry {} names retainFor {:?}",
            p.index, p.prune.retain_for
        )
    })?;
    let at: Timestamp = p
        .received_at
        .parse()
        .map_err(|e| format!("prune entry {}: receivedAt: {e}", p.index))?;
    let newest: Timestamp = p
        .prune
        .newest_pruned
        .parse()
        .map_err(|e| format!("prune entry {}: newestPruned: {e}", p.index))?;
    let cutoff = at - SignedDuration::try_from(retain).unwrap_or(SignedDuration::MAX);
    if newest >= cutoff {
        return Err(format!(
            "prune entry {} retired an entry received {newest}, within retainFor {} of {at}",
            p.index, p.prune.retain_for
        ));
    }
    for (ns, rule) in &p.prune.namespaces {
        if rule.legal_hold {
            return Err(format!(
                "prune entry {} retired records of namespace {ns} under its legal hold",
                p.index
            ));
        }
        let own = parse_retain_for(&rule.retain_for).ok_or_else(|| {
            format!(
                "prune entry {}: namespace {ns} names retainFor {:?}",
                p.index, rule.retain_for
            )
        })?;
        let newest: Timestamp = rule
            .newest_pruned
            .parse()
            .map_err(|e| format!("prune entry {}: {ns} newestPruned: {e}", p.index))?;
        let cutoff = at - SignedDuration::try_from(own.max(retain)).unwrap_or(SignedDuration::MAX);
        if newest >= cutoff {
            return Err(format!(
                "prune entry {} retired a record of namespace {ns} received {newest}, within its retainFor {}",
                p.index, rule.retain_for
            ));
        }
    }
    Ok(())
}

/// Check that the first `pruned` entries a log no longer holds were retired by prune entries
/// covered by a signed head of size `signed_to`, each within its rule.
pub fn check_pruned(pruned: u64, prunes: &[FoundPrune], signed_to: u64) -> Result<(), String> {
    for p in prunes {
        check_rule(p)?;
    }
    if pruned == 0 {
        return Ok(());
    }
    let covering = prunes
        .iter()
        .filter(|p| p.index < signed_to)
        .map(|p| p.prune.keep_from)
        .max();
    match covering {
        Some(k) if k >= pruned => Ok(()),
        Some(k) => Err(format!(
            "entries {k}..{pruned} are gone but no signed prune entry retired them"
        )),
        None => Err(format!(
            "entries 0..{pruned} are gone but no prune entry covered by a signed tree head retired them"
        )),
    }
}

/// The retention rule of a round.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `retainFor` as written.
    pub retain_for: String,
    /// Parsed.
    pub retain: Duration,
    /// Legal hold.
    pub legal_hold: bool,
    /// `namespace/name` of the AuditRetention.
    pub retention: String,
    /// AuditRetention objects of team namespaces: their records are kept for the longer of
    /// the two `retainFor`s, and not at all pruned while the namespace holds them.
    pub namespaces: BTreeMap<String, NamespaceRule>,
}

/// A namespace's own retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRule {
    /// `retainFor` as written.
    pub retain_for: String,
    /// Parsed.
    pub retain: Duration,
    /// Legal hold.
    pub legal_hold: bool,
}

/// What [`enforce`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enforced {
    /// Entries retired by this call.
    pub pruned: u64,
    /// A prune entry written that no signed head covers yet (its index): the segments go once
    /// one does.
    pub awaiting_signature: Option<u64>,
}

/// Retire the segments whose newest entry is older than `now - retainFor`, unless the rule
/// has a legal hold: write (or find) the prune entry, and delete the segments once a signed
/// head covers it. A last segment past the cut-off is sealed so it can go too.
pub fn enforce(log: &mut Log, rule: &Rule, now: Timestamp) -> Result<Enforced, StoreError> {
    if rule.legal_hold {
        return Ok(Enforced::default());
    }
    let cutoff = now - SignedDuration::try_from(rule.retain).unwrap_or(SignedDuration::MAX);
    let segments = log.segments();
    let mut keep_from = None;
    let mut newest_pruned = None;
    let mut by_namespace: BTreeMap<String, Timestamp> = BTreeMap::new();
    for (first, count, _) in &segments {
        let newest = match count.checked_sub(1) {
            Some(last) => log.entry(first + last)?.as_deref().and_then(received_at),
            None => None,
        };
        match newest {
            Some(t) if t < cutoff => {}
            _ => break,
        }
        // Namespaces with a rule of their own: every record of theirs in the segment must be
        // past their (longer) retention, and none may be on hold.
        let mut segment_newest: BTreeMap<String, Timestamp> = BTreeMap::new();
        if !rule.namespaces.is_empty() {
            let path = log
                .dir()
                .join("segments")
                .join(crate::segment::segment_name(*first));
            let (read, _) = crate::segment::read_segment(&path, *first)?;
            for entry in &read.entries {
                let Some(ns) = source_namespace(entry) else {
                    continue;
                };
                if rule.namespaces.contains_key(&ns) {
                    if let Some(t) = received_at(entry) {
                        let e = segment_newest.entry(ns).or_insert(t);
                        *e = (*e).max(t);
                    }
                }
            }
        }
        let held = segment_newest.iter().any(|(ns, t)| {
            rule.namespaces.get(ns).is_some_and(|r| {
                r.legal_hold
                    || *t
                        >= now
                            - SignedDuration::try_from(r.retain.max(rule.retain))
                                .unwrap_or(SignedDuration::MAX)
            })
        });
        if held {
            break;
        }
        keep_from = Some(first + count);
        newest_pruned = newest;
        for (ns, t) in segment_newest {
            let e = by_namespace.entry(ns).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let (Some(keep_from), Some(newest)) = (keep_from, newest_pruned) else {
        return Ok(Enforced::default());
    };
    if keep_from <= log.pruned() {
        return Ok(Enforced::default());
    }
    if keep_from == log.size() {
        log.seal();
    }
    let entry = PruneEntry {
        id: format!("prune:{keep_from}"),
        received_at: format!("{now:.6}"),
        prune: Prune {
            keep_from,
            newest_pruned: format!("{newest:.6}"),
            retain_for: rule.retain_for.clone(),
            legal_hold: false,
            retention: rule.retention.clone(),
            namespaces: by_namespace
                .into_iter()
                .filter_map(|(ns, t)| {
                    let r = rule.namespaces.get(&ns)?;
                    Some((
                        ns,
                        NamespacePrune {
                            retain_for: r.retain_for.clone(),
                            legal_hold: false,
                            newest_pruned: format!("{t:.6}"),
                        },
                    ))
                })
                .collect(),
        },
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| StoreError::BadEntry {
        index: 0,
        reason: e.to_string(),
    })?;
    let index = log.append(&[bytes])?.first().copied().unwrap_or(u64::MAX);
    let signed_to = log
        .heads()
        .iter()
        .map(|h| u64::try_from(h.tree_size).unwrap_or(0))
        .max()
        .unwrap_or(0);
    if index >= signed_to {
        return Ok(Enforced {
            pruned: 0,
            awaiting_signature: Some(index),
        });
    }
    Ok(Enforced {
        pruned: log.prune_before(keep_from)?,
        awaiting_signature: None,
    })
}

/// Rule from retention settings.
pub fn rule(retain_for: &str, legal_hold: bool, retention: &str) -> Option<Rule> {
    Some(Rule {
        retain_for: retain_for.to_owned(),
        retain: parse_retain_for(retain_for)?,
        legal_hold,
        retention: retention.to_owned(),
        namespaces: BTreeMap::new(),
    })
}

fn source_namespace(entry: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Source {
        namespace: String,
    }
    #[derive(Deserialize)]
    struct WithSource {
        source: Source,
    }
    serde_json::from_slice::<WithSource>(entry)
        .ok()
        .map(|e| e.source.namespace)
}
