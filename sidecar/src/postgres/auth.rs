//! The client side of authentication. Clients that are not on loopback are refused unless
//! the resource allows them. When the resource's policies name OIDC issuers, a loopback
//! client is asked for a cleartext password (AuthenticationCleartextPassword) that carries
//! its ID token; the token is taken from the client, else from a policy's `tokenFile`, else
//! the workload's identity holds (where no token is required). A client that uses a mounted
//! token file answers the password request with anything that is not a token (for example
//! `-`). Without OIDC settings, local clients are accepted as before: the workload's
//! identity holds.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use portcullis_crds::audit::{Identity, IdentitySource};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::codec::{self, put_message, Fields, Read};
use super::startup::StartupParams;
use crate::identity::{is_loopback, AuthError};
use crate::runtime::Resource;

/// How long a client may take to send its password.
const PASSWORD_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest PasswordMessage read (a token is at most 16 KiB).
const MAX_PASSWORD_MESSAGE: usize = 32 * 1024;
/// AuthenticationCleartextPassword.
const AUTH_CLEARTEXT: i32 = 3;

/// The established identity of a session.
#[derive(Debug)]
pub struct Established {
    /// The workload, with the person or pipeline run of a valid token.
    pub identity: Identity,
    /// Whether NegotiateProtocolVersion was already sent (before the password request).
    pub negotiated: bool,
    /// Where the identity came from, when the resource accepts OIDC ID tokens.
    pub source: Option<IdentitySource>,
}

/// Establish who is behind a new session, asking for a token when the policies want one.
pub async fn establish(
    stream: &mut TcpStream,
    peer: SocketAddr,
    params: &StartupParams,
    res: &Resource,
) -> Result<Established, AuthError> {
    if !is_loopback(&peer) && !res.allow_remote_clients {
        return Err(AuthError::RemoteClient {
            peer: peer.to_string(),
        });
    }
    let Some(auth) = &res.auth else {
        return Ok(Established {
            identity: res.identity.clone(),
            negotiated: false,
            source: None,
        });
    };
    if !is_loopback(&peer) {
        // A cleartext password is asked for over loopback only: a remote client has the
        // token file or the workload.
        let (identity, source) = auth
            .resolve(&res.identity, None)
            .await
            .map_err(|e| match e {
                AuthError::Required { expected } => AuthError::NotLoopback { expected },
                other => other,
            })?;
        return Ok(Established {
            identity,
            negotiated: false,
            source: Some(source),
        });
    }
    let mut out = BytesMut::new();
    params.negotiation(&mut out);
    put_message(&mut out, b'R', &AUTH_CLEARTEXT.to_be_bytes());
    stream
        .write_all(&out)
        .await
        .map_err(|e| AuthError::Protocol(format!("cannot ask for the password: {e}")))?;
    let read = tokio::time::timeout(
        PASSWORD_TIMEOUT,
        codec::read_message(stream, MAX_PASSWORD_MESSAGE, |_| false),
    )
    .await
    .map_err(|_| AuthError::Protocol("no password sent in time".into()))?
    .map_err(|e| AuthError::Protocol(format!("password message: {e}")))?;
    let message = match read {
        Read::Message(m) if m.tag == b'p' => m,
        Read::Message(m) => {
            return Err(AuthError::Protocol(format!(
                "expected a password message, got message type {:?}",
                char::from(m.tag)
            )))
        }
        Read::Eof => {
            return Err(AuthError::Protocol(
                "the client closed the connection before sending a password".into(),
            ))
        }
        Read::Oversized { .. } => {
            return Err(AuthError::Protocol("password message too long".into()))
        }
    };
    let password = Fields::new(&message.body)
        .cstr()
        .map_err(|e| AuthError::Protocol(format!("password message: {e}")))?
        .to_owned();
    let (identity, source) = auth.resolve(&res.identity, Some(&password)).await?;
    Ok(Established {
        identity,
        negotiated: true,
        source: Some(source),
    })
}
