//! Just-in-time approval against the API server: find a live grant, create an AccessRequest,
//! wait for its decision, count the uses of a grant.
//!
//! The sidecar trusts only what admission stamped: a decision counts when it carries
//! `decidedBy` (set by the operator's mutating webhook from the authenticated user) and that
//! user is not the requester. Everything else (no decision before the timeout, an API server
//! that cannot be reached, a request deleted while waiting) refuses the held statement.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Client, Config, ResourceExt};
use portcullis_crds::audit::Identity;
use portcullis_crds::gateway_policy::GrantScope;
use portcullis_crds::{
    AccessRequest, AccessRequestPhase, AccessRequestSpec, Operation, OperationKind, Requester,
    Verdict,
};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Label with the fingerprint of the held statement.
pub const LABEL_FINGERPRINT: &str = "portcullis.dev/fingerprint";
/// Label with the ProtectedResource name.
pub const LABEL_RESOURCE: &str = "portcullis.dev/resource";
/// Label with the requesting service account's name.
pub const LABEL_REQUESTER: &str = "portcullis.dev/requester";
/// Label with the sidecar session that asked.
pub const LABEL_SESSION: &str = "portcullis.dev/session";

/// How the sidecar reaches the API server to request approvals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KubeAccess {
    /// No API server (standalone mode): statements that require approval are refused.
    #[default]
    Off,
    /// The pod's in-cluster configuration (service-account token mounted into the sidecar).
    InCluster,
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
}

/// Why an approval could not be requested or followed.
#[derive(Debug, Error)]
pub enum ApprovalError {
    /// The client configuration could not be loaded.
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// The request disappeared before it was decided.
    #[error("AccessRequest {0} was deleted before a decision")]
    Deleted(String),
    /// The sidecar is stopping; held statements are not run.
    #[error("the sidecar is shutting down")]
    ShuttingDown,
}

/// The approval service of one sidecar.
pub struct Approvals {
    client: Client,
    namespace: String,
    closing: tokio::sync::watch::Sender<bool>,
    held: std::sync::atomic::AtomicUsize,
}

/// Counts a statement as held while it lives (see [`Approvals::holding`]).
pub struct HeldGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What identifies a grant that may cover a statement.
#[derive(Clone, Debug)]
pub struct GrantKey {
    /// ProtectedResource name.
    pub resource: String,
    /// Requester service account, `system:serviceaccount:NS:NAME`.
    pub service_account: String,
    /// Policy of the guardrail.
    pub policy: String,
    /// The guardrail.
    pub rule: String,
    /// Fingerprint of the statement.
    pub fingerprint: String,
    /// What an approval covers.
    pub scope: GrantScope,
    /// The sidecar session.
    pub session: String,
    /// Seconds an approval holds (the policy's grant duration).
    pub grant_seconds: u64,
}

/// A live approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// AccessRequest name.
    pub name: String,
    /// Who approved.
    pub decided_by: String,
    /// The approver's reason.
    pub reason: String,
    /// When the grant runs out.
    pub expires_at: Timestamp,
}

/// How a held statement was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Approved.
    Approved(Grant),
    /// Denied.
    Denied {
        /// Who denied.
        decided_by: String,
        /// Why.
        reason: String,
    },
    /// No decision in time (locally, or the operator expired the request).
    TimedOut,
}

/// A new request.
#[derive(Clone, Debug)]
pub struct Ask {
    /// The grant the request asks for.
    pub key: GrantKey,
    /// Who asks.
    pub requester: Requester,
    /// The statement with placeholders.
    pub statement: String,
    /// What the client said it needs this for.
    pub justification: Option<String>,
    /// For an exec: the command vector and the target `NAMESPACE/POD[/CONTAINER]`.
    pub exec: Option<(Vec<String>, String)>,
}

/// A label value for `s`: itself when it is a valid label value, otherwise a digest.
pub fn label_value(s: &str) -> String {
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        s.to_owned()
    } else {
        let digest = hex::encode(Sha256::digest(s.as_bytes()));
        format!("h-{}", &digest[..32])
    }
}

fn short_name(service_account: &str) -> &str {
    service_account
        .rsplit(':')
        .next()
        .unwrap_or(service_account)
}

