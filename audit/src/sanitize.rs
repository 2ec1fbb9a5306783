//! Rendering recorded terminal data so that replay cannot act on the reviewer's terminal.
//!
//! A recording holds what a container wrote to a terminal, and that may be hostile: cursor
//! moves, erases and carriage returns that hide earlier lines, the alternate screen, window
//! titles (OSC 0/2), clipboard writes (OSC 52), hyperlinks (OSC 8), device control strings.
//! The data is parsed with [`vte`] (the terminal parser of Alacritty) and written back as:
//!
//! - [`Render::Screen`] (the default for output) is not done here but by a terminal
//!   emulator ([`crate::emulator`]); a [`Sanitizer`] asked for it renders as `Visible`.
//! - [`Render::Visible`]: text as it is; line ends (`\n`, `\r\n`) and tabs as
//!   they are; colour and style (SGR) sequences dropped; every other control character and
//!   sequence shown as visible text (`^M`, `^H`, `^[[2J`, `^[]52;c;...^G`), so nothing moves
//!   the cursor, erases, retitles or reaches the clipboard; invisible characters (zero-width,
//!   bidirectional controls) shown as `<U+XXXX>`.
//! - [`Render::Raw`]: the bytes as recorded, except operating system commands (titles,
//!   clipboard, hyperlinks, ...) and device control strings, which are never passed, and C1
//!   control characters written as UTF-8 (which some terminals read as the start of such
//!   strings), shown as `<U+XXXX>`, also inside another sequence: a control sequence is
//!   passed only when all of it is ASCII, and shown as text otherwise.

use vte::{Params, Parser, Perform};

/// How recorded terminal data is written to the reviewer's terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Render {
    /// Output run through a terminal emulator and printed as plain-text screen states, with
    /// the history of what scrolled off or was overwritten ([`crate::emulator`]); input and
    /// markers as [`Render::Visible`].
    #[default]
    Screen,
    /// Control sequences shown as text (colours dropped).
    Visible,
    /// As recorded, without OSC and DCS strings.
    Raw,
}

/// Renders one stream (output or input) of a recording; keeps parser state across events.
pub struct Sanitizer {
    parser: Parser,
    state: State,
}

struct State {
    render: Render,
    /// The bytes of the current event and the position of the byte being parsed.
    data: Vec<u8>,
    pos: usize,
    /// Where the bytes of the sequence being parsed began (after the last action).
    seq_start: usize,
    /// Raw bytes of a sequence begun in an earlier event.
    carried: Vec<u8>,
    out: String,
    pending_cr: bool,
}

impl Sanitizer {
    /// A sanitizer for one stream.
    pub fn new(render: Render) -> Self {
        Sanitizer {
            parser: Parser::new(),
            state: State {
                render,
                data: Vec::new(),
                pos: 0,
                seq_start: 0,
                carried: Vec::new(),
                out: String::new(),
                pending_cr: false,
            },
        }
    }

    /// The rendering of `data` (what is complete of it; a sequence split across events is
    /// rendered when it ends).
    pub fn render(&mut self, data: &[u8]) -> String {
        let s = &mut self.state;
        s.data = data.to_vec();
        s.seq_start = 0;
        for i in 0..data.len() {
            self.state.pos = i;
            self.parser.advance(&mut self.state, &data[i..=i]);
        }
        // The bytes of an unfinished sequence wait, so it is judged whole when it ends.
        let s = &mut self.state;
        let rest = s.data.get(s.seq_start..).unwrap_or_default().to_vec();
        s.carried.extend_from_slice(&rest);
        std::mem::take(&mut s.out)
    }

    /// What is left at the end (an unfinished sequence shown visibly, a last `^M`).
    pub fn finish(&mut self) -> String {
        let s = &mut self.state;
        if s.pending_cr {
            s.pending_cr = false;
            s.out.push_str("^M");
        }
        let carried = std::mem::take(&mut s.carried);
        if !carried.is_empty() && s.render != Render::Raw {
            s.out.push_str(&visible(&carried));
        }
        std::mem::take(&mut s.out)
    }
}

