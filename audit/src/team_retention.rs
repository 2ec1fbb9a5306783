//! A team namespace's AuditRetention: what of it the audit service honours for the records
//! sent from that namespace, and the `Ready` condition that says so on the object.
//!
//! A team object can only strengthen the cluster's AuditRetention: a longer `retainFor` keeps
//! the namespace's records longer and `legalHold` stops pruning segments holding them. What
//! would weaken it or is the cluster's alone (`storage`, a shorter `retainFor`, another
//! `verifyEvery`) is refused at admission; an object stored before that check, or while it was
//! not installed, gets `Ready=False` naming what is not honoured, and the cluster's setting
//! applies to its records.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use portcullis_crds::conditions::{new_condition, types};
use portcullis_crds::AuditRetentionSpec;

use crate::retention::parse_retain_for;

/// `Ready` reason of a team object honoured in full.
pub const HONOURED_REASON: &str = "Honoured";
/// `Ready` reason of a team object with settings that are not honoured.
pub const NOT_HONOURED_REASON: &str = "NotHonoured";

/// The schedule a team object gets when it leaves `verifyEvery` out.
const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(3600);

/// What the audit service makes of a team object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The retention applied to the namespace's records (the longer of the two), as written.
    pub retain_for: String,
    /// Whether the object's legal hold applies.
    pub legal_hold: bool,
    /// The settings that are not honoured, each with why.
    pub not_honoured: Vec<String>,
}

impl Judgement {
    /// The `Ready` condition for the team object.
    pub fn condition(&self, cluster: &str, generation: Option<i64>) -> Condition {
        let kept = format!(
            "records sent from this namespace are kept for {}{}",
            self.retain_for,
            if self.legal_hold {
                " and not pruned while legalHold is set"
            } else {
                ""
            }
        );
        if self.not_honoured.is_empty() {
            new_condition(types::READY, true, HONOURED_REASON, kept, generation)
        } else {
            new_condition(
                types::READY,
                false,
                NOT_HONOURED_REASON,
                format!(
                    "not honoured: {}; the cluster's AuditRetention {cluster} applies instead ({kept}); admission now refuses these settings, remove them",
                    self.not_honoured.join("; ")
                ),
                generation,
            )
        }
    }
}

/// Judge a team object against the cluster's AuditRetention (`cluster`).
pub fn judge(cluster: &AuditRetentionSpec, team: &AuditRetentionSpec) -> Judgement {
    let mut not_honoured = Vec::new();
    if team.storage.is_some() {
        not_honoured.push(
            "spec.storage (one log holds every namespace's records; storage is the cluster's)"
                .to_owned(),
        );
    }
    let cluster_retain = parse_retain_for(&cluster.retain_for);
    let team_retain = parse_retain_for(&team.retain_for);
    let retain_for = match (team_retain, cluster_retain) {
        (Some(t), Some(c)) if t >= c => team.retain_for.clone(),
        (Some(_), Some(_)) => {
            not_honoured.push(format!(
                "retainFor {} is shorter than the cluster's {}",
                team.retain_for, cluster.retain_for
            ));
            cluster.retain_for.clone()
        }
        _ => {
            not_honoured.push(format!(
                "retainFor {:?} is not NNNd or NNNh",
                team.retain_for
            ));
            cluster.retain_for.clone()
        }
    };
    let every = Duration::from(team.verify_every);
    if every != DEFAULT_VERIFY_EVERY && every != Duration::from(cluster.verify_every) {
        not_honoured.push(format!(
            "verifyEvery {every:?} (the whole log is verified on the cluster's schedule, every {:?})",
            Duration::from(cluster.verify_every)
        ));
    }
    Judgement {
        retain_for,
        legal_hold: team.legal_hold,
        not_honoured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> AuditRetentionSpec {
        serde_json::from_value(json).expect("spec")
    }

    #[test]
    fn a_team_object_may_only_strengthen_the_cluster_s() {
        let cluster = spec(serde_json::json!({"retainFor": "400d"}));
        let longer = judge(
            &cluster,
            &spec(serde_json::json!({"retainFor": "500d", "legalHold": true})),
        );
        assert_eq!(longer.not_honoured, Vec::<String>::new());
        assert_eq!(
            (longer.retain_for.as_str(), longer.legal_hold),
            ("500d", true)
        );
        let c = longer.condition("portcullis-system/default", Some(1));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", HONOURED_REASON)
        );

        let weaker = judge(
            &cluster,
            &spec(serde_json::json!({"retainFor": "72h", "verifyEvery": "24h",
                "storage": {"persistentVolume": {"claimName": "mine"}}})),
        );
        assert_eq!(weaker.retain_for, "400d", "the cluster's retention applies");
        assert_eq!(weaker.not_honoured.len(), 3, "{:?}", weaker.not_honoured);
        let c = weaker.condition("portcullis-system/default", Some(1));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", NOT_HONOURED_REASON)
        );
        for needle in [
            "spec.storage",
            "retainFor 72h is shorter than the cluster's 400d",
            "verifyEvery",
        ] {
            assert!(c.message.contains(needle), "{needle}: {}", c.message);
        }
    }
}