fn seconds(s: u64) -> SignedDuration {
    SignedDuration::from_secs(i64::try_from(s).unwrap_or(i64::MAX))
}

/// The grant a request carries at `now`, if it is approved, stamped by admission, not decided
/// by the requester, and not run out.
pub fn live_grant(ar: &AccessRequest, grant_seconds: u64, now: Timestamp) -> Option<Grant> {
    let decision = ar.spec.decision.as_ref()?;
    if decision.verdict != Verdict::Approved {
        return None;
    }
    let decided_by = decision.decided_by.as_deref().filter(|d| !d.is_empty())?;
    if decided_by == ar.spec.requester.service_account
        || ar.spec.requester.user.as_deref() == Some(decided_by)
    {
        return None;
    }
    let status = ar.status.clone().unwrap_or_default();
    let expires_at = match status.phase {
        AccessRequestPhase::Denied | AccessRequestPhase::Expired => return None,
        AccessRequestPhase::Approved => status.expires_at.map(|t| t.0)?,
        // Decided but not yet seen by the operator: the grant runs from the decision.
        AccessRequestPhase::Pending => {
            let asked = ar
                .spec
                .requested_duration
                .map(|d| Duration::from(d).as_secs())
                .unwrap_or(grant_seconds);
            decision.decided_at.as_ref()?.0 + seconds(asked.min(grant_seconds))
        }
    };
    (now < expires_at).then(|| Grant {
        name: ar.name_any(),
        decided_by: decided_by.to_owned(),
        reason: decision.reason.clone(),
        expires_at,
    })
}

/// Whether `ar` is the kind of request that may cover `key`.
fn covers(ar: &AccessRequest, key: &GrantKey) -> bool {
    let spec = &ar.spec;
    let same_requester =
        spec.requester.service_account == key.service_account && spec.resource == key.resource;
    match key.scope {
        GrantScope::Statement => {
            same_requester
                && spec.policy == key.policy
                && spec.rule == key.rule
                && spec.operation.kind == OperationKind::Sql
                && spec.operation.fingerprint == key.fingerprint
        }
        GrantScope::Session => {
            same_requester
                && spec.policy == key.policy
                && ar.labels().get(LABEL_SESSION) == Some(&label_value(&key.session))
        }
    }
}

