#![allow(dead_code)]
//! The hand-written screen model the exec masking used before the terminal emulator, kept
//! only as the baseline of the throughput measurement.
//!
//! Masking of terminal streams as the screen shows them.
//!
//! The detectors do not run over the raw bytes of a stream but over the text a terminal would
//! display from them. The bytes go through a terminal parser ([`vte`], the one Alacritty uses)
//! one at a time, so every character the terminal draws is known with the raw bytes that
//! produced it (escape sequences, C0 controls and invalid UTF-8 are never part of a character;
//! invalid bytes are drawn as U+FFFD, one per bad sequence, as a terminal does). Two views are
//! kept and both are searched:
//!
//! - the **stream view**: the drawn characters in the order they arrive, without escape
//!   sequences and without zero-width characters (zero-width spaces and joiners, combining
//!   marks, byte-order marks), split at line ends and tabs;
//! - the **screen view**: the rows of the screen as cells, with backspace, carriage return,
//!   tabs, cursor moves in every direction (up, down, to a row and column), erase and
//!   insert/delete sequences applied, so overstrikes and text drawn by moving the cursor
//!   show the value the screen shows. Rows near the cursor are kept, so a value drawn in
//!   pieces on one row is found whichever order the pieces come in. For typed input the
//!   line editor's keys apply instead: backspace and DEL erase the character before the
//!   cursor, `^U` clears the line, arrows end it.
//!
//! A value found in either view masks every raw byte from the first byte of its first character
//! to the last byte of its last character (escape sequences inside it included) with `*`, so
//! the length of the stream is unchanged.
//!
//! A [`Scanner`] holds back what could still be the start of a value: bytes are released at a
//! line end, or, for a line longer than [`MAX_PENDING`], all but the last [`WINDOW`]
//! characters, which stay as the carry-over window for the next bytes. A value is masked
//! whatever frames, flushes or escape sequences it is split by, as long as its characters are
//! drawn within [`WINDOW`] characters of each other. Live output that goes quiet mid-line is
//! released with [`Scanner::release_quiet`]: never the part that could still grow into a
//! value, unless masked. A row already released (its line ended) that the cursor later
//! returns to is context only: what is drawn on it afterwards is masked when it completes a
//! value, what was released before stays as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use unicode_width::UnicodeWidthChar;

use portcullis_sidecar::kube::recording::OutputMasker;

/// Bytes of one unfinished line held before the oldest part is released.
pub const MAX_PENDING: usize = 4096;

/// Characters kept back, and kept as context, when a long line is released in parts: longer
/// than any value a detector finds.
pub const WINDOW: usize = 256;

/// A line view wider than this is not grown further (cursor moves are clamped).
const MAX_COLUMNS: usize = 4 * MAX_PENDING;

/// Rows of the screen cursor addressing counts from (the terminal's height is not known to
/// the scanner; a common one).
const SCREEN_ROWS: i64 = 24;

/// Rows kept above and below the cursor for values drawn across cursor moves.
const KEPT_ROWS: i64 = 2 * SCREEN_ROWS;

/// Whether the stream is a terminal's output or what is typed into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Output: the terminal's own rules (backspace and carriage return move the cursor).
    Output,
    /// Input: a line editor's rules (backspace and DEL erase, `^U` clears the line).
    Input,
}

/// A drawn character and the absolute offsets of the raw bytes that drew it.
#[derive(Clone, Copy, Debug)]
struct Cell {
    c: char,
    start: u64,
    end: u64,
}

/// The terminal state the parser drives.
struct View {
    direction: Direction,
    /// Absolute offset of the byte being parsed.
    pos: u64,
    /// Where the raw bytes of the next drawn character begin.
    span_start: u64,
    /// Drawn characters in arrival order (separators included as cells).
    stream: Vec<Cell>,
    /// The cursor's screen row.
    line: Vec<Option<Cell>>,
    cursor: usize,
    /// The cursor's row number (rows count down from the first; output only moves up).
    row: i64,
    /// The lowest row reached, and so the screen's top row (`bottom - SCREEN_ROWS + 1`).
    bottom: i64,
    /// Other rows near the cursor, with the end offset of their last-drawn bytes.
    rows: BTreeMap<i64, (u64, Vec<Option<Cell>>)>,
    /// Absolute offset just past the last line end seen.
    line_end: Option<u64>,
}

