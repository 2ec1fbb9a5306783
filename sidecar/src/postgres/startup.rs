//! The client side of connection start-up: SSLRequest and GSSENCRequest are declined (the
//! agent talks to the sidecar over loopback; encryption happens upstream), CancelRequest is
//! recognised, and a protocol 3.0 StartupMessage is parsed. Newer minor versions and `_pq_`
//! options are answered with NegotiateProtocolVersion.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::codec::{self, Fields, ProtocolError};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3: i32 = 3;

/// What the client opened the connection for.
#[derive(Debug)]
pub enum Hello {
    /// A session.
    Startup(StartupParams),
    /// Cancel the query of another session.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret from BackendKeyData.
        secret: i32,
    },
}

/// The parameters of a StartupMessage.
#[derive(Debug, Default)]
pub struct StartupParams {
    /// Minor protocol version requested.
    pub minor: i32,
    /// All parameters in order (`_pq_` options excluded).
    pub params: Vec<(String, String)>,
    /// `_pq_.*` protocol options requested (none are supported).
    pub protocol_options: Vec<String>,
}

impl StartupParams {
    /// Value of a parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Answer to send before authentication when the client asked for more than 3.0.
    pub fn negotiation(&self, out: &mut BytesMut) {
        if self.minor > 0 || !self.protocol_options.is_empty() {
            codec::put_negotiate_version(out, 0, &self.protocol_options);
        }
    }
}

/// Read start-up packets until the client asks for a session or a cancel.
/// Returns `None` when the client closes the connection.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Option<Hello>, ProtocolError> {
    // SSLRequest, then GSSENCRequest (or the reverse) at most once each.
    for _ in 0..3 {
        let Some(packet) = codec::read_startup_packet(stream).await? else {
            return Ok(None);
        };
        let mut f = Fields::new(&packet);
        let code = f.i32()?;
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                if !f.rest().is_empty() {
                    return Err(ProtocolError::Invalid(
                        "encryption request with a body".into(),
                    ));
                }
                stream.write_all(b"N").await?;
            }
            CANCEL_REQUEST => {
                let pid = f.i32()?;
                let secret = f.i32()?;
                return Ok(Some(Hello::Cancel { pid, secret }));
            }
            v if v >> 16 == PROTOCOL_3 => {
                let mut params = StartupParams {
                    minor: v & 0xffff,
                    ..StartupParams::default()
                };
                loop {
                    let key = f.cstr()?;
                    if key.is_empty() {
                        break;
                    }
                    let value = f.cstr()?;
                    if key.starts_with("_pq_.") {
                        params.protocol_options.push(key.to_owned());
                    } else {
                        params.params.push((key.to_owned(), value.to_owned()));
                    }
                }
                if params.get("user").is_none_or(str::is_empty) {
                    return Err(ProtocolError::Invalid(
                        "no PostgreSQL user name specified in startup packet".into(),
                    ));
                }
                return Ok(Some(Hello::Startup(params)));
            }
            v => {
                return Err(ProtocolError::Invalid(format!(
                    "unsupported frontend protocol {}.{}: server supports 3.0",
                    v >> 16,
                    v & 0xffff
                )))
            }
        }
    }
    Err(ProtocolError::Invalid(
        "too many encryption requests".into(),
    ))
}
