//! The rules that keep every container of a protected pod, except the operator's sidecar, away
//! from the protected credentials, the masking key, the sidecar's serving key, real
//! service-account tokens, the sidecar's processes and the sidecar's name resolution.
//!
//! One check ([`check`]) runs over the containers, init containers and ephemeral containers of
//! a pod spec and over every volume the spec declares, mounted or not. The operator's injection
//! webhook applies it to pod creations and updates (it is the authority); the sidecar's
//! Kubernetes API proxy applies it to the pod, pod-template and ephemeral-container writes the
//! agent sends through it, so the agent is refused early with the same message and the refusal
//! is recorded.
//!
//! The sidecar is recognised by what the caller proves it to be (the container the webhook
//! built, or the one stored in the pod before an update), never by its name: a pod that brings
//! its own container named [`SIDECAR_NAME`], or a volume named with [`SIDECAR_VOLUME_PREFIX`],
//! is refused.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, PodSpec, SecurityContext, Volume, VolumeMount,
};

/// Name of the injected sidecar container (an init container with `restartPolicy: Always`).
pub const SIDECAR_NAME: &str = "portcullis-sidecar";
/// Prefix of the names of every volume the webhook injects.
pub const SIDECAR_VOLUME_PREFIX: &str = "portcullis-";
/// The injected volume agents mount at the service-account path (placeholder token, sidecar CA).
pub const AGENT_SA_VOLUME: &str = "portcullis-agent-serviceaccount";
/// Secret with the sidecar's local serving certificate, one per namespace.
pub const SIDECAR_TLS_SECRET: &str = "portcullis-sidecar-tls";
/// Secret with the key of the `hash` masking strategy, one per namespace.
pub const MASKING_KEY_SECRET: &str = "portcullis-masking-key";
/// Pod annotation: `enabled` opts a pod in outside labelled namespaces, `disabled` opts it out.
pub const INJECT_ANNOTATION: &str = "portcullis.dev/inject";
/// Value of [`INJECT_ANNOTATION`] that opts a pod out.
pub const INJECT_DISABLED: &str = "disabled";
/// User and group id the sidecar runs as unless configured otherwise.
pub const DEFAULT_SIDECAR_UID: i64 = 65532;

/// The only capability a container other than the sidecar may add: the PodSecurity
/// `restricted` allow-list. Every other one reaches the sidecar's processes, its network
/// namespace (shared by every container of the pod) or the node.
pub const ALLOWED_CAPABILITY: &str = "NET_BIND_SERVICE";

/// What a namespace protects.
#[derive(Clone, Debug, Default)]
pub struct Protected {
    /// Secrets only the sidecar may read, with what each holds (for the message).
    pub secrets: BTreeMap<String, String>,
    /// Secrets of type `kubernetes.io/service-account-token` the pod refers to.
    pub token_secrets: BTreeSet<String>,
    /// Service accounts the namespace's agents run as: a pod without the sidecar running as
    /// one of them must not hold its token.
    pub service_accounts: BTreeSet<String>,
    /// User and group id of the sidecar.
    pub sidecar_uid: i64,
    /// How agents reach the resources instead (environment variable names), for messages.
    pub hint: String,
}

impl Protected {
    /// The sidecar's serving key and the masking key, plus `credentials` (Secret name, what
    /// it holds).
    pub fn new(credentials: impl IntoIterator<Item = (String, String)>, sidecar_uid: i64) -> Self {
        let mut secrets: BTreeMap<String, String> = credentials.into_iter().collect();
        secrets.insert(
            SIDECAR_TLS_SECRET.to_owned(),
            "the Portcullis sidecar's serving key".to_owned(),
        );
        secrets.insert(
            MASKING_KEY_SECRET.to_owned(),
            "the key of the hash masking strategy".to_owned(),
        );
        Self {
            secrets,
            sidecar_uid,
            hint: "PORTCULLIS_<RESOURCE>_URL".to_owned(),
            ..Self::default()
        }
    }
}

