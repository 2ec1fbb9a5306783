//! Relays of upgraded exec and attach streams, recorded as they pass.
//!
//! Two protocols carry the same channels (stdin 0, stdout 1, stderr 2, error 3, resize 4).
//! Each frame from the client is read the way the server reads it, recorded, and only then
//! forwarded; a frame the relay cannot classify ends the session instead of being passed.
//!
//! - WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`, ..., or no subprotocol): the
//!   server (`wsstream`) takes binary and text messages alike, the first byte naming the
//!   channel; in v5 a message `255 N` closes channel N. Stdin and resize messages are
//!   recorded; a message for an output channel or an unknown one, or a malformed close, is
//!   refused. Both ends are spoken with tungstenite.
//! - SPDY/3.1: each channel is a stream the client opens with a SYN_STREAM whose (zlib
//!   compressed) headers name its `streamType`. Header blocks are read with the server's
//!   rules (`spdystream`): names must be lowercase and appear once, a value holding NUL bytes
//!   is a list whose first item counts. Every frame that carries a header block keeps the
//!   shared zlib context in step. A stream of unknown type, data on a stream never opened or
//!   on an output stream, HEADERS that name a stream type, and unknown control frames are
//!   refused. Frames pass through unchanged otherwise.
//! - Resize messages are a stream of JSON objects (decoded like Go's `encoding/json`: field
//!   names in any case, the last duplicate counts), however they are split over frames.
//!
//! Live masking, where a policy asks for it, runs the same screen scanner as the recording
//! over each output channel and releases masked bytes as they are safe (see [`LiveMask`]):
//! an unfinished line is released after [`LIVE_IDLE`] without more output up to where a
//! value could begin, and a possible value is held until its line ends, at most
//! [`LIVE_HOLD`], then released masked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress, Status};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::recording::{OutputMasker, Recorder};
use super::screen::{Direction, Scanner};
use super::spdy_dictionary::HEADER_DICTIONARY;

/// WebSocket subprotocols the relay understands (binary channel framing).
pub const WEBSOCKET_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Largest SPDY frame accepted (the protocol's own limit is 16 MiB).
const MAX_SPDY_FRAME: usize = 16 * 1024 * 1024;

/// Held-back live output that cannot be the start of a value is released after this long
/// without more output.
pub const LIVE_IDLE: Duration = Duration::from_millis(50);

/// Longest time live output is held for a possible value to end; it is then released with
/// that possible value masked.
pub const LIVE_HOLD: Duration = Duration::from_secs(1);

/// Largest resize message held while waiting for the rest of it.
const MAX_RESIZE_PENDING: usize = 64 * 1024;

/// Why a relay ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A peer broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A client frame the recorder cannot classify: refused, the session ends.
    #[error("frame refused: {0}")]
    Refused(String),
}

/// Live masking of output channels, keyed by channel (WebSocket) or stream id (SPDY).
///
/// Output is released to the client when the screen scanner releases it (at line ends). When
/// the output goes quiet in the middle of a line for [`LIVE_IDLE`], the held text is
/// released up to the first character from which it could still grow into a value; that
/// possible value stays held until its line ends, or is released masked once something has
/// been held for [`LIVE_HOLD`]. A value split across frames, however long the pause between
/// them, never reaches the client in clear.
pub struct LiveMask {
    masker: Arc<OutputMasker>,
    scanners: HashMap<u32, Scanner>,
    /// When output last arrived, while something is held.
    last: Option<Instant>,
    /// Since when something has been held.
    held_since: Option<Instant>,
    /// The quiet release has run since output last arrived.
    quiet_done: bool,
    /// The terminal's size (columns, rows), from the resize messages.
    size: (usize, usize),
}

impl LiveMask {
    /// Live masking with these detectors.
    pub fn new(masker: Arc<OutputMasker>) -> Self {
        LiveMask {
            masker,
            scanners: HashMap::new(),
            last: None,
            held_since: None,
            quiet_done: false,
            size: (80, 24),
        }
    }

    fn pending(&self) -> bool {
        self.scanners.values().any(|s| s.pending() > 0)
    }

    /// The terminal was resized: every output stream's screen follows.
    pub fn resize(&mut self, cols: u16, rows: u16) {
        self.size = (usize::from(cols), usize::from(rows));
        let masker = self.masker.clone();
        for scanner in self.scanners.values_mut() {
            scanner.resize(&masker, self.size.0, self.size.1);
        }
    }

