//! Replay of recorded output through a terminal emulator, so a reviewer reads the screen as
//! the user saw it, and also what the screen no longer shows.
//!
//! The output is run through [`avt`] (the asciinema virtual terminal, a maintained emulator
//! of the VT/xterm screen; the sidecar masks live output on the same one). It follows cursor
//! saves, wide characters, scroll regions and origin mode, insert mode, REP, tab stops,
//! autowrap and the alternate screen as a terminal does, and acts on nothing outside the
//! grid: titles, clipboard writes and hyperlinks go nowhere. What is printed is plain text,
//! never an escape sequence:
//!
//! - each line that scrolls off the top of the screen, when it does (the history);
//! - the screen as it was, whenever something on it is about to be lost: a character
//!   overwritten by another (carriage return, backspace or a cursor move, then new text), an
//!   erase or clear, characters or lines inserted or deleted, lines scrolled away inside a
//!   region, a switch to or from the alternate screen, a reset, a resize that cuts rows or
//!   columns;
//! - the final screen at the end.
//!
//! Bytes are decoded as UTF-8 one character at a time (invalid bytes as U+FFFD). A bare line
//! feed is read as the user's terminal driver writes it (`\r\n`), as kubectl's terminal does
//! for the output of a command without a TTY. Characters that are invisible or reorder text
//! are named (`<U+202E>`), as in [`crate::sanitize`].

use avt::observer::{Observation, Observer};
use avt::parser::{DecMode, Function};
use avt::{Line, ScreenKind, Terminal};

use crate::sanitize::push_visible_char;

/// What a function does to the screen.
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

fn action(f: &Function) -> Action {
    let alternate = |modes: &avt::parser::DecModes| {
        modes.as_slice().iter().any(|m| {
            matches!(
                m,
                DecMode::AltScreenBuffer | DecMode::SaveCursorAltScreenBuffer
            )
        })
    };
    match f {
        Function::Print(c) => Action::Draw(*c),
        Function::Rep(_) => Action::Draw('\0'),
        Function::Lf => Action::LineFeed,
        Function::Ed(_)
        | Function::El(_)
        | Function::Ech(_)
        | Function::Dch(_)
        | Function::Ich(_)
        | Function::Dl(_)
        | Function::Il(_)
        | Function::Su(_)
        | Function::Sd(_)
        | Function::Ri
        | Function::Nel
        | Function::Ris
        | Function::Decstr
        | Function::Decaln => Action::Change,
        Function::Decset(m) | Function::Decrst(m) if alternate(m) => Action::Change,
        _ => Action::Keep,
    }
}

/// Collects the lines the terminal evicts (scrolled off the top; no scrollback is kept).
#[derive(Default)]
struct Evicted(Vec<String>);

impl Observer for Evicted {
    type Output = ();

    fn evicted(&mut self, _context: &mut Observation<'_>, line: &Line) {
        self.0.push(visible(line.text().trim_end()));
    }

    fn end(&mut self, _context: &mut Observation<'_>) {}
}

/// Incremental UTF-8 decoding, one character at a time, invalid bytes as U+FFFD.
#[derive(Default)]
struct Utf8 {
    buf: [u8; 4],
    len: usize,
}

impl Utf8 {
    fn push(&mut self, b: u8, out: &mut Vec<char>) {
        if self.len == 0 && b < 0x80 {
            out.push(char::from(b));
            return;
        }
        self.buf[self.len] = b;
        self.len += 1;
        match std::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => {
                out.extend(s.chars());
                self.len = 0;
            }
            Err(e) if e.error_len().is_none() && self.len < 4 => {}
            Err(_) => {
                let n = self.len;
                self.len = 0;
                out.push('\u{fffd}');
                if n > 1 {
                    self.push(b, out);
                }
            }
        }
    }
}

/// Recorded output rendered as screen states; see the module documentation.
pub struct Emulator {
    term: Terminal,
    parser: avt::Parser,
    utf8: Utf8,
    evicted: Evicted,
    out: String,
    /// The last screen printed as a state, so the same screen is not printed twice.
    last_shown: Option<Vec<String>>,
    /// Characters are being drawn over others, and the screen before the first of them has
    /// been printed.
    overwriting: bool,
    /// Seconds into the recording of the data being rendered.
    time: f64,
    chars: Vec<char>,
}

