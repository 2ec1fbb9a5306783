//! Loading the sidecar configuration (the operator's compiled document, or a hand-written
//! one in standalone mode) and the options that come from the command line.

use std::path::{Path, PathBuf};

use portcullis_crds::audit::Identity;
use portcullis_crds::sidecar_config::SidecarConfig;
use thiserror::Error;

use crate::approval::KubeAccess;
use crate::identity::oidc::OidcOptions;
use crate::runtime::Limits;

/// Why the configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The document is malformed or inconsistent.
    #[error(transparent)]
    Document(#[from] portcullis_crds::sidecar_config::ConfigError),
    /// A value cannot be used by this sidecar.
    #[error("{0}")]
    Invalid(String),
}

/// Read and check a configuration file.
pub fn load(path: &Path) -> Result<SidecarConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(SidecarConfig::from_yaml(&text)?)
}

/// Settings that do not come from the configuration document.
#[derive(Clone, Debug)]
pub struct Options {
    /// The identity of the caller (in a pod: the pod's service account).
    pub identity: Identity,
    /// Client limits.
    pub limits: Limits,
    /// How approvals reach the API server (off: statements that require approval are
    /// refused).
    pub kube: KubeAccess,
    /// How OIDC key sets are cached and fetched.
    pub oidc: OidcOptions,
    /// The configuration file, watched for new versions (the operator's ConfigMap, which the
    /// kubelet updates in place); `None` when the configuration was given in memory.
    pub config_path: Option<PathBuf>,
    /// Session worker threads (see [`crate::workers`]).
    pub workers: usize,
}

impl Options {
    /// Options for a caller running as service account `name` in `namespace`.
    pub fn service_account(namespace: &str, name: &str) -> Options {
        Options {
            identity: Identity {
                kind: "ServiceAccount".to_owned(),
                name: name.to_owned(),
                namespace: Some(namespace.to_owned()),
                ..Identity::default()
            },
            limits: Limits::default(),
            kube: KubeAccess::Off,
            oidc: OidcOptions::default(),
            config_path: None,
            workers: crate::workers::default_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local/sidecar.yaml");
        let config = load(&path).expect("examples/local/sidecar.yaml is a valid SidecarConfig");
        assert_eq!(config.resources.len(), 1);
        assert_eq!(config.resources[0].listen_port, 15432);
        let policy = config
            .policies_for(&config.resources[0])
            .next()
            .expect("policy");
        assert!(policy.guardrails.iter().any(|g| g.missing_where));
    }

    #[test]
    fn a_malformed_document_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bad.yaml");
        std::fs::write(
            &path,
            "apiVersion: portcullis.dev/sidecar-config/v1alpha1\nnamespace: x\nresources:\n- name: a\n  type: postgres\n  listenPort: nope\n",
        )
        .expect("write");
        let err = load(&path).expect_err("refused").to_string();
        assert!(err.contains("listenPort"), "{err}");
        assert!(load(&dir.path().join("missing.yaml")).is_err());
    }
}
