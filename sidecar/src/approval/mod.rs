//! Just-in-time approval against the API server: find a live grant, create an AccessRequest
//! (or reuse the one already waiting for the same operation), wait for its decision.
//!
//! The sidecar trusts only what admission stamped and what it sealed itself:
//! - every request it creates carries a seal (HMAC-SHA256 over the spec, with a key that
//!   only the sidecar container holds: made on first start in the audit spool, an emptyDir no
//!   other container mounts, so a restarted sidecar keeps its grants); a request without
//!   this sidecar's seal is never a grant, whoever created or changed it;
//! - a decision counts when it carries `decidedBy` and `decidedAt` (set by the operator's
//!   mutating webhook from the authenticated user) and that user is not the requester;
//! - the grant ends at `decidedAt` plus the shorter of the requested and the policy's grant
//!   duration; status is never a reason to honour a grant, only (Denied, Expired) to stop;
//! - the session, guardrail and resource a grant covers are read from the sealed spec;
//!   labels only narrow the list call.
//!
//! Everything else (no decision before the timeout, an API server that cannot be reached, a
//! request deleted while waiting) refuses the held operation. Uses of a grant are audit
//! records; nothing is written to the request after it is created.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hmac::{Hmac, Mac};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Client, Config, ResourceExt};
use portcullis_crds::audit::Identity;
use portcullis_crds::display;
use portcullis_crds::gateway_policy::GrantScope;
use portcullis_crds::{
    AccessRequest, AccessRequestPhase, AccessRequestSpec, GrantCovers, Operation, OperationKind,
    Requester, Verdict,
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
    /// The request was changed so that it no longer carries this sidecar's seal.
    #[error("AccessRequest {0} does not carry this sidecar's seal: it is not honoured")]
    Unsealed(String),
    /// Too many requests of this requester wait for a decision.
    #[error("{0} AccessRequests of this requester already wait for a decision (approval.maxPending is {0}): wait for them to be decided or to time out")]
    TooManyPending(u32),
    /// The seal key cannot be read or kept.
    #[error("approval seal key: {0}")]
    SealKey(String),
    /// The spec could not be encoded for its seal.
    #[error("cannot encode the AccessRequest for its seal: {0}")]
    Encode(#[from] serde_json::Error),
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
    seal_key: Seal,
    /// One lock per requester scope (resource and service account): counting the waiting
    /// requests and creating a new one happen under it, so concurrent sessions of this process
    /// cannot each see room under `maxPending` and all create.
    creating: std::sync::Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// The key this sidecar seals its requests with.
#[derive(Clone)]
pub struct Seal([u8; 32]);

/// File name of the seal key in the audit spool directory.
pub const SEAL_KEY_FILE: &str = "approval-seal.key";

impl Seal {
    /// A new random key.
    pub fn new() -> Seal {
        Seal(rand::random())
    }

    /// The key kept in `dir` (the audit spool, an emptyDir that only the sidecar container
    /// mounts), made there on first use with mode 0600: a restarted sidecar container keeps
    /// honouring the grants it sealed before, and nothing outside the sidecar container reads
    /// or writes the key. A key file that is not exactly 32 bytes is refused, not replaced.
    pub fn load_or_create(dir: &std::path::Path) -> Result<Seal, ApprovalError> {
        use std::io::Write;
        let path = dir.join(SEAL_KEY_FILE);
        let io = |e: std::io::Error| ApprovalError::SealKey(format!("{}: {e}", path.display()));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    ApprovalError::SealKey(format!(
                        "{} holds {} bytes, not a 32-byte key: remove it to make a new key (grants sealed with the old one are then asked for again)",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                Ok(Seal(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seal = Seal::new();
                let tmp = dir.join(format!("{SEAL_KEY_FILE}.tmp"));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(&tmp).map_err(io)?;
                file.write_all(&seal.0).map_err(io)?;
                file.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                Ok(seal)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn mac(&self, spec: &AccessRequestSpec) -> Result<Hmac<Sha256>, ApprovalError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .map_err(|e| ApprovalError::Config(format!("seal key: {e}")))?;
        mac.update(&spec.sealed_bytes()?);
        Ok(mac)
    }

    /// The seal of `spec` (hex).
    pub fn seal(&self, spec: &AccessRequestSpec) -> Result<String, ApprovalError> {
        Ok(hex::encode(self.mac(spec)?.finalize().into_bytes()))
    }

    /// Whether `spec` carries this key's seal (compared in constant time).
    pub fn verifies(&self, spec: &AccessRequestSpec) -> bool {
        let Some(Ok(tag)) = spec.seal.as_deref().map(hex::decode) else {
            return false;
        };
        self.mac(spec).is_ok_and(|m| m.verify_slice(&tag).is_ok())
    }
}

impl Default for Seal {
    fn default() -> Self {
        Seal::new()
    }
}

/// Counts a statement as held while it lives (see [`Approvals::holding`]).
pub struct HeldGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What identifies a grant that may cover an operation.
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
    /// Grant fingerprint of the operation ([`Operation::grant_fingerprint`]).
    pub fingerprint: String,
    /// What an approval covers.
    pub scope: GrantScope,
    /// The sidecar session.
    pub session: String,
    /// Seconds an approval holds (the policy's grant duration).
    pub grant_seconds: u64,
    /// Distinct approvers a grant needs (the policy's `requiredApprovals`).
    pub required_approvals: u32,
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
    /// The operation as shown to the approver (see [`sql_operation`], [`exec_operation`]).
    pub operation: Operation,
    /// What the client said it needs this for.
    pub justification: Option<String>,
    /// Seconds the request waits for a decision (the policy's timeout).
    pub timeout_seconds: u64,
    /// Undecided requests allowed per requester.
    pub max_pending: u32,
}

/// A statement operation as shown to the approver, with its grant fingerprint.
pub fn sql_operation(statement: String, covers: GrantCovers) -> Operation {
    let mut op = Operation {
        kind: OperationKind::Sql,
        statement: Some(statement),
        covers,
        fingerprint: String::new(),
        command: Vec::new(),
        target: None,
        runs: Vec::new(),
        bound_values: Vec::new(),
    };
    op.fingerprint = op.grant_fingerprint();
    op
}

/// A use of prepared statements as shown to the approver: the client's `statement`, the
/// definitions it runs and the values bound to them, each in its own field (see
/// [`Operation::runs`]), with its grant fingerprint.
pub fn sql_use_operation(
    statement: String,
    runs: Vec<String>,
    bound_values: Vec<String>,
    covers: GrantCovers,
) -> Operation {
    let mut op = sql_operation(statement, covers);
    op.runs = runs;
    op.bound_values = bound_values;
    op.fingerprint = op.grant_fingerprint();
    op
}

/// An exec operation as shown to the approver, with its grant fingerprint: the command
/// vector as it runs (`covers: values`) or its shape (`covers: shape`, see
/// [`crate::shell::shape`]).
pub fn exec_operation(command: Vec<String>, target: String, covers: GrantCovers) -> Operation {
    let mut op = Operation {
        kind: OperationKind::Exec,
        statement: None,
        covers,
        fingerprint: String::new(),
        command,
        target: Some(target),
        runs: Vec::new(),
        bound_values: Vec::new(),
    };
    op.fingerprint = op.grant_fingerprint();
    op
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
/// by the requester, approved by at least `required` distinct users other than the requester
/// (and as many as the sealed spec asks), and not run out. The end is computed from the
/// stamped decision time and the spec's requested duration, capped by `grant_seconds`;
/// status only ends a grant early (Denied, Expired), it never makes one.
pub fn live_grant(
    ar: &AccessRequest,
    grant_seconds: u64,
    required: u32,
    now: Timestamp,
) -> Option<Grant> {
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
    let approvers = ar.spec.approvers();
    let needed = required.max(ar.spec.required_approvals).max(1);
    if approvers.len() < usize::try_from(needed).unwrap_or(usize::MAX) {
        return None;
    }
    let decided_by = approvers.join(", ");
    let decided_by = decided_by.as_str();
    let phase = ar.status.as_ref().map(|s| s.phase);
    if matches!(
        phase,
        Some(AccessRequestPhase::Denied | AccessRequestPhase::Expired)
    ) {
        return None;
    }
    let asked = ar
        .spec
        .requested_duration
        .map(|d| Duration::from(d).as_secs())
        .unwrap_or(grant_seconds);
    let expires_at = decision.decided_at.as_ref()?.0 + seconds(asked.min(grant_seconds));
    (now < expires_at).then(|| Grant {
        name: ar.name_any(),
        decided_by: decided_by.to_owned(),
        reason: decision.reason.clone(),
        expires_at,
    })
}

/// Whether `ar` asks for what `key` needs: the same requester, resource, policy and guardrail,
/// and the same operation (statement scope) or the same session (session scope), all read
/// from the spec.
fn covers(ar: &AccessRequest, key: &GrantKey) -> bool {
    let spec = &ar.spec;
    let same = spec.requester.service_account == key.service_account
        && spec.resource == key.resource
        && spec.policy == key.policy
        && spec.rule == key.rule
        && spec.scope.unwrap_or_default() == key.scope;
    same && match key.scope {
        GrantScope::Statement => {
            spec.operation.fingerprint == key.fingerprint
                && spec.operation.grant_fingerprint() == key.fingerprint
        }
        GrantScope::Session => spec.session.as_deref() == Some(key.session.as_str()),
    }
}

/// Whether `ar` was denied less than `seconds` before `now`.
fn just_denied(ar: &AccessRequest, seconds_: u64, now: Timestamp) -> bool {
    ar.spec.decision.as_ref().is_some_and(|d| {
        d.verdict == Verdict::Denied
            && d.decided_at
                .as_ref()
                .is_some_and(|t| now < t.0 + seconds(seconds_))
    })
}

/// Whether `ar` still waits for a decision at `now` (no decision, not expired, younger than
/// `timeout_seconds`).
fn waiting(ar: &AccessRequest, timeout_seconds: u64, now: Timestamp) -> bool {
    let expired = ar
        .status
        .as_ref()
        .is_some_and(|s| s.phase == AccessRequestPhase::Expired);
    let young = ar
        .metadata
        .creation_timestamp
        .as_ref()
        .is_none_or(|t| now < t.0 + seconds(timeout_seconds));
    ar.spec.decision.is_none() && !expired && young
}

impl Approvals {
    /// Connect according to `access`; `None` in standalone mode. The seal key is kept in
    /// `key_dir` ([`Seal::load_or_create`]).
    pub async fn connect(
        access: &KubeAccess,
        namespace: &str,
        key_dir: &std::path::Path,
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
            seal_key: Seal::load_or_create(key_dir)?,
            creating: std::sync::Mutex::new(BTreeMap::new()),
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

    async fn list(&self, selector: &str) -> Result<Vec<AccessRequest>, ApprovalError> {
        Ok(self
            .api()
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|source| ApprovalError::Api {
                what: "cannot list AccessRequests".into(),
                source,
            })?
            .items)
    }

    fn selector(key: &GrantKey, by_operation: bool) -> String {
        let mut selector = format!(
            "{LABEL_RESOURCE}={},{LABEL_REQUESTER}={}",
            label_value(&key.resource),
            label_value(short_name(&key.service_account))
        );
        if by_operation {
            selector.push_str(&format!(
                ",{LABEL_FINGERPRINT}={}",
                label_value(&key.fingerprint)
            ));
        } else {
            selector.push_str(&format!(",{LABEL_SESSION}={}", label_value(&key.session)));
        }
        selector
    }

    /// A live grant that covers `key`, the one that runs longest. Only requests sealed by
    /// this process count.
    pub async fn find_grant(&self, key: &GrantKey) -> Result<Option<Grant>, ApprovalError> {
        let selector = Self::selector(key, key.scope == GrantScope::Statement);
        let now = Timestamp::now();
        Ok(self
            .list(&selector)
            .await?
            .iter()
            .filter(|ar| self.seal_key.verifies(&ar.spec) && covers(ar, key))
            .filter_map(|ar| live_grant(ar, key.grant_seconds, key.required_approvals, now))
            .max_by_key(|g| g.expires_at))
    }

    /// The request to wait on for `ask`: the one of this sidecar that already waits for the
    /// same operation, or denied it less than the approval timeout ago (second value `true`),
    /// or a new one. Refuses a new one when
    /// `ask.max_pending` requests of the requester already wait (a session waits on one at a
    /// time, so this bounds the requests of every session of the requester). The lookup, the
    /// count and the creation run under one lock per requester scope of this process (see
    /// [`Approvals::scope_lock`]); the API server's list is a quorum read, so a request created
    /// under the lock is counted by the next holder.
    pub async fn request(&self, ask: &Ask) -> Result<(String, bool), ApprovalError> {
        let lock = self.scope_lock(&ask.key);
        let _creating = lock.lock().await;
        let now = Timestamp::now();
        let ours = |ar: &&AccessRequest| self.seal_key.verifies(&ar.spec);
        let same_operation = self.list(&Self::selector(&ask.key, true)).await?;
        // A statement-scoped request covers any session of this sidecar; a session-scoped
        // one only its own.
        let same_session = |ar: &AccessRequest| {
            ask.key.scope == GrantScope::Statement
                || ar.spec.session.as_deref() == Some(ask.key.session.as_str())
        };
        // ... or was just denied: a client that retries at once (kubectl falls back from
        // WebSocket to SPDY) gets the same answer instead of a second request.
        if let Some(ar) = same_operation.iter().filter(ours).find(|ar| {
            covers(ar, &ask.key)
                && ar.spec.operation == ask.operation
                && same_session(ar)
                && (waiting(ar, ask.timeout_seconds, now)
                    || just_denied(ar, ask.timeout_seconds, now))
        }) {
            return Ok((ar.name_any(), true));
        }
        // A session waits on one request at a time: the limit counts the requester's.
        let requester = format!(
            "{LABEL_RESOURCE}={},{LABEL_REQUESTER}={}",
            label_value(&ask.key.resource),
            label_value(short_name(&ask.key.service_account))
        );
        let pending = self
            .list(&requester)
            .await?
            .iter()
            .filter(ours)
            .filter(|ar| ar.spec.requester.service_account == ask.key.service_account)
            .filter(|ar| waiting(ar, ask.timeout_seconds, now))
            .count();
        if pending >= usize::try_from(ask.max_pending).unwrap_or(usize::MAX) {
            return Err(ApprovalError::TooManyPending(ask.max_pending));
        }
        self.create(ask).await.map(|name| (name, false))
    }

    /// The lock of the requester scope of `key` (resource and service account). Locks are
    /// kept for the life of the process: one per requester of the pod, a handful.
    fn scope_lock(&self, key: &GrantKey) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let scope = format!("{}\n{}", key.resource, key.service_account);
        let mut locks = self
            .creating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(scope).or_default().clone()
    }

    async fn create(&self, ask: &Ask) -> Result<String, ApprovalError> {
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
        let mut requester = ask.requester.clone();
        // The display name is a printer column: shown escaped, as admission requires.
        requester.name = display::escape(&requester.name, false)
            .chars()
            .take(512)
            .collect();
        let mut spec = AccessRequestSpec {
            requester,
            resource: ask.key.resource.clone(),
            policy: ask.key.policy.clone(),
            rule: ask.key.rule.clone(),
            operation: ask.operation.clone(),
            justification,
            requested_duration: Some(Duration::from_secs(ask.key.grant_seconds).into()),
            session: Some(ask.key.session.clone()),
            scope: Some(ask.key.scope),
            required_approvals: ask.key.required_approvals.max(1),
            approvals: Vec::new(),
            seal: None,
            decision: None,
        };
        spec.seal = Some(self.seal_key.seal(&spec)?);
        let ar = AccessRequest {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}-",
                    if prefix.is_empty() { "request" } else { prefix }
                )),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec,
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

    /// Wait up to `timeout` for a decision on `name`; an approval is a grant when it holds
    /// for `grant_seconds` and `required` distinct approvers approved.
    pub async fn wait(
        &self,
        name: &str,
        timeout: Duration,
        grant_seconds: u64,
        required: u32,
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
        if !self.seal_key.verifies(&ar.spec) {
            return Err(ApprovalError::Unsealed(name.to_owned()));
        }
        let Some(decision) = ar.spec.decision.as_ref() else {
            return Ok(Outcome::TimedOut);
        };
        let decided_by = decision.decided_by.clone().unwrap_or_default();
        match decision.verdict {
            Verdict::Denied => Ok(Outcome::Denied {
                decided_by,
                reason: decision.reason.clone(),
            }),
            Verdict::Approved => match live_grant(&ar, grant_seconds, required, Timestamp::now()) {
                Some(g) => Ok(Outcome::Approved(g)),
                // Approved but unstamped, by the requester, by too few approvers, or already
                // run out: not a grant.
                None => Ok(Outcome::Denied {
                    decided_by,
                    reason:
                        "the approval is not valid (unstamped, self-approved, fewer distinct approvers than required, or already expired)"
                            .into(),
                }),
            },
        }
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
        let mut ar: AccessRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "agent-x", "namespace": "agents"},
            "spec": {
                "requester": {"name": "agent", "serviceAccount": "system:serviceaccount:agents:agent"},
                "resource": "db", "policy": "p", "rule": "writes",
                "operation": {"kind": "sql", "statement": "DELETE FROM t WHERE id = 7", "fingerprint": "f"},
                "session": "s-1", "scope": "statement",
                "requestedDuration": "30m",
                "decision": {"verdict": "Approved", "reason": "ok", "decidedBy": decided_by,
                             "decidedAt": "2026-11-23T06:00:00Z"}
            },
            "status": {"phase": phase, "expiresAt": "2099-11-23T07:00:00Z"}
        }))
        .expect("request");
        ar.spec.operation = sql_operation("DELETE FROM t WHERE id = 7".into(), GrantCovers::Values);
        ar
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
            required_approvals: 1,
        }
    }

    #[test]
    fn a_grant_covers_its_operation_or_its_session_and_guardrail() {
        let mut ar = request(AccessRequestPhase::Approved, Some("bob"));
        let f = ar.spec.operation.fingerprint.clone();
        assert!(covers(&ar, &key(GrantScope::Statement, &f, "s-2")));
        assert!(!covers(&ar, &key(GrantScope::Statement, "g", "s-1")));
        // Another statement's fingerprint written into the request is not the shown one.
        ar.spec.operation.fingerprint = "g".into();
        assert!(!covers(&ar, &key(GrantScope::Statement, "g", "s-1")));
        let mut ar = request(AccessRequestPhase::Approved, Some("bob"));
        ar.spec.scope = Some(GrantScope::Session);
        assert!(covers(&ar, &key(GrantScope::Session, "g", "s-1")));
        assert!(!covers(&ar, &key(GrantScope::Session, "g", "s-2")));
        // A session label does not count: the spec names the session.
        ar.metadata.labels = Some(BTreeMap::from([(LABEL_SESSION.to_owned(), "s-2".into())]));
        assert!(!covers(&ar, &key(GrantScope::Session, "g", "s-2")));
        // A session grant covers only the guardrail it names.
        let mut other_rule = key(GrantScope::Session, "g", "s-1");
        other_rule.rule = "steward-writes".into();
        assert!(!covers(&ar, &other_rule));
        let mut other = key(GrantScope::Statement, &f, "s-1");
        other.service_account = "system:serviceaccount:agents:other".into();
        assert!(!covers(&ar, &other));
    }

    #[test]
    fn only_stamped_unexpired_approvals_by_others_are_grants() {
        let now = at("2026-11-23T06:20:00Z");
        // The end comes from the stamped decision and the requested duration, not status.
        let g = live_grant(
            &request(AccessRequestPhase::Approved, Some("bob")),
            3600,
            1,
            now,
        );
        assert_eq!(g.map(|g| g.expires_at), Some(at("2026-11-23T06:30:00Z")));
        let g = live_grant(
            &request(AccessRequestPhase::Pending, Some("bob")),
            600,
            1,
            now,
        );
        assert_eq!(g, None);
        for ar in [
            request(AccessRequestPhase::Approved, None),
            request(
                AccessRequestPhase::Approved,
                Some("system:serviceaccount:agents:agent"),
            ),
            request(AccessRequestPhase::Expired, Some("bob")),
            request(AccessRequestPhase::Denied, Some("bob")),
        ] {
            assert_eq!(live_grant(&ar, 3600, 1, now), None);
        }
        assert_eq!(
            live_grant(
                &request(AccessRequestPhase::Approved, Some("bob")),
                3600,
                1,
                at("2026-11-23T06:30:00Z")
            ),
            None
        );
    }

    #[test]
    fn a_grant_needs_the_required_distinct_approvers() {
        let now = at("2026-11-23T06:20:00Z");
        let approval = |by: &str| portcullis_crds::Approval {
            reason: "looked".into(),
            approved_by: Some(by.into()),
            approved_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
                "2026-11-23T06:01:00Z",
            ))),
        };
        let ar = request(AccessRequestPhase::Approved, Some("bob"));
        // One approver is not two, whether the policy or the sealed spec asks for two.
        assert_eq!(live_grant(&ar, 3600, 2, now), None);
        let mut two = ar.clone();
        two.spec.required_approvals = 2;
        assert_eq!(live_grant(&two, 3600, 1, now), None);
        // The same approver twice is one approver; the requester does not count.
        for by in ["bob", "system:serviceaccount:agents:agent", ""] {
            let mut again = two.clone();
            again.spec.approvals = vec![approval(by)];
            assert_eq!(live_grant(&again, 3600, 2, now), None, "{by:?}");
        }
        // An unstamped approval does not count.
        let mut unstamped = two.clone();
        unstamped.spec.approvals = vec![portcullis_crds::Approval {
            approved_at: None,
            ..approval("carol")
        }];
        assert_eq!(live_grant(&unstamped, 3600, 2, now), None);
        let mut both = two.clone();
        both.spec.approvals = vec![approval("carol")];
        let g = live_grant(&both, 3600, 2, now).expect("two distinct approvers");
        assert_eq!(g.decided_by, "carol, bob");
        // A denial denies, whatever was approved before.
        let mut denied = both.clone();
        if let Some(d) = denied.spec.decision.as_mut() {
            d.verdict = Verdict::Denied;
        }
        assert_eq!(live_grant(&denied, 3600, 2, now), None);
        // Approvals are not sealed: they are added after the request is made.
        let seal = Seal::new();
        let mut sealed = two.clone();
        sealed.spec.seal = Some(seal.seal(&sealed.spec).expect("seal"));
        sealed.spec.approvals = vec![approval("carol")];
        assert!(seal.verifies(&sealed.spec));
        let mut lowered = sealed.clone();
        lowered.spec.required_approvals = 1;
        assert!(!seal.verifies(&lowered.spec));
    }

    #[test]
    fn the_seal_key_survives_a_restart_and_stays_private() {
        let dir = tempfile::tempdir().expect("dir");
        let first = Seal::load_or_create(dir.path()).expect("made");
        let mut ar = request(AccessRequestPhase::Pending, Some("bob"));
        ar.spec.seal = Some(first.seal(&ar.spec).expect("seal"));
        // A restarted sidecar reads the same key and honours what it sealed before ...
        let again = Seal::load_or_create(dir.path()).expect("read");
        assert!(again.verifies(&ar.spec));
        // ... a sidecar with another spool does not.
        let other = tempfile::tempdir().expect("dir");
        assert!(!Seal::load_or_create(other.path())
            .expect("made")
            .verifies(&ar.spec));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SEAL_KEY_FILE))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A damaged key is refused, not silently replaced.
        std::fs::write(dir.path().join(SEAL_KEY_FILE), b"short").expect("write");
        assert!(matches!(
            Seal::load_or_create(dir.path()),
            Err(ApprovalError::SealKey(_))
        ));
    }

    #[test]
    fn only_this_process_seal_is_honoured() {
        let seal = Seal::new();
        let mut ar = request(AccessRequestPhase::Pending, Some("bob"));
        ar.spec.decision = None;
        ar.spec.seal = Some(seal.seal(&ar.spec).expect("seal"));
        assert!(seal.verifies(&ar.spec));
        // The decision is not sealed: it is added later by the approver.
        ar.spec.decision = request(AccessRequestPhase::Pending, Some("bob"))
            .spec
            .decision;
        assert!(seal.verifies(&ar.spec));
        assert!(!Seal::new().verifies(&ar.spec));
        let mut changed = ar.clone();
        changed.spec.session = Some("s-2".into());
        assert!(!seal.verifies(&changed.spec));
        let mut changed = ar.clone();
        changed.spec.justification = Some("rewritten".into());
        assert!(!seal.verifies(&changed.spec));
        changed.spec.seal = None;
        assert!(!seal.verifies(&changed.spec));
    }
}
