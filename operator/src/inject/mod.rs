//! Sidecar injection: the contract between the operator and the sidecar, and the pod mutation
//! that the injection webhook applies.
//!
//! # The sidecar contract
//!
//! Everything below is stable API between the operator and `portcullis-sidecar`.
//!
//! | what | value |
//! |---|---|
//! | configuration | ConfigMap [`CONFIG_MAP`] in the pod's namespace, key [`CONFIG_KEY`] holds the [`SidecarConfig`](portcullis_crds::SidecarConfig) YAML (`SidecarConfig::to_yaml`), mounted read-only at [`CONFIG_DIR`] as a directory (no `subPath`, so the kubelet swaps in new versions); the sidecar watches it and hot-reloads, keeping the last good document when a new one does not parse |
//! | command | `portcullis-sidecar --config /etc/portcullis/config/sidecar.yaml` |
//! | bound resources | env `PORTCULLIS_RESOURCES`: comma-separated names of the ProtectedResources this pod binds (a subset of the config's resources; the sidecar serves only these) |
//! | identity | env `PORTCULLIS_POD_NAME`, `PORTCULLIS_POD_NAMESPACE`, `PORTCULLIS_SERVICE_ACCOUNT`, `PORTCULLIS_POD_UID` (downward API; the workload identity in every audit record) |
//! | credentials | the `credentialsSecretRef` Secret of resource `R` at `/var/run/portcullis/credentials/R/` (keys as in the Secret; `CredentialFiles` in the config point there) |
//! | upstream CA | the `tls.caSecretRef` key of resource `R` at `/var/run/portcullis/upstream-ca/R/ca.crt` |
//! | local TLS | Secret [`SIDECAR_TLS_SECRET`] (`tls.crt`, `tls.key`: a serving certificate for `127.0.0.1` and `localhost`, signed by the CA in the ConfigMap's key [`CA_KEY`]) at [`SIDECAR_TLS_DIR`], for the Kubernetes API proxy |
//! | masking key | Secret [`MASKING_KEY_SECRET`] (key [`MASKING_KEY_KEY`]: 64 hex digits of random key, made by the operator once per namespace and never rotated by it, so keyed hashes stay comparable across pods and restarts) at [`MASKING_KEY_DIR`]; `masking.hashKeyFile` of the config points at it |
//! | spool | emptyDir at `/var/run/portcullis/spool` (`audit.spoolDir` of the config) |
//! | admin | port 15090 on all interfaces (`adminListen: 0.0.0.0:15090` in the compiled config: the kubelet probes the pod IP): `/readyz` (startup and readiness probe), `/healthz`, `/metrics` |
//! | real service-account token | projected at `/var/run/secrets/kubernetes.io/serviceaccount` in the sidecar only: `token` (audience: the API server's default), `audit-token` (audience `portcullis-audit`, for the audit service), `ca.crt` (cluster CA), `namespace` |
//! | agent's in-cluster config | `KUBERNETES_SERVICE_HOST=127.0.0.1`, `KUBERNETES_SERVICE_PORT` = the `listenPort` of the namespace's `kubernetes` resource (default [`DEFAULT_KUBERNETES_PORT`]); at `/var/run/secrets/kubernetes.io/serviceaccount`: `ca.crt` (the sidecar CA), `namespace`, and `token` = a non-secret placeholder ([`PLACEHOLDER_TOKEN`]) |
//! | pod annotations | [`CONFIG_HASH_ANNOTATION`] = `SidecarConfig::content_hash()` of the config the pod started with; [`BOUND_ANNOTATION`] = the bound resources |
//!
//! Agent containers get, per bound resource `R` of type postgres, `PGHOST=127.0.0.1`,
//! `PGPORT`, `DATABASE_URL` (first postgres resource by name), and for every resource
//! `PORTCULLIS_<R>_HOST`, `PORTCULLIS_<R>_PORT`, `PORTCULLIS_<R>_URL` (`R` upper-cased, `-`
//! as `_`); mysql resources set `MYSQL_HOST` and `MYSQL_TCP_PORT`, and `DATABASE_URL` when
//! there is no postgres resource.

