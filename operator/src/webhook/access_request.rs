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

/// Stamp who decided and when; keep the stamp of an unchanged decision.
pub fn stamp(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let (Some(obj), Some(new)) = (req.object.as_ref(), decision(req.object.as_ref())) else {
        return resp;
    };
    let (by, at) = match decision(req.old_object.as_ref()) {
        Some(old) if same_verdict(&old, &new) => {
            (old["decidedBy"].clone(), old["decidedAt"].clone())
        }
        _ => (
            json!(req.user_info.username.clone().unwrap_or_default()),
            json!(format!("{:.0}", Timestamp::now())),
        ),
    };
    let original = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => return refuse(resp, format!("AccessRequest cannot be read: {e}")),
    };
    let mut stamped = original.clone();
    stamped["spec"]["decision"]["decidedBy"] = by;
    stamped["spec"]["decision"]["decidedAt"] = at;
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
    if newly_decided(req).is_none() {
        return resp;
    }
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