impl View {
    fn new(direction: Direction) -> Self {
        View {
            direction,
            pos: 0,
            span_start: 0,
            stream: Vec::new(),
            line: Vec::new(),
            cursor: 0,
            row: 0,
            bottom: 0,
            rows: BTreeMap::new(),
            line_end: None,
        }
    }

    fn separator(&mut self, c: char) {
        self.stream.push(Cell {
            c,
            start: self.pos,
            end: self.pos + 1,
        });
    }

    fn end_line(&mut self) {
        self.goto_row(self.row + 1);
        self.cursor = 0;
        self.line_end = Some(self.pos + 1);
    }

    /// Move the cursor to row `row` (its column unchanged).
    fn goto_row(&mut self, row: i64) {
        if row == self.row {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let end = line.iter().flatten().map(|c| c.end).max();
        match end {
            Some(end) => {
                self.rows.insert(self.row, (end, line));
            }
            None => {
                self.rows.remove(&self.row);
            }
        }
        self.line = self.rows.remove(&row).map(|(_, l)| l).unwrap_or_default();
        self.row = row;
        self.bottom = self.bottom.max(row);
        let near = row - KEPT_ROWS..=row + KEPT_ROWS;
        self.rows.retain(|r, _| near.contains(r));
    }

    /// Row `n` (from 1) of the screen.
    fn screen_row(&self, n: usize) -> i64 {
        let top = (self.bottom - SCREEN_ROWS + 1).max(0);
        top + i64::try_from(n.max(1) - 1)
            .unwrap_or(0)
            .min(SCREEN_ROWS - 1)
    }

    fn put(&mut self, cell: Cell) {
        if self.cursor >= MAX_COLUMNS {
            self.cursor = MAX_COLUMNS - 1;
        }
        if self.line.len() <= self.cursor {
            self.line.resize(self.cursor + 1, None);
        }
        match self.direction {
            // A line editor inserts at the cursor.
            Direction::Input => self.line.insert(self.cursor, Some(cell)),
            Direction::Output => self.line[self.cursor] = Some(cell),
        }
        self.cursor += 1;
    }

    fn erase_before_cursor(&mut self) {
        if self.cursor > 0 && self.cursor <= self.line.len() {
            self.line.remove(self.cursor - 1);
            self.cursor -= 1;
        } else {
            self.cursor = self.cursor.saturating_sub(1);
        }
    }

    fn done_with_sequence(&mut self) {
        self.span_start = self.pos + 1;
    }
}

/// Characters a terminal draws with no width: zero-width spaces and joiners, byte-order marks,
/// combining marks, format characters.
fn invisible(c: char) -> bool {
    matches!(c.width(), Some(0) | None) || matches!(c, '\u{00ad}' | '\u{115f}' | '\u{1160}')
}

impl vte::Perform for View {
    fn print(&mut self, c: char) {
        if invisible(c) {
            // Its bytes join the next character's span.
            return;
        }
        let cell = Cell {
            c,
            start: self.span_start,
            end: self.pos + 1,
        };
        self.stream.push(cell);
        self.put(cell);
        self.span_start = self.pos + 1;
    }

    fn execute(&mut self, byte: u8) {
        match (byte, self.direction) {
            (b'\n' | 0x0b | 0x0c, _) | (b'\r', Direction::Input) => {
                self.separator('\n');
                self.end_line();
            }
            (b'\r', Direction::Output) => self.cursor = 0,
            (0x08, Direction::Output) => self.cursor = self.cursor.saturating_sub(1),
            (0x08, Direction::Input) => self.erase_before_cursor(),
            (0x15, Direction::Input) => {
                self.line.drain(..self.cursor.min(self.line.len()));
                self.cursor = 0;
            }
            (b'\t', _) => {
                self.separator('\t');
                self.cursor = (self.cursor / 8 + 1) * 8;
            }
            _ => {}
        }
        self.done_with_sequence();
    }

