//! Reading and playing asciicast v2 recordings, the format the sidecar records exec and attach
//! sessions in (<https://docs.asciinema.org/manual/asciicast/v2/>).
//!
//! ```text
//! {"version": 2, "width": 80, "height": 24, "timestamp": 1700000000}   header, line 1
//! [0.248, "o", "$ "]                                                    [time, code, data]
//! [1.001, "i", "ls\r"]
//! [1.020, "r", "100x40"]
//! ```
//!
//! A file is parsed whole before anything is played, so a damaged file is refused, naming the
//! line, without printing half a session.
//!
//! Playing renders the output by default through a terminal emulator ([`crate::emulator`]):
//! the reviewer reads plain-text screen states (the lines that scrolled off, the screen
//! before anything on it was overwritten, erased or hidden, and the final screen), and no
//! escape sequence reaches their terminal. [`Render::Visible`] shows control sequences as
//! text instead ([`crate::sanitize`]); [`Render::Raw`] is an explicit choice, and even then
//! OSC and DCS strings are dropped. Typed input is shown by default, marked apart from
//! output (`⟦in: ...⟧`, on a line of its own with the screen), and markers
//! (`⟦marker: ...⟧`).

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::emulator::Emulator;
pub use crate::sanitize::Render;
use crate::sanitize::Sanitizer;

/// Why a recording could not be read or played.
#[derive(Debug, Error)]
pub enum CastError {
    /// The file is empty.
    #[error("empty recording: no asciicast header")]
    Empty,
    /// The header (line 1) is not an asciicast v2 header.
    #[error("line 1: {0}")]
    Header(String),
    /// An event line is not `[time, code, data]`.
    #[error("line {line}: {reason}")]
    Event {
        /// 1-based line number in the file.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Playback options out of range.
    #[error("{0}")]
    Options(String),
    /// Writing the output failed (for example a closed pipe).
    #[error("writing the session: {0}")]
    Write(#[from] std::io::Error),
}

/// The header of a recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Terminal width in columns.
    pub width: Option<u64>,
    /// Terminal height in rows.
    pub height: Option<u64>,
    /// Start of the recording, seconds since the Unix epoch.
    pub timestamp: Option<i64>,
    /// The header as written, with any further fields (`env`, `title`, `command`, ...).
    pub raw: Value,
}

/// One event of a recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the start of the recording.
    pub time: f64,
    /// `o` (output), `i` (input), `r` (resize), `m` (marker), or another code.
    pub code: String,
    /// The event's data (output text, input text, `COLSxROWS`, a label).
    pub data: String,
}

/// A parsed recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Cast {
    /// Its header.
    pub header: Header,
    /// Its events, in file order.
    pub events: Vec<Event>,
}

impl Cast {
    /// Parse an asciicast v2 file. Blank lines are skipped; every other line after the header
    /// must be a JSON array `[time, code, data]`.
    pub fn parse(bytes: &[u8]) -> Result<Self, CastError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            // Name the line the invalid byte is on.
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            CastError::Event {
                line,
                reason: "not UTF-8".into(),
            }
        })?;
        let mut lines = text.lines().enumerate();
        let Some((_, header_line)) = lines.next() else {
            return Err(CastError::Empty);
        };
        if header_line.trim().is_empty() {
            return Err(CastError::Header(
                "the first line must be the asciicast header".into(),
            ));
        }
        let raw: Value = serde_json::from_str(header_line)
            .map_err(|e| CastError::Header(format!("header is not JSON: {e}")))?;
        if !raw.is_object() {
            return Err(CastError::Header("header is not a JSON object".into()));
        }
        match raw.get("version") {
            Some(v) if v.as_u64() == Some(2) => {}
            Some(v) => {
                return Err(CastError::Header(format!(
                    "asciicast version {v} is not supported (only version 2)"
                )))
            }
            None => return Err(CastError::Header("header has no version".into())),
        }
        let header = Header {
            width: raw.get("width").and_then(Value::as_u64),
            height: raw.get("height").and_then(Value::as_u64),
            timestamp: raw.get("timestamp").and_then(Value::as_i64),
            raw,
        };
        let mut events = Vec::new();
        for (i, line) in lines {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| CastError::Event {
                line: line_no,
                reason,
            };
            let value: Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            let Some(items) = value.as_array() else {
                return Err(bad("not a JSON array [time, code, data]".into()));
            };
            let [time, code, data] = items.as_slice() else {
                return Err(bad(format!(
                    "expected [time, code, data], found {} elements",
                    items.len()
                )));
            };
            let time = time
                .as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or_else(|| bad(format!("time {time} is not a non-negative number")))?;
            let code = code
                .as_str()
                .ok_or_else(|| bad(format!("event code {code} is not a string")))?;
            let data = data
                .as_str()
                .ok_or_else(|| bad(format!("event data {data} is not a string")))?;
            events.push(Event {
                time,
                code: code.to_owned(),
                data: data.to_owned(),
            });
        }
        Ok(Self { header, events })
    }

    /// The session's output: the data of every `o` event, in order.
    pub fn output(&self) -> String {
        self.events
            .iter()
            .filter(|e| e.code == "o")
            .map(|e| e.data.as_str())
            .collect()
    }

    /// Length of the recording: the time of its last event.
    pub fn duration(&self) -> Duration {
        let end = self.events.iter().map(|e| e.time).fold(0.0, f64::max);
        Duration::try_from_secs_f64(end).unwrap_or_default()
    }
}