/// Why a pod, pod template or ephemeral container is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Violation {
    /// A container or a declared volume reads a protected Secret.
    #[error("{subject} reads Secret {secret:?} ({how}), which holds {what}. Portcullis mounts credentials into its sidecar only, so that every connection passes its policy and audit; connect through the sidecar instead (the injected environment variables {hint} point at it on 127.0.0.1) and remove the reference to the Secret")]
    SecretReference {
        /// Who reads it.
        subject: String,
        /// The Secret.
        secret: String,
        /// How (env var, envFrom, volume, CSI secret).
        how: String,
        /// What the Secret holds.
        what: String,
        /// Environment variables to use instead.
        hint: String,
    },
    /// A container or a declared volume reads a service-account token Secret.
    #[error("{subject} reads Secret {secret:?} ({how}), which is of type kubernetes.io/service-account-token. In a namespace protected by Portcullis only the sidecar holds a token; agent containers reach the Kubernetes API through the sidecar with the in-cluster configuration it injects")]
    TokenSecret {
        /// Who reads it.
        subject: String,
        /// The Secret.
        secret: String,
        /// How.
        how: String,
    },
    /// A volume projects a service-account token for an agent.
    #[error("{subject} mounts volume {volume:?}, which projects a service-account token. In a namespace protected by Portcullis only the sidecar holds a token; agent containers reach the Kubernetes API through the sidecar with the in-cluster configuration it injects")]
    TokenVolume {
        /// Who mounts it (or the pod, when no container mounts it yet).
        subject: String,
        /// The volume.
        volume: String,
    },
    /// A pod without the sidecar would hold the token of an agent's service account.
    #[error("the pod runs without the Portcullis sidecar as service account {service_account:?}, which the namespace's agents run as, and volume {volume:?} would give it that account's token; set automountServiceAccountToken: false or run it as another service account")]
    AgentToken {
        /// The service account.
        service_account: String,
        /// The token volume.
        volume: String,
    },
    /// A container that is not the injected sidecar carries its name.
    #[error("{subject} is named {SIDECAR_NAME:?}, which only the container the Portcullis webhook injects may be; a pod may not bring its own (rename the container)")]
    SidecarName {
        /// The container.
        subject: String,
    },
    /// Something other than the sidecar uses a sidecar volume or a volume name of the sidecar.
    #[error("{subject} refers to {volume}, which only the Portcullis sidecar may use; agent and debug containers get the same in-cluster configuration and addresses through the sidecar (rename the volume if it is your own)")]
    SidecarVolume {
        /// Who.
        subject: String,
        /// The volume.
        volume: String,
    },
    /// A hostPath volume, whatever its path.
    #[error("volume {volume:?} mounts host path {path:?}; hostPath volumes are refused in a namespace protected by Portcullis: the node's files hold other pods' Secrets and tokens, every container and the node's own credentials, in places no list of paths covers on every distribution. Use a PersistentVolumeClaim, emptyDir, configMap or image volume instead")]
    HostPath {
        /// The volume.
        volume: String,
        /// Its path.
        path: String,
    },
    /// `hostPID: true`.
    #[error("the pod sets hostPID: true, which shows it every process of the node, the Portcullis sidecar's included (/proc/<pid>/root, /proc/<pid>/environ); refused in a namespace protected by Portcullis")]
    HostPid,
    /// `shareProcessNamespace: true`.
    #[error("the pod sets shareProcessNamespace: true, which puts every container in the Portcullis sidecar's process namespace: any process that gains the sidecar's user id (as root, through a setuid binary or file capabilities) reads its files, environment and memory through /proc/<pid>; refused in a namespace protected by Portcullis")]
    SharedProcesses,
    /// Settings the kubelet writes into the pod-wide /etc/hosts or resolv.conf.
    #[error("the pod sets {what}, which the kubelet writes into the /etc/hosts or resolv.conf that every container of the pod shares, the Portcullis sidecar's included: it would choose where the sidecar connects with the credentials. Refused in a namespace protected by Portcullis; use the cluster's DNS (dnsPolicy ClusterFirst, no dnsConfig, no hostAliases)")]
    NameResolution {
        /// The setting.
        what: String,
    },
    /// An added capability other than [`ALLOWED_CAPABILITY`].
    #[error("{subject} asks for capability {requested} ({normalised} at run time); in a namespace protected by Portcullis a container may add only {ALLOWED_CAPABILITY} (the PodSecurity restricted allow-list): the others reach the Portcullis sidecar's processes, its network or the node")]
    Capability {
        /// The container.
        subject: String,
        /// The capability as written.
        requested: String,
        /// What the runtime makes of it.
        normalised: String,
    },
    /// A container runs as the sidecar's user or group.
    #[error("{subject} runs as user or group {uid}, the Portcullis sidecar's; agent and debug containers must run as another user and group")]
    SidecarUser {
        /// The container.
        subject: String,
        /// The id.
        uid: i64,
    },
    /// A privileged container.
    #[error("{subject} asks for {what}, with which it could reach the Portcullis sidecar's files and processes; refused in a namespace protected by Portcullis")]
    Privileged {
        /// The container.
        subject: String,
        /// What it asks for.
        what: String,
    },
    /// An ephemeral container that would join the sidecar's process namespace.
    #[error("{subject} targets container {SIDECAR_NAME:?} (targetContainerName), which would put it in the sidecar's process namespace; debug an agent container instead")]
    TargetsSidecar {
        /// The ephemeral container.
        subject: String,
    },
    /// An update that changes the injected sidecar.
    #[error("the Portcullis sidecar container must stay exactly as the webhook injected it; this update changes its {0}")]
    SidecarChanged(String),
    /// An opt-out by someone not trusted to opt out.
    #[error("pod annotation {INJECT_ANNOTATION}: {INJECT_DISABLED} opts a pod out of the Portcullis sidecar, which in a protected namespace only {trusted} may do; {user} may not. Remove the annotation")]
    OptOut {
        /// Who asked.
        user: String,
        /// Who may.
        trusted: String,
    },
}