    fn csi_dispatch(
        &mut self,
        params: &vte::Params,
        intermediates: &[u8],
        _ignore: bool,
        action: char,
    ) {
        let first = params
            .iter()
            .next()
            .and_then(|p| p.first().copied())
            .unwrap_or(0);
        let n = usize::from(first.max(1));
        if intermediates.is_empty() {
            match action {
                'C' | 'a' => self.cursor = (self.cursor + n).min(MAX_COLUMNS),
                'D' => self.cursor = self.cursor.saturating_sub(n),
                'G' | '`' => self.cursor = (n - 1).min(MAX_COLUMNS),
                'K' => match first {
                    0 => self.line.truncate(self.cursor),
                    1 => {
                        let end = (self.cursor + 1).min(self.line.len());
                        self.line[..end].iter_mut().for_each(|c| *c = None);
                    }
                    _ => self.line.clear(),
                },
                'X' => {
                    let end = (self.cursor + n).min(self.line.len());
                    if self.cursor < end {
                        self.line[self.cursor..end]
                            .iter_mut()
                            .for_each(|c| *c = None);
                    }
                }
                'P' => {
                    let end = (self.cursor + n).min(self.line.len());
                    if self.cursor < end {
                        self.line.drain(self.cursor..end);
                    }
                }
                '@' if self.cursor < self.line.len() => {
                    let blanks = n.min(MAX_COLUMNS);
                    self.line
                        .splice(self.cursor..self.cursor, std::iter::repeat_n(None, blanks));
                    self.line.truncate(MAX_COLUMNS);
                }
                // Output moves to another row of the screen, or clears part of it.
                'A' | 'B' | 'E' | 'F' | 'H' | 'f' | 'd' | 'J'
                    if self.direction == Direction::Output =>
                {
                    // The arrival order is broken: the stream view ends its line.
                    self.separator('\n');
                    let row = match action {
                        'A' | 'F' => self.row - n as i64,
                        'B' | 'E' => self.row + n as i64,
                        'H' | 'f' | 'd' => self.screen_row(usize::from(first)),
                        _ => self.row,
                    };
                    self.goto_row(row);
                    match action {
                        'E' | 'F' => self.cursor = 0,
                        'H' | 'f' => {
                            let column = params.iter().nth(1).and_then(|p| p.first().copied());
                            self.cursor = column.map_or(0, |c| usize::from(c.max(1)) - 1);
                        }
                        'J' => {
                            let here = self.row;
                            match first {
                                0 => {
                                    self.line.truncate(self.cursor);
                                    self.rows.retain(|r, _| *r < here);
                                }
                                1 => {
                                    let end = (self.cursor + 1).min(self.line.len());
                                    self.line[..end].iter_mut().for_each(|c| *c = None);
                                    self.rows.retain(|r, _| *r > here);
                                }
                                _ => {
                                    self.line.clear();
                                    self.rows.clear();
                                }
                            }
                        }
                        _ => {}
                    }
                }
                // Typed arrows, scrolls: the line ends here.
                'A' | 'B' | 'E' | 'F' | 'H' | 'f' | 'd' | 'J' | 'S' | 'T' => {
                    let column = self.cursor;
                    self.separator('\n');
                    self.end_line();
                    self.line_end = None;
                    self.cursor = match action {
                        'H' | 'f' => params
                            .iter()
                            .nth(1)
                            .and_then(|p| p.first().copied())
                            .map_or(0, |c| usize::from(c.max(1)) - 1),
                        'E' | 'F' => 0,
                        _ => column,
                    };
                }
                _ => {}
            }
        }
        self.done_with_sequence();
    }

    fn esc_dispatch(&mut self, _intermediates: &[u8], _ignore: bool, _byte: u8) {
        self.done_with_sequence();
    }

    fn osc_dispatch(&mut self, _params: &[&[u8]], _bell_terminated: bool) {
        self.done_with_sequence();
    }

    fn hook(&mut self, _params: &vte::Params, _i: &[u8], _ignore: bool, _action: char) {
        self.done_with_sequence();
    }

    fn put(&mut self, _byte: u8) {
        self.done_with_sequence();
    }

