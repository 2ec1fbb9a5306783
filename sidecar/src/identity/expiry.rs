//! The end of a principal's rights: a session that a person or pipeline opened with an ID
//! token lasts until that token expires (plus the issuer's leeway), or until the issuer
//! withdraws the key that signed it (the key is missing from the key set at a re-read,
//! checked every key-set maximum age), and then ends with a message that names the expiry
//! or the withdrawn key. The Kubernetes API proxy checks the token of every request, and
//! ends what outlives a request (exec streams, watch responses) in the same way. A token
//! that names no key id (`kid`) is bounded by its expiry alone.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use portcullis_crds::audit::Identity;

use super::oidc::IssuerVerifier;

/// The issuer key that signed a session's token.
#[derive(Clone)]
pub struct SigningKey {
    /// The issuer's verifier, which holds its key set.
    pub verifier: Arc<IssuerVerifier>,
    /// The key id (`kid`) of the token.
    pub kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("issuer", &self.verifier.config().url)
            .field("kid", &self.kid)
            .finish()
    }
}

/// Wait until the signing key is no longer published and say so; never returns otherwise.
async fn withdrawn(key: Option<SigningKey>, identity: &Identity) -> String {
    let Some(key) = key else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(key.verifier.key_check_interval()).await;
        if !key.verifier.publishes(&key.kid).await {
            let who = identity.principal.as_ref().map_or_else(
                || "the session's principal".to_owned(),
                |p| format!("{} {}", p.kind, p.name),
            );
            return format!(
                "the key {:?} that signed the OIDC ID token of {who} is no longer published by issuer {}; the session ends (reconnect with a token signed by a current key)",
                key.kid,
                key.verifier.config().url
            );
        }
    }
}

/// Why a session ends at its deadline, for the client and the audit log.
pub fn message(identity: &Identity, deadline: SystemTime) -> String {
    let at = || {
        deadline.duration_since(std::time::UNIX_EPOCH).map_or_else(
            |_| "1970-01-01T00:00:00Z".to_owned(),
            |d| super::oidc::format_date(d.as_secs()),
        )
    };
    let (who, expired) = match &identity.principal {
        Some(p) => (
            format!("{} {} of issuer {}", p.kind, p.name, p.issuer),
            p.expires.map_or_else(at, super::oidc::format_date),
        ),
        None => ("the session's principal".to_owned(), at()),
    };
    format!(
        "the OIDC ID token of {who} expired at {expired}; the session ends with it (reconnect with a fresh token)"
    )
}

/// Wait until `deadline`, or until the token's signing `key` is withdrawn, and say why the
/// session ends; never returns without one.
pub async fn until(
    deadline: Option<SystemTime>,
    identity: Identity,
    key: Option<SigningKey>,
) -> String {
    let expired = async {
        let Some(deadline) = deadline else {
            return std::future::pending().await;
        };
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        message(&identity, deadline)
    };
    tokio::select! {
        m = expired => m,
        m = withdrawn(key, &identity) => m,
    }
}

/// A response body that ends when an identity's rights do: a `watch` or other long response
/// opened with a token stops at its expiry or at the withdrawal of its signing key, and the
/// client has to ask again (and is refused).
#[derive(Debug)]
pub struct UntilDeadline<B> {
    inner: B,
    end: tokio::task::JoinHandle<String>,
}

impl<B> UntilDeadline<B> {
    /// `inner`, ended as [`until`] says.
    pub fn new(
        inner: B,
        deadline: Option<SystemTime>,
        identity: Identity,
        key: Option<SigningKey>,
    ) -> Self {
        UntilDeadline {
            inner,
            end: tokio::spawn(until(deadline, identity, key)),
        }
    }
}

impl<B> Drop for UntilDeadline<B> {
    fn drop(&mut self) {
        self.end.abort();
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for UntilDeadline<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let std::task::Poll::Ready(reason) = std::pin::Pin::new(&mut self.end).poll(cx) {
            tracing::info!(reason = %reason.unwrap_or_default(), "ended a response whose token's rights ended");
            return std::task::Poll::Ready(None);
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
}