    fn push(&mut self, key: u32, data: &[u8]) -> Vec<u8> {
        let size = self.size;
        let scanner = self
            .scanners
            .entry(key)
            .or_insert_with(|| Scanner::with_size(Direction::Output, size.0, size.1));
        let out = scanner.push(&self.masker, data);
        if self.pending() {
            let now = Instant::now();
            self.last = Some(now);
            self.held_since.get_or_insert(now);
            self.quiet_done = false;
        } else {
            self.last = None;
            self.held_since = None;
        }
        out
    }

    fn flush(&mut self, key: u32) -> Vec<u8> {
        let masker = self.masker.clone();
        self.scanners
            .get_mut(&key)
            .map(|s| s.flush(&masker))
            .unwrap_or_default()
    }

    /// Every held part, by key (the streams have ended: nothing more can complete a value).
    fn flush_all(&mut self) -> Vec<(u32, Vec<u8>)> {
        self.last = None;
        self.held_since = None;
        let masker = self.masker.clone();
        let mut keys: Vec<u32> = self.scanners.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|k| {
                let out = self.scanners.get_mut(&k)?.flush(&masker);
                (!out.is_empty()).then_some((k, out))
            })
            .collect()
    }

    /// What the deadline releases: the held text that cannot be the start of a value, or,
    /// once [`LIVE_HOLD`] has passed, everything with the possible values masked.
    fn release_due(&mut self) -> Vec<(u32, Vec<u8>)> {
        let hold_over = self.held_since.is_some_and(|t| t.elapsed() >= LIVE_HOLD);
        self.quiet_done = true;
        let masker = self.masker.clone();
        let mut keys: Vec<u32> = self.scanners.keys().copied().collect();
        keys.sort_unstable();
        let out = keys
            .into_iter()
            .filter_map(|k| {
                let out = self.scanners.get_mut(&k)?.release_quiet(&masker, hold_over);
                (!out.is_empty()).then_some((k, out))
            })
            .collect();
        if !self.pending() {
            self.last = None;
            self.held_since = None;
        }
        out
    }

    fn deadline(&self) -> Option<Instant> {
        let held = self.held_since?;
        if self.quiet_done {
            Some(held + LIVE_HOLD)
        } else {
            self.last.map(|t| (t + LIVE_IDLE).min(held + LIVE_HOLD))
        }
    }
}

/// Decodes the resize channel: a stream of JSON objects `{"Width":W,"Height":H}`.
#[derive(Default)]
struct ResizeDecoder {
    buf: Vec<u8>,
    /// The server stops reading resizes after a value it cannot decode.
    dead: bool,
}

impl ResizeDecoder {
    /// The sizes complete in `data`; `Err` names a value the server cannot decode (it then
    /// reads no further resizes).
    fn push(&mut self, data: &[u8]) -> Result<Vec<(u16, u16)>, String> {
        if self.dead {
            return Ok(Vec::new());
        }
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut used = 0;
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Json>();
        let result = loop {
            match values.next() {
                None => break Ok(()),
                Some(Ok(v)) => {
                    used = values.byte_offset();
                    match terminal_size(&v) {
                        Some(size) => sizes.push(size),
                        None => break Err(format!("resize message {v} is not a terminal size")),
                    }
                }
                Some(Err(e)) if e.is_eof() => break Ok(()),
                Some(Err(e)) => break Err(format!("resize stream is not JSON: {e}")),
            }
        };
        self.buf.drain(..used);
        if let Err(e) = result {
            self.dead = true;
            self.buf.clear();
            return Err(e);
        }
        if self.buf.len() > MAX_RESIZE_PENDING {
            self.dead = true;
            return Err("resize message too long".into());
        }
        Ok(sizes)
    }
}

/// A JSON value whose objects keep their members in document order (duplicates included), as
/// Go's decoder sees them.
enum Json {
    Object(Vec<(String, serde_json::Value)>),
    Other(serde_json::Value),
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, serde_json::Value>()? {
                    members.push(member);
                }
                Ok(Json::Object(members))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Json::Other(serde_json::Value::Array(Vec::new())))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Other(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Other(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Other(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(Json::Other(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::Other(v.into()))
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Other(serde_json::Value::Null))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Json::Object(m) => write!(f, "object of {} members", m.len()),
            Json::Other(v) => write!(f, "{v}"),
        }
    }
}

/// A terminal size as Go's `encoding/json` reads it into `struct{Width, Height uint16}`:
/// member names in any case, the last of duplicates counts, `null` leaves a field alone.
fn terminal_size(v: &Json) -> Option<(u16, u16)> {
    let Json::Object(object) = v else {
        return None;
    };
    let (mut width, mut height) = (0u16, 0u16);
    for (k, v) in object {
        let target = if k.eq_ignore_ascii_case("width") {
            &mut width
        } else if k.eq_ignore_ascii_case("height") {
            &mut height
        } else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        *target = u16::try_from(v.as_u64()?).ok()?;
    }
    Some((width, height))
}

