//! Admission of AccessRequest decisions.
//!
//! - `/mutate-accessrequests` stamps `spec.decision.decidedBy` and `decidedAt` from the API
//!   server's authenticated user when a decision is made, and keeps the stamped values when it
//!   is not changed: whatever a client writes into those fields is replaced.
//! - `/validate-accessrequests` refuses a new decision by the requester themself, or by anyone
//!   who is not an approver of the policy that holds the operation (its
//!   `approval.approverGroups` or `approval.approverUsers`). That a decision cannot change once
//!   made is a CEL rule of the CRD.

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use kube::Client;
use portcullis_crds::{AccessRequest, GatewayPolicy};
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

/// Refuse self-approval and decisions by non-approvers.
pub async fn authorize(
    client: &Client,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
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
    let user = req.user_info.username.clone().unwrap_or_default();
    let groups = req.user_info.groups.clone().unwrap_or_default();
    let requester = &ar.spec.requester;
    if user == requester.service_account || requester.user.as_deref() == Some(user.as_str()) {
        return refuse(
            resp,
            format!("{user} requested this operation and cannot decide it: another approver must"),
        );
    }
    let namespace = req.namespace.clone().unwrap_or_default();
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
