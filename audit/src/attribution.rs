//! Attribution from authentication: every record is filed under the workload its token proves,
//! never under what the record says.
//!
//! - The workload identity of a record (service account, namespace, pod, pod UID) is filled
//!   from the TokenReview of the pod-bound token; a record that states another one is refused.
//!   The identity kind is always `ServiceAccount`: a record cannot name a `User` as the
//!   workload.
//! - The resource is a ProtectedResource name (a DNS subdomain); views show it in the sender's
//!   namespace, so a record cannot be filed under another namespace's resource.
//! - A person or pipeline run (`identity.principal`) is accepted only from a pod the injection
//!   webhook gave a Portcullis sidecar, and only where the injection's guarantees hold: the
//!   pod's namespace carries the labels the webhook selects on (`portcullis.dev/inject:
//!   enabled` and the configured extra labels, not an excluded namespace), where the pod guard
//!   refuses imitation sidecars and the token policy refuses minted tokens; the pod (read from
//!   the API server for the token's pod UID) carries the `portcullis.dev/injected` label and
//!   the `portcullis-sidecar` init container as injection builds it (`restartPolicy: Always`).
//!   The marks alone prove nothing: anyone who creates pods chooses them.
//!   A principal is accepted only as the principal of that sidecar's own session: the first record of a session
//!   fixes its principal (or its absence), and a later record of the same session naming
//!   another is refused.
//! - A `recording` record is accepted only once the same pod has uploaded that recording.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::Client;
use portcullis_crds::audit::{AuditEvent, AuditRecord, Principal};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::auth::Source;

/// Pod label the injection webhook sets on pods it gave a sidecar.
pub const INJECTED_LABEL: &str = "portcullis.dev/injected";
/// Name of the injected sidecar (an init container with `restartPolicy: Always`).
pub const SIDECAR_CONTAINER: &str = "portcullis-sidecar";
/// Namespace label by which a namespace opts in to injection (what the webhook selects on).
pub const INJECT_LABEL: &str = "portcullis.dev/inject";
/// Its value.
pub const INJECT_ENABLED: &str = "enabled";
const POD_CACHE_FOR: Duration = Duration::from_secs(300);

/// Why a record was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AttributionError {
    /// The record states a workload other than the token's.
    #[error("record claims {field} {claimed} but the token proves {proven}")]
    Workload {
        /// Which field.
        field: &'static str,
        /// What the record says.
        claimed: String,
        /// What the token proves.
        proven: String,
    },
    /// The resource is not a ProtectedResource name.
    #[error("record names resource '{0}', which is not a ProtectedResource name")]
    Resource(String),
    /// A principal from a pod without a Portcullis sidecar.
    #[error("record names the principal {principal} but pod {pod} has no Portcullis sidecar the injection guarantees ({reason}): only a sidecar may name a person")]
    PrincipalNotFromSidecar {
        /// The principal's name.
        principal: String,
        /// The sending pod.
        pod: String,
        /// Why its sidecar is not trusted.
        reason: String,
    },
    /// A principal other than the one the session started with.
    #[error("record names the principal {principal} in session {session}, which began as {began}")]
    PrincipalChanged {
        /// The principal's name (or `none`).
        principal: String,
        /// The session.
        session: String,
        /// What the session's first record said.
        began: String,
    },
    /// The sending pod could not be looked up.
    #[error("could not read the sending pod: {0}")]
    PodLookup(String),
    /// A recording record before that pod uploaded the recording.
    #[error("record names recording {0} which this pod has not uploaded: upload it first")]
    RecordingNotUploaded(String),
}

impl AttributionError {
    /// Whether sending the record again later may succeed (the recording or the pod lookup).
    pub fn retry_later(&self) -> bool {
        matches!(
            self,
            AttributionError::RecordingNotUploaded(_) | AttributionError::PodLookup(_)
        )
    }
}