/// A recorded stream session.
pub struct StreamSession {
    /// The recording.
    pub recorder: Recorder,
    /// Mask the output the client sees as well.
    pub live: Option<LiveMask>,
    /// Exit code from the error channel.
    pub exit_code: Option<i32>,
    /// Why the relay refused a frame and ended the session.
    pub refused: Option<String>,
    resize: ResizeDecoder,
}

impl StreamSession {
    /// A session recorded by `recorder`, with live masking when `live` is given.
    pub fn new(recorder: Recorder, live: Option<LiveMask>) -> Self {
        StreamSession {
            recorder,
            live,
            exit_code: None,
            refused: None,
            resize: ResizeDecoder::default(),
        }
    }

    fn stdin(&mut self, data: &[u8]) {
        self.recorder.input(data);
    }

    fn output(&mut self, data: &[u8]) {
        self.recorder.output(data);
    }

    fn resize(&mut self, data: &[u8]) {
        match self.resize.push(data) {
            Ok(sizes) => {
                for (w, h) in sizes {
                    if let Some(live) = self.live.as_mut() {
                        live.resize(w, h);
                    }
                    self.recorder.resize(w, h);
                }
            }
            Err(e) => self
                .recorder
                .marker(&format!("{e}; the server reads no further resizes")),
        }
    }

    /// The error-channel message that ends a session the recording cannot go on with.
    fn ended(&self) -> Option<Vec<u8>> {
        let message = self.recorder.ended()?;
        tracing::warn!(reason = %message, "exec session ended at the recording limit");
        Some(
            serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "Forbidden",
                "code": 403,
            })
            .to_string()
            .into_bytes(),
        )
    }

    fn refuse(&mut self, reason: String) -> RelayError {
        tracing::warn!(reason = %reason, "exec stream frame refused; session ended");
        self.recorder.marker(&format!("frame refused: {reason}"));
        self.refused = Some(reason.clone());
        RelayError::Refused(reason)
    }

    fn status(&mut self, data: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        if v["status"] == "Success" {
            self.exit_code = Some(0);
            return;
        }
        let code = v["details"]["causes"].as_array().and_then(|causes| {
            causes
                .iter()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse::<i32>().ok())
        });
        self.exit_code = code.or(Some(-1));
    }
}

/// What the relay does with a message from a WebSocket client.
#[derive(Debug, PartialEq, Eq)]
enum ClientFrame {
    /// Forward as is (control messages, empty data messages the server skips).
    Pass,
    /// Standard input.
    Stdin,
    /// A resize message.
    Resize,
    /// v5 close of a channel.
    Close(u8),
}

/// Classify a data message from the client as the server's `wsstream` reads it.
fn classify_client(data: &[u8], v5: bool) -> Result<ClientFrame, String> {
    let Some(&channel) = data.first() else {
        return Ok(ClientFrame::Pass);
    };
    if v5 && channel == 255 {
        return match data {
            [_, c] if *c <= 4 => Ok(ClientFrame::Close(*c)),
            _ => Err(format!(
                "malformed channel close ({} bytes)",
                data.len().saturating_sub(1)
            )),
        };
    }
    match channel {
        0 => Ok(ClientFrame::Stdin),
        4 => Ok(ClientFrame::Resize),
        1..=3 => Err(format!("client data on output channel {channel}")),
        c => Err(format!("client data on unknown channel {c}")),
    }
}

/// Relay a WebSocket exec stream between the client and the API server.
pub async fn relay_websocket(
    client: Upgraded,
    upstream: Upgraded,
    protocol: &str,
    session: &mut StreamSession,
) {
    let client = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
    let upstream =
        WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, None).await;
    if let Err(e) = websocket_loop(client, upstream, protocol, session).await {
        tracing::debug!(error = %e, "exec WebSocket stream ended");
    }
}