/// How to play a recording.
#[derive(Clone, Debug, PartialEq)]
pub struct PlayOptions {
    /// Playback speed: the time between events is divided by it (2.0 plays twice as fast).
    pub speed: f64,
    /// Longest pause between two events, after the speed is applied; `None` keeps every
    /// pause as recorded.
    pub max_wait: Option<Duration>,
    /// Print without pausing.
    pub instant: bool,
    /// How recorded data reaches the terminal.
    pub render: Render,
    /// Show typed input (inline, marked) when no separate writer is given for it.
    pub show_input: bool,
}

impl Default for PlayOptions {
    fn default() -> Self {
        Self {
            speed: 1.0,
            max_wait: Some(Duration::from_secs(2)),
            instant: false,
            render: Render::Screen,
            show_input: true,
        }
    }
}

impl PlayOptions {
    /// The pause before an event `gap` seconds after the previous one.
    pub fn pause(&self, gap: f64) -> Duration {
        if self.instant || gap.is_nan() || gap <= 0.0 {
            return Duration::ZERO;
        }
        let pause = Duration::try_from_secs_f64(gap / self.speed).unwrap_or(Duration::MAX);
        match self.max_wait {
            Some(cap) => pause.min(cap),
            None => pause,
        }
    }

    fn check(&self) -> Result<(), CastError> {
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(CastError::Options(format!(
                "speed {} must be a positive number",
                self.speed
            )));
        }
        Ok(())
    }
}

/// Play `cast`: write the rendered data of each `o` event to `output` (flushed after each
/// event), pausing between events with `sleep` as `options` say. Input (`i` events) goes to
/// `input` when given, else inline and marked when `options.show_input`; markers (`m`) are
/// shown marked; resizes are not printed.
pub fn play(
    cast: &Cast,
    output: &mut dyn Write,
    mut input: Option<&mut dyn Write>,
    options: &PlayOptions,
    sleep: &mut dyn FnMut(Duration),
) -> Result<(), CastError> {
    options.check()?;
    let mut screen = (options.render == Render::Screen).then(|| {
        Emulator::new(
            cast.header.width.unwrap_or(80),
            cast.header.height.unwrap_or(24),
        )
    });
    let mut out_render = Sanitizer::new(options.render);
    let mut in_render = Sanitizer::new(Render::Visible);
    let mut previous = 0.0;
    for event in &cast.events {
        let shown = match event.code.as_str() {
            "o" | "m" => true,
            "i" => input.is_some() || options.show_input,
            _ => false,
        };
        if event.code == "r" {
            if let (Some(e), Some((w, h))) = (screen.as_mut(), terminal_size(&event.data)) {
                output.write_all(e.resize(event.time, w, h).as_bytes())?;
            }
        }
        if !shown {
            continue;
        }
        let pause = options.pause(event.time - previous);
        previous = event.time.max(previous);
        if !pause.is_zero() {
            sleep(pause);
        }
        // On a screen, marked input and markers go on lines of their own.
        let own_line = screen.is_some();
        match event.code.as_str() {
            "o" => match screen.as_mut() {
                Some(e) => {
                    output.write_all(e.output(event.time, event.data.as_bytes()).as_bytes())?
                }
                None => output.write_all(out_render.render(event.data.as_bytes()).as_bytes())?,
            },
            "i" => {
                let mut text = in_render.render(event.data.as_bytes());
                text.push_str(&in_render.finish());
                match input.as_mut() {
                    Some(w) => {
                        w.write_all(text.as_bytes())?;
                        w.flush()?;
                    }
                    None if own_line => {
                        writeln!(output, "\u{27e6}in {:.3} s: {text}\u{27e7}", event.time)?
                    }
                    None => write!(output, "\u{27e6}in: {text}\u{27e7}")?,
                }
            }
            _ => {
                let mut marker = Sanitizer::new(Render::Visible);
                let mut text = marker.render(event.data.as_bytes());
                text.push_str(&marker.finish());
                if own_line {
                    writeln!(output, "\u{27e6}marker {:.3} s: {text}\u{27e7}", event.time)?;
                } else {
                    write!(output, "\u{27e6}marker: {text}\u{27e7}")?;
                }
            }
        }
        output.flush()?;
    }
    match screen.as_mut() {
        Some(e) => output.write_all(e.finish().as_bytes())?,
        None => output.write_all(out_render.finish().as_bytes())?,
    }
    output.flush()?;
    Ok(())
}