    fn unhook(&mut self) {
        self.done_with_sequence();
    }
}

/// A found value: its rule (index into the masker's detectors) and raw byte range.
type Found = (usize, Range<u64>);

/// Search a sequence of cells (gaps read as spaces); returns the raw ranges of what is found.
fn search(masker: &OutputMasker, cells: &[Option<Cell>], out: &mut Vec<Found>) {
    if cells.iter().all(Option::is_none) {
        return;
    }
    let mut text = String::with_capacity(cells.len());
    let mut index = Vec::with_capacity(cells.len());
    for (i, cell) in cells.iter().enumerate() {
        let c = cell.map_or(' ', |c| c.c);
        for _ in 0..c.len_utf8() {
            index.push(i);
        }
        text.push(c);
    }
    for (rule, range) in masker.find(&text) {
        let Some(first) = index.get(range.start).copied() else {
            continue;
        };
        let Some(last) = range.end.checked_sub(1).and_then(|e| index.get(e).copied()) else {
            continue;
        };
        let spans = cells[first..=last].iter().flatten();
        let start = spans.clone().map(|c| c.start).min();
        let end = spans.map(|c| c.end).max();
        if let (Some(start), Some(end)) = (start, end) {
            out.push((rule, start..end));
        }
    }
}

/// A stream being masked as the screen shows it; see the module documentation.
pub struct Scanner {
    parser: vte::Parser,
    view: View,
    /// Raw bytes not yet released; `raw[0]` is at absolute offset `base`.
    raw: Vec<u8>,
    base: u64,
    /// Ranges found that reach past what was released.
    masks: Vec<Range<u64>>,
    /// Values already counted (rule, start), so a value seen again is counted once.
    counted: BTreeSet<(usize, u64)>,
    /// Values found per detector since the last [`Scanner::take_counts`].
    counts: Vec<u64>,
}

impl Scanner {
    /// A scanner for one stream.
    pub fn new(direction: Direction) -> Self {
        Scanner {
            parser: vte::Parser::new(),
            view: View::new(direction),
            raw: Vec::new(),
            base: 0,
            masks: Vec::new(),
            counted: BTreeSet::new(),
            counts: Vec::new(),
        }
    }

    /// Bytes held back.
    pub fn pending(&self) -> usize {
        self.raw.len()
    }

    /// Take in `data`; returns the masked bytes that can be released now (possibly none).
    pub fn push(&mut self, masker: &OutputMasker, data: &[u8]) -> Vec<u8> {
        for &b in data {
            self.parser.advance(&mut self.view, &[b]);
            self.view.pos += 1;
        }
        self.raw.extend_from_slice(data);
        let end = self.base + self.raw.len() as u64;
        let cut = if let Some(line_end) = self.view.line_end.filter(|e| *e > self.base) {
            // Everything up to the last line end, unless what follows on the new line is
            // already long.
            if end - line_end >= MAX_PENDING as u64 {
                self.window_cut().max(line_end)
            } else {
                line_end
            }
        } else if self.raw.len() >= MAX_PENDING {
            self.window_cut()
        } else {
            return Vec::new();
        };
        self.release(masker, cut)
    }

    /// Release everything held (the stream ended or has been idle).
    pub fn flush(&mut self, masker: &OutputMasker) -> Vec<u8> {
        let end = self.base + self.raw.len() as u64;
        self.release(masker, end)
    }

    /// Release what is held after the stream has gone quiet in the middle of a line: the part
    /// before the first place from which the held text could still grow into a value (see
    /// [`OutputMasker::first_unfinished`]) is released as usual; the rest stays held, unless
    /// `mask_unfinished`, when it is released too with each of its characters masked (escape
    /// sequences and controls kept). The characters stay as context, so when the rest of
    /// the value arrives, it is found whole and its new part masked as well.
    pub fn release_quiet(&mut self, masker: &OutputMasker, mask_unfinished: bool) -> Vec<u8> {
        let end = self.base + self.raw.len() as u64;
        match self.unfinished(masker) {
            None => self.release(masker, end),
            Some((_, spans)) if mask_unfinished => {
                self.masks.extend(spans);
                self.release(masker, end)
            }
            Some((start, _)) if start > self.base => self.release(masker, start),
            Some(_) => Vec::new(),
        }
    }