/// Largest size replayed (a recording cannot make the reviewer's machine hold more).
const MAX_COLUMNS: u64 = 1000;
const MAX_ROWS: u64 = 1000;

fn size(n: u64, default: usize, max: u64) -> usize {
    if n == 0 {
        default
    } else {
        usize::try_from(n.min(max)).unwrap_or(default)
    }
}

impl Emulator {
    /// An emulated terminal of `width` columns and `height` rows.
    pub fn new(width: u64, height: u64) -> Self {
        let (cols, rows) = (size(width, 80, MAX_COLUMNS), size(height, 24, MAX_ROWS));
        let term = Terminal::with_scrollback(cols, rows, Some(0))
            .or_else(|_| Terminal::with_scrollback(80, 24, Some(0)));
        Emulator {
            // Both sizes are at least 1, so the emulator never refuses them.
            term: term.unwrap_or_else(|_| unreachable!("a terminal size of at least 1x1")),
            parser: avt::Parser::new(),
            utf8: Utf8::default(),
            evicted: Evicted::default(),
            out: String::new(),
            last_shown: None,
            overwriting: false,
            time: 0.0,
            chars: Vec::new(),
        }
    }

    /// Run `data` (output recorded `time` seconds in) through the terminal; returns the text
    /// to print for it (lines that scrolled off, screens about to be lost).
    pub fn output(&mut self, time: f64, data: &[u8]) -> String {
        self.time = time;
        let mut chars = std::mem::take(&mut self.chars);
        for &b in data {
            chars.clear();
            self.utf8.push(b, &mut chars);
            for &c in &chars {
                if let Some(f) = self.parser.feed(c) {
                    self.function(f);
                }
            }
        }
        self.chars = chars;
        std::mem::take(&mut self.out)
    }

    fn function(&mut self, f: Function) {
        let action = action(&f);
        if !matches!(action, Action::Draw(_)) {
            self.overwriting = false;
        }
        match action {
            Action::Keep => self.execute(f),
            Action::LineFeed => {
                let (_, rows) = self.term.size();
                let at_bottom = self.term.cursor().row + 1 == rows;
                if at_bottom && self.term.active_screen_kind() == ScreenKind::Alternate {
                    // The alternate screen keeps no scrollback: the top line is lost.
                    self.changing(|e| {
                        e.execute(Function::Lf);
                        e.execute(Function::Cr);
                    });
                } else {
                    self.execute(Function::Lf);
                    self.execute(Function::Cr);
                }
            }
            Action::Draw(c) => {
                let cursor = self.term.cursor();
                let overwrites = self
                    .term
                    .screen()
                    .line(cursor.row)
                    .and_then(|l| l.cells().get(cursor.col))
                    .is_some_and(|cell| cell.char() != ' ' && cell.char() != c);
                if overwrites && !self.overwriting {
                    self.show_screen("before it was overwritten");
                    self.overwriting = true;
                }
                self.execute(f);
            }
            Action::Change => self.changing(|e| e.execute(f)),
        }
        self.take_scrolled();
    }

    fn execute(&mut self, f: Function) {
        self.term.execute_with(f, &mut self.evicted);
    }

    /// A resize to `width` x `height` (the screen first, when the new size cuts it).
    pub fn resize(&mut self, time: f64, width: u64, height: u64) -> String {
        self.time = time;
        let (cols, rows) = (size(width, 80, MAX_COLUMNS), size(height, 24, MAX_ROWS));
        self.changing(|e| e.term.resize_with(cols, rows, &mut e.evicted));
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
    fn changing(&mut self, change: impl FnOnce(&mut Self)) {
        let before = self.rows();
        change(self);
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
        let mut rows: Vec<String> = self
            .term
            .screen()
            .visible_lines()
            .map(|l| visible(l.text().trim_end()))
            .collect();
        while rows.last().is_some_and(|r| r.trim().is_empty()) {
            rows.pop();
        }
        rows
    }

    /// Print the lines that scrolled off the top, and forget them.
    fn take_scrolled(&mut self) {
        if self.evicted.0.is_empty() {
            return;
        }
        for line in std::mem::take(&mut self.evicted.0) {
            self.out.push_str(&line);
            self.out.push('\n');
        }
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