async fn websocket_loop<C, U>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    protocol: &str,
    session: &mut StreamSession,
) -> Result<(), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    let ws = |e: tokio_tungstenite::tungstenite::Error| RelayError::Protocol(e.to_string());
    let v5 = protocol == "v5.channel.k8s.io";
    let result = if !protocol.is_empty() && !WEBSOCKET_PROTOCOLS.contains(&protocol) {
        Err(session.refuse(format!(
            "subprotocol {protocol:?} is not one the relay reads"
        )))
    } else {
        loop {
            let deadline = session.live.as_ref().and_then(LiveMask::deadline);
            tokio::select! {
                m = client_rx.next() => match m {
                    Some(Ok(msg)) => {
                        let data: Option<&[u8]> = match &msg {
                            Message::Binary(b) => Some(b),
                            Message::Text(t) => Some(t.as_bytes()),
                            _ => None,
                        };
                        if let Some(data) = data {
                            match classify_client(data, v5) {
                                Ok(ClientFrame::Stdin) => session.stdin(&data[1..]),
                                Ok(ClientFrame::Resize) => session.resize(&data[1..]),
                                // A half-close (the end of standard input) is not an event of the recording.
                                Ok(ClientFrame::Close(_)) | Ok(ClientFrame::Pass) => {}
                                Err(reason) => break Err(session.refuse(reason)),
                            }
                        }
                        if let Some(status) = session.ended() {
                            break end_websocket(&mut client_tx, status).await;
                        }
                        let closing = matches!(msg, Message::Close(_));
                        up_tx.send(msg).await.map_err(ws)?;
                        if closing {
                            break Ok(());
                        }
                    }
                    Some(Err(e)) => break Err(ws(e)),
                    None => break Ok(()),
                },
                m = up_rx.next() => match m {
                    Some(Ok(msg)) => {
                        let msg = match msg {
                            Message::Binary(b) => match b.first().copied() {
                                Some(c @ (1 | 2)) => {
                                    session.output(&b[1..]);
                                    if let Some(status) = session.ended() {
                                        break end_websocket(&mut client_tx, status).await;
                                    }
                                    match session.live.as_mut() {
                                        Some(live) => {
                                            let out = live.push(u32::from(c), &b[1..]);
                                            if out.is_empty() {
                                                continue;
                                            }
                                            let mut data = Vec::with_capacity(out.len() + 1);
                                            data.push(c);
                                            data.extend_from_slice(&out);
                                            Message::Binary(data.into())
                                        }
                                        None => Message::Binary(b),
                                    }
                                }
                                Some(3) => {
                                    session.status(&b[1..]);
                                    Message::Binary(b)
                                }
                                _ => Message::Binary(b),
                            },
                            other => other,
                        };
                        let closing = matches!(msg, Message::Close(_));
                        if closing {
                            flush_live_websocket(session, &mut client_tx).await?;
                        }
                        client_tx.send(msg).await.map_err(ws)?;
                        if closing {
                            break Ok(());
                        }
                    }
                    Some(Err(e)) => break Err(ws(e)),
                    None => break Ok(()),
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    release_live_websocket(session, &mut client_tx).await?;
                }
            }
        }
    };
    let _ = flush_live_websocket(session, &mut client_tx).await;
    let _ = client_tx.close().await;
    let _ = up_tx.close().await;
    result
}

/// Tell the client on the error channel why its session ends, and end it.
async fn end_websocket<S>(tx: &mut S, status: Vec<u8>) -> Result<(), RelayError>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let mut data = Vec::with_capacity(status.len() + 1);
    data.push(3);
    data.extend_from_slice(&status);
    tx.send(Message::Binary(data.into()))
        .await
        .map_err(|e| RelayError::Protocol(e.to_string()))?;
    // A normal close, so the client reads the error channel to its end and shows the message.
    let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    tx.send(Message::Close(Some(close)))
        .await
        .map_err(|e| RelayError::Protocol(e.to_string()))?;
    Err(RelayError::Refused(
        "the recording reached its size limit".into(),
    ))
}

/// Tell a SPDY client on its error stream why its session ends, and end it.
async fn end_spdy<C: AsyncWrite + Unpin>(
    client: &mut C,
    channels: &HashMap<u32, Channel>,
    status: Vec<u8>,
) -> Result<(), RelayError> {
    if let Some((id, _)) = channels.iter().find(|(_, c)| **c == Channel::Error) {
        client.write_all(&data_frame(*id, true, &status)).await?;
    }
    Err(RelayError::Refused(
        "the recording reached its size limit".into(),
    ))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Send the client every held part (the streams end).
async fn flush_live_websocket<S>(session: &mut StreamSession, tx: &mut S) -> Result<(), RelayError>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let Some(live) = session.live.as_mut() else {
        return Ok(());
    };
    let parts = live.flush_all();
    send_live_websocket(parts, tx).await
}

/// Send the client what the live deadline releases.
async fn release_live_websocket<S>(
    session: &mut StreamSession,
    tx: &mut S,
) -> Result<(), RelayError>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let Some(live) = session.live.as_mut() else {
        return Ok(());
    };
    let parts = live.release_due();
    send_live_websocket(parts, tx).await
}

