//! Replay of recorded output through a terminal emulator, so a reviewer reads the screen as
//! the user saw it, and also what the screen no longer shows.
//!
//! The output is run through [`vt100`] (a maintained emulator of the VT100/xterm screen,
//! built on the same `vte` parser as [`crate::sanitize`]; it keeps the screen grid, the
//! scrollback and the alternate screen, and acts on nothing outside the grid: titles,
//! clipboard writes and hyperlinks go nowhere). What is printed is plain text, never an
//! escape sequence:
//!
//! - each line that scrolls off the top of the screen, when it does (the history);
//! - the screen as it was, whenever something on it is about to be lost: a character
//!   overwritten by another (carriage return, backspace or a cursor move, then new text), an
//!   erase or clear, lines deleted or scrolled away inside a region, a switch to or from the
//!   alternate screen, a reset, a resize that cuts rows or columns;
//! - the final screen at the end.
//!
//! A bare line feed is read as the user's terminal driver writes it (`\r\n`), as kubectl's
//! terminal does for the output of a command without a TTY. Characters that are invisible or
//! reorder text are named (`<U+202E>`), as in [`crate::sanitize`].

use std::num::NonZeroU16;

use vte::{Params, Parser, Perform};

use crate::sanitize::push_visible_char;

/// Lines kept in the emulator's scrollback between two reads of it.
const SCROLLBACK: usize = 10_000;

/// What the byte just parsed does to the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Nothing that can lose what the screen shows.
    Keep,
    /// Draw a character at the cursor.
    Draw(char),
    /// A line feed.
    LineFeed,
    /// Something that may erase, move away or hide what the screen shows.
    Change,
}

/// Classifies each byte in step with the emulator's own parser.
struct Classifier {
    action: Action,
}

impl Perform for Classifier {
    fn print(&mut self, c: char) {
        self.action = Action::Draw(c);
    }

    fn execute(&mut self, byte: u8) {
        self.action = match byte {
            b'\n' | 0x0b | 0x0c => Action::LineFeed,
            _ => Action::Keep,
        };
    }

    fn csi_dispatch(&mut self, params: &Params, intermediates: &[u8], _ignore: bool, c: char) {
        let private = intermediates.first() == Some(&b'?');
        let alternate = params
            .iter()
            .flatten()
            .any(|p| matches!(*p, 47 | 1047 | 1049));
        self.action = match c {
            'J' | 'K' | 'X' | 'P' | 'M' | 'L' | '@' | 'S' | 'T' => Action::Change,
            'h' | 'l' if private && alternate => Action::Change,
            _ => Action::Keep,
        };
    }

    fn esc_dispatch(&mut self, intermediates: &[u8], _ignore: bool, byte: u8) {
        // RIS (reset), IND, RI and NEL may scroll a region or clear the screen.
        self.action = if intermediates.is_empty() && matches!(byte, b'c' | b'D' | b'M' | b'E') {
            Action::Change
        } else {
            Action::Keep
        };
    }
}

/// Recorded output rendered as screen states; see the module documentation.
pub struct Emulator {
    screen: vt100::Parser,
    classifier: Parser,
    state: Classifier,
    out: String,
    /// The last screen printed as a state, so the same screen is not printed twice.
    last_shown: Option<Vec<String>>,
    /// Characters are being drawn over others, and the screen before the first of them has
    /// been printed.
    overwriting: bool,
    /// Seconds into the recording of the data being rendered.
    time: f64,
}

fn size(n: u64, default: u16) -> NonZeroU16 {
    u16::try_from(n)
        .ok()
        .and_then(NonZeroU16::new)
        .or(NonZeroU16::new(default))
        .unwrap_or(NonZeroU16::MIN)
}

impl Emulator {
    /// An emulated terminal of `width` columns and `height` rows.
    pub fn new(width: u64, height: u64) -> Self {
        Emulator {
            screen: vt100::Parser::new(size(height, 24), size(width, 80), SCROLLBACK),
            classifier: Parser::new(),
            state: Classifier {
                action: Action::Keep,
            },
            out: String::new(),
            last_shown: None,
            overwriting: false,
            time: 0.0,
        }
    }

    /// Run `data` (output recorded `time` seconds in) through the terminal; returns the text
    /// to print for it (lines that scrolled off, screens about to be lost).
    pub fn output(&mut self, time: f64, data: &[u8]) -> String {
        self.time = time;
        for &b in data {
            self.state.action = Action::Keep;
            self.classifier.advance(&mut self.state, &[b]);
            if !matches!(self.state.action, Action::Draw(_)) {
                self.overwriting = false;
            }
            match self.state.action {
                Action::Keep => self.screen.process(&[b]),
                Action::LineFeed => {
                    let bottom = self.screen.screen().size().0.get() - 1;
                    let at_bottom = self.screen.screen().cursor_position().0 == bottom;
                    if at_bottom && self.screen.screen().alternate_screen() {
                        // The alternate screen keeps no scrollback: the top line is lost.
                        self.changing(|s| s.process(b"\r\n"));
                    } else {
                        self.screen.process(b"\r\n");
                    }
                }
                Action::Draw(c) => {
                    let (row, col) = self.screen.screen().cursor_position();
                    let overwrites = self.screen.screen().cell(row, col).is_some_and(|cell| {
                        cell.has_contents() && cell.contents() != c.to_string().as_str()
                    });
                    if overwrites && !self.overwriting {
                        self.show_screen("before it was overwritten");
                        self.overwriting = true;
                    }
                    self.screen.process(&[b]);
                }
                Action::Change => self.changing(|s| s.process(&[b])),
            }
            self.take_scrolled();
        }
        std::mem::take(&mut self.out)
    }