impl Approvals {
    /// Connect according to `access`; `None` in standalone mode.
    pub async fn connect(
        access: &KubeAccess,
        namespace: &str,
    ) -> Result<Option<Approvals>, ApprovalError> {
        let config = match access {
            KubeAccess::Off => return Ok(None),
            KubeAccess::InCluster => {
                Config::incluster().map_err(|e| ApprovalError::Config(e.to_string()))?
            }
            KubeAccess::Kubeconfig(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    ApprovalError::Config(format!("cannot read {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| ApprovalError::Config(e.to_string()))?
            }
        };
        let client = Client::try_from(config).map_err(|e| ApprovalError::Config(e.to_string()))?;
        Ok(Some(Approvals {
            client,
            namespace: namespace.to_owned(),
            closing: tokio::sync::watch::Sender::new(false),
            held: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// Count a statement as held until the guard is dropped: [`Approvals::close`] waits for
    /// it, so that its session can tell the client before the sidecar stops.
    pub fn holding(&self) -> HeldGuard<'_> {
        self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HeldGuard(&self.held)
    }

    /// Stop waiting: every held statement ends with [`ApprovalError::ShuttingDown`]. Returns
    /// once no statement is held any more, or after `grace`.
    pub async fn close(&self, grace: Duration) {
        self.closing.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.held.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Namespace the requests live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn api(&self) -> Api<AccessRequest> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A live grant that covers `key`, the one that runs longest.
    pub async fn find_grant(&self, key: &GrantKey) -> Result<Option<Grant>, ApprovalError> {
        let mut selector = format!(
            "{LABEL_RESOURCE}={},{LABEL_REQUESTER}={}",
            label_value(&key.resource),
            label_value(short_name(&key.service_account))
        );
        match key.scope {
            GrantScope::Statement => selector.push_str(&format!(
                ",{LABEL_FINGERPRINT}={}",
                label_value(&key.fingerprint)
            )),
            GrantScope::Session => {
                selector.push_str(&format!(",{LABEL_SESSION}={}", label_value(&key.session)))
            }
        }
        let list = self
            .api()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| ApprovalError::Api {
                what: "cannot list AccessRequests".into(),
                source,
            })?;
        let now = Timestamp::now();
        Ok(list
            .items
            .iter()
            .filter(|ar| covers(ar, key))
            .filter_map(|ar| live_grant(ar, key.grant_seconds, now))
            .max_by_key(|g| g.expires_at))
    }

    /// Create the AccessRequest; returns its name.
    pub async fn request(&self, ask: &Ask) -> Result<String, ApprovalError> {
        let labels = BTreeMap::from([
            (
                LABEL_FINGERPRINT.to_owned(),
                label_value(&ask.key.fingerprint),
            ),
            (LABEL_RESOURCE.to_owned(), label_value(&ask.key.resource)),
            (
                LABEL_REQUESTER.to_owned(),
                label_value(short_name(&ask.key.service_account)),
            ),
            (LABEL_SESSION.to_owned(), label_value(&ask.key.session)),
        ]);
        let prefix: String = short_name(&ask.key.service_account)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect::<String>()
            .to_ascii_lowercase();
        let prefix = prefix.trim_matches('-');
        let justification = ask
            .justification
            .as_ref()
            .map(|j| j.chars().take(1024).collect::<String>());
        let ar = AccessRequest {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}-",
                    if prefix.is_empty() { "request" } else { prefix }
                )),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: AccessRequestSpec {
                requester: ask.requester.clone(),
                resource: ask.key.resource.clone(),
                policy: ask.key.policy.clone(),
                rule: ask.key.rule.clone(),
                operation: match &ask.exec {
                    None => Operation {
                        kind: OperationKind::Sql,
                        statement: Some(ask.statement.clone()),
                        fingerprint: ask.key.fingerprint.clone(),
                        command: Vec::new(),
                        target: None,
                    },
                    Some((command, target)) => Operation {
                        kind: OperationKind::Exec,
                        statement: None,
                        fingerprint: ask.key.fingerprint.clone(),
                        command: command.clone(),
                        target: Some(target.clone()),
                    },
                },
                justification,
                requested_duration: Some(Duration::from_secs(ask.key.grant_seconds).into()),
                decision: None,
            },
            status: None,
        };
        let created = self
            .api()
            .create(&PostParams::default(), &ar)
            .await
            .map_err(|source| ApprovalError::Api {
                what: "cannot create an AccessRequest".into(),
                source,
            })?;
        Ok(created.name_any())
    }

    /// Wait up to `timeout` for a decision on `name`.
    pub async fn wait(
        &self,
        name: &str,
        timeout: Duration,
        grant_seconds: u64,
    ) -> Result<Outcome, ApprovalError> {
        let settled = |o: Option<&AccessRequest>| match o {
            None => true,
            Some(ar) => {
                ar.spec.decision.is_some()
                    || ar
                        .status
                        .as_ref()
                        .is_some_and(|s| s.phase == AccessRequestPhase::Expired)
            }
        };
        let mut closing = self.closing.subscribe();
        let decided = tokio::time::timeout(timeout, await_condition(self.api(), name, settled));
        let found = tokio::select! {
            r = decided => r,
            _ = closing.wait_for(|c| *c) => return Err(ApprovalError::ShuttingDown),
        };
        let found = match found {
            Err(_) => return Ok(Outcome::TimedOut),
            Ok(Err(e)) => {
                return Err(ApprovalError::Config(format!(
                    "watching AccessRequest {name}: {e}"
                )))
            }
            Ok(Ok(found)) => found,
        };
        let Some(ar) = found else {
            return Err(ApprovalError::Deleted(name.to_owned()));
        };
        let Some(decision) = ar.spec.decision.as_ref() else {
            return Ok(Outcome::TimedOut);
        };
        let decided_by = decision.decided_by.clone().unwrap_or_default();
        match decision.verdict {
            Verdict::Denied => Ok(Outcome::Denied {
                decided_by,
                reason: decision.reason.clone(),
            }),
            Verdict::Approved => match live_grant(&ar, grant_seconds, Timestamp::now()) {
                Some(g) => Ok(Outcome::Approved(g)),
                // Approved but unstamped, by the requester, or already run out: not a grant.
                None => Ok(Outcome::Denied {
                    decided_by,
                    reason:
                        "the approval is not valid (unstamped, self-approved or already expired)"
                            .into(),
                }),
            },
        }
    }

    /// Count one use of a grant in its status (best effort, in the background).
    pub fn count_use(&self, name: &str) {
        let api = self.api();
        let name = name.to_owned();
        tokio::spawn(async move {
            for _ in 0..5 {
                let ar = match api.get_status(&name).await {
                    Ok(ar) => ar,
                    Err(e) => {
                        tracing::warn!(request = %name, error = %e, "cannot read AccessRequest to count a use");
                        return;
                    }
                };
                let uses = ar.status.as_ref().map_or(0, |s| s.uses) + 1;
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": ar.resource_version()},
                    "status": {"uses": uses},
                });
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => {
                        tracing::warn!(request = %name, error = %e, "cannot count a use of AccessRequest");
                        return;
                    }
                }
            }
        });
    }
}

