//! Who is sending records: the sidecar's projected service-account token (audience
//! `portcullis-audit`), checked with a TokenReview against the API server. Results are cached
//! briefly by token digest, so a busy sidecar does not cost one TokenReview per batch.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Audience the sidecar's projected token must carry.
pub const AUDIENCE: &str = "portcullis-audit";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const CACHE_FOR: Duration = Duration::from_secs(60);

/// The workload that sent a batch, as the API server vouches for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub user: String,
    /// Namespace of the service account.
    pub namespace: String,
    /// Name of the service account.
    pub service_account: String,
    /// Pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// UID of that pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// Why a sender was refused.
#[derive(Debug, Error)]
pub enum AuthError {
    /// No bearer token.
    #[error("missing bearer token: send the sidecar's projected service-account token (audience {AUDIENCE})")]
    Missing,
    /// The API server did not authenticate the token for our audience.
    #[error("token rejected by the API server: {0}")]
    Rejected(String),
    /// The token is valid but not a service account's.
    #[error("token of {0} is not a service-account token")]
    NotServiceAccount(String),
    /// Authenticated, but RBAC does not allow reading evidence.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The TokenReview itself failed.
    #[error("TokenReview failed: {0}")]
    Review(String),
}

/// Authenticates senders with TokenReview.
pub struct Authenticator {
    client: Client,
    cache: Mutex<HashMap<[u8; 32], (Source, Instant)>>,
}

impl Authenticator {
    /// An authenticator using `client` for TokenReviews.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Ask the API server who `token` belongs to (for `audience`, or its own audiences).
    async fn review(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<k8s_openapi::api::authentication::v1::TokenReviewStatus, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: audience.map(|a| vec![a.to_owned()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Review(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected(
                status
                    .error
                    .clone()
                    .unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        Ok(status)
    }

    /// Authenticate a person or tool reading evidence: any token the API server accepts for its
    /// own audience, then one SubjectAccessReview for `get` on `auditretentions/evidence` in
    /// each namespace of `namespaces`, or, for `None` (the whole log), cluster-wide. Returns the
    /// user name.
    pub async fn authorize_reader(
        &self,
        token: &str,
        namespaces: Option<&[String]>,
    ) -> Result<String, AuthError> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        };
        let status = self.review(token, None).await?;
        let user = status.user.unwrap_or_default();
        let username = user.username.clone().unwrap_or_default();
        let scopes: Vec<Option<String>> = match namespaces {
            None => vec![None],
            Some([]) => {
                return Err(AuthError::Forbidden(
                    "name at least one namespace, or ask for the whole log".into(),
                ))
            }
            Some(list) => list.iter().cloned().map(Some).collect(),
        };
        for namespace in scopes {
            let sar = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: user.username.clone(),
                    groups: user.groups.clone(),
                    uid: user.uid.clone(),
                    extra: user.extra.clone(),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(portcullis_crds::GROUP.to_owned()),
                        resource: Some("auditretentions".to_owned()),
                        subresource: Some("evidence".to_owned()),
                        verb: Some("get".to_owned()),
                        namespace: namespace.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let decision = Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &sar)
                .await
                .map_err(|e| AuthError::Review(e.to_string()))?;
            if !decision.status.is_some_and(|s| s.allowed) {
                return Err(AuthError::Forbidden(match namespace {
                    Some(ns) => format!(
                        "{username} may not get auditretentions/evidence in namespace {ns}"
                    ),
                    None => format!(
                        "{username} may not get auditretentions/evidence in every namespace: reading the whole log needs a cluster-wide binding; ask for your namespaces"
                    ),
                }));
            }
        }
        Ok(username)
    }

    /// Authenticate a bearer token.
    pub async fn authenticate(&self, token: &str) -> Result<Source, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.cache.lock() {
            if let Some((source, at)) = cache.get(&key) {
                if at.elapsed() < CACHE_FOR {
                    return Ok(source.clone());
                }
            }
        }
        let status = self.review(token, Some(AUDIENCE)).await?;
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|x| x == AUDIENCE))
        {
            return Err(AuthError::Rejected(format!(
                "token is not for audience {AUDIENCE}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let name = user.username.unwrap_or_default();
        let Some(rest) = name.strip_prefix("system:serviceaccount:") else {
            return Err(AuthError::NotServiceAccount(name));
        };
        let Some((namespace, service_account)) = rest.split_once(':') else {
            return Err(AuthError::NotServiceAccount(name));
        };
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first().cloned());
        let source = Source {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            user: name.clone(),
            pod: first(POD_NAME),
            pod_uid: first(POD_UID),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
            cache.insert(key, (source.clone(), Instant::now()));
        }
        Ok(source)
    }
}
