//! The upstream connection: TCP, optional TLS (SSLRequest then rustls), the startup message
//! with the sidecar's own credential, and SCRAM-SHA-256, MD5 or cleartext authentication.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use portcullis_crds::protected_resource::TlsMode;
use portcullis_crds::sidecar_config::{CredentialFiles, UpstreamConfig};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message as Backend;
use postgres_protocol::message::frontend;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::codec::{self, put_message, ErrorFields, Read};
use super::tls::UpstreamTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const AUTH_MESSAGE_LIMIT: usize = 64 * 1024;

/// Why the upstream could not be reached or refused the session.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// TCP or TLS failed.
    #[error("cannot connect to upstream {addr}: {reason}")]
    Connect {
        /// host:port.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The server refused TLS.
    #[error("upstream {0} does not accept TLS")]
    TlsRefused(String),
    /// The server asks for a password and no credential is configured.
    #[error("the server asks for a password and no credential is configured")]
    NoCredential,
    /// The credential files could not be read (the sidecar's log says which and why).
    #[error("cannot read the upstream credential")]
    Credential,
    /// The server asked for an authentication method the sidecar does not do.
    #[error("upstream asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    /// The server answered with an error.
    #[error("upstream refused the session: {} ({})", .0.message, .0.code)]
    Refused(ErrorFields),
    /// The server broke the protocol.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
}

impl From<std::io::Error> for UpstreamError {
    fn from(e: std::io::Error) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

impl From<codec::ProtocolError> for UpstreamError {
    fn from(e: codec::ProtocolError) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

/// A plain or TLS stream to the server.
pub enum UpstreamStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where and how to reach one upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Address and database.
    pub config: UpstreamConfig,
    /// TLS settings (`None`: plain).
    pub tls: Option<UpstreamTls>,
    /// Credential files.
    pub credentials: Option<CredentialFiles>,
}

/// An authenticated upstream session, ready for queries.
pub struct Established {
    /// The stream.
    pub stream: UpstreamStream,
    /// ParameterStatus and NoticeResponse messages to relay, framed.
    pub relay: BytesMut,
    /// The server's cancel key (process id, secret).
    pub key: Option<(i32, i32)>,
}

/// The user name and password of the upstream credential.
pub struct Credential {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Read one credential file. The file's path and the operating system's message go to the
/// sidecar's log only; the error the client sees says that the credential is unreadable.
fn read_trimmed(path: &Path) -> Result<String, UpstreamError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "cannot read a credential file");
            UpstreamError::Credential
        })
}

impl Upstream {
    /// Read the credential (re-read for every session so that rotated Secrets apply).
    pub fn credential(&self) -> Result<Option<Credential>, UpstreamError> {
        match &self.credentials {
            None => Ok(None),
            Some(files) => Ok(Some(Credential {
                user: read_trimmed(&files.username_file)?,
                password: read_trimmed(&files.password_file)?,
            })),
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// Open TCP and, unless disabled, TLS.
    pub async fn open(&self) -> Result<UpstreamStream, UpstreamError> {
        let addr = self.addr();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| UpstreamError::Connect {
                addr: addr.clone(),
                reason: "timed out".into(),
            })?
            .map_err(|e| UpstreamError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let mut tcp = tcp;
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            return Err(UpstreamError::TlsRefused(addr));
        }
        let connector = TlsConnector::from(tls.config.clone());
        let stream = connector
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                reason: format!("TLS: {e}"),
            })?;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    }

    /// Connect, start up with the sidecar's credential and authenticate.
    /// `params` are the client's startup parameters that are passed on.
    pub async fn connect(
        &self,
        client_user: &str,
        database: &str,
        params: &[(String, String)],
    ) -> Result<Established, UpstreamError> {
        let credential = self.credential()?;
        let user = credential
            .as_ref()
            .map(|c| c.user.clone())
            .unwrap_or_else(|| client_user.to_owned());
        let database = self.config.database.as_deref().unwrap_or(database);
        let mut stream = self.open().await?;

        let mut startup: Vec<(&str, &str)> = vec![("user", &user), ("database", database)];
        startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut buf = BytesMut::new();
        frontend::startup_message(startup, &mut buf)?;
        stream.write_all(&buf).await?;

        let mut scram: Option<ScramSha256> = None;
        let mut relay = BytesMut::new();
        let mut key = None;
        loop {
            let msg = match codec::read_message(&mut stream, AUTH_MESSAGE_LIMIT, |_| false).await? {
                Read::Message(m) => m,
                Read::Eof | Read::Oversized { .. } => {
                    return Err(UpstreamError::Protocol(
                        "server closed the connection during startup".into(),
                    ))
                }
            };
            let mut framed = BytesMut::new();
            put_message(&mut framed, msg.tag, &msg.body);
            let parsed = Backend::parse(&mut framed)?
                .ok_or_else(|| UpstreamError::Protocol("incomplete message".into()))?;
            let password = || {
                credential
                    .as_ref()
                    .map(|c| c.password.clone())
                    .ok_or(UpstreamError::NoCredential)
            };
            buf.clear();
            match parsed {
                Backend::AuthenticationOk => {}
                Backend::AuthenticationCleartextPassword => {
                    // The password itself would go to whoever answers: only to a server
                    // whose certificate was verified.
                    if self.config.tls_mode != TlsMode::VerifyFull {
                        return Err(UpstreamError::UnsupportedAuth(
                            "a cleartext password to a server whose certificate is not verified (use SCRAM-SHA-256, or tls mode verify-full)".into(),
                        ));
                    }
                    frontend::password_message(password()?.as_bytes(), &mut buf)?;
                }
                Backend::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut buf)?;
                }
                Backend::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next()? {
                        has_scram |= m == SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(UpstreamError::UnsupportedAuth(
                            "SASL without SCRAM-SHA-256".into(),
                        ));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)?;
                    scram = Some(s);
                }
                Backend::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        UpstreamError::Protocol("unexpected SASL continue".into())
                    })?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut buf)?;
                }
                Backend::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| UpstreamError::Protocol("unexpected SASL final".into()))?;
                    s.finish(body.data())?;
                }
                Backend::AuthenticationKerberosV5
                | Backend::AuthenticationScmCredential
                | Backend::AuthenticationGss
                | Backend::AuthenticationSspi
                | Backend::AuthenticationGssContinue(_) => {
                    return Err(UpstreamError::UnsupportedAuth("Kerberos/GSS/SSPI".into()));
                }
                Backend::BackendKeyData(body) => {
                    key = Some((body.process_id(), body.secret_key()));
                }
                Backend::ParameterStatus(_) | Backend::NoticeResponse(_) => {
                    put_message(&mut relay, msg.tag, &msg.body);
                }
                Backend::ErrorResponse(_) => {
                    return Err(UpstreamError::Refused(codec::parse_error_fields(&msg.body)));
                }
                Backend::ReadyForQuery(_) => {
                    return Ok(Established { stream, relay, key });
                }
                _ => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected message {:?} during startup",
                        char::from(msg.tag)
                    )))
                }
            }
            if !buf.is_empty() {
                stream.write_all(&buf).await?;
            }
        }
    }

    /// Send a CancelRequest for the given upstream key.
    pub async fn cancel(&self, pid: i32, secret: i32) -> Result<(), UpstreamError> {
        let mut stream = self.open().await?;
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut buf);
        stream.write_all(&buf).await?;
        stream.flush().await?;
        // The server closes the connection when done; wait briefly for it.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
        Ok(())
    }
}
