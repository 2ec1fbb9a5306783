//! The end of a principal's rights: a session that a person or pipeline opened with an ID
//! token lasts until that token expires (plus the issuer's leeway), and then ends with a
//! message that names the expiry. The Kubernetes API proxy needs no timer: it checks the
//! token of every request.

use std::time::SystemTime;

use portcullis_crds::audit::Identity;

/// Why a session ends at its deadline, for the client and the audit log.
pub fn message(identity: &Identity, deadline: SystemTime) -> String {
    let (who, expired) = match &identity.principal {
        Some(p) => (
            format!("{} {} of issuer {}", p.kind, p.name, p.issuer),
            p.expires
                .map(|e| std::time::UNIX_EPOCH + std::time::Duration::from_secs(e))
                .unwrap_or(deadline),
        ),
        None => ("the session's principal".to_owned(), deadline),
    };
    format!(
        "the OIDC ID token of {who} expired at {}; the session ends with it (reconnect with a fresh token)",
        humantime::format_rfc3339_seconds(expired)
    )
}

/// Wait until `deadline` and say why the session ends; never returns without one.
pub async fn until(deadline: Option<SystemTime>, identity: Identity) -> String {
    let Some(deadline) = deadline else {
        return std::future::pending().await;
    };
    let wait = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
    message(&identity, deadline)
}
