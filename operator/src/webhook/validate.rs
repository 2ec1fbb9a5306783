//! The validating webhook for GatewayPolicies: a policy the compiler refuses is refused at
//! admission, with the compiler's message.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use portcullis_crds::GatewayPolicy;

use crate::compile::check_policy;

/// Answer one admission request for a GatewayPolicy.
pub fn review(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(obj) = &req.object else {
        return resp;
    };
    let policy: GatewayPolicy = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => return super::server::refuse(resp, format!("GatewayPolicy cannot be read: {e}")),
    };
    let name = policy.metadata.name.clone().unwrap_or_default();
    match check_policy(
        &name,
        policy.metadata.generation.unwrap_or_default(),
        &policy.spec,
    ) {
        Ok(_) => resp,
        Err(e) => {
            super::server::refuse(resp, format!("GatewayPolicy {name} does not compile: {e}"))
        }
    }
}