/// Bytes shown as text: C0 controls in caret notation, other non-printing bytes as `\xNN`.
fn visible(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_visible_char(&mut out, c);
    }
    out
}

/// Push `c` as text: C0 and C1 controls in caret or `<U+XXXX>` notation, invisible and
/// reordering characters named.
pub(crate) fn push_visible_char(out: &mut String, c: char) {
    match c {
        '\u{0}'..='\u{1f}' => {
            out.push('^');
            out.push(char::from(c as u8 + 0x40));
        }
        '\u{7f}' => out.push_str("^?"),
        '\u{80}'..='\u{9f}' => out.push_str(&format!("<U+{:04X}>", c as u32)),
        c if hidden(c) => out.push_str(&format!("<U+{:04X}>", c as u32)),
        c => out.push(c),
    }
}

/// Characters that are invisible or reorder text: zero-width characters, bidirectional
/// controls, byte-order marks.
fn hidden(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}' | '\u{e0000}'..='\u{e0fff}')
}

impl State {
    /// The raw bytes of the sequence that just ended (this event's part and any carried).
    fn sequence(&mut self) -> Vec<u8> {
        let mut seq = std::mem::take(&mut self.carried);
        let end = (self.pos + 1).min(self.data.len());
        seq.extend_from_slice(self.data.get(self.seq_start..end).unwrap_or_default());
        self.seq_start = end;
        seq
    }

    fn flush_cr(&mut self) {
        if self.pending_cr {
            self.pending_cr = false;
            if self.render != Render::Raw {
                self.out.push_str("^M");
            } else {
                self.out.push('\r');
            }
        }
    }

    /// A sequence that ended: shown visibly, passed (raw), or dropped.
    fn sequence_done(&mut self, pass_raw: bool, show: bool) {
        self.flush_cr();
        let seq = self.sequence();
        match self.render {
            Render::Screen | Render::Visible if show => self.out.push_str(&visible(&seq)),
            // A well-formed control sequence is ASCII; one holding other bytes (a C1 control
            // written as UTF-8 inside a CSI, which a terminal may act on) is shown, not passed.
            Render::Raw if pass_raw && seq.is_ascii() => {
                self.out.push_str(&String::from_utf8_lossy(&seq))
            }
            Render::Raw if pass_raw => self.out.push_str(&visible(&seq)),
            _ => {}
        }
    }
}

