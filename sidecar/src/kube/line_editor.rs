//! The line typed input becomes: the keys a shell's line editor (readline, or a terminal
//! driver in canonical mode) follows, applied to the characters typed.
//!
//! Typed input reaches the container key by key, with its corrections: backspace, arrows,
//! `^A`, `^T`, kill and yank. What the shell runs is the line those keys leave, so the detectors
//! read that line, not the bytes. The model follows the editing keys bash's readline binds by
//! default in emacs mode:
//!
//! - motion: `^A`/Home, `^E`/End, `^B`/Left, `^F`/Right, `Alt-b`, `Alt-f`;
//! - deletion: backspace and DEL, `^D`/Delete, `^K`, `^U`, `^W`, `Alt-d`, `Alt-DEL`;
//! - kill ring: `^Y` yanks the last kill;
//! - `^T` transposes the two characters at the cursor;
//! - `^C` abandons the line, `^L` redraws it; carriage return and line feed end it.
//!
//! A key the model cannot follow (history recall, reverse search, undo, quoted insert, case
//! changes, completion menus, any other control or escape sequence) makes the line
//! **blind**: the model can no longer tell what the shell holds, so the caller masks every
//! character typed on that line (fail closed).

use super::screen::Cell;

/// A typed line being edited, and the lines ended since the last [`LineEditor::take_ended`].
#[derive(Default)]
pub struct LineEditor {
    line: Vec<Cell>,
    cursor: usize,
    killed: Vec<Cell>,
    /// A key the model cannot follow was typed on this line.
    blind: bool,
    /// Absolute offset of the first byte typed on this line.
    line_start: u64,
    escape: Escape,
    ended: Vec<Ended>,
}

/// A line that ended: its cells, and the raw range of the whole line when it was blind.
pub struct Ended {
    pub cells: Vec<Cell>,
    pub blind: Option<std::ops::Range<u64>>,
}

/// Where the key decoder is inside an escape sequence.
#[derive(Default, Clone, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Esc,
    /// After ESC [ or ESC O, with the parameter bytes so far.
    Sequence(Vec<u8>),
}

/// One key, as the editor reads it.
enum Key {
    Char(Cell),
    Control(u8),
    /// `ESC x` (Alt-x).
    Meta(char),
    /// `ESC [ params final` or `ESC O final`.
    Sequence(Vec<u8>, char),
}

/// Word characters for the `Alt` word motions (readline: letters and digits).
fn word(c: &Cell) -> bool {
    c.c.is_alphanumeric()
}