/// Fill the record's workload identity from the authenticated `source`, refusing a record
/// that states another one, a workload kind other than `ServiceAccount`, or a resource that is
/// not a ProtectedResource name.
pub fn bind_workload(record: &mut AuditRecord, source: &Source) -> Result<(), AttributionError> {
    let id = &mut record.identity;
    let differ = |field: &'static str, claimed: &str, proven: &str| AttributionError::Workload {
        field,
        claimed: claimed.to_owned(),
        proven: proven.to_owned(),
    };
    if id.kind != "ServiceAccount" {
        return Err(differ("identity kind", &id.kind, "ServiceAccount"));
    }
    if id.name != source.service_account {
        return Err(differ("service account", &id.name, &source.service_account));
    }
    check_fill(&mut id.namespace, Some(&source.namespace), "namespace")?;
    check_fill(&mut id.pod, source.pod.as_ref(), "pod")?;
    check_fill(&mut id.pod_uid, source.pod_uid.as_ref(), "pod UID")?;
    if !is_resource_name(&record.resource) {
        return Err(AttributionError::Resource(record.resource.clone()));
    }
    Ok(())
}

fn check_fill(
    stated: &mut Option<String>,
    proven: Option<&String>,
    field: &'static str,
) -> Result<(), AttributionError> {
    match (stated.as_ref(), proven) {
        (Some(s), Some(p)) if s != p => Err(AttributionError::Workload {
            field,
            claimed: s.clone(),
            proven: p.clone(),
        }),
        (Some(s), None) => Err(AttributionError::Workload {
            field,
            claimed: s.clone(),
            proven: "(none)".into(),
        }),
        _ => {
            *stated = proven.cloned();
            Ok(())
        }
    }
}

/// Whether `s` is a Kubernetes object name (DNS subdomain, RFC 1123).
pub fn is_resource_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The recording a record names, if it is a `recording` record.
pub fn recording_of(record: &AuditRecord) -> Option<&str> {
    match &record.event {
        AuditEvent::Recording(r) => Some(&r.sha256),
        _ => None,
    }
}

type Digest32 = [u8; 32];

/// A session of a pod: (pod UID, session id).
type SessionKey = (String, String);
/// What a session began with: its principal's digest (or none) and its name for messages.
type SessionStart = (Option<Digest32>, String);

fn principal_digest(p: Option<&Principal>) -> Option<Digest32> {
    p.map(|p| {
        let mut h = Sha256::new();
        for part in [&p.kind, &p.issuer, &p.subject, &p.name] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    })
}

fn principal_name(p: Option<&Principal>) -> String {
    p.map_or_else(|| "none".to_owned(), |p| format!("{} {}", p.kind, p.name))
}

/// The namespaces where injection's guarantees hold: those the injection webhook selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InjectionScope {
    /// Labels every selected namespace carries besides `portcullis.dev/inject: enabled` (the
    /// chart's `webhook.namespaceLabels`).
    pub namespace_labels: BTreeMap<String, String>,
    /// Namespaces the webhook never sees (the release namespace, `webhook.excludedNamespaces`).
    pub excluded_namespaces: Vec<String>,
}

impl InjectionScope {
    /// Why a namespace (its name and labels) is outside the scope, if it is.
    pub fn outside(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<String> {
        if self.excluded_namespaces.iter().any(|n| n == name) {
            return Some(format!("namespace {name} is excluded from injection"));
        }
        std::iter::once((INJECT_LABEL, INJECT_ENABLED))
            .chain(
                self.namespace_labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .find(|(k, v)| labels.get(*k).map(String::as_str) != Some(*v))
            .map(|(k, v)| {
                format!("namespace {name} is not labelled {k}={v}, so no injection webhook guards its pods")
            })
    }
}

/// Why a pod's own marks (as injection builds them) are missing, if they are.
fn sidecar_marks_missing(pod: &Pod) -> Option<&'static str> {
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECTED_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled {
        return Some("no portcullis.dev/injected label");
    }
    let sidecar = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == SIDECAR_CONTAINER));
    match sidecar {
        None => Some("no portcullis-sidecar init container"),
        Some(c) if c.restart_policy.as_deref() != Some("Always") => {
            Some("the portcullis-sidecar init container is not a sidecar (restartPolicy Always)")
        }
        Some(_) => None,
    }
}

/// What is known about senders: which pods carry a sidecar, and the principal each session
/// began with.
pub struct Attributor {
    client: Option<Client>,
    scope: RwLock<InjectionScope>,
    sidecar_pods: Mutex<HashMap<String, (Option<String>, Instant)>>,
    sessions: Mutex<HashMap<SessionKey, SessionStart>>,
}