pub mod patch;

pub use patch::{inject, needs_injection, protected, InjectError, InjectInput, SidecarSettings};
pub use portcullis_crds::pod_guard::{
    INJECT_ANNOTATION, INJECT_DISABLED, MASKING_KEY_SECRET, SIDECAR_NAME, SIDECAR_TLS_SECRET,
};

/// Namespace label that turns injection on for every pod of the namespace.
pub const INJECT_LABEL: &str = "portcullis.dev/inject";
/// Value of [`INJECT_LABEL`] (label or pod annotation) that enables injection.
pub const INJECT_ENABLED: &str = "enabled";
/// Pod annotation naming the ProtectedResources the pod binds (comma-separated). Omitted:
/// every ProtectedResource of the namespace.
pub const RESOURCES_ANNOTATION: &str = "portcullis.dev/resources";
/// Pod annotation: content hash of the sidecar configuration the pod runs.
pub const CONFIG_HASH_ANNOTATION: &str = "portcullis.dev/config-hash";
/// Pod annotation: the resources the injected sidecar serves (written by the webhook).
pub const BOUND_ANNOTATION: &str = "portcullis.dev/bound-resources";
/// Pod label set on injected pods, so controllers can find them.
pub const INJECTED_LABEL: &str = "portcullis.dev/injected";

/// ConfigMap holding the sidecar configuration, one per namespace.
pub const CONFIG_MAP: &str = "portcullis-sidecar-config";
/// Key of the configuration document in [`CONFIG_MAP`].
pub const CONFIG_KEY: &str = "sidecar.yaml";
/// Key of the sidecar CA certificate (PEM) in [`CONFIG_MAP`].
pub const CA_KEY: &str = "ca.crt";
/// Key of the placeholder token in [`CONFIG_MAP`].
pub const TOKEN_KEY: &str = "token";
/// The placeholder token agents see instead of a service-account token. Not a credential.
pub const PLACEHOLDER_TOKEN: &str = "portcullis-placeholder-token-not-a-credential";
/// Key of the hash key in [`MASKING_KEY_SECRET`].
pub const MASKING_KEY_KEY: &str = "key";
/// Where the sidecar finds [`MASKING_KEY_SECRET`].
pub const MASKING_KEY_DIR: &str = "/var/run/portcullis/masking-key";
/// Where the sidecar finds its configuration.
pub const CONFIG_DIR: &str = "/etc/portcullis/config";
/// Where the sidecar finds credentials: `CREDENTIALS_DIR/<resource>/<key>`.
pub const CREDENTIALS_DIR: &str = "/var/run/portcullis/credentials";
/// Where the sidecar finds upstream CA bundles: `UPSTREAM_CA_DIR/<resource>/ca.crt`.
pub const UPSTREAM_CA_DIR: &str = "/var/run/portcullis/upstream-ca";
/// Where the sidecar finds its local serving certificate.
pub const SIDECAR_TLS_DIR: &str = "/var/run/portcullis/tls";
/// The audit spool (emptyDir).
pub const SPOOL_DIR: &str = "/var/run/portcullis/spool";
/// The standard in-cluster service-account directory.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Audience of the extra token the sidecar presents to the audit service.
pub const AUDIT_AUDIENCE: &str = "portcullis-audit";
/// File name of that token in [`SERVICE_ACCOUNT_DIR`] of the sidecar.
pub const AUDIT_TOKEN_PATH: &str = "audit-token";
/// The sidecar's admin port (`/readyz`, `/healthz`, `/metrics`).
pub const ADMIN_PORT: i32 = 15090;
/// Local port of the Kubernetes API proxy when the namespace has no `kubernetes` resource.
pub const DEFAULT_KUBERNETES_PORT: i32 = 6443;
/// Field manager and event reporter of the operator.
pub const MANAGER: &str = "portcullis-operator";