/// One container of any kind, as the check reads it.
struct View<'a> {
    subject: String,
    env: Option<&'a Vec<EnvVar>>,
    env_from: Option<&'a Vec<EnvFromSource>>,
    mounts: Option<&'a Vec<VolumeMount>>,
    security: Option<&'a SecurityContext>,
    target: Option<&'a str>,
    name: &'a str,
}

fn views<'a>(
    spec: &'a PodSpec,
    sidecar: Option<&Container>,
) -> (Vec<View<'a>>, Option<&'a Container>) {
    let mut out = Vec::new();
    let mut genuine = None;
    let plain = |c: &'a Container, kind: &str| View {
        subject: format!("{kind}container {:?}", c.name),
        env: c.env.as_ref(),
        env_from: c.env_from.as_ref(),
        mounts: c.volume_mounts.as_ref(),
        security: c.security_context.as_ref(),
        target: None,
        name: &c.name,
    };
    for c in spec.init_containers.iter().flatten() {
        if genuine.is_none() && sidecar.is_some_and(|s| s == c) {
            genuine = Some(c);
            continue;
        }
        out.push(plain(c, "init "));
    }
    for c in &spec.containers {
        out.push(plain(c, ""));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        out.push(View {
            subject: format!("ephemeral container {:?}", c.name),
            env: c.env.as_ref(),
            env_from: c.env_from.as_ref(),
            mounts: c.volume_mounts.as_ref(),
            security: c.security_context.as_ref(),
            target: c.target_container_name.as_deref(),
            name: &c.name,
        });
    }
    (out, genuine)
}