impl Perform for State {
    fn print(&mut self, c: char) {
        self.flush_cr();
        // Drop any ignored bytes before the character (an unfinished sequence that was
        // cancelled); in visible mode they are shown.
        let seq = self.sequence();
        let own = c.len_utf8().min(seq.len());
        let before = &seq[..seq.len() - own];
        match self.render {
            Render::Screen | Render::Visible => {
                if !before.is_empty() && c != char::REPLACEMENT_CHARACTER {
                    self.out.push_str(&visible(before));
                }
                push_visible_char(&mut self.out, c);
            }
            // C1 controls written as UTF-8 (U+0090 starts a DCS, U+009D an OSC, U+009B a CSI
            // for terminals that read them) are shown, never passed.
            Render::Raw if ('\u{80}'..='\u{9f}').contains(&c) => {
                self.out.push_str(&format!("<U+{:04X}>", c as u32));
            }
            Render::Raw => self.out.push(c),
        }
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\r' => {
                self.flush_cr();
                self.sequence();
                self.pending_cr = true;
            }
            b'\n' => {
                // `\r\n` is a line end like `\n`.
                let had_cr = std::mem::take(&mut self.pending_cr);
                self.sequence();
                if had_cr && self.render == Render::Raw {
                    self.out.push('\r');
                }
                self.out.push('\n');
            }
            b'\t' => {
                self.flush_cr();
                self.sequence();
                self.out.push('\t');
            }
            _ => self.sequence_done(true, true),
        }
    }

    fn csi_dispatch(&mut self, _params: &Params, intermediates: &[u8], _ignore: bool, c: char) {
        // Colours and styles are dropped, not shown: they cannot move or erase anything, but
        // shown as text they would bury the output.
        let sgr = c == 'm' && intermediates.is_empty();
        self.sequence_done(true, !sgr);
    }

    fn esc_dispatch(&mut self, intermediates: &[u8], _ignore: bool, byte: u8) {
        // The string terminator (`ESC \`) that ended an OSC or DCS string is dropped with it.
        let terminator = byte == b'\\' && intermediates.is_empty();
        self.sequence_done(!terminator, true);
    }

    fn osc_dispatch(&mut self, _params: &[&[u8]], _bell_terminated: bool) {
        self.sequence_done(false, true);
    }

    fn hook(&mut self, _params: &Params, _intermediates: &[u8], _ignore: bool, _action: char) {
        // Shown (or dropped) whole when the string ends.
        let seq = self.sequence();
        self.carried = seq;
    }

    fn put(&mut self, _byte: u8) {
        let seq = self.sequence();
        self.carried = seq;
    }

    fn unhook(&mut self) {
        self.sequence_done(false, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(mode: Render, events: &[&[u8]]) -> String {
        let mut s = Sanitizer::new(mode);
        let mut out: String = events.iter().map(|e| s.render(e)).collect();
        out.push_str(&s.finish());
        out
    }

    #[test]
    fn hostile_sequences_are_shown_not_acted_on() {
        let out = render(
            Render::Visible,
            &[b"rm -rf /data\r\n\x1b[1A\x1b[2K\x1b[31mok\x1b[0m\r\n\x1b]52;c;ZWNobyBoaQ==\x07\x1b]0;title\x07x\rhidden\x08\x1b[?1049h"],
        );
        assert_eq!(
            out,
            "rm -rf /data\n^[[1A^[[2Kok\n^[]52;c;ZWNobyBoaQ==^G^[]0;title^Gx^Mhidden^H^[[?1049h"
        );
    }

    #[test]
    fn raw_mode_never_passes_osc_or_dcs_even_split_across_events() {
        let out = render(
            Render::Raw,
            &[
                b"a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ b\x1b]5",
                b"2;c;Zm9v\x07c\x1bP1$r\x1b\\d\x1b[2J",
            ],
        );
        assert_eq!(out, "alink bcd\x1b[2J");
    }

    #[test]
    fn invisible_characters_are_named() {
        let out = render(Render::Visible, &["a\u{200b}b\u{202e}c".as_bytes()]);
        assert_eq!(out, "a<U+200B>b<U+202E>c");
    }

    #[test]
    fn raw_replay_never_passes_c1_controls_inside_sequences() {
        // As found by fuzzing: U+0090 (DCS) inside a CSI that vte completes at `m`.
        for data in [
            "total 0\r\n\u{1b}[\u{90}mred\u{1b}[0BBBBm",
            "\u{1b}[1;\u{9d}0;title\u{9c}m",
            "\u{1b}[\u{9b}2J",
            "\u{1b}(\u{90}B",
        ] {
            let out = render(Render::Raw, &[data.as_bytes()]);
            for c in ['\u{90}', '\u{9b}', '\u{9c}', '\u{9d}'] {
                assert!(!out.contains(c), "{data:?} -> {out:?}");
            }
            assert!(out.contains("<U+00"), "{data:?} -> {out:?}");
        }
        // Well-formed sequences still pass.
        assert_eq!(
            render(Render::Raw, &[b"\x1b[31mred\x1b[0m"]),
            "\x1b[31mred\x1b[0m"
        );
    }

    #[test]
    fn raw_replay_shows_c1_controls_written_as_utf8() {
        let out = render(
            Render::Raw,
            &["a\u{90}q;evil\u{9c}b\u{9d}0;title\u{9c}".as_bytes()],
        );
        assert!(
            !out.contains('\u{90}') && !out.contains('\u{9d}'),
            "{out:?}"
        );
        assert!(
            out.contains("<U+0090>") && out.contains("<U+009D>"),
            "{out:?}"
        );
    }
}
