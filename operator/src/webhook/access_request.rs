//! Admission of AccessRequests.
//!
//! - `/mutate-accessrequests` stamps `spec.decision.decidedBy` and `decidedAt` from the API
//!   server's authenticated user when a decision is made, and keeps the stamped values when it
//!   is not changed: whatever a client writes into those fields is replaced.
//! - `/validate-accessrequests`, on create: the requester's service account must be the
//!   creating user (the sidecar creates requests with its pod's token), the fingerprint must
//!   be the one of the shown operation ([`portcullis_crds::Operation::grant_fingerprint`]),
//!   and the names shown in printer columns must hold no hidden characters. On every new
//!   decision: refused to the requester themself, to anyone who is not an approver of the
//!   policy that holds the operation (its `approval.approverGroups` or
//!   `approval.approverUsers`), and after the policy's approval timeout. On `/status`: refused
//!   to everyone but the operator's own user (learnt with a SelfSubjectReview at start; when
//!   that fails, to the requester and every service account of the request's namespace).
//!   Nothing trusts status to grant. That only the decision may be added, and that
//!   a decided spec cannot change at all, are CEL rules of the CRD.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use kube::Client;
use portcullis_crds::{display, AccessRequest, GatewayPolicy};
use serde_json::{json, Value};

use super::server::refuse;

fn decision(obj: Option<&DynamicObject>) -> Option<Value> {
    obj.and_then(|o| o.data.get("spec"))
        .and_then(|s| s.get("decision"))
        .filter(|d| !d.is_null())
        .cloned()
}

