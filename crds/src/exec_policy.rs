//! The exec allow-list of a GatewayPolicy: the commands a policy lets run (program and
//! argument patterns, narrowed by namespace, pod labels and container) and what happens to
//! every other command.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Exec commands a policy allows, and what happens to the rest. A command runs only when the
/// sidecar's analysis proves every program it runs and every argument of each, and each of
/// those programs matches an entry of `allow`; anything else goes to `default`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecSettings {
    /// What happens to a command that is not on `allow`, or that the analysis cannot prove
    /// (a word only known at run time, inline interpreter code, `eval`, ...): `deny`
    /// (default), `requireApproval`, or `allow` (denylist style: only the guardrails judge).
    #[serde(default)]
    pub default: ExecDefault,

    /// The commands that may run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub allow: Vec<ExecAllow>,
}

/// What happens to exec commands outside the allow-list.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum ExecDefault {
    /// Refused with the word or command that is not allowed.
    #[default]
    Deny,
    /// Held for an approver (needs `spec.approval`).
    RequireApproval,
    /// Allowed unless a guardrail says otherwise (denylist style).
    Allow,
}

/// One allowed command.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecAllow {
    /// Entry name, shown in audit records.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// The program as the command names it: a bare name (`ls`, looked up in the container's
    /// `PATH`) or an absolute path (`/bin/ls`). Each form that may be used is listed.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 256)))]
    pub programs: Vec<String>,

    /// Glob patterns (`*` does not cross `/`); every argument must match one of them. Empty:
    /// no arguments. For a wrapper or shell (`timeout`, `sh -c`), the arguments are its own
    /// options; the command it runs is judged on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    pub args: Vec<String>,

    /// Namespaces of the target pod (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub namespaces: Vec<String>,

    /// Labels the target pod must carry (all of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub pod_labels: BTreeMap<String, String>,

    /// Target container names (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 63)))]
    pub containers: Vec<String>,
}