impl LineEditor {
    /// The lines ended since the last call.
    pub fn take_ended(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.ended)
    }

    /// The line being edited.
    pub fn line(&self) -> &[Cell] {
        &self.line
    }

    /// Whether the line being edited is blind.
    pub fn blind(&self) -> bool {
        self.blind
    }

    /// Absolute offset of the first byte of the line being edited.
    pub fn line_start(&self) -> u64 {
        self.line_start
    }

    /// Take one decoded character (with the raw range of the bytes since the last key).
    /// Returns whether the character ended a line.
    pub fn feed(&mut self, cell: Cell) -> bool {
        let Some(key) = self.key(cell) else {
            return false;
        };
        self.apply(key, cell.end)
    }

    fn key(&mut self, cell: Cell) -> Option<Key> {
        let c = cell.c;
        match std::mem::take(&mut self.escape) {
            Escape::None if c == '\x1b' => {
                self.escape = Escape::Esc;
                None
            }
            Escape::None if (c as u32) < 0x20 || c == '\x7f' => Some(Key::Control(c as u8)),
            Escape::None if ('\u{80}'..'\u{a0}').contains(&c) => Some(Key::Control(0x80)),
            Escape::None => Some(Key::Char(cell)),
            Escape::Esc if c == '[' || c == 'O' => {
                self.escape = Escape::Sequence(Vec::new());
                None
            }
            Escape::Esc => Some(Key::Meta(c)),
            Escape::Sequence(mut params) => {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    Some(Key::Sequence(params, c))
                } else if ('\u{20}'..'\u{40}').contains(&c) && params.len() < 16 {
                    params.push(c as u8);
                    self.escape = Escape::Sequence(params);
                    None
                } else {
                    Some(Key::Sequence(params, '\0'))
                }
            }
        }
    }

    fn apply(&mut self, key: Key, end: u64) -> bool {
        match key {
            Key::Char(cell) => {
                self.line.insert(self.cursor, cell);
                self.cursor += 1;
            }
            Key::Control(b'\r' | b'\n') => {
                let blind = self.blind.then_some(self.line_start..end);
                self.ended.push(Ended {
                    cells: std::mem::take(&mut self.line),
                    blind,
                });
                self.cursor = 0;
                self.blind = false;
                self.line_start = end;
                return true;
            }
            // Tab is kept as typed (completion inserts what the screen shows, and output is
            // masked as the screen shows it).
            Key::Control(b'\t') => {
                self.line.insert(
                    self.cursor,
                    Cell {
                        c: '\t',
                        start: end.saturating_sub(1),
                        end,
                    },
                );
                self.cursor += 1;
            }
            Key::Control(0x01) => self.cursor = 0,
            Key::Control(0x05) => self.cursor = self.line.len(),
            Key::Control(0x02) => self.cursor = self.cursor.saturating_sub(1),
            Key::Control(0x06) => self.cursor = (self.cursor + 1).min(self.line.len()),
            Key::Control(0x08 | 0x7f) => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.line.remove(self.cursor);
                }
            }
            Key::Control(0x04) => {
                if self.cursor < self.line.len() {
                    self.line.remove(self.cursor);
                }
            }
            Key::Control(0x0b) => self.kill(self.cursor..self.line.len()),
            Key::Control(0x15) => self.kill(0..self.cursor),
            Key::Control(0x17) => {
                // unix-word-rubout: back over spaces, then over non-spaces.
                let mut from = self.cursor;
                while from > 0 && self.line[from - 1].c.is_whitespace() {
                    from -= 1;
                }
                while from > 0 && !self.line[from - 1].c.is_whitespace() {
                    from -= 1;
                }
                self.kill(from..self.cursor);
            }
            Key::Control(0x19) => {
                let yanked = self.killed.clone();
                let n = yanked.len();
                self.line.splice(self.cursor..self.cursor, yanked);
                self.cursor += n;
            }
            Key::Control(0x14) => {
                // transpose-chars: at the end of the line, the last two; else the one before
                // the cursor with the one under it, and the cursor moves past both.
                let len = self.line.len();
                if len >= 2 && self.cursor > 0 {
                    let at = if self.cursor >= len {
                        len - 1
                    } else {
                        self.cursor
                    };
                    self.line.swap(at - 1, at);
                    self.cursor = (at + 1).min(len);
                }
            }
            Key::Control(0x03) => {
                self.line.clear();
                self.cursor = 0;
            }
            Key::Control(0x0c) => {}
            Key::Control(_) => self.blind = true,
            Key::Meta('b') => self.cursor = self.word_start(),
            Key::Meta('f') => self.cursor = self.word_end(),
            Key::Meta('d') => {
                let to = self.word_end();
                self.kill(self.cursor..to);
            }
            Key::Meta('\x7f' | '\x08') => {
                let from = self.word_start();
                self.kill(from..self.cursor);
            }
            Key::Meta(_) => self.blind = true,
            Key::Sequence(params, action) => match (params.as_slice(), action) {
                ([], 'D') => self.cursor = self.cursor.saturating_sub(1),
                ([], 'C') => self.cursor = (self.cursor + 1).min(self.line.len()),
                ([], 'H') | (b"1", '~') | (b"7", '~') => self.cursor = 0,
                ([], 'F') | (b"4", '~') | (b"8", '~') => self.cursor = self.line.len(),
                (b"3", '~') => {
                    if self.cursor < self.line.len() {
                        self.line.remove(self.cursor);
                    }
                }
                // Ctrl/Alt-arrows: word motions.
                (b"1;5" | b"1;3", 'D') => self.cursor = self.word_start(),
                (b"1;5" | b"1;3", 'C') => self.cursor = self.word_end(),
                // Bracketed paste marks: the pasted text is typed between them. Colour
                // sequences (piped input of a program's coloured output) edit nothing.
                (b"200" | b"201", '~') | (_, 'm') => {}
                _ => self.blind = true,
            },
        }
        false
    }

    fn kill(&mut self, range: std::ops::Range<usize>) {
        let range = range.start.min(self.line.len())..range.end.min(self.line.len());
        if range.is_empty() {
            return;
        }
        self.cursor = range.start;
        self.killed = self.line.drain(range).collect();
    }

    fn word_start(&self) -> usize {
        let mut at = self.cursor.min(self.line.len());
        while at > 0 && !word(&self.line[at - 1]) {
            at -= 1;
        }
        while at > 0 && word(&self.line[at - 1]) {
            at -= 1;
        }
        at
    }

    fn word_end(&self) -> usize {
        let len = self.line.len();
        let mut at = self.cursor.min(len);
        while at < len && !word(&self.line[at]) {
            at += 1;
        }
        while at < len && word(&self.line[at]) {
            at += 1;
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(keys: &str) -> (String, bool) {
        let mut e = LineEditor::default();
        for (i, c) in keys.chars().enumerate() {
            let at = i as u64;
            e.feed(Cell {
                c,
                start: at,
                end: at + 1,
            });
        }
        e.feed(Cell {
            c: '\r',
            start: 0,
            end: 0,
        });
        let ended = e.take_ended().pop().expect("a line");
        (
            ended.cells.iter().map(|c| c.c).collect(),
            ended.blind.is_some(),
        )
    }

    #[test]
    fn readline_edits_give_the_line_bash_runs() {
        for (keys, line) in [
            ("echo @example.com\x01\x06\x06\x06\x06\x06alice", "echo alice@example.com"),
            ("echo 4012888888881818\x14", "echo 4012888888881881"),
            ("@example.com\x15echo alice\x19", "echo alice@example.com"),
            ("echo x@example.com\x1bb\x1bb\x02\x7falice", "echo alice@example.com"),
            ("echo @example.com\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Dalice", "echo alice@example.com"),
            ("echo bob alice\x17\x17x\x05", "echo x"),
            ("echo abc\x1b[H\x1b[3~E\x1b[F!", "Echo abc!"),
            ("echo @example.com\x01\x1bf\x06alice\x1b[1;5D\x1b[1;5C", "echo alice@example.com"),
        ] {
            assert_eq!(typed(keys), (line.to_owned(), false), "{keys:?}");
        }
    }

    #[test]
    fn keys_the_model_cannot_follow_make_the_line_blind() {
        for keys in [
            "echo \x1b[A",
            "\x12alice",
            "echo a\x1f",
            "echo \x1b.",
            "echo \x16\x01",
        ] {
            assert!(typed(keys).1, "{keys:?}");
        }
    }
}
