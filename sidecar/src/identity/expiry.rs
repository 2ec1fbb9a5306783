//! The end of a principal's rights: a session that a person or pipeline opened with an ID
//! token lasts until that token expires (plus the issuer's leeway), and then ends with a
//! message that names the expiry. The Kubernetes API proxy checks the token of every
//! request, and ends what outlives a request (exec streams, watch responses) at the same
//! deadline.

use std::future::Future;
use std::time::SystemTime;

use portcullis_crds::audit::Identity;

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

/// A response body that ends when an identity's rights do: a `watch` or other long response
/// opened with a token stops at its expiry, and the client has to ask again (and is refused).
#[derive(Debug)]
pub struct UntilDeadline<B> {
    inner: B,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> UntilDeadline<B> {
    /// `inner`, ended at `deadline`.
    pub fn new(inner: B, deadline: SystemTime) -> Self {
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        UntilDeadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(wait)),
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for UntilDeadline<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
}
