//! The client side of the audit service. For the sidecar's shipper: post a batch of records
//! with the pod's projected token and learn which sequence numbers are now durable (the
//! shipper deletes from its spool only what this returns), and upload session recordings.
//! For evidence readers: the signed tree head, entries with their proofs, and recordings.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
pub use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use portcullis_crds::audit::AuditRecord;
use thiserror::Error;

use crate::recordings::{is_sha256, sha256_hex};
use crate::service::BatchAck;

/// Why a batch was not acknowledged.
#[derive(Debug, Error)]
pub enum ShipError {
    /// The service could not be reached or the connection broke: retry later.
    #[error("audit service unreachable: {0}")]
    Unreachable(String),
    /// The service refused the batch (authentication, a record it will not take): retrying
    /// the same batch will not help.
    #[error("audit service refused the batch ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// The service failed on its side (storage): retry later.
    #[error("audit service failed ({status}): {message}")]
    Failed {
        /// HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// The token file or CA file could not be read.
    #[error("{0}")]
    Local(String),
}

impl ShipError {
    /// Whether sending the same batch again later may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, ShipError::Refused { .. } | ShipError::Local(_))
    }
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A client of one audit service.
#[derive(Clone)]
pub struct AuditClient {
    /// `https://host:port`, without a trailing slash.
    base: String,
    http: HttpClient<Connector, Full<Bytes>>,
    timeout: Duration,
}

impl AuditClient {
    /// A client for `base_url` (`https://host:port`) trusting the PEM CA in `ca_file`.
    pub fn new(base_url: &str, ca_file: &Path, timeout: Duration) -> Result<Self, ShipError> {
        let pem = std::fs::read(ca_file)
            .map_err(|e| ShipError::Local(format!("{}: {e}", ca_file.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ShipError::Local(format!("{}: {e}", ca_file.display())))?;
            roots
                .add(cert)
                .map_err(|e| ShipError::Local(format!("{}: {e}", ca_file.display())))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ShipError::Local(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    async fn get(
        &self,
        path_and_query: &str,
        token: Option<&str>,
    ) -> Result<(u16, Bytes), ShipError> {
        let mut request = hyper::Request::get(format!("{}{path_and_query}", self.base));
        if let Some(t) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {}", t.trim()));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| ShipError::Local(e.to_string()))?;
        self.send(request).await
    }

    /// Send a request and read the whole answer, each step bounded by the timeout.
    async fn send(&self, request: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), ShipError> {
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| ShipError::Unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| ShipError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = tokio::time::timeout(self.timeout, response.into_body().collect())
            .await
            .map_err(|_| ShipError::Unreachable("answer cut off".into()))?
            .map_err(|e| ShipError::Unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    fn failure(status: u16, bytes: &[u8]) -> ShipError {
        let message = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
        if (400..500).contains(&status) {
            ShipError::Refused { status, message }
        } else {
            ShipError::Failed { status, message }
        }
    }

    /// The latest signed tree head.
    pub async fn latest_head(&self) -> Result<portcullis_crds::SignedTreeHead, ShipError> {
        let (status, bytes) = self.get("/v1/sth", None).await?;
        if status != 200 {
            return Err(Self::failure(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ShipError::Failed {
            status,
            message: e.to_string(),
        })
    }

    /// Entries `[from, to)` with their audit paths to the tree of `tree_size`, read with a
    /// token whose user may `get` the `evidence` subresource of the service's AuditRetention.
    pub async fn entries(
        &self,
        token: &str,
        from: u64,
        to: u64,
        tree_size: u64,
    ) -> Result<Vec<crate::bundle::ProvenEntry>, ShipError> {
        self.entries_in(token, from, to, tree_size, None).await
    }

    /// [`AuditClient::entries`] of the records sent from `namespaces` only (`None`: the whole
    /// log, which needs a cluster-wide binding).
    pub async fn entries_in(
        &self,
        token: &str,
        from: u64,
        to: u64,
        tree_size: u64,
        namespaces: Option<&[String]>,
    ) -> Result<Vec<crate::bundle::ProvenEntry>, ShipError> {
        let scope = namespaces
            .map(|n| format!("&namespaces={}", n.join(",")))
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut at = from;
        while at < to {
            let end = to.min(at + crate::service::MAX_ENTRIES_PER_READ);
            let (status, bytes) = self
                .get(
                    &format!("/v1/entries?from={at}&to={end}&treeSize={tree_size}{scope}"),
                    Some(token),
                )
                .await?;
            if status != 200 {
                return Err(Self::failure(status, &bytes));
            }
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let line: crate::service::EntryLine =
                    serde_json::from_slice(line).map_err(|e| ShipError::Failed {
                        status,
                        message: format!("unreadable entry line: {e}"),
                    })?;
                let proof = line
                    .proof
                    .iter()
                    .map(|h| hex::decode(h).ok().and_then(|v| v.try_into().ok()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| ShipError::Failed {
                        status,
                        message: format!("entry {}: malformed proof", line.index),
                    })?;
                out.push(crate::bundle::ProvenEntry {
                    index: line.index,
                    bytes: line.entry.get().as_bytes().to_vec(),
                    proof,
                });
            }
            at = end;
        }
        Ok(out)
    }

    /// Have the service check and sign the manifest of a bundle (its selection recomputed over
    /// the log), with a token allowed to read the namespaces it selects.
    pub async fn sign_manifest(
        &self,
        token: &str,
        manifest: &crate::manifest::Manifest,
    ) -> Result<crate::manifest::SignedManifest, ShipError> {
        let body = serde_json::to_vec(manifest).map_err(|e| ShipError::Local(e.to_string()))?;
        let request = hyper::Request::post(format!("{}/v1/manifests", self.base))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ShipError::Local(e.to_string()))?;
        let (status, bytes) = self.send(request).await?;
        if status != 200 {
            return Err(Self::failure(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ShipError::Failed {
            status,
            message: format!("unreadable signed manifest: {e}"),
        })
    }

    /// A consistency proof between the trees of sizes `old` and `size`.
    pub async fn consistency(
        &self,
        old: u64,
        size: u64,
    ) -> Result<Vec<portcullis_crds::audit_log::Hash>, ShipError> {
        let (status, bytes) = self
            .get(
                &format!("/v1/proofs/consistency?old={old}&size={size}"),
                None,
            )
            .await?;
        if status != 200 {
            return Err(Self::failure(status, &bytes));
        }
        let proof: crate::service::ProofResponse =
            serde_json::from_slice(&bytes).map_err(|e| ShipError::Failed {
                status,
                message: e.to_string(),
            })?;
        proof
            .hashes
            .iter()
            .map(|h| hex::decode(h).ok().and_then(|v| v.try_into().ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ShipError::Failed {
                status,
                message: "malformed consistency proof".into(),
            })
    }

    /// Post a batch; on success, the sequence numbers now durable in the log.
    pub async fn ship(&self, token: &str, records: &[AuditRecord]) -> Result<Vec<u64>, ShipError> {
        let mut body = Vec::new();
        for r in records {
            serde_json::to_writer(&mut body, r).map_err(|e| ShipError::Local(e.to_string()))?;
            body.push(b'\n');
        }
        let request = hyper::Request::post(format!("{}/v1/records", self.base))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ShipError::Local(e.to_string()))?;
        let (status, bytes) = self.send(request).await?;
        match status {
            200 => serde_json::from_slice::<BatchAck>(&bytes)
                .map(|ack| ack.acknowledged)
                .map_err(|e| ShipError::Failed {
                    status,
                    message: format!("unreadable acknowledgement: {e}"),
                }),
            _ => Err(Self::failure(status, &bytes)),
        }
    }

    /// Upload a session recording (asciicast v2) under its SHA-256 (64 lowercase hex digits),
    /// with the pod's projected token. Storing the same recording again succeeds. Errors are
    /// classified as for [`AuditClient::ship`]: [`ShipError::retryable`] says whether to try
    /// again later.
    pub async fn upload_recording(
        &self,
        token: &str,
        sha256: &str,
        body: Bytes,
    ) -> Result<(), ShipError> {
        if !is_sha256(sha256) {
            return Err(ShipError::Local(format!(
                "{sha256:?} is not a SHA-256: expected 64 lowercase hex digits"
            )));
        }
        let request = hyper::Request::put(format!("{}/v1/recordings/{sha256}", self.base))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/x-asciicast")
            .body(Full::new(body))
            .map_err(|e| ShipError::Local(e.to_string()))?;
        let (status, bytes) = self.send(request).await?;
        match status {
            200 | 201 => Ok(()),
            _ => Err(Self::failure(status, &bytes)),
        }
    }

    /// A stored recording, read with a token whose user may `get` the `evidence` subresource
    /// of AuditRetentions in every namespace. The content is checked against `sha256`.
    pub async fn recording(&self, token: &str, sha256: &str) -> Result<Bytes, ShipError> {
        self.recording_in(token, sha256, None).await
    }

    /// A stored recording sent from `namespace`, read with a token allowed evidence there
    /// (`None`: cluster-wide).
    pub async fn recording_in(
        &self,
        token: &str,
        sha256: &str,
        namespace: Option<&str>,
    ) -> Result<Bytes, ShipError> {
        if !is_sha256(sha256) {
            return Err(ShipError::Local(format!(
                "{sha256:?} is not a SHA-256: expected 64 lowercase hex digits"
            )));
        }
        let scope = namespace
            .map(|n| format!("?namespace={n}"))
            .unwrap_or_default();
        let (status, bytes) = self
            .get(&format!("/v1/recordings/{sha256}{scope}"), Some(token))
            .await?;
        if status != 200 {
            return Err(Self::failure(status, &bytes));
        }
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(ShipError::Failed {
                status,
                message: format!("recording {sha256} arrived with SHA-256 {actual}"),
            });
        }
        Ok(bytes)
    }
}
