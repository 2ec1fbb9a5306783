//! The AccessRequest lifecycle: `Pending` until decided or until the policy's approval
//! timeout; `Approved` for the grant duration (the policy's `grantDuration`, capped by what the
//! requester asked for, counted from the admission-stamped decision time), then `Expired`;
//! `Denied` for good. Every transition is an Event (text written by others escaped visibly),
//! and the status carries when the current phase ends; nothing grants on status.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::ResourceExt;
use portcullis_crds::display::escape;
use portcullis_crds::{AccessRequest, AccessRequestPhase, GatewayPolicy, Verdict};

use super::{key, Context, ReconcileError};

const CONTROLLER: &str = "accessrequest";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_GRANT: Duration = Duration::from_secs(60 * 60);

/// Run the controller until `stop` resolves.
pub async fn run(ctx: Arc<Context>, stop: impl Future<Output = ()> + Send + Sync + 'static) {
    let api = Api::<AccessRequest>::all(ctx.client.clone());
    let ctx2 = ctx.clone();
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(stop)
        .run(
            |ar, ctx: Arc<Context>| async move {
                let k = key(ar.as_ref());
                ctx.instrument(CONTROLLER, k, reconcile(&ar, &ctx)).await
            },
            move |ar, e, _| ctx2.backoff(CONTROLLER, key(ar.as_ref()), e),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The phase a request should be in now, when that phase ends, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Next {
    /// The phase.
    pub phase: AccessRequestPhase,
    /// When it ends (Pending and Approved), or when it ran out (Expired).
    pub expires_at: Option<Timestamp>,
    /// Event reason of a transition into it.
    pub reason: &'static str,
    /// Event note.
    pub message: String,
}

/// Decide the phase of a request (pure: all times are given).
pub fn next_phase(ar: &AccessRequest, now: Timestamp, timeout: Duration, grant: Duration) -> Next {
    let status = ar.status.clone().unwrap_or_default();
    let span = |d: Duration| SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    match (&ar.spec.decision, status.phase) {
        (_, AccessRequestPhase::Expired) | (_, AccessRequestPhase::Denied) => Next {
            phase: status.phase,
            expires_at: status.expires_at.as_ref().map(|t| t.0),
            reason: "Unchanged",
            message: String::new(),
        },
        (Some(d), _) if d.verdict == Verdict::Denied => Next {
            phase: AccessRequestPhase::Denied,
            expires_at: None,
            reason: "Denied",
            message: format!(
                "denied by {}: {}",
                escape(d.decided_by.as_deref().unwrap_or("an approver"), false),
                escape(&d.reason, false)
            ),
        },
        (Some(d), _) => {
            // From the admission-stamped decision time, never from status.
            let start = d.decided_at.as_ref().map_or(
                ar.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0),
                |t| t.0,
            );
            let expires = start + span(grant);
            if now >= expires {
                Next {
                    phase: AccessRequestPhase::Expired,
                    expires_at: Some(expires),
                    reason: "GrantExpired",
                    message: format!("the approval ran out at {expires:.0}"),
                }
            } else {
                Next {
                    phase: AccessRequestPhase::Approved,
                    expires_at: Some(expires),
                    reason: "Approved",
                    message: format!(
                        "approved by {} until {expires:.0}: {}",
                        escape(d.decided_by.as_deref().unwrap_or("an approver"), false),
                        escape(&d.reason, false)
                    ),
                }
            }
        }
        (None, _) => {
            let created = ar.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
            let expires = created + span(timeout);
            if now >= expires {
                Next {
                    phase: AccessRequestPhase::Expired,
                    expires_at: Some(expires),
                    reason: "TimedOut",
                    message: format!("no decision before {expires:.0}"),
                }
            } else {
                Next {
                    phase: AccessRequestPhase::Pending,
                    expires_at: Some(expires),
                    reason: "Requested",
                    message: format!(
                        "waiting for an approver until {expires:.0}: kubectl portcullis approve {} --reason ...",
                        ar.name_any()
                    ),
                }
            }
        }
    }
}

async fn reconcile(ar: &AccessRequest, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = ar.namespace().unwrap_or_default();
    let approval = Api::<GatewayPolicy>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&ar.spec.policy)
        .await?
        .and_then(|p| p.spec.approval);
    let notify_url = approval.as_ref().and_then(|a| a.notify_url.clone());
    let timeout = approval
        .as_ref()
        .map_or(DEFAULT_TIMEOUT, |a| Duration::from(a.timeout));
    let policy_grant = approval
        .as_ref()
        .map_or(DEFAULT_GRANT, |a| Duration::from(a.grant_duration));
    let grant = ar
        .spec
        .requested_duration
        .map(Duration::from)
        .map_or(policy_grant, |asked| asked.min(policy_grant));
    let now = Timestamp::now();
    let next = next_phase(ar, now, timeout, grant);
    let status = ar.status.clone().unwrap_or_default();
    let expires = next.expires_at.map(Time);
    if next.phase != status.phase || expires != status.expires_at || ar.status.is_none() {
        let patch = serde_json::json!({
            "status": {
                "phase": next.phase,
                "expiresAt": expires,
                "observedGeneration": ar.metadata.generation,
            }
        });
        Api::<AccessRequest>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &ar.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        if next.phase != status.phase || ar.status.is_none() {
            let type_ = match next.phase {
                AccessRequestPhase::Denied | AccessRequestPhase::Expired => EventType::Warning,
                _ => EventType::Normal,
            };
            ctx.event(ar, type_, next.reason, "Decide", next.message.clone())
                .await;
            if next.phase == AccessRequestPhase::Pending {
                if let Some(url) = notify_url {
                    let body = crate::notify::message(ar);
                    let name = key(ar);
                    tokio::spawn(async move {
                        match crate::notify::deliver(&url, &body, Duration::from_secs(1)).await {
                            Ok(attempts) => {
                                tracing::info!(request = %name, attempts, "approvers notified")
                            }
                            Err(e) => {
                                tracing::warn!(request = %name, error = %e, "approval notification not delivered")
                            }
                        }
                    });
                }
            }
        }
    }
    if matches!(
        next.phase,
        AccessRequestPhase::Denied | AccessRequestPhase::Expired
    ) {
        return collect(ar, &next, ctx, now).await;
    }
    Ok(match next.expires_at {
        Some(at) => {
            let wait = at.duration_since(now).unsigned_abs();
            Action::requeue(wait.max(Duration::from_millis(200)))
        }
        None => Action::await_change(),
    })
}