/// The justification of a `SET portcullis.justification = '...'` (or `TO`) statement, when
/// `sql` is exactly that.
pub fn justification_from_set(sql: &str) -> Option<String> {
    // Most statements are not a SET: look at the first word before running the pattern.
    let first = sql.trim_start().get(..3)?;
    if !first.eq_ignore_ascii_case("set") {
        return None;
    }
    static SET: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = SET
        .get_or_init(|| {
            regex::Regex::new(
                r"(?is)^\s*set\s+(?:session\s+)?portcullis\.justification\s*(?:=|\s+to\s+)\s*'((?:[^']|'')*)'\s*;?\s*$",
            )
            .ok()
        })
        .as_ref()?;
    let inner = re.captures(sql)?.get(1)?.as_str();
    Some(inner.replace("''", "'"))
}

/// The justification in start-up `options` (`-c portcullis.justification=...`, spaces
/// escaped with a backslash as libpq expects).
pub fn justification_from_options(options: &str) -> Option<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut found = None;
    let mut i = 0;
    while i < words.len() {
        let setting = match words[i].as_str() {
            "-c" => {
                i += 1;
                words.get(i).map(String::as_str)
            }
            w => w.strip_prefix("-c").or_else(|| w.strip_prefix("--")),
        };
        if let Some(v) = setting.and_then(|s| s.strip_prefix("portcullis.justification=")) {
            found = Some(v.to_owned());
        }
        i += 1;
    }
    found
}