/// The check: `spec` with `sidecar` as the one container allowed to reach what the namespace
/// protects (`None`: a pod without the sidecar, or a pod template).
pub fn check(spec: &PodSpec, sidecar: Option<&Container>, p: &Protected) -> Result<(), Violation> {
    let (containers, genuine) = views(spec, sidecar);
    let sidecar_volumes: BTreeSet<&str> = genuine
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| m.name.as_str())
        .collect();
    let injected = genuine.is_some();

    if spec.host_pid == Some(true) {
        return Err(Violation::HostPid);
    }
    if spec.share_process_namespace == Some(true) {
        return Err(Violation::SharedProcesses);
    }
    check_name_resolution(spec)?;
    for c in &containers {
        if c.name == SIDECAR_NAME {
            return Err(Violation::SidecarName {
                subject: c.subject.clone(),
            });
        }
        if c.target == Some(SIDECAR_NAME) {
            return Err(Violation::TargetsSidecar {
                subject: c.subject.clone(),
            });
        }
        check_security(c, spec, p)?;
        check_env(c, p)?;
        for m in c.mounts.into_iter().flatten() {
            let ours = m.name == AGENT_SA_VOLUME && injected;
            if !ours
                && (sidecar_volumes.contains(m.name.as_str())
                    || m.name.starts_with(SIDECAR_VOLUME_PREFIX))
            {
                return Err(Violation::SidecarVolume {
                    subject: c.subject.clone(),
                    volume: m.name.clone(),
                });
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if sidecar_volumes.contains(v.name.as_str()) {
            continue;
        }
        let subject = containers
            .iter()
            .find(|c| c.mounts.into_iter().flatten().any(|m| m.name == v.name))
            .map(|c| c.subject.clone())
            .unwrap_or_else(|| "the pod (a volume no container mounts yet)".to_owned());
        if v.name.starts_with(SIDECAR_VOLUME_PREFIX) && !(injected && v.name == AGENT_SA_VOLUME) {
            return Err(Violation::SidecarVolume {
                subject,
                volume: format!("volume {}", v.name),
            });
        }
        check_volume(v, &subject, spec, injected, p)?;
    }
    Ok(())
}

fn secret_refused(
    p: &Protected,
    subject: &str,
    secret: &str,
    how: String,
) -> Result<(), Violation> {
    if let Some(what) = p.secrets.get(secret) {
        return Err(Violation::SecretReference {
            subject: subject.to_owned(),
            secret: secret.to_owned(),
            how,
            what: what.clone(),
            hint: p.hint.clone(),
        });
    }
    if p.token_secrets.contains(secret) {
        return Err(Violation::TokenSecret {
            subject: subject.to_owned(),
            secret: secret.to_owned(),
            how,
        });
    }
    Ok(())
}

fn check_env(c: &View<'_>, p: &Protected) -> Result<(), Violation> {
    for e in c.env.into_iter().flatten() {
        if let Some(s) = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
        {
            secret_refused(
                p,
                &c.subject,
                &s.name,
                format!("env var {} valueFrom secretKeyRef", e.name),
            )?;
        }
    }
    for e in c.env_from.into_iter().flatten() {
        if let Some(s) = &e.secret_ref {
            secret_refused(p, &c.subject, &s.name, "envFrom secretRef".to_owned())?;
        }
    }
    Ok(())
}

fn check_volume(
    v: &Volume,
    subject: &str,
    spec: &PodSpec,
    injected: bool,
    p: &Protected,
) -> Result<(), Violation> {
    if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
        secret_refused(p, subject, name, format!("volume {}", v.name))?;
    }
    if let Some(s) = v
        .csi
        .as_ref()
        .and_then(|c| c.node_publish_secret_ref.as_ref())
    {
        secret_refused(
            p,
            subject,
            &s.name,
            format!("CSI volume {} nodePublishSecretRef", v.name),
        )?;
    }
    for (kind, secret) in [
        (
            "azureFile",
            v.azure_file.as_ref().map(|a| a.secret_name.clone()),
        ),
        (
            "cephfs",
            v.cephfs
                .as_ref()
                .and_then(|c| c.secret_ref.as_ref())
                .map(|s| s.name.clone()),
        ),
        (
            "cinder",
            v.cinder
                .as_ref()
                .and_then(|c| c.secret_ref.as_ref())
                .map(|s| s.name.clone()),
        ),
        (
            "flexVolume",
            v.flex_volume
                .as_ref()
                .and_then(|c| c.secret_ref.as_ref())
                .map(|s| s.name.clone()),
        ),
        (
            "iscsi",
            v.iscsi
                .as_ref()
                .and_then(|c| c.secret_ref.as_ref())
                .map(|s| s.name.clone()),
        ),
        (
            "rbd",
            v.rbd
                .as_ref()
                .and_then(|c| c.secret_ref.as_ref())
                .map(|s| s.name.clone()),
        ),
        (
            "scaleIO",
            v.scale_io.as_ref().map(|c| c.secret_ref.name.clone()),
        ),
        (
            "storageos",
            v.storageos
                .as_ref()
                .and_then(|c| c.secret_ref.as_ref())
                .map(|s| s.name.clone()),
        ),
    ] {
        if let Some(secret) = secret {
            secret_refused(
                p,
                subject,
                &secret,
                format!("{kind} volume {} secretRef", v.name),
            )?;
        }
    }
    if let Some(projected) = &v.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(s) = &source.secret {
                secret_refused(p, subject, &s.name, format!("projected volume {}", v.name))?;
            }
            if source.service_account_token.is_some() {
                if injected {
                    return Err(Violation::TokenVolume {
                        subject: subject.to_owned(),
                        volume: v.name.clone(),
                    });
                }
                let account = spec
                    .service_account_name
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".to_owned());
                if p.service_accounts.contains(&account) {
                    return Err(Violation::AgentToken {
                        service_account: account,
                        volume: v.name.clone(),
                    });
                }
            }
        }
    }
    if let Some(h) = &v.host_path {
        return Err(Violation::HostPath {
            volume: v.name.clone(),
            path: h.path.clone(),
        });
    }
    Ok(())
}