async fn send_live_websocket<S>(parts: Vec<(u32, Vec<u8>)>, tx: &mut S) -> Result<(), RelayError>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    for (channel, out) in parts {
        let mut data = Vec::with_capacity(out.len() + 1);
        data.push(channel as u8);
        data.extend_from_slice(&out);
        tx.send(Message::Binary(data.into()))
            .await
            .map_err(|e| RelayError::Protocol(e.to_string()))?;
    }
    Ok(())
}

/// Kind of a SPDY stream of the remote-command protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Stdin,
    Stdout,
    Stderr,
    Error,
    Resize,
}

impl Channel {
    fn from_stream_type(t: &str) -> Option<Channel> {
        Some(match t {
            "stdin" => Channel::Stdin,
            "stdout" => Channel::Stdout,
            "stderr" => Channel::Stderr,
            "error" => Channel::Error,
            "resize" => Channel::Resize,
            _ => return None,
        })
    }
}

/// Reads the frames of one direction of a SPDY/3.1 connection.
struct SpdyReader {
    buf: Vec<u8>,
    inflate: Decompress,
}

impl SpdyReader {
    fn new() -> Self {
        SpdyReader {
            buf: Vec::new(),
            inflate: Decompress::new(true),
        }
    }

    /// The next whole frame in the buffer, if any.
    fn next_frame(&mut self) -> Result<Option<Vec<u8>>, RelayError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = usize::from(self.buf[5]) << 16
            | usize::from(self.buf[6]) << 8
            | usize::from(self.buf[7]);
        if len > MAX_SPDY_FRAME {
            return Err(RelayError::Protocol(format!("SPDY frame of {len} bytes")));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.drain(..8 + len).collect()))
    }

    /// Decompress a header block with this direction's shared zlib context.
    fn headers(&mut self, block: &[u8]) -> Result<Headers, RelayError> {
        let bad = |m: String| RelayError::Protocol(m);
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before_in = self.inflate.total_in();
            let before_out = self.inflate.total_out();
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            match self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&HEADER_DICTIONARY)
                        .map_err(|e| bad(format!("SPDY header dictionary: {e}")))?;
                }
                Err(e) => return Err(bad(format!("SPDY header block: {e}"))),
            }
            let used = usize::try_from(self.inflate.total_in() - before_in).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            let produced = self.inflate.total_out() - before_out;
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
            if out.len() > MAX_SPDY_FRAME {
                return Err(bad("SPDY header block too large".into()));
            }
            if used == 0 && produced == 0 && out.capacity() > out.len() {
                return Err(bad("SPDY header block does not decompress".into()));
            }
        }
        parse_header_block(&out)
    }
}

/// A header block: each name once, with its values (a value holding NUL bytes is a list).
type Headers = Vec<(String, Vec<String>)>;

/// Read a header block with the rules of the server's `spdystream`: names must be lowercase
/// and appear once (the server drops the connection otherwise); values split at NUL.
fn parse_header_block(b: &[u8]) -> Result<Headers, RelayError> {
    let bad = |m: &str| RelayError::Protocol(m.to_owned());
    fn u32_at(b: &[u8], at: usize) -> Result<usize, RelayError> {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .ok_or_else(|| RelayError::Protocol("truncated SPDY header block".to_owned()))
    }
    let n = u32_at(b, 0)?;
    let mut at = 4;
    let mut out: Headers = Vec::new();
    for _ in 0..n {
        let nl = u32_at(b, at)?;
        let name = b
            .get(at + 4..at + 4 + nl)
            .ok_or_else(|| bad("truncated SPDY header name"))?;
        at += 4 + nl;
        let vl = u32_at(b, at)?;
        let value = b
            .get(at + 4..at + 4 + vl)
            .ok_or_else(|| bad("truncated SPDY header value"))?;
        at += 4 + vl;
        let name = String::from_utf8_lossy(name).into_owned();
        if name != name.to_lowercase() {
            return Err(bad("SPDY header name not in lowercase"));
        }
        if out.iter().any(|(k, _)| *k == name) {
            return Err(bad("SPDY header named twice"));
        }
        let values = value
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        out.push((name, values));
    }
    Ok(out)
}

/// The stream type a header block names, as the server reads it (`Header.Get`).
fn stream_type(headers: &Headers) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k == "streamtype")
        .and_then(|(_, v)| v.first())
        .map(String::as_str)
}

fn stream_id(frame: &[u8], at: usize) -> u32 {
    frame
        .get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0] & 0x7f, s[1], s[2], s[3]]))
        .unwrap_or(0)
}