    /// Where a possible unfinished value begins among the held bytes, with the raw spans of
    /// its held characters; searched in the stream view and in the line view.
    fn unfinished(&self, masker: &OutputMasker) -> Option<(u64, Vec<Range<u64>>)> {
        let stream: Vec<Option<Cell>> = self.view.stream.iter().copied().map(Some).collect();
        let mut first: Option<u64> = None;
        let mut spans = Vec::new();
        for cells in [&stream, &self.view.line] {
            let from = cells.len().saturating_sub(WINDOW);
            let mut text = Vec::new();
            let mut starts = Vec::new();
            let mut columns = Vec::new();
            for (i, cell) in cells.iter().enumerate() {
                let c = cell.map_or(' ', |c| c.c);
                if i >= from {
                    starts.push(text.len());
                    columns.push(i);
                }
                let mut buf = [0u8; 4];
                text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            let Some(k) = masker.first_unfinished(&text, &starts) else {
                continue;
            };
            let Some(&column) = starts
                .iter()
                .position(|s| *s == k)
                .and_then(|i| columns.get(i))
            else {
                continue;
            };
            let held: Vec<Cell> = cells[column..]
                .iter()
                .flatten()
                .filter(|c| c.end > self.base)
                .copied()
                .collect();
            if let Some(start) = held.iter().map(|c| c.start.max(self.base)).min() {
                first = Some(first.map_or(start, |f| f.min(start)));
            }
            spans.extend(held.iter().map(|c| c.start.max(self.base)..c.end));
        }
        // Nothing held belongs to a possible value: nothing to hold back.
        first.map(|f| (f, spans))
    }

    /// Values found per detector (by index in the masker) since the last call.
    pub fn take_counts(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.counts)
    }

    /// Where a long line is cut: at the first byte of the character [`WINDOW`] characters
    /// from the end; everything when the held bytes hold too few characters to keep a window
    /// (escape sequences without text).
    fn window_cut(&self) -> u64 {
        let end = self.base + self.raw.len() as u64;
        let stream = &self.view.stream;
        if stream.len() > WINDOW {
            let cut = stream[stream.len() - WINDOW].start;
            if cut > self.base && end - cut <= 4 * MAX_PENDING as u64 {
                return cut;
            }
        }
        end
    }

    fn release(&mut self, masker: &OutputMasker, cut: u64) -> Vec<u8> {
        let mut found = Vec::new();
        let stream: Vec<Option<Cell>> = self.view.stream.iter().copied().map(Some).collect();
        search(masker, &stream, &mut found);
        for (end, line) in self.view.rows.values() {
            if *end > self.base {
                search(masker, line, &mut found);
            }
        }
        search(masker, &self.view.line, &mut found);
        for (rule, range) in found {
            if range.end <= self.base {
                continue;
            }
            if self.counted.insert((rule, range.start)) {
                if self.counts.len() <= rule {
                    self.counts.resize(rule + 1, 0);
                }
                self.counts[rule] += 1;
            }
            self.masks.push(range);
        }
        let take = usize::try_from(cut.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.raw.len());
        let mut out: Vec<u8> = self.raw.drain(..take).collect();
        for m in &self.masks {
            let from = m.start.max(self.base);
            let to = m.end.min(cut);
            if from < to {
                let (a, b) = ((from - self.base) as usize, (to - self.base) as usize);
                out[a..b].fill(b'*');
            }
        }
        self.base = cut;
        self.masks.retain(|m| m.end > cut);
        // What stays as context: the rows near the cursor, and in the stream view the
        // characters after the cut and a window before it.
        let keep_from = self
            .view
            .stream
            .iter()
            .position(|c| c.end > cut)
            .unwrap_or(self.view.stream.len());
        let keep_from = if self.view.line_end.is_some_and(|e| e >= cut) {
            keep_from
        } else {
            keep_from.saturating_sub(WINDOW)
        };
        self.view.stream.drain(..keep_from);
        if self.view.stream.len() > 2 * WINDOW + MAX_PENDING {
            let extra = self.view.stream.len() - (2 * WINDOW + MAX_PENDING);
            self.view.stream.drain(..extra);
        }
        let oldest = self.base.saturating_sub(4 * MAX_PENDING as u64);
        self.counted.retain(|(_, start)| *start >= oldest);
        out
    }
}

/// Mask a whole text at once (a command line, a reason): the same views, nothing held back.
pub fn mask_text(masker: &OutputMasker, text: &str, direction: Direction) -> (String, Vec<u64>) {
    let mut scanner = Scanner::new(direction);
    let mut out = scanner.push(masker, text.as_bytes());
    out.extend(scanner.flush(masker));
    (
        String::from_utf8_lossy(&out).into_owned(),
        scanner.take_counts(),
    )
}