fn check_security(c: &View<'_>, spec: &PodSpec, p: &Protected) -> Result<(), Violation> {
    let pod = spec.security_context.as_ref();
    let uid = c
        .security
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.and_then(|s| s.run_as_user));
    let gid = c
        .security
        .and_then(|s| s.run_as_group)
        .or_else(|| pod.and_then(|s| s.run_as_group));
    for id in [uid, gid].into_iter().flatten() {
        if id == p.sidecar_uid {
            return Err(Violation::SidecarUser {
                subject: c.subject.clone(),
                uid: id,
            });
        }
    }
    let Some(s) = c.security else {
        return Ok(());
    };
    if s.privileged == Some(true) {
        return Err(Violation::Privileged {
            subject: c.subject.clone(),
            what: "privileged: true".to_owned(),
        });
    }
    for cap in s.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
        let bare = capability_name(cap);
        if bare != ALLOWED_CAPABILITY {
            return Err(Violation::Capability {
                subject: c.subject.clone(),
                requested: cap.clone(),
                normalised: format!("CAP_{bare}"),
            });
        }
    }
    Ok(())
}

/// A capability as the container runtimes read it: upper case first, then without an optional
/// `CAP_` prefix (`cap_sys_ptrace`, `Cap_Sys_Ptrace` and `SYS_PTRACE` are one capability).
pub fn capability_name(cap: &str) -> String {
    let upper = cap.trim().to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map(str::to_owned)
        .unwrap_or(upper)
}

/// `hostAliases`, `dnsPolicy: None` and `dnsConfig` end up in the /etc/hosts and resolv.conf
/// the sidecar shares with every other container of the pod.
fn check_name_resolution(spec: &PodSpec) -> Result<(), Violation> {
    if spec.host_aliases.as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(Violation::NameResolution {
            what: "hostAliases".to_owned(),
        });
    }
    if spec.dns_policy.as_deref() == Some("None") {
        return Err(Violation::NameResolution {
            what: "dnsPolicy: None".to_owned(),
        });
    }
    if spec.dns_config.is_some() {
        return Err(Violation::NameResolution {
            what: "dnsConfig (nameservers, searches or options)".to_owned(),
        });
    }
    Ok(())
}

/// On an update: the sidecar must stay the container stored before it, field for field.
pub fn sidecar_unchanged(old: &Container, new: Option<&Container>) -> Result<(), Violation> {
    let Some(new) = new else {
        return Err(Violation::SidecarChanged(
            "presence (it was removed)".to_owned(),
        ));
    };
    let mut changed = Vec::new();
    if old.image != new.image {
        changed.push("image");
    }
    if old.command != new.command {
        changed.push("command");
    }
    if old.args != new.args {
        changed.push("args");
    }
    if old.env != new.env || old.env_from != new.env_from {
        changed.push("env");
    }
    if old.volume_mounts != new.volume_mounts {
        changed.push("volumeMounts");
    }
    if old.security_context != new.security_context {
        changed.push("securityContext");
    }
    if changed.is_empty() && old != new {
        changed.push("settings");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(Violation::SidecarChanged(changed.join(", ")))
    }
}

/// The sidecar of a stored pod: its first init container named [`SIDECAR_NAME`] with
/// `restartPolicy: Always` (the webhook put it there; every later write is checked against it).
pub fn stored_sidecar(spec: &PodSpec) -> Option<&Container> {
    spec.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR_NAME && c.restart_policy.as_deref() == Some("Always"))
}

