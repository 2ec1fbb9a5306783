//! Message framing of the PostgreSQL v3 protocol: reading tagged messages and startup
//! packets, parsing the few frontend messages the proxy inspects, and building the backend
//! messages the proxy itself sends.
//!
//! The upstream side's authentication messages are parsed with `postgres-protocol`
//! ([`postgres_protocol::message::backend::Message`]); everything else passes through as
//! framed bytes so that the proxy adds no copy or re-encoding on the data path.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest startup packet accepted (PostgreSQL's own limit is 10000 bytes).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Largest message of any kind (PostgreSQL's own limit is 1 GiB).
pub const HARD_MAX_MESSAGE: usize = 1 << 30;

/// Protocol-level failures.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The peer sent bytes that are not a valid message.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A message is larger than allowed.
    #[error("message of type {tag:?} and {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message type.
        tag: char,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection closed in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A framed message: its type byte and its body (without the length word).
#[derive(Clone, Debug)]
pub struct Message {
    /// Type byte.
    pub tag: u8,
    /// Body.
    pub body: Bytes,
}

/// What a read returned.
#[derive(Debug)]
pub enum Read {
    /// A whole message.
    Message(Message),
    /// A message over the size limit for its kind, whose body was read and discarded.
    Oversized {
        /// Type byte.
        tag: u8,
        /// Body length.
        len: usize,
    },
    /// The peer closed the connection between messages.
    Eof,
}

fn map_eof(e: std::io::Error) -> ProtocolError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtocolError::Truncated
    } else {
        ProtocolError::Io(e)
    }
}

/// Read one tagged message. Messages longer than `limit` are discarded (and reported) when
/// `discardable(tag)` holds and they are within the hard limit; otherwise they are an error.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    discardable: impl Fn(u8) -> bool,
) -> Result<Read, ProtocolError> {
    read_message_limited(r, |_| limit, discardable).await
}

/// Read one tagged message whose size limit depends on its type. The limit is checked on the
/// announced length, before anything of the body is kept.
pub async fn read_message_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    limit_of: impl Fn(u8) -> usize,
    discardable: impl Fn(u8) -> bool,
) -> Result<Read, ProtocolError> {
    let mut head = [0u8; 5];
    match r.read(&mut head[..1]).await? {
        0 => return Ok(Read::Eof),
        _ => r.read_exact(&mut head[1..]).await.map_err(map_eof)?,
    };
    let tag = head[0];
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len < 4 {
        return Err(ProtocolError::Invalid(format!(
            "message of type {:?} has length {len}",
            char::from(tag)
        )));
    }
    let body_len = (len - 4) as usize;
    let limit = limit_of(tag);
    if body_len > limit {
        if discardable(tag) && body_len <= HARD_MAX_MESSAGE {
            let mut remaining = body_len as u64;
            let copied = tokio::io::copy(&mut (&mut *r).take(remaining), &mut tokio::io::sink())
                .await
                .map_err(map_eof)?;
            remaining -= copied;
            if remaining > 0 {
                return Err(ProtocolError::Truncated);
            }
            return Ok(Read::Oversized { tag, len: body_len });
        }
        return Err(ProtocolError::TooLarge {
            tag: char::from(tag),
            len: body_len,
            limit,
        });
    }
    let mut body = BytesMut::zeroed(body_len);
    r.read_exact(&mut body).await.map_err(map_eof)?;
    Ok(Read::Message(Message {
        tag,
        body: body.freeze(),
    }))
}

/// Append a framed message to an output buffer.
pub fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.reserve(body.len() + 5);
    out.put_u8(tag);
    out.put_i32((body.len() + 4) as i32);
    out.put_slice(body);
}

/// Read the length-prefixed packet that opens a connection (startup, SSL, GSS, cancel).
pub async fn read_startup_packet<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Bytes>, ProtocolError> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => r.read_exact(&mut len[1..]).await.map_err(map_eof)?,
    };
    let len = i32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(ProtocolError::Invalid(format!(
            "startup packet length {len} is out of range"
        )));
    }
    let mut body = BytesMut::zeroed(len as usize - 4);
    r.read_exact(&mut body).await.map_err(map_eof)?;
    Ok(Some(body.freeze()))
}

/// A cursor over a message body.
pub struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Start at the beginning of a body.
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    /// A NUL-terminated string as bytes.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| ProtocolError::Invalid("unterminated string".into()))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        std::str::from_utf8(self.cstr_bytes()?)
            .map_err(|_| ProtocolError::Invalid("string is not valid UTF-8".into()))
    }

    /// One byte.
    pub fn byte(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| ProtocolError::Invalid("message too short".into()))?;
        self.buf = rest;
        Ok(b)
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        if self.buf.len() < 4 {
            return Err(ProtocolError::Invalid("message too short".into()));
        }
        let v = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        self.buf = &self.buf[4..];
        Ok(v)
    }

    /// Bytes left.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `S` (localized severity).
    pub severity: String,
    /// `C` SQLSTATE.
    pub code: String,
    /// `M` primary message.
    pub message: String,
}

/// Parse the fields the proxy needs from an ErrorResponse body.
pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut out = ErrorFields::default();
    let mut f = Fields::new(body);
    while let Ok(code) = f.byte() {
        if code == 0 {
            break;
        }
        let Ok(value) = f.cstr() else { break };
        match code {
            b'S' => out.severity = value.to_owned(),
            b'C' => out.code = value.to_owned(),
            b'M' => out.message = value.to_owned(),
            _ => {}
        }
    }
    out
}

/// Append an ErrorResponse (severity `ERROR` or `FATAL`).
pub fn put_error(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    let mut body = BytesMut::with_capacity(message.len() + 32);
    for (k, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.put_u8(k);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    put_message(out, b'E', &body);
}

/// Append AuthenticationOk.
pub fn put_auth_ok(out: &mut BytesMut) {
    put_message(out, b'R', &0i32.to_be_bytes());
}

/// Append BackendKeyData.
pub fn put_backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&pid.to_be_bytes());
    body[4..].copy_from_slice(&secret.to_be_bytes());
    put_message(out, b'K', &body);
}

/// Append NegotiateProtocolVersion (newest minor version supported, unknown options).
pub fn put_negotiate_version(out: &mut BytesMut, minor: i32, unknown: &[String]) {
    let mut body = BytesMut::new();
    body.put_i32(minor);
    body.put_i32(unknown.len() as i32);
    for o in unknown {
        body.put_slice(o.as_bytes());
        body.put_u8(0);
    }
    put_message(out, b'v', &body);
}

/// A Query message body for `sql`.
pub fn query_body(sql: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(sql.len() + 1);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b
}

/// A Parse message body of the unnamed statement for `sql`, without parameter types.
pub fn parse_body(sql: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(sql.len() + 8);
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}
