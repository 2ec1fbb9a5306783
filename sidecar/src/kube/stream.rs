//! Relays of upgraded exec and attach streams, recorded as they pass.
//!
//! Two protocols carry the same channels (stdin 0, stdout 1, stderr 2, error 3, resize 4):
//! - WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`, ...): each binary message starts
//!   with its channel number. Both ends are spoken with tungstenite.
//! - SPDY/3.1: each channel is a stream the client opens with a SYN_STREAM whose (zlib
//!   compressed) headers name its `streamType`; data frames carry the bytes. The relay passes
//!   frames through unchanged and reads them on the way.
//!
//! Live masking, where a policy asks for it, overwrites matches in place with `*` so frame
//! lengths and flow-control windows stay as the server sent them.

use std::collections::HashMap;

use flate2::{Decompress, FlushDecompress, Status};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::recording::Recorder;
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

/// A recorded stream session.
pub struct StreamSession {
    /// The recording.
    pub recorder: Recorder,
    /// Mask the output the client sees as well.
    pub live_mask: bool,
    /// Exit code from the error channel.
    pub exit_code: Option<i32>,
}

impl StreamSession {
    fn stdin(&mut self, data: &[u8]) {
        self.recorder.input(data);
    }

    fn output(&mut self, data: &mut [u8]) {
        self.recorder.output(data);
        if self.live_mask {
            let masker = self.recorder.masker();
            // Counted once, in the recording.
            masker.mask_in_place(data, &mut Default::default());
        }
    }