/// A SPDY data frame for `id` carrying `data` (with FIN when `fin`).
fn data_frame(id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { 0x01 } else { 0 });
    let len = data.len() as u32;
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// Relay a SPDY/3.1 exec stream between the client and the API server.
pub async fn relay_spdy(client: Upgraded, upstream: Upgraded, session: &mut StreamSession) {
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = spdy_loop(&mut client, &mut upstream, session).await {
        tracing::debug!(error = %e, "exec SPDY stream ended");
    }
    let _ = client.shutdown().await;
    let _ = upstream.shutdown().await;
}

/// Read and classify one frame from the client; the error is a refusal.
fn client_spdy_frame(
    frame: &[u8],
    reader: &mut SpdyReader,
    channels: &mut HashMap<u32, Channel>,
    session: &mut StreamSession,
) -> Result<(), RelayError> {
    if frame[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([frame[0] & 0x7f, frame[1]]);
        if version != 3 {
            return Err(session.refuse(format!("SPDY version {version}")));
        }
        let kind = u16::from_be_bytes([frame[2], frame[3]]);
        match kind {
            1 => {
                // SYN_STREAM: stream id, associated id, priority and slot, then headers.
                let id = stream_id(frame, 8);
                let headers = reader.headers(frame.get(18..).unwrap_or_default())?;
                let kind = stream_type(&headers).unwrap_or("").to_owned();
                let Some(channel) = Channel::from_stream_type(&kind) else {
                    return Err(session.refuse(format!("stream of type {kind:?}")));
                };
                if channels.insert(id, channel).is_some() {
                    return Err(session.refuse(format!("stream {id} opened twice")));
                }
            }
            2 | 8 => {
                // SYN_REPLY, HEADERS: stream id, then headers (read to keep zlib in step).
                let headers = reader.headers(frame.get(12..).unwrap_or_default())?;
                if stream_type(&headers).is_some() {
                    return Err(session.refuse("HEADERS naming a stream type".into()));
                }
            }
            3 | 4 | 6 | 7 | 9 => {}
            other => return Err(session.refuse(format!("SPDY control frame type {other}"))),
        }
        return Ok(());
    }
    let id = stream_id(frame, 0);
    let data = &frame[8..];
    match channels.get(&id) {
        Some(Channel::Stdin) => session.stdin(data),
        Some(Channel::Resize) => session.resize(data),
        Some(_) if data.is_empty() => {}
        Some(c) => return Err(session.refuse(format!("client data on the {c:?} stream"))),
        None => return Err(session.refuse(format!("data on stream {id}, never opened"))),
    }
    Ok(())
}

async fn spdy_loop<C, U>(
    client: &mut C,
    upstream: &mut U,
    session: &mut StreamSession,
) -> Result<(), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut from_client = SpdyReader::new();
    let mut from_upstream = SpdyReader::new();
    let mut channels: HashMap<u32, Channel> = HashMap::new();
    let mut cbuf = vec![0u8; 64 * 1024];
    let mut ubuf = vec![0u8; 64 * 1024];
    let result = loop {
        let deadline = session.live.as_ref().and_then(LiveMask::deadline);
        tokio::select! {
            n = client.read(&mut cbuf) => {
                let n = n?;
                if n == 0 {
                    break Ok(());
                }
                from_client.buf.extend_from_slice(&cbuf[..n]);
                while let Some(frame) = from_client.next_frame()? {
                    client_spdy_frame(&frame, &mut from_client, &mut channels, session)?;
                    if let Some(status) = session.ended() {
                        return end_spdy(client, &channels, status).await;
                    }
                    upstream.write_all(&frame).await?;
                }
            }
            n = upstream.read(&mut ubuf) => {
                let n = n?;
                if n == 0 {
                    break Ok(());
                }
                from_upstream.buf.extend_from_slice(&ubuf[..n]);
                while let Some(frame) = from_upstream.next_frame()? {
                    if frame[0] & 0x80 == 0 {
                        let id = stream_id(&frame, 0);
                        match channels.get(&id) {
                            Some(Channel::Stdout | Channel::Stderr) => {
                                session.output(&frame[8..]);
                                if let Some(status) = session.ended() {
                                    return end_spdy(client, &channels, status).await;
                                }
                                if let Some(live) = session.live.as_mut() {
                                    let fin = frame[4] & 0x01 != 0;
                                    let mut out = live.push(id, &frame[8..]);
                                    if fin {
                                        out.extend(live.flush(id));
                                    }
                                    if !out.is_empty() || fin {
                                        client.write_all(&data_frame(id, fin, &out)).await?;
                                    }
                                    continue;
                                }
                            }
                            Some(Channel::Error) => session.status(&frame[8..]),
                            _ => {}
                        }
                    }
                    client.write_all(&frame).await?;
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                if let Some(live) = session.live.as_mut() {
                    for (id, out) in live.release_due() {
                        client.write_all(&data_frame(id, false, &out)).await?;
                    }
                }
            }
        }
    };
    if let Some(live) = session.live.as_mut() {
        for (id, out) in live.flush_all() {
            let _ = client.write_all(&data_frame(id, false, &out)).await;
        }
    }
    result
}