/// The AccessRequest requester: the workload (`workload`, the pod's service account) and
/// the person or pipeline run behind the caller (`caller`), when it presented a token.
pub fn requester(
    workload: &Identity,
    caller: &Identity,
    fallback_namespace: Option<String>,
) -> Requester {
    let sa = workload;
    let namespace = sa
        .namespace
        .clone()
        .or(fallback_namespace)
        .unwrap_or_default();
    // The person or pipeline run behind the workload, when the client presented a token.
    let principal = caller.principal.as_ref();
    let user = principal
        .filter(|p| p.kind == "User")
        .map(|p| p.name.clone());
    let pipeline = principal.filter(|p| p.kind == "Pipeline").map(|p| {
        let claim = |k: &str| p.claims.get(k).cloned();
        let project = claim("repository").or_else(|| claim("project_path"));
        let git_ref = claim("ref");
        let run = claim("run_id").or_else(|| claim("pipeline_id"));
        match (project, git_ref, run) {
            (Some(project), Some(r), Some(run)) => format!("{project}@{r} run {run}"),
            (Some(project), Some(r), None) => format!("{project}@{r}"),
            _ => p.name.clone(),
        }
    });
    Requester {
        name: user
            .clone()
            .or_else(|| pipeline.clone())
            .unwrap_or_else(|| sa.name.clone()),
        service_account: format!("system:serviceaccount:{namespace}:{}", sa.name),
        pod: caller.pod.clone().or_else(|| sa.pod.clone()),
        user,
        groups: principal.map(|p| p.groups.clone()).unwrap_or_default(),
        pipeline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_justification_is_read() {
        assert_eq!(
            justification_from_set("SET portcullis.justification = 'ticket 42: fix address'"),
            Some("ticket 42: fix address".into())
        );
        assert_eq!(
            justification_from_set("set session portcullis.justification to 'it''s urgent';"),
            Some("it's urgent".into())
        );
        assert_eq!(
            justification_from_set("SET portcullis.justification = 'a'; DELETE FROM t"),
            None
        );
        assert_eq!(justification_from_set("SET search_path = 'x'"), None);
        assert_eq!(justification_from_set("SELECT 'SET'"), None);
    }

    #[test]
    fn options_justification_is_read() {
        assert_eq!(
            justification_from_options("-c portcullis.justification=ticket\\ 42 -c geqo=off"),
            Some("ticket 42".into())
        );
        assert_eq!(
            justification_from_options("--portcullis.justification=x"),
            Some("x".into())
        );
        assert_eq!(justification_from_options("-c geqo=off"), None);
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("shop-db"), "shop-db");
        let long = label_value(&"x".repeat(80));
        assert!(long.len() <= 63 && long.starts_with("h-"));
        assert!(label_value("a:b").starts_with("h-"));
    }

    fn request(phase: AccessRequestPhase, decided_by: Option<&str>) -> AccessRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "agent-x", "namespace": "agents"},
            "spec": {
                "requester": {"name": "agent", "serviceAccount": "system:serviceaccount:agents:agent"},
                "resource": "db", "policy": "p", "rule": "writes",
                "operation": {"kind": "sql", "statement": "DELETE FROM t WHERE id = ?", "fingerprint": "f"},
                "decision": {"verdict": "Approved", "reason": "ok", "decidedBy": decided_by,
                             "decidedAt": "2026-11-23T06:00:00Z"}
            },
            "status": {"phase": phase, "expiresAt": "2026-11-23T07:00:00Z"}
        }))
        .expect("request")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn key(scope: GrantScope, fingerprint: &str, session: &str) -> GrantKey {
        GrantKey {
            resource: "db".into(),
            service_account: "system:serviceaccount:agents:agent".into(),
            policy: "p".into(),
            rule: "writes".into(),
            fingerprint: fingerprint.into(),
            scope,
            session: session.into(),
            grant_seconds: 3600,
        }
    }

    #[test]
    fn a_grant_covers_its_fingerprint_or_its_session() {
        let mut ar = request(AccessRequestPhase::Approved, Some("bob"));
        ar.metadata.labels = Some(BTreeMap::from([(
            LABEL_SESSION.to_owned(),
            "s-1".to_owned(),
        )]));
        assert!(covers(&ar, &key(GrantScope::Statement, "f", "s-2")));
        assert!(!covers(&ar, &key(GrantScope::Statement, "g", "s-1")));
        assert!(covers(&ar, &key(GrantScope::Session, "g", "s-1")));
        assert!(!covers(&ar, &key(GrantScope::Session, "f", "s-2")));
        let mut other = key(GrantScope::Statement, "f", "s-1");
        other.service_account = "system:serviceaccount:agents:other".into();
        assert!(!covers(&ar, &other));
    }

    #[test]
    fn only_stamped_unexpired_approvals_by_others_are_grants() {
        let now = at("2026-11-23T06:30:00Z");
        let g = live_grant(
            &request(AccessRequestPhase::Approved, Some("bob")),
            3600,
            now,
        );
        assert_eq!(g.map(|g| g.expires_at), Some(at("2026-11-23T07:00:00Z")));
        // Before the operator saw the decision: from the decision time.
        let g = live_grant(&request(AccessRequestPhase::Pending, Some("bob")), 600, now);
        assert_eq!(g, None);
        let g = live_grant(
            &request(AccessRequestPhase::Pending, Some("bob")),
            3600,
            now,
        );
        assert!(g.is_some());
        for ar in [
            request(AccessRequestPhase::Approved, None),
            request(
                AccessRequestPhase::Approved,
                Some("system:serviceaccount:agents:agent"),
            ),
            request(AccessRequestPhase::Expired, Some("bob")),
        ] {
            assert_eq!(live_grant(&ar, 3600, now), None);
        }
        assert_eq!(
            live_grant(
                &request(AccessRequestPhase::Approved, Some("bob")),
                3600,
                at("2026-11-23T07:00:00Z")
            ),
            None
        );
    }
}