/// The names of every Secret a pod spec refers to (volumes of any kind, env, envFrom), so
/// the caller can find which are service-account token Secrets.
pub fn secret_names(spec: &PodSpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for v in spec.volumes.iter().flatten() {
        out.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        out.extend(
            v.csi
                .as_ref()
                .and_then(|c| c.node_publish_secret_ref.as_ref())
                .map(|s| s.name.clone()),
        );
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            out.extend(source.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    let (containers, _) = views(spec, None);
    for c in containers {
        for e in c.env.into_iter().flatten() {
            out.extend(
                e.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .map(|s| s.name.clone()),
            );
        }
        for e in c.env_from.into_iter().flatten() {
            out.extend(e.secret_ref.as_ref().map(|s| s.name.clone()));
        }
    }
    out
}

/// Whether pod annotations opt the pod out of injection.
pub fn opts_out(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .is_some_and(|v| v == INJECT_DISABLED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).expect("spec")
    }

    fn protected() -> Protected {
        let mut p = Protected::new(
            [("db-creds".to_owned(), "the credential".to_owned())],
            65532,
        );
        p.service_accounts.insert("agent".to_owned());
        p
    }

    #[test]
    fn capabilities_are_read_as_the_runtime_reads_them() {
        for (cap, bare) in [
            ("SYS_PTRACE", "SYS_PTRACE"),
            ("cap_sys_ptrace", "SYS_PTRACE"),
            ("Cap_Sys_Admin", "SYS_ADMIN"),
            ("CAP_NET_BIND_SERVICE", "NET_BIND_SERVICE"),
            ("all", "ALL"),
        ] {
            assert_eq!(capability_name(cap), bare, "{cap}");
        }
        let p = protected();
        let with = |cap: &str| {
            spec(
                json!({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": [cap]}}}]}),
            )
        };
        for cap in [
            "cap_sys_ptrace",
            "Cap_Sys_Admin",
            "SYS_MODULE",
            "BPF",
            "NET_ADMIN",
            "SETUID",
            "NET_RAW",
        ] {
            assert!(
                matches!(
                    check(&with(cap), None, &p),
                    Err(Violation::Capability { .. })
                ),
                "{cap}"
            );
        }
        for cap in ["NET_BIND_SERVICE", "cap_net_bind_service"] {
            assert_eq!(check(&with(cap), None, &p), Ok(()), "{cap}");
        }
    }

    #[test]
    fn every_family_is_refused_and_plain_pods_pass() {
        let p = protected();
        let cases = [
            json!({"containers": [{"name": "portcullis-sidecar", "image": "x"}]}),
            json!({"volumes": [{"name": "c", "secret": {"secretName": "db-creds"}}], "containers": [{"name": "a"}]}),
            json!({"volumes": [{"name": "c", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "db-creds"}}}], "containers": [{"name": "a"}]}),
            json!({"volumes": [{"name": "portcullis-cred-db", "emptyDir": {}}], "containers": [{"name": "a"}]}),
            json!({"volumes": [{"name": "h", "hostPath": {"path": "/var/lib"}}], "containers": [{"name": "a"}]}),
            json!({"volumes": [{"name": "h", "hostPath": {"path": "/opt/cni/bin"}}], "containers": [{"name": "a"}]}),
            json!({"hostAliases": [{"ip": "127.0.0.2", "hostnames": ["db"]}], "containers": [{"name": "a"}]}),
            json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["127.0.0.1"]}, "containers": [{"name": "a"}]}),
            json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}, "containers": [{"name": "a"}]}),
            json!({"shareProcessNamespace": true, "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}, "containers": [{"name": "a"}]}),
            json!({"hostPID": true, "containers": [{"name": "a"}]}),
            json!({"shareProcessNamespace": true, "containers": [{"name": "a"}]}),
            json!({"containers": [{"name": "a", "securityContext": {"runAsUser": 65532}}]}),
            json!({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}]}),
            json!({"containers": [{"name": "a"}], "ephemeralContainers": [{"name": "d", "targetContainerName": "portcullis-sidecar"}]}),
            json!({"serviceAccountName": "agent", "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}], "containers": [{"name": "a"}]}),
        ];
        for case in cases {
            assert!(check(&spec(case.clone()), None, &p).is_err(), "{case}");
        }
        let fine = spec(
            json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 1000}, "dnsPolicy": "ClusterFirst",
            "volumes": [{"name": "h", "emptyDir": {}}, {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
            "serviceAccountName": "batch", "containers": [{"name": "a"}]}),
        );
        assert_eq!(check(&fine, None, &p), Ok(()));
    }

    #[test]
    fn sidecar_changes_are_named() {
        let old: Container = serde_json::from_value(
            json!({"name": SIDECAR_NAME, "image": "a", "restartPolicy": "Always"}),
        )
        .expect("c");
        let mut new = old.clone();
        new.image = Some("evil".to_owned());
        assert_eq!(
            sidecar_unchanged(&old, Some(&new)),
            Err(Violation::SidecarChanged("image".to_owned()))
        );
        assert_eq!(sidecar_unchanged(&old, Some(&old)), Ok(()));
    }
}