    /// A resize to `width` x `height` (the screen first, when the new size cuts it).
    pub fn resize(&mut self, time: f64, width: u64, height: u64) -> String {
        self.time = time;
        let (rows, cols) = (size(height, 24), size(width, 80));
        self.changing(|s| s.screen_mut().set_size(rows, cols));
        self.take_scrolled();
        std::mem::take(&mut self.out)
    }

    /// The final screen.
    pub fn finish(&mut self) -> String {
        self.take_scrolled();
        let rows = self.rows();
        self.out.push_str("\u{27e6}screen at the end\u{27e7}\n");
        for row in &rows {
            self.out.push_str(row);
            self.out.push('\n');
        }
        std::mem::take(&mut self.out)
    }

    /// Apply `change`; print the screen as it was if the change lost any of it.
    fn changing(&mut self, change: impl FnOnce(&mut vt100::Parser)) {
        let before = self.rows();
        change(&mut self.screen);
        let after = self.rows();
        let lost = before
            .iter()
            .any(|row| !row.trim().is_empty() && !after.contains(row));
        if lost {
            self.print_screen(before, "before it changed");
        }
    }

    fn show_screen(&mut self, why: &str) {
        let rows = self.rows();
        self.print_screen(rows, why);
    }

    fn print_screen(&mut self, rows: Vec<String>, why: &str) {
        if rows.is_empty() || self.last_shown.as_ref() == Some(&rows) {
            return;
        }
        self.out.push_str(&format!(
            "\u{27e6}screen at {:.3} s, {why}\u{27e7}\n",
            self.time
        ));
        for row in &rows {
            self.out.push_str(row);
            self.out.push('\n');
        }
        self.out.push_str("\u{27e6}end of screen\u{27e7}\n");
        self.last_shown = Some(rows);
    }

    /// The visible rows as text, trailing blank rows left out.
    fn rows(&self) -> Vec<String> {
        let screen = self.screen.screen();
        let width = screen.size().1.get();
        let mut rows: Vec<String> = screen
            .rows(0, width)
            .map(|r| visible(r.trim_end()))
            .collect();
        while rows.last().is_some_and(|r| r.trim().is_empty()) {
            rows.pop();
        }
        rows
    }

    /// Print the lines that scrolled off the top, and forget them.
    fn take_scrolled(&mut self) {
        let n = self.screen.screen().scrollback_len();
        if n == 0 {
            return;
        }
        let height = usize::from(self.screen.screen().size().0.get());
        let width = self.screen.screen().size().1.get();
        let mut offset = n;
        while offset > 0 {
            self.screen.screen_mut().set_scrollback(offset);
            let take = offset.min(height);
            let lines: Vec<String> = self
                .screen
                .screen()
                .rows(0, width)
                .take(take)
                .map(|r| visible(&r))
                .collect();
            for line in lines {
                self.out.push_str(line.trim_end());
                self.out.push('\n');
            }
            offset -= take;
        }
        self.screen.screen_mut().set_scrollback(0);
        self.screen.screen_mut().clear_scrollback();
        self.last_shown = None;
    }
}

/// A row's text with invisible and reordering characters named.
fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_visible_char(&mut out, c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(data: &[&[u8]]) -> String {
        let mut e = Emulator::new(40, 5);
        let mut out: String = data
            .iter()
            .enumerate()
            .map(|(i, d)| e.output(i as f64, d))
            .collect();
        out.push_str(&e.finish());
        out
    }

    #[test]
    fn the_final_screen_is_what_the_user_saw() {
        let out = play(&[b"secret-one\rpublic    \n", b"abc\x08\x08XY\n", b"done"]);
        assert!(
            out.ends_with("\u{27e6}screen at the end\u{27e7}\npublic\naXY\ndone\n"),
            "{out}"
        );
        // What was overwritten is shown as the screen before it changed.
        assert!(
            out.contains(
                "\u{27e6}screen at 0.000 s, before it was overwritten\u{27e7}\nsecret-one\n"
            ),
            "{out}"
        );
        assert!(out.contains("abc\n"), "{out}");
    }

    #[test]
    fn cleared_and_hidden_lines_stay_in_the_history() {
        let out = play(&[
            b"rm -rf /data\nhidden-line\n\x1b[1A\x1b[2Kshown\n",
            b"\x1b[2J\x1b[Hclean\n\x1b]52;c;aGk=\x07\x1b]0;title\x07",
            b"\x1b[?1049hfull-screen app\x1b[?1049l",
        ]);
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
        assert!(
            out.contains("rm -rf /data\nhidden-line\n\u{27e6}end of screen"),
            "{out}"
        );
        assert!(
            out.contains("rm -rf /data\nshown\n\u{27e6}end of screen"),
            "{out}"
        );
        assert!(out.contains("full-screen app"), "{out}");
        assert!(
            out.ends_with("\u{27e6}screen at the end\u{27e7}\nclean\n"),
            "{out}"
        );
    }

    #[test]
    fn lines_that_scroll_off_are_printed_once_in_order() {
        let lines: String = (0..12).map(|i| format!("line {i}\n")).collect();
        let out = play(&[lines.as_bytes()]);
        let expected: String = (0..8).map(|i| format!("line {i}\n")).collect();
        assert!(out.starts_with(&expected), "{out}");
        assert!(
            out.ends_with("\u{27e6}screen at the end\u{27e7}\nline 8\nline 9\nline 10\nline 11\n"),
            "{out}"
        );
    }

    #[test]
    fn invisible_characters_are_named() {
        let out = play(&["a\u{202e}bc".as_bytes()]);
        assert!(out.contains("a<U+202E>bc"), "{out}");
    }
}