/// When a Denied or Expired request is deleted: `retention` after it was decided or ran out.
pub fn collect_at(ar: &AccessRequest, next: &Next, retention: Duration) -> Option<Timestamp> {
    let ended = match next.phase {
        AccessRequestPhase::Denied => ar
            .spec
            .decision
            .as_ref()
            .and_then(|d| d.decided_at.as_ref())
            .map(|t| t.0),
        AccessRequestPhase::Expired => next.expires_at,
        AccessRequestPhase::Pending | AccessRequestPhase::Approved => return None,
    };
    let ended = ended.or_else(|| ar.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    Some(ended + SignedDuration::try_from(retention).unwrap_or(SignedDuration::MAX))
}

/// Delete a Denied or Expired request once its retention has passed. Its steps are in the
/// audit log: the sidecar recorded each (requested, decided, used, timed out) as it
/// happened, so the object is no longer the evidence.
async fn collect(
    ar: &AccessRequest,
    next: &Next,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action, ReconcileError> {
    let Some(due) = collect_at(ar, next, ctx.access_request_retention) else {
        return Ok(Action::await_change());
    };
    if now < due {
        let wait = due.duration_since(now).unsigned_abs();
        return Ok(Action::requeue(wait.max(Duration::from_secs(1))));
    }
    let ns = ar.namespace().unwrap_or_default();
    ctx.event(
        ar,
        EventType::Normal,
        "GarbageCollected",
        "Delete",
        format!(
            "deleted {:?} request {} after the retention of {}s; its steps remain in the audit log",
            next.phase,
            ar.name_any(),
            ctx.access_request_retention.as_secs()
        ),
    )
    .await;
    match Api::<AccessRequest>::namespaced(ctx.client.clone(), &ns)
        .delete(&ar.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(request = %key(ar), "deleted after the retention period");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crds::{AccessRequestStatus, Decision};

    fn request(decision: Option<(Verdict, i64)>, phase: AccessRequestPhase) -> AccessRequest {
        let mut ar: AccessRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "r", "namespace": "agents", "creationTimestamp": "2026-11-23T06:00:00Z"},
            "spec": {
                "requester": {"name": "agent", "serviceAccount": "system:serviceaccount:agents:agent"},
                "resource": "db", "policy": "p", "rule": "writes",
                "operation": {"kind": "sql", "statement": "DELETE FROM t WHERE id = $1", "fingerprint": "f"}
            }
        }))
        .expect("request");
        ar.spec.decision = decision.map(|(verdict, minute)| Decision {
            verdict,
            reason: "ticket 1".into(),
            decided_by: Some("bob".into()),
            decided_at: Some(Time(
                format!("2026-11-23T06:{minute:02}:00Z")
                    .parse()
                    .expect("time"),
            )),
        });
        ar.status = Some(AccessRequestStatus {
            phase,
            ..Default::default()
        });
        ar
    }

    fn at(minute: i64) -> Timestamp {
        format!("2026-11-23T06:{minute:02}:00Z")
            .parse()
            .expect("time")
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn pending_until_the_timeout() {
        let ar = request(None, AccessRequestPhase::Pending);
        let n = next_phase(&ar, at(5), 10 * MIN, 30 * MIN);
        assert_eq!(
            (n.phase, n.expires_at),
            (AccessRequestPhase::Pending, Some(at(10)))
        );
        let n = next_phase(&ar, at(10), 10 * MIN, 30 * MIN);
        assert_eq!(
            (n.phase, n.reason),
            (AccessRequestPhase::Expired, "TimedOut")
        );
    }

    #[test]
    fn approved_for_the_grant_then_expired() {
        let ar = request(Some((Verdict::Approved, 4)), AccessRequestPhase::Pending);
        let n = next_phase(&ar, at(5), 10 * MIN, 30 * MIN);
        assert_eq!(
            (n.phase, n.expires_at),
            (AccessRequestPhase::Approved, Some(at(34)))
        );
        assert_eq!(
            n.message,
            "approved by bob until 2026-11-23T06:34:00Z: ticket 1"
        );
        let n = next_phase(&ar, at(34), 10 * MIN, 30 * MIN);
        assert_eq!(
            (n.phase, n.reason),
            (AccessRequestPhase::Expired, "GrantExpired")
        );
    }

    #[test]
    fn denied_and_expired_requests_are_collected_after_the_retention() {
        let ar = request(Some((Verdict::Denied, 4)), AccessRequestPhase::Denied);
        let n = next_phase(&ar, at(5), 10 * MIN, 30 * MIN);
        assert_eq!(collect_at(&ar, &n, 20 * MIN), Some(at(24)));
        let ar = request(None, AccessRequestPhase::Pending);
        let n = next_phase(&ar, at(12), 10 * MIN, 30 * MIN);
        assert_eq!(n.phase, AccessRequestPhase::Expired);
        assert_eq!(collect_at(&ar, &n, 20 * MIN), Some(at(30)));
        let ar = request(Some((Verdict::Approved, 4)), AccessRequestPhase::Approved);
        let n = next_phase(&ar, at(5), 10 * MIN, 30 * MIN);
        assert_eq!(collect_at(&ar, &n, 20 * MIN), None);
    }

    #[test]
    fn denied_and_expired_are_final() {
        let ar = request(Some((Verdict::Denied, 4)), AccessRequestPhase::Pending);
        let n = next_phase(&ar, at(5), 10 * MIN, 30 * MIN);
        assert_eq!(n.phase, AccessRequestPhase::Denied);
        assert_eq!(n.message, "denied by bob: ticket 1");
        let ar = request(Some((Verdict::Approved, 4)), AccessRequestPhase::Expired);
        assert_eq!(
            next_phase(&ar, at(5), 10 * MIN, 30 * MIN).phase,
            AccessRequestPhase::Expired
        );
    }
}