impl Attributor {
    /// An attributor that reads pods with `client` (without one, no pod is a sidecar's and
    /// every principal is refused).
    pub fn new(client: Option<Client>) -> Self {
        Self {
            client,
            scope: RwLock::new(InjectionScope::default()),
            sidecar_pods: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Trust sidecars only in the namespaces `scope` selects.
    pub fn set_scope(&self, scope: InjectionScope) {
        match self.scope.write() {
            Ok(mut s) => *s = scope,
            Err(p) => *p.into_inner() = scope,
        }
        if let Ok(mut cache) = self.sidecar_pods.lock() {
            cache.clear();
        }
    }

    /// Remember the principal a stored entry's session carries (used to rebuild the sessions
    /// from the log on start).
    pub fn remember(&self, pod_uid: &str, record: &AuditRecord) {
        if let Ok(mut s) = self.sessions.lock() {
            s.entry((pod_uid.to_owned(), record.session_id.clone()))
                .or_insert_with(|| {
                    (
                        principal_digest(record.identity.principal.as_ref()),
                        principal_name(record.identity.principal.as_ref()),
                    )
                });
        }
    }

    /// Check the principal of a record sent by `source` (whose pod UID is `pod_uid`): allowed
    /// only from a sidecar's pod and only as its session's principal. The session is
    /// remembered when the record is the first of its session.
    pub async fn check_principal(
        &self,
        source: &Source,
        pod_uid: &str,
        record: &AuditRecord,
    ) -> Result<(), AttributionError> {
        let principal = record.identity.principal.as_ref();
        if let Some(p) = principal {
            if let Some(reason) = self.not_sidecar_pod(source, pod_uid).await? {
                return Err(AttributionError::PrincipalNotFromSidecar {
                    principal: format!("{} {}", p.kind, p.name),
                    pod: source.pod.clone().unwrap_or_else(|| pod_uid.to_owned()),
                    reason,
                });
            }
        }
        let digest = principal_digest(principal);
        let Ok(mut sessions) = self.sessions.lock() else {
            return Err(AttributionError::PodLookup("session table poisoned".into()));
        };
        let key = (pod_uid.to_owned(), record.session_id.clone());
        match sessions.get(&key) {
            Some((began, name)) if *began != digest => Err(AttributionError::PrincipalChanged {
                principal: principal_name(principal),
                session: record.session_id.clone(),
                began: name.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                sessions.insert(key, (digest, principal_name(principal)));
                Ok(())
            }
        }
    }

    /// Why the sending pod is not trusted as a sidecar's (`None`: it is).
    async fn not_sidecar_pod(
        &self,
        source: &Source,
        pod_uid: &str,
    ) -> Result<Option<String>, AttributionError> {
        if let Ok(cache) = self.sidecar_pods.lock() {
            if let Some((why, at)) = cache.get(pod_uid) {
                if at.elapsed() < POD_CACHE_FOR {
                    return Ok(why.clone());
                }
            }
        }
        let (Some(client), Some(pod)) = (&self.client, &source.pod) else {
            return Ok(Some("no pod to read".into()));
        };
        let lookup = |e: kube::Error| AttributionError::PodLookup(e.to_string());
        let namespace = Api::<Namespace>::all(client.clone())
            .get_opt(&source.namespace)
            .await
            .map_err(lookup)?;
        let scope = self
            .scope
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let why = match namespace {
            None => Some(format!("namespace {} not found", source.namespace)),
            Some(n) => scope.outside(
                &source.namespace,
                n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
            ),
        };
        let why = match why {
            Some(why) => Some(why),
            None => {
                let found = Api::<Pod>::namespaced(client.clone(), &source.namespace)
                    .get_opt(pod)
                    .await
                    .map_err(lookup)?;
                match found {
                    None => Some(format!("pod {pod} not found")),
                    Some(p) if p.metadata.uid.as_deref() != Some(pod_uid) => {
                        Some(format!("pod {pod} is not the token's pod"))
                    }
                    Some(p) => sidecar_marks_missing(&p).map(str::to_owned),
                }
            }
        };
        if let Ok(mut cache) = self.sidecar_pods.lock() {
            cache.retain(|_, (_, at)| at.elapsed() < POD_CACHE_FOR);
            cache.insert(pod_uid.to_owned(), (why.clone(), Instant::now()));
        }
        Ok(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_are_trusted_only_where_the_webhook_guards_the_namespace() {
        let labels = |l: &[(&str, &str)]| -> BTreeMap<String, String> {
            l.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let scope = InjectionScope {
            namespace_labels: labels(&[("team", "agents")]),
            excluded_namespaces: vec!["portcullis-system".into()],
        };
        let guarded = labels(&[(INJECT_LABEL, INJECT_ENABLED), ("team", "agents")]);
        assert_eq!(scope.outside("a", &guarded), None);
        assert!(scope.outside("portcullis-system", &guarded).is_some());
        assert!(scope
            .outside("a", &labels(&[(INJECT_LABEL, INJECT_ENABLED)]))
            .is_some_and(|m| m.contains("team=agents")));
        assert!(scope
            .outside("a", &labels(&[("team", "agents")]))
            .is_some_and(|m| m.contains("portcullis.dev/inject=enabled")));
        assert!(InjectionScope::default()
            .outside("a", &BTreeMap::new())
            .is_some());
    }
    use portcullis_crds::audit::Identity;

    fn source() -> Source {
        Source {
            user: "system:serviceaccount:team-a:agent".into(),
            namespace: "team-a".into(),
            service_account: "agent".into(),
            pod: Some("agent-0".into()),
            pod_uid: Some("uid-1".into()),
        }
    }

    fn record(identity: Identity, resource: &str) -> AuditRecord {
        serde_json::from_value(serde_json::json!({
            "version": "portcullis.dev/audit/v1alpha1", "seq": 1, "time": "2026-01-01T00:00:00Z",
            "sessionId": "s", "identity": identity, "resource": resource,
            "event": {"type": "sessionEnd", "statements": 0, "reason": "x"}
        }))
        .expect("record")
    }

    fn sa(name: &str) -> Identity {
        Identity {
            kind: "ServiceAccount".into(),
            name: name.into(),
            ..Identity::default()
        }
    }

    #[test]
    fn the_workload_comes_from_the_token() {
        let mut r = record(sa("agent"), "customers-db");
        bind_workload(&mut r, &source()).expect("bound");
        assert_eq!(r.identity.namespace.as_deref(), Some("team-a"));
        assert_eq!(r.identity.pod.as_deref(), Some("agent-0"));
        assert_eq!(r.identity.pod_uid.as_deref(), Some("uid-1"));

        let cases: Vec<(Identity, &str)> = vec![
            (sa("approver"), "service account"),
            (
                Identity {
                    kind: "User".into(),
                    ..sa("agent")
                },
                "identity kind",
            ),
            (
                Identity {
                    namespace: Some("team-b".into()),
                    ..sa("agent")
                },
                "namespace",
            ),
            (
                Identity {
                    pod: Some("agent-1".into()),
                    ..sa("agent")
                },
                "pod",
            ),
            (
                Identity {
                    pod_uid: Some("uid-2".into()),
                    ..sa("agent")
                },
                "pod UID",
            ),
        ];
        for (identity, field) in cases {
            let err = bind_workload(&mut record(identity, "db"), &source()).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
        }
        for bad in ["", "team-b/db", "DB", "-db", &"a".repeat(254)] {
            assert!(matches!(
                bind_workload(&mut record(sa("agent"), bad), &source()),
                Err(AttributionError::Resource(_))
            ));
        }
    }

    #[tokio::test]
    async fn principals_need_a_sidecar_and_stay_with_their_session() {
        let a = Attributor::new(None);
        let plain = record(sa("agent"), "db");
        a.check_principal(&source(), "uid-1", &plain)
            .await
            .expect("no principal");
        let mut person = plain.clone();
        person.identity.principal = Some(Principal {
            kind: "User".into(),
            issuer: "https://sso".into(),
            subject: "1".into(),
            name: "alice".into(),
            ..Principal::default()
        });
        let err = a
            .check_principal(&source(), "uid-1", &person)
            .await
            .expect_err("not a sidecar's pod");
        assert!(matches!(
            err,
            AttributionError::PrincipalNotFromSidecar { .. }
        ));
        // A session that began without a principal cannot gain one.
        a.sidecar_pods
            .lock()
            .expect("lock")
            .insert("uid-1".into(), (None, Instant::now()));
        let err = a
            .check_principal(&source(), "uid-1", &person)
            .await
            .expect_err("session began without one");
        assert!(matches!(err, AttributionError::PrincipalChanged { .. }));
        person.session_id = "s2".into();
        a.check_principal(&source(), "uid-1", &person)
            .await
            .expect("its own session");
    }
}
