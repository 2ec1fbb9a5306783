//! kstatus-style conditions shared by every Portcullis status.
//!
//! The condition type itself is Kubernetes' own `metav1.Condition`, so Argo CD, Flux and
//! `kubectl wait --for=condition=Ready` read it without any custom health check.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// `status` value of a condition that holds.
pub const TRUE: &str = "True";
/// `status` value of a condition that does not hold.
pub const FALSE: &str = "False";
/// `status` value of a condition that could not be determined.
pub const UNKNOWN: &str = "Unknown";

/// Condition types used across the API.
pub mod types {
    /// The object is fully reconciled and usable (ProtectedResource, AuditRetention).
    pub const READY: &str = "Ready";
    /// The credential Secret exists and has the keys the resource names.
    pub const CREDENTIALS_RESOLVED: &str = "CredentialsResolved";
    /// A GatewayPolicy was accepted by the operator.
    pub const ACCEPTED: &str = "Accepted";
    /// A GatewayPolicy was compiled into the sidecar configuration of its namespace.
    pub const COMPILED: &str = "Compiled";
    /// The audit log of an AuditRetention verified against its signed tree head.
    pub const VERIFIED: &str = "Verified";
}

/// Build a condition stamped with the current time.
pub fn new_condition(
    type_: &str,
    holds: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if holds { TRUE } else { FALSE }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Insert or replace a condition in a list, keeping `lastTransitionTime` when the status
/// did not change (so the time tells when the condition last flipped, as kstatus expects).
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
        }
        None => conditions.push(condition),
    }
}

/// The condition of a type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of a type is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut list = Vec::new();
        let first = new_condition(types::READY, true, "Resolved", "ok", Some(1));
        let first_time = first.last_transition_time.clone();
        set_condition(&mut list, first);
        std::thread::sleep(std::time::Duration::from_millis(5));
        set_condition(
            &mut list,
            new_condition(types::READY, true, "Resolved", "still ok", Some(2)),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time, first_time);
        assert_eq!(list[0].message, "still ok");
        assert_eq!(list[0].observed_generation, Some(2));

        set_condition(
            &mut list,
            new_condition(types::READY, false, "SecretNotFound", "gone", Some(3)),
        );
        assert_eq!(list.len(), 1);
        assert_ne!(list[0].last_transition_time, first_time);
        assert!(!is_true(&list, types::READY));
    }

    #[test]
    fn find_condition_by_type() {
        let mut list = Vec::new();
        set_condition(&mut list, new_condition(types::READY, true, "A", "", None));
        set_condition(
            &mut list,
            new_condition(types::CREDENTIALS_RESOLVED, false, "KeyMissing", "", None),
        );
        assert!(is_true(&list, types::READY));
        assert!(!is_true(&list, types::CREDENTIALS_RESOLVED));
        assert!(find_condition(&list, types::VERIFIED).is_none());
    }
}
