//! Upstream TLS with rustls (ring provider): `disable`, `require` (encrypted, certificate not
//! verified, as libpq's `sslmode=require`) and `verify-full` (chain verified against a CA file
//! and the server name checked).

use std::path::Path;
use std::sync::Arc;

use portcullis_crds::protected_resource::TlsMode;
use portcullis_crds::sidecar_config::UpstreamConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use thiserror::Error;

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// `verify-full` without a CA file.
    #[error("tlsMode verify-full needs caFile")]
    MissingCa,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The name to verify is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// What the upstream connector needs for TLS.
#[derive(Clone)]
pub struct UpstreamTls {
    /// rustls configuration.
    pub config: Arc<ClientConfig>,
    /// Name sent as SNI and verified.
    pub server_name: ServerName<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the TLS settings of an upstream; `None` for `disable`.
pub fn upstream_tls(upstream: &UpstreamConfig) -> Result<Option<UpstreamTls>, TlsError> {
    let name = upstream
        .server_name
        .clone()
        .unwrap_or_else(|| upstream.host.clone());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?;
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match upstream.tls_mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        TlsMode::VerifyFull => {
            let ca = upstream.ca_file.as_deref().ok_or(TlsError::MissingCa)?;
            builder
                .with_root_certificates(load_roots(ca)?)
                .with_no_client_auth()
        }
    };
    Ok(Some(UpstreamTls {
        config: Arc::new(config),
        server_name,
    }))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let err = |reason: String| TlsError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(roots)
}

/// `require`: encrypt, but accept any certificate (signatures are still checked).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
