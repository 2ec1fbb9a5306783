//! Fetching an issuer's discovery document and key set: HTTPS with the system's trust store
//! (Mozilla's roots when the system has none), plain HTTP on loopback only, bounded in time
//! and size. Also the request headers that claim an identity, which the Kubernetes API proxy
//! never relays ([`strip_identity_headers`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest discovery document or key set read.
const MAX_BODY: usize = 1024 * 1024;

/// A JSON-over-HTTPS client for OIDC metadata.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Whether a URL may be fetched: `https://`, or `http://` to a loopback host.
pub fn allowed_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(uri)
            } else {
                Err(format!(
                    "{url} must use https:// (http:// only on loopback)"
                ))
            }
        }
        _ => Err(format!("{url} must use https://")),
    }
}

/// Remove every header by which a request could name another identity to the API server:
/// impersonation (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`) and the front-proxy
/// headers (`X-Remote-User`, `-Group`, `-Extra-*`). Requests run as the pod's service
/// account and nothing the client writes changes that.
pub fn strip_identity_headers(headers: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("impersonate-") || k.starts_with("x-remote-")
        })
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

impl HttpClient {
    /// A client with the given per-request timeout.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let provider = rustls::crypto::ring::default_provider();
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "no system trust store; using the Mozilla roots");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(provider)
                    .map_err(|e| format!("TLS setup: {e}"))?
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// GET a JSON document.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let uri = allowed_url(url)?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("GET {url}: {e}"))?;
        let fetch = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("GET {url}: HTTP {status}"));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| format!("GET {url}: no answer within {:?}", self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::{allowed_url, strip_identity_headers};

    #[test]
    fn identity_headers_are_stripped() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("X-Remote-User", "system:admin"),
            ("x-remote-group", "system:masters"),
            ("X-Remote-Extra-Scopes", "all"),
            ("Impersonate-User", "admin"),
            ("Impersonate-Group", "system:masters"),
            ("Impersonate-Uid", "1"),
            ("Impersonate-Extra-Scopes", "all"),
            ("Accept", "application/json"),
            ("X-Request-Id", "7"),
        ] {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_static(v),
            );
        }
        strip_identity_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(http::HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "x-request-id"]);
    }

    #[test]
    fn plain_http_is_for_loopback_only() {
        assert!(allowed_url("https://issuer.example.com").is_ok());
        assert!(allowed_url("http://127.0.0.1:8080/realms/x").is_ok());
        assert!(allowed_url("http://localhost/x").is_ok());
        assert!(allowed_url("http://[::1]:9/x").is_ok());
        assert!(allowed_url("http://issuer.example.com").is_err());
        assert!(allowed_url("http://10.0.0.1").is_err());
        assert!(allowed_url("ftp://127.0.0.1").is_err());
    }
}