    fn resize(&mut self, data: &[u8]) {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Size {
            width: u16,
            height: u16,
        }
        if let Ok(s) = serde_json::from_slice::<Size>(data) {
            self.recorder.resize(s.width, s.height);
        }
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

/// Relay a WebSocket exec stream between the client and the API server.
pub async fn relay_websocket(client: Upgraded, upstream: Upgraded, session: &mut StreamSession) {
    let client = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
    let upstream =
        WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, None).await;
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    loop {
        tokio::select! {
            m = client_rx.next() => match m {
                Some(Ok(msg)) => {
                    if let Message::Binary(b) = &msg {
                        match b.first() {
                            Some(0) => session.stdin(&b[1..]),
                            Some(4) => session.resize(&b[1..]),
                            _ => {}
                        }
                    }
                    let closing = matches!(msg, Message::Close(_));
                    if up_tx.send(msg).await.is_err() || closing {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "exec client stream ended");
                    break;
                }
                None => break,
            },
            m = up_rx.next() => match m {
                Some(Ok(msg)) => {
                    let msg = match msg {
                        Message::Binary(b) => match b.first() {
                            Some(1) | Some(2) => {
                                let mut data = b.to_vec();
                                session.output(&mut data[1..]);
                                Message::Binary(data.into())
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
                    if client_tx.send(msg).await.is_err() || closing {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "exec upstream stream ended");
                    break;
                }
                None => break,
            },
        }
    }
    let _ = client_tx.close().await;
    let _ = up_tx.close().await;
}

/// Kind of a SPDY stream of the remote-command protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Stdin,
    Stdout,
    Stderr,
    Error,
    Resize,
    Other,
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
    fn next_frame(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = usize::from(self.buf[5]) << 16
            | usize::from(self.buf[6]) << 8
            | usize::from(self.buf[7]);
        if len > MAX_SPDY_FRAME {
            return Err(format!("SPDY frame of {len} bytes"));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.drain(..8 + len).collect()))
    }

    /// Decompress a header block with this direction's shared zlib context.
    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, String> {
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
                        .map_err(|e| format!("SPDY header dictionary: {e}"))?;
                }
                Err(e) => return Err(format!("SPDY header block: {e}")),
            }
            let used = usize::try_from(self.inflate.total_in() - before_in).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            let produced = self.inflate.total_out() - before_out;
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
            if used == 0 && produced == 0 && out.capacity() > out.len() {
                return Err("SPDY header block does not decompress".into());
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(b: &[u8]) -> Result<Vec<(String, String)>, String> {
    fn u32_at(b: &[u8], at: usize) -> Result<usize, String> {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .ok_or_else(|| "truncated SPDY header block".to_owned())
    }
    let n = u32_at(b, 0)?;
    let mut at = 4;
    let mut out = Vec::new();
    for _ in 0..n.min(1024) {
        let nl = u32_at(b, at)?;
        let name = b
            .get(at + 4..at + 4 + nl)
            .ok_or("truncated SPDY header name")?;
        at += 4 + nl;
        let vl = u32_at(b, at)?;
        let value = b
            .get(at + 4..at + 4 + vl)
            .ok_or("truncated SPDY header value")?;
        at += 4 + vl;
        out.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(out)
}

fn stream_id(frame: &[u8], at: usize) -> u32 {
    frame
        .get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0] & 0x7f, s[1], s[2], s[3]]))
        .unwrap_or(0)
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

async fn spdy_loop<C, U>(
    client: &mut C,
    upstream: &mut U,
    session: &mut StreamSession,
) -> Result<(), String>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut from_client = SpdyReader::new();
    let mut from_upstream = SpdyReader::new();
    let mut channels: HashMap<u32, Channel> = HashMap::new();
    let mut cbuf = vec![0u8; 64 * 1024];
    let mut ubuf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = client.read(&mut cbuf) => {
                let n = n.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                from_client.buf.extend_from_slice(&cbuf[..n]);
                while let Some(frame) = from_client.next_frame()? {
                    if frame[0] & 0x80 != 0 {
                        let kind = u16::from_be_bytes([frame[2], frame[3]]);
                        if kind == 1 {
                            // SYN_STREAM: stream id, associated id, priority, then headers.
                            let id = stream_id(&frame, 8);
                            let headers = from_client.headers(frame.get(18..).unwrap_or_default())?;
                            let channel = match headers.iter().find(|(k, _)| k == "streamtype").map(|(_, v)| v.as_str()) {
                                Some("stdin") => Channel::Stdin,
                                Some("stdout") => Channel::Stdout,
                                Some("stderr") => Channel::Stderr,
                                Some("error") => Channel::Error,
                                Some("resize") => Channel::Resize,
                                _ => Channel::Other,
                            };
                            channels.insert(id, channel);
                        }
                    } else {
                        let id = stream_id(&frame, 0);
                        match channels.get(&id) {
                            Some(Channel::Stdin) => session.stdin(&frame[8..]),
                            Some(Channel::Resize) => session.resize(&frame[8..]),
                            _ => {}
                        }
                    }
                    upstream.write_all(&frame).await.map_err(|e| e.to_string())?;
                }
            }
            n = upstream.read(&mut ubuf) => {
                let n = n.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                from_upstream.buf.extend_from_slice(&ubuf[..n]);
                while let Some(mut frame) = from_upstream.next_frame()? {
                    if frame[0] & 0x80 == 0 {
                        let id = stream_id(&frame, 0);
                        match channels.get(&id) {
                            Some(Channel::Stdout | Channel::Stderr) => session.output(&mut frame[8..]),
                            Some(Channel::Error) => session.status(&frame[8..]),
                            _ => {}
                        }
                    }
                    client.write_all(&frame).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    #[test]
    fn reads_compressed_header_blocks_across_frames() {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&HEADER_DICTIONARY).expect("dictionary");
        let block = |pairs: &[(&str, &str)]| {
            let mut b = Vec::new();
            b.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
            for (k, v) in pairs {
                b.extend_from_slice(&(k.len() as u32).to_be_bytes());
                b.extend_from_slice(k.as_bytes());
                b.extend_from_slice(&(v.len() as u32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            b
        };
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
            assert_eq!(headers[0], ("streamtype".to_owned(), kind.to_owned()));
        }
    }
}