fn approvals(obj: Option<&DynamicObject>) -> Vec<Value> {
    obj.and_then(|o| o.data.get("spec"))
        .and_then(|s| s.get("approvals"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn same_verdict(a: &Value, b: &Value) -> bool {
    a.get("verdict") == b.get("verdict") && a.get("reason") == b.get("reason")
}

/// Whether the request makes a new decision (none before, one now).
fn newly_decided(req: &AdmissionRequest<DynamicObject>) -> Option<Value> {
    let new = decision(req.object.as_ref())?;
    match decision(req.old_object.as_ref()) {
        Some(old) if same_verdict(&old, &new) => None,
        _ => Some(new),
    }
}

/// Stamp who decided (or approved) and when; keep the stamps of an unchanged decision and of
/// the approvals given before.
pub fn stamp(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(obj) = req.object.as_ref() else {
        return resp;
    };
    let user = json!(req.user_info.username.clone().unwrap_or_default());
    let now = json!(format!("{:.0}", Timestamp::now()));
    let original = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => return refuse(resp, format!("AccessRequest cannot be read: {e}")),
    };
    let mut stamped = original.clone();
    let given = approvals(req.object.as_ref());
    if !given.is_empty() {
        let before = approvals(req.old_object.as_ref());
        let stamped_list: Vec<Value> = given
            .iter()
            .enumerate()
            .map(|(i, a)| match before.get(i) {
                // What was approved before stays as it was stamped.
                Some(old) => old.clone(),
                None => {
                    let mut a = a.clone();
                    a["approvedBy"] = user.clone();
                    a["approvedAt"] = now.clone();
                    a
                }
            })
            .collect();
        stamped["spec"]["approvals"] = Value::Array(stamped_list);
    }
    if let Some(new) = decision(req.object.as_ref()) {
        let (by, at) = match decision(req.old_object.as_ref()) {
            Some(old) if same_verdict(&old, &new) => {
                (old["decidedBy"].clone(), old["decidedAt"].clone())
            }
            _ => (user, now),
        };
        stamped["spec"]["decision"]["decidedBy"] = by;
        stamped["spec"]["decision"]["decidedAt"] = at;
    }
    if stamped == original {
        return resp;
    }
    let patch = json_patch::diff(&original, &stamped);
    match resp.clone().with_patch(patch) {
        Ok(r) => r,
        Err(e) => refuse(resp, format!("cannot stamp the decision: {e}")),
    }
}

/// The API-server user this client authenticates as (SelfSubjectReview), if it can be learnt.
pub async fn own_user(client: &Client) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await;
    match review {
        Ok(r) => r.status.and_then(|s| s.user_info).and_then(|u| u.username),
        Err(e) => {
            tracing::warn!(error = %e, "cannot learn the operator's own user; AccessRequest status writes are refused only to the requester's namespace");
            None
        }
    }
}

/// Why a new request is refused, if it is: a requester that is not the creating user, a
/// fingerprint that is not the shown operation's, hidden characters in printer columns.
pub fn creation_refusal(ar: &AccessRequest, user: &str) -> Option<String> {
    let spec = &ar.spec;
    if spec.requester.service_account != user {
        return Some(format!(
            "spec.requester.serviceAccount is {:?}, but {user:?} creates this AccessRequest: requests are created by the requester's own sidecar",
            display::escape(&spec.requester.service_account, false)
        ));
    }
    if !spec.approvals.is_empty() {
        return Some("a new AccessRequest carries no approvals: approvers add them".to_owned());
    }
    let expected = spec.operation.grant_fingerprint();
    if spec.operation.fingerprint != expected {
        return Some(format!(
            "spec.operation.fingerprint is not the fingerprint of the shown operation (expected {expected}): an approval covers exactly what is shown"
        ));
    }
    for (field, value) in [
        ("spec.requester.name", spec.requester.name.as_str()),
        ("spec.resource", spec.resource.as_str()),
        ("spec.policy", spec.policy.as_str()),
        ("spec.rule", spec.rule.as_str()),
    ] {
        if !display::is_plain(value) {
            return Some(format!(
                "{field} holds control, bidi or zero-width characters ({}): it is shown in listings and must be plain",
                display::escape(value, false)
            ));
        }
    }
    None
}

/// Why an approval by `user` (a new entry of `spec.approvals` when `entry`, otherwise an
/// Approved decision) is refused, if it is: a member of the policy's `ownerGroups`, a user who
/// already approved, or a decision that comes before the other required approvals.
pub fn approval_refusal(
    ar: &AccessRequest,
    approval: &portcullis_crds::gateway_policy::ApprovalSettings,
    user: &str,
    groups: &[String],
    entry: bool,
) -> Option<String> {
    let policy = &ar.spec.policy;
    if let Some(owner) = approval
        .owner_groups
        .iter()
        .find(|g| groups.iter().any(|mine| mine == *g))
    {
        return Some(format!(
            "{user} is a member of {owner}, an owner group of GatewayPolicy {policy}: owners may not approve their own workloads' requests (they may deny them); ask another approver"
        ));
    }
    let before: Vec<&str> = ar
        .spec
        .approvals
        .iter()
        .take(ar.spec.approvals.len() - usize::from(entry))
        .filter_map(|a| a.approved_by.as_deref())
        .collect();
    if before.contains(&user) {
        return Some(format!(
            "{user} already approved this AccessRequest: another approver must approve it"
        ));
    }
    let required = approval
        .required_approvals
        .max(ar.spec.required_approvals)
        .max(1);
    let mut distinct = before.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let so_far = distinct.len() + 1;
    let required_n = usize::try_from(required).unwrap_or(usize::MAX);
    if entry && so_far >= required_n {
        return Some(format!(
            "this approval completes the {required} required: it is the decision (kubectl portcullis approve sets spec.decision)"
        ));
    }
    if !entry && so_far < required_n {
        return Some(format!(
            "GatewayPolicy {policy} requires {required} distinct approvers and {} approved before: add your approval with kubectl portcullis approve (spec.approvals) and let another approver decide",
            distinct.len()
        ));
    }
    None
}

/// Refuse what [`creation_refusal`] names, status writes by the requester's namespace,
/// self-approval, decisions by non-approvers and decisions after the approval timeout.
pub async fn authorize(
    client: &Client,
    operator_user: Option<&str>,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let user = req.user_info.username.clone().unwrap_or_default();
    let namespace = req.namespace.clone().unwrap_or_default();
    let read = |obj: Option<&DynamicObject>| -> Option<Result<AccessRequest, serde_json::Error>> {
        obj.map(|o| serde_json::to_value(o).and_then(serde_json::from_value))
    };
    if req.sub_resource.as_deref() == Some("status") {
        let requester = match read(req.old_object.as_ref()) {
            Some(Ok(ar)) => Some(ar.spec.requester.service_account),
            _ => None,
        };
        let workload = user.starts_with(&format!("system:serviceaccount:{namespace}:"));
        let refused = match operator_user {
            Some(operator) => user != operator,
            // The operator could not learn its own name: at least the requester's side is
            // refused.
            None => workload || requester.as_deref() == Some(user.as_str()),
        };
        if refused {
            return refuse(
                resp,
                format!(
                    "{user} may not write the status of an AccessRequest: the operator writes it"
                ),
            );
        }
        return resp;
    }
    if req.operation == Operation::Create {
        match read(req.object.as_ref()) {
            Some(Ok(ar)) => {
                if let Some(why) = creation_refusal(&ar, &user) {
                    return refuse(resp, why);
                }
            }
            Some(Err(e)) => return refuse(resp, format!("AccessRequest cannot be read: {e}")),
            None => return refuse(resp, "the request carries no AccessRequest".to_owned()),
        }
    }
    let before = approvals(req.old_object.as_ref());
    let after = approvals(req.object.as_ref());
    if after.len() < before.len() || before.iter().zip(&after).any(|(b, a)| b != a) {
        return refuse(
            resp,
            "an approval cannot be changed or withdrawn: deny the request instead".to_owned(),
        );
    }
    let added = after.len() - before.len();
    let decided = newly_decided(req);
    if decided.is_none() && added == 0 {
        return resp;
    }
    if added > 1 || (added == 1 && decided.is_some()) {
        return refuse(
            resp,
            "one approver adds one approval at a time, or decides: not both".to_owned(),
        );
    }
    if added == 1 && decision(req.old_object.as_ref()).is_some() {
        return refuse(
            resp,
            "this AccessRequest is already decided: no approval can be added".to_owned(),
        );
    }
    let approves = added == 1
        || decided
            .as_ref()
            .is_some_and(|d| d.get("verdict") == Some(&json!("Approved")));
    let Some(obj) = &req.object else {
        return resp;
    };
    let ar: AccessRequest = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(a) => a,
        Err(e) => return refuse(resp, format!("AccessRequest cannot be read: {e}")),
    };
    let groups = req.user_info.groups.clone().unwrap_or_default();
    let requester = &ar.spec.requester;
    if user == requester.service_account || requester.user.as_deref() == Some(user.as_str()) {
        return refuse(
            resp,
            format!("{user} requested this operation and cannot decide it: another approver must"),
        );
    }
    let policy = match Api::<GatewayPolicy>::namespaced(client.clone(), &namespace)
        .get_opt(&ar.spec.policy)
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            return refuse(
                resp,
                format!(
                    "GatewayPolicy {} of this request does not exist in {namespace}: nobody can decide it",
                    ar.spec.policy
                ),
            )
        }
        Err(e) => return refuse(resp, format!("cannot read GatewayPolicy {}: {e}", ar.spec.policy)),
    };
    let Some(approval) = policy.spec.approval else {
        return refuse(
            resp,
            format!("GatewayPolicy {} names no approvers", ar.spec.policy),
        );
    };
    let allowed = approval.approver_users.iter().any(|u| u == &user)
        || approval
            .approver_groups
            .iter()
            .any(|g| groups.iter().any(|mine| mine == g));
    if allowed && approves {
        if let Some(why) = approval_refusal(&ar, &approval, &user, &groups, added == 1) {
            return refuse(resp, why);
        }
    }
    let timeout = SignedDuration::try_from(std::time::Duration::from(approval.timeout))
        .unwrap_or(SignedDuration::MAX);
    let created = ar.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if allowed && created.is_some_and(|c| Timestamp::now() >= c + timeout) {
        return refuse(
            resp,
            format!(
                "AccessRequest {} timed out before this decision (approval.timeout {}s of GatewayPolicy {}): its operation was refused; the requester asks again",
                ar.metadata.name.as_deref().unwrap_or(""),
                std::time::Duration::from(approval.timeout).as_secs(),
                ar.spec.policy
            ),
        );
    }
    if allowed {
        resp
    } else {
        refuse(
            resp,
            format!(
                "{user} is not an approver of GatewayPolicy {}: ask a member of groups [{}] or users [{}]",
                ar.spec.policy,
                approval.approver_groups.join(", "),
                approval.approver_users.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::creation_refusal;
    use portcullis_crds::AccessRequest;

    fn request(statement: &str, requester: &str, name: &str) -> AccessRequest {
        let mut ar: AccessRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "r", "namespace": "agents"},
            "spec": {
                "requester": {"name": name, "serviceAccount": requester},
                "resource": "db", "policy": "p", "rule": "writes",
                "operation": {"kind": "sql", "statement": statement, "fingerprint": "f"}
            }
        }))
        .expect("request");
        ar.spec.operation.fingerprint = ar.spec.operation.grant_fingerprint();
        ar
    }

    #[test]
    fn only_the_requester_creates_what_it_shows() {
        let sa = "system:serviceaccount:agents:agent";
        let ok = request("DELETE FROM t WHERE id = 1", sa, "agent");
        assert_eq!(creation_refusal(&ok, sa), None);
        let why = creation_refusal(&ok, "alice").expect("another creator");
        assert!(why.contains("creates this AccessRequest"), "{why}");
        let mut shown_other = ok.clone();
        shown_other.spec.operation.statement = Some("DELETE FROM t".into());
        let why = creation_refusal(&shown_other, sa).expect("fingerprint of another statement");
        assert!(
            why.contains("not the fingerprint of the shown operation"),
            "{why}"
        );
        let hidden = request("DELETE FROM t WHERE id = 1", sa, "agent\u{202e}");
        let why = creation_refusal(&hidden, sa).expect("bidi override in a column");
        assert!(why.contains("spec.requester.name"), "{why}");
    }
}