/// The size a resize event names (`COLSxROWS`).
fn terminal_size(data: &str) -> Option<(u64, u64)> {
    let (w, h) = data.split_once('x')?;
    Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAST: &str = concat!(
        "{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 1700000000, \"env\": {\"TERM\": \"xterm\"}}\n",
        "[0.5, \"o\", \"$ \"]\n",
        "[1.0, \"i\", \"ls\\r\"]\n",
        "[1.25, \"o\", \"ls\\r\\n\"]\n",
        "[1.5, \"r\", \"100x40\"]\n",
        "\n",
        "[11.5, \"o\", \"a.txt  b \\u00e9t\\u00e9\\r\\n\\u001b[1m$ \\u001b[0m\"]\n",
        "[11.7, \"r\", \"90x40\"]\n",
    );

    fn played(options: &PlayOptions, show_input: bool) -> (String, String, Vec<Duration>) {
        let cast = Cast::parse(CAST.as_bytes()).expect("parse");
        let options = &PlayOptions {
            render: Render::Raw,
            show_input: false,
            ..options.clone()
        };
        let (mut out, mut inp, mut sleeps) = (Vec::new(), Vec::new(), Vec::new());
        play(
            &cast,
            &mut out,
            if show_input {
                Some(&mut inp as &mut dyn Write)
            } else {
                None
            },
            options,
            &mut |d| sleeps.push(d),
        )
        .expect("play");
        (
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(inp).expect("utf-8"),
            sleeps,
        )
    }

    #[test]
    fn replay_prints_exactly_the_output_events() {
        let cast = Cast::parse(CAST.as_bytes()).expect("parse");
        assert_eq!(cast.header.width, Some(80));
        assert_eq!(cast.header.raw["env"]["TERM"], "xterm");
        assert_eq!(cast.events.len(), 6);
        let (out, _, _) = played(&PlayOptions::default(), false);
        let expected = "$ ls\r\na.txt  b \u{e9}t\u{e9}\r\n\u{1b}[1m$ \u{1b}[0m";
        assert_eq!(cast.output(), expected);
        let (out2, inp, sleeps) = played(&PlayOptions::default(), false);
        assert_eq!(out, out2);
        assert_eq!(out, expected);
        assert_eq!(inp, "");
        // 0.5 s, then 0.75 s, then 10 s capped at 2 s.
        assert_eq!(
            sleeps,
            vec![
                Duration::from_millis(500),
                Duration::from_millis(750),
                Duration::from_secs(2)
            ]
        );
        assert_eq!(cast.duration(), Duration::from_millis(11_700));
    }

    #[test]
    fn speed_max_wait_instant_and_input() {
        let (out, _, sleeps) = played(
            &PlayOptions {
                speed: 2.0,
                max_wait: None,
                ..PlayOptions::default()
            },
            false,
        );
        assert_eq!(out, Cast::parse(CAST.as_bytes()).expect("parse").output());
        assert_eq!(
            sleeps,
            vec![
                Duration::from_millis(250),
                Duration::from_millis(375),
                // From the output at 1.25 s to the one at 11.5 s: input and resize events
                // that are not shown do not split the pause.
                Duration::from_millis(5125)
            ]
        );
        let (_, inp, sleeps) = played(
            &PlayOptions {
                instant: true,
                ..PlayOptions::default()
            },
            true,
        );
        assert_eq!(inp, "ls^M", "input is shown, control characters as text");
        assert!(sleeps.is_empty());
        let cast = Cast::parse(CAST.as_bytes()).expect("parse");
        let err = play(
            &cast,
            &mut Vec::new(),
            None,
            &PlayOptions {
                speed: 0.0,
                ..PlayOptions::default()
            },
            &mut |_| {},
        )
        .expect_err("speed 0");
        assert_eq!(err.to_string(), "speed 0 must be a positive number");
    }

    #[test]
    fn default_replay_shows_screens_and_input_marked_escaped_shows_sequences() {
        let cast = Cast::parse(
            concat!(
                "{\"version\": 2}\n",
                "[0.1, \"o\", \"$ \"]\n",
                "[0.2, \"i\", \"rm -rf /data\\r\"]\n",
                "[0.3, \"o\", \"\\u001b[1A\\u001b[2K\\u001b]52;c;eA==\\u0007done\\r\\n\"]\n",
                "[0.4, \"m\", \"recording cut short\"]\n",
            )
            .as_bytes(),
        )
        .expect("parse");
        let run = |render: Render| {
            let mut out = Vec::new();
            play(
                &cast,
                &mut out,
                None,
                &PlayOptions {
                    instant: true,
                    render,
                    ..PlayOptions::default()
                },
                &mut |_| {},
            )
            .expect("play");
            String::from_utf8(out).expect("utf-8")
        };
        assert_eq!(
            run(PlayOptions::default().render),
            concat!(
                "\u{27e6}in 0.200 s: rm -rf /data^M\u{27e7}\n",
                "\u{27e6}screen at 0.300 s, before it changed\u{27e7}\n$\n\u{27e6}end of screen\u{27e7}\n",
                "\u{27e6}marker 0.400 s: recording cut short\u{27e7}\n",
                "\u{27e6}screen at the end\u{27e7}\n  done\n"
            )
        );
        assert_eq!(
            run(Render::Visible),
            "$ \u{27e6}in: rm -rf /data^M\u{27e7}^[[1A^[[2K^[]52;c;eA==^Gdone\n\u{27e6}marker: recording cut short\u{27e7}"
        );
    }

    #[test]
    fn bad_files_are_refused_naming_the_line() {
        let header = "{\"version\": 2, \"width\": 80, \"height\": 24}\n";
        for (text, message) in [
            ("", "empty recording: no asciicast header"),
            (
                "{\"version\": 1, \"width\": 80}\n",
                "line 1: asciicast version 1 is not supported (only version 2)",
            ),
            ("{\"width\": 80}\n", "line 1: header has no version"),
            (
                "[0.1, \"o\", \"x\"]\n",
                "line 1: header is not a JSON object",
            ),
            ("not json\n", "line 1: header is not JSON"),
            (
                &format!("{header}[0.1, \"o\", \"x\"]\n{{\"o\": 1}}\n"),
                "line 3: not a JSON array [time, code, data]",
            ),
            (
                &format!("{header}[0.1, \"o\", \"x\"]\n\n[0.2, \"o\"\n"),
                "line 4: not valid JSON",
            ),
            (
                &format!("{header}[0.1, \"o\"]\n"),
                "line 2: expected [time, code, data], found 2 elements",
            ),
            (
                &format!("{header}[\"0.1\", \"o\", \"x\"]\n"),
                "line 2: time \"0.1\" is not a non-negative number",
            ),
            (
                &format!("{header}[0.1, \"o\", 7]\n"),
                "line 2: event data 7 is not a string",
            ),
        ] {
            let err = Cast::parse(text.as_bytes()).expect_err(text);
            assert!(
                err.to_string().starts_with(message),
                "{text:?}: {err} (expected {message})"
            );
        }
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(b"[0.1, \"o\", \"\xff\"]\n");
        assert_eq!(
            Cast::parse(&bytes).expect_err("not utf-8").to_string(),
            "line 2: not UTF-8"
        );
    }
}
