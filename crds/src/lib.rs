//! The Portcullis API (group `portcullis.dev`, version `v1alpha1`): custom resource types,
//! the compiled sidecar configuration the operator hands each sidecar, and the audit record
//! format. Pure types and functions, no I/O.

pub mod access_request;
pub mod audit;
pub mod audit_log;
pub mod audit_retention;
pub mod conditions;
pub mod display;
pub mod exec_policy;
pub mod gateway_policy;
pub mod manifest;
pub mod pod_guard;
pub mod protected_resource;
pub mod sidecar_config;

pub use access_request::*;
pub use audit_retention::*;
pub use gateway_policy::*;
pub use protected_resource::*;
pub use sidecar_config::*;

/// API group of every Portcullis resource.
pub const GROUP: &str = "portcullis.dev";
/// API version of every Portcullis resource.
pub const VERSION: &str = "v1alpha1";

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Relative path (from the repository root) of the generated CRD manifests.
pub const CRD_DIR: &str = "crds/yaml";
/// Relative path (from the repository root) of the chart's copy of the CRD manifests.
pub const CHART_CRD_DIR: &str = "charts/portcullis/crds";
/// The command that regenerates the checked-in CRD manifests.
pub const REGENERATE_COMMAND: &str = "cargo run -p portcullis-crds --bin crdgen";

/// Every CustomResourceDefinition of the API.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        ProtectedResource::crd(),
        GatewayPolicy::crd(),
        AccessRequest::crd(),
        AuditRetention::crd(),
    ]
}

/// The generated CRD manifests as (file name, YAML text) pairs, in a stable order.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let body = serde_yaml::to_string(&crd)?;
            let text = format!(
                "# Generated from the Rust types in crds/src by `{REGENERATE_COMMAND}`. Do not edit.\n{body}"
            );
            Ok((format!("{name}.yaml"), text))
        })
        .collect()
}