/// The decoders of exec streams, reachable for the fuzz targets.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::super::spdy_dictionary::HEADER_DICTIONARY;
    use super::{
        classify_client, stream_id, stream_type, Channel, ClientFrame, ResizeDecoder, SpdyReader,
    };

    /// One frame of a SPDY direction as the relay reads it.
    #[derive(Debug, PartialEq, Eq)]
    pub enum SpdyFrame {
        /// A control frame; `headers` for SYN_STREAM, SYN_REPLY and HEADERS.
        Control {
            /// Frame type.
            kind: u16,
            /// Stream id (SYN_STREAM, SYN_REPLY, HEADERS).
            id: u32,
            /// The decompressed header block.
            headers: Option<Vec<(String, Vec<String>)>>,
            /// Whether a SYN_STREAM names a channel the relay knows.
            known_channel: bool,
        },
        /// A data frame.
        Data {
            /// Stream id.
            id: u32,
            /// Payload length.
            len: usize,
        },
    }

    /// Read the frames of one direction fed in `chunks`, as the relay reads them; the error is
    /// the relay's.
    pub fn spdy_frames(chunks: &[&[u8]]) -> Result<Vec<SpdyFrame>, String> {
        let mut reader = SpdyReader::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            reader.buf.extend_from_slice(chunk);
            while let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? {
                if frame[0] & 0x80 == 0 {
                    frames.push(SpdyFrame::Data {
                        id: stream_id(&frame, 0),
                        len: frame.len() - 8,
                    });
                    continue;
                }
                let kind = u16::from_be_bytes([frame[2], frame[3]]);
                let at = match kind {
                    1 => Some(18),
                    2 | 8 => Some(12),
                    _ => None,
                };
                let headers = match at {
                    Some(at) => Some(
                        reader
                            .headers(frame.get(at..).unwrap_or_default())
                            .map_err(|e| e.to_string())?,
                    ),
                    None => None,
                };
                let known_channel = kind == 1
                    && headers
                        .as_ref()
                        .and_then(stream_type)
                        .and_then(Channel::from_stream_type)
                        .is_some();
                frames.push(SpdyFrame::Control {
                    kind,
                    id: stream_id(&frame, 8),
                    headers,
                    known_channel,
                });
            }
        }
        Ok(frames)
    }

    /// Terminal sizes of a resize stream fed in `chunks`; each chunk's result.
    pub fn resize_sizes(chunks: &[&[u8]]) -> Vec<Result<Vec<(u16, u16)>, String>> {
        let mut decoder = ResizeDecoder::default();
        chunks.iter().map(|c| decoder.push(c)).collect()
    }

    /// How the relay reads a WebSocket data message from the client: `Ok(None)` passes it,
    /// `Ok(Some(channel))` is standard input (0), a resize (4) or a v5 close of `256 + c`.
    pub fn classify(data: &[u8], v5: bool) -> Result<Option<u16>, String> {
        classify_client(data, v5).map(|f| match f {
            ClientFrame::Pass => None,
            ClientFrame::Stdin => Some(0),
            ClientFrame::Resize => Some(4),
            ClientFrame::Close(c) => Some(256 + u16::from(c)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn block(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
        for (k, v) in pairs {
            b.extend_from_slice(&(k.len() as u32).to_be_bytes());
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    #[test]
    fn reads_compressed_header_blocks_across_frames() {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&HEADER_DICTIONARY).expect("dictionary");
        let mut reader = SpdyReader::new();
        for kind in ["stdout", "stderr", "error"] {
            let mut out = Vec::with_capacity(4096);
            c.compress_vec(
                &block(&[("streamtype", kind), ("port", "x")]),
                &mut out,
                FlushCompress::Sync,
            )
            .expect("compress");
            let headers = reader.headers(&out).expect("headers");
            assert_eq!(stream_type(&headers), Some(kind));
        }
    }

    #[test]
    fn header_blocks_are_read_as_the_server_reads_them() {
        // A NUL-separated list: the server's Header.Get takes the first item.
        let h = parse_header_block(&block(&[("streamtype", "stdin\0stdout")])).expect("parse");
        assert_eq!(stream_type(&h), Some("stdin"));
        for bad in [
            block(&[("streamType", "stdin")]),
            block(&[("streamtype", "stdout"), ("streamtype", "stdin")]),
        ] {
            assert!(parse_header_block(&bad).is_err());
        }
    }

    #[test]
    fn websocket_client_messages_are_classified_or_refused() {
        assert_eq!(classify_client(b"\0ls\n", true), Ok(ClientFrame::Stdin));
        assert_eq!(classify_client(b"\x04{}", false), Ok(ClientFrame::Resize));
        assert_eq!(classify_client(b"", true), Ok(ClientFrame::Pass));
        assert_eq!(classify_client(b"\xff\0", true), Ok(ClientFrame::Close(0)));
        for bad in [
            &b"\xff"[..],
            b"\xff\0\0",
            b"\xff\x09",
            b"\x01x",
            b"\x03x",
            b"\x05x",
        ] {
            assert!(classify_client(bad, true).is_err(), "{bad:?}");
        }
        // Before v5, 255 is not a close: an unknown channel.
        assert!(classify_client(b"\xff\0", false).is_err());
    }

    #[test]
    fn resize_messages_decode_like_go_json_across_frames() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":100,"#).expect("part"), vec![]);
        assert_eq!(
            d.push(br#""Height":40}{"width":90,"HEIGHT":30,"Width":91}"#)
                .expect("rest"),
            vec![(100, 40), (91, 30)]
        );
        assert!(d.push(br#"{"Width":70000,"Height":1}"#).is_err());
        assert_eq!(d.push(br#"{"Width":1,"Height":1}"#).expect("dead"), vec![]);
    }

    fn syn_stream(c: &mut Compress, id: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut headers = Vec::with_capacity(4096);
        c.compress_vec(&block(pairs), &mut headers, FlushCompress::Sync)
            .expect("compress");
        let mut f = vec![0x80, 3, 0, 1, 0];
        let len = (10 + headers.len()) as u32;
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&headers);
        f
    }

    #[test]
    fn spdy_client_frames_are_recorded_or_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let masker = Arc::new(OutputMasker::new(&[]).expect("detectors"));
        let header = super::super::recording::Header {
            command: "cat",
            title: "ns/pod/c",
            size: (80, 24),
            session: "s",
            request_id: 1,
            resource: "api",
            protocol: "SPDY/3.1+v4.channel.k8s.io",
        };
        let new_session = |name: &str| {
            let recorder =
                Recorder::create(dir.path(), name, &header, masker.clone(), Box::new(|_| {}))
                    .expect("recorder");
            StreamSession::new(recorder, None)
        };
        // A stream whose type is a NUL-separated list is the first item's: stdin, recorded.
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&HEADER_DICTIONARY).expect("dictionary");
        let mut reader = SpdyReader::new();
        let mut channels = HashMap::new();
        let mut session = new_session("a");
        let frame = syn_stream(&mut c, 1, &[("streamtype", "stdin\0stdout")]);
        client_spdy_frame(&frame, &mut reader, &mut channels, &mut session).expect("stdin stream");
        client_spdy_frame(
            &data_frame(1, false, b"id\n"),
            &mut reader,
            &mut channels,
            &mut session,
        )
        .expect("stdin data");
        let done = session.recorder.finish().expect("finish");
        let text = std::fs::read_to_string(done.path).expect("read");
        assert!(text.contains("\"i\",\"id\\n\""), "{text}");
        // Refused: an unknown stream type, data on a stream never opened, client data on an
        // output stream, a second SYN_STREAM for an id, an unknown control frame.
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            (
                "stream of type",
                vec![syn_stream(&mut c, 3, &[("streamtype", "data")])],
            ),
            ("never opened", vec![data_frame(9, false, b"x")]),
            (
                "Stdout stream",
                vec![
                    syn_stream(&mut c, 5, &[("streamtype", "stdout")]),
                    data_frame(5, false, b"x"),
                ],
            ),
            (
                "opened twice",
                vec![
                    syn_stream(&mut c, 7, &[("streamtype", "stdin")]),
                    syn_stream(&mut c, 7, &[("streamtype", "stdin")]),
                ],
            ),
            (
                "control frame type",
                vec![vec![0x80, 3, 0, 0x0a, 0, 0, 0, 0]],
            ),
        ];
        for (i, (expected, frames)) in cases.into_iter().enumerate() {
            let mut session = new_session(&format!("r{i}"));
            let mut result = Ok(());
            for f in &frames {
                result = client_spdy_frame(f, &mut reader, &mut channels, &mut session);
                if result.is_err() {
                    break;
                }
            }
            let err = result.expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
            assert!(session.refused.is_some());
        }
    }
}
