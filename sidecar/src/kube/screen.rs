//! Masking of terminal streams as the screen shows them.
//!
//! The detectors do not run over the raw bytes of a stream but over the text a terminal would
//! display from them. Output goes through a full terminal emulator, [`avt`] (the asciinema
//! virtual terminal, the same one the audit service's replay uses): cursor moves and saves,
//! wide characters, index and reverse index, origin mode and scroll regions, inserting and
//! deleting lines and characters, the alternate screen, autowrap, insert mode, REP and tab
//! stops all act on its screen as on a real terminal's. Its size follows the terminal's
//! (the client's resize messages), bounded by [`MAX_COLUMNS`], [`MAX_ROWS`] and [`MAX_CELLS`]
//! whatever size a client asks for.
//!
//! Each drawn character is an event with the raw bytes that drew it. The emulator is given
//! the event's number as the colour of the character (the stream's own colours are not
//! followed: they draw no text), so every cell of its screen tells which bytes drew it, after
//! whatever moved it. Bytes are decoded as UTF-8 one character at a time; invalid bytes are
//! drawn as U+FFFD, one per bad sequence, as a terminal does; characters with no width
//! (zero-width spaces and joiners, combining marks, byte-order marks) are not drawn, their
//! bytes join the next character's.
//!
//! Two views are searched:
//!
//! - the **stream view**: the drawn characters in the order they arrive, split at line ends,
//!   tabs and moves to another row;
//! - the **screen view**: each line of the emulated screen (rows joined where text wrapped
//!   from one to the next) that holds a character drawn by bytes not yet released. For
//!   typed input a line editor's model applies instead ([`super::line_editor`]): the line the
//!   shell will run after the editing keys; a line with a key the model cannot follow is
//!   masked whole.
//!
//! A value found in either view masks every raw byte from the first byte of its first character
//! to the last byte of its last character (escape sequences inside it included) with `*`, so
//! the length of the stream is unchanged.
//!
//! A [`Scanner`] holds back what could still be the start of a value: bytes are released at a
//! line end, or, for a line longer than [`MAX_PENDING`], all but the last [`WINDOW`]
//! characters, which stay as the carry-over window for the next bytes. Live output that goes
//! quiet mid-line is released with [`Scanner::release_quiet`]: never the part that could
//! still grow into a value, unless masked. Text already released that later completes a
//! value on the screen is context only: what is drawn afterwards is masked, what was released
//! before stays as it was (a value formed only by deleting or moving released text, with no
//! new character, is not masked).

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;

use avt::parser::{Function, SgrOp};
use avt::{Color, Terminal};
use unicode_width::UnicodeWidthChar;

use super::line_editor::LineEditor;
use super::recording::OutputMasker;

/// Bytes of one unfinished line held before the oldest part is released.
pub const MAX_PENDING: usize = 4096;

/// Characters kept back, and kept as context, when a long line is released in parts: longer
/// than any value a detector finds.
pub const WINDOW: usize = 256;

/// Widest terminal emulated (a wider resize is clamped).
pub const MAX_COLUMNS: usize = 512;

/// Tallest terminal emulated.
pub const MAX_ROWS: usize = 256;

/// Most cells emulated: the bound on a screen's memory, whatever the resize messages say.
pub const MAX_CELLS: usize = 64 * 1024;

/// Lines feeds after which the held lines are searched before they can scroll away.
const SEARCH_EVERY_SCROLL: usize = 8;

/// Whether the stream is a terminal's output or what is typed into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Output: the terminal's own rules.
    Output,
    /// Input: a line editor's rules (see [`super::line_editor`]).
    Input,
}

/// A drawn character and the absolute offsets of the raw bytes that drew it (`start == end`:
/// bytes not known, already released).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub c: char,
    pub start: u64,
    pub end: u64,
}

/// Incremental UTF-8 decoding, one character at a time, invalid bytes as U+FFFD.
#[derive(Default)]
struct Utf8 {
    buf: [u8; 4],
    len: usize,
}

impl Utf8 {
    /// Take byte `b`; each decoded character is given with whether it includes `b`.
    fn push(&mut self, b: u8, out: &mut Vec<(char, bool)>) {
        if self.len == 0 && b < 0x80 {
            out.push((char::from(b), true));
            return;
        }
        self.buf[self.len] = b;
        self.len += 1;
        match std::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => {
                out.extend(s.chars().map(|c| (c, true)));
                self.len = 0;
            }
            Err(e) if e.error_len().is_none() && self.len < 4 => {}
            Err(_) => {
                let n = self.len;
                self.len = 0;
                if n > 1 {
                    // The sequence before `b` was cut short: it is one bad character, and
                    // `b` starts again.
                    out.push(('\u{fffd}', false));
                    self.push(b, out);
                } else {
                    out.push(('\u{fffd}', true));
                }
            }
        }
    }
}

/// Characters a terminal draws with no width: zero-width spaces and joiners, byte-order marks,
/// combining marks, format characters.
fn invisible(c: char) -> bool {
    matches!(c.width(), Some(0) | None) || matches!(c, '\u{00ad}' | '\u{115f}' | '\u{1160}')
}

/// The colour pair that carries event number `n` (48 bits) on the emulated screen.
fn tag(n: u64) -> Function {
    let b = n.to_le_bytes();
    Function::Sgr(
        [
            SgrOp::SetForegroundColor(Color::rgb(b[0], b[1], b[2])),
            SgrOp::SetBackgroundColor(Color::rgb(b[3], b[4], b[5])),
        ][..]
            .into(),
    )
}

/// The event number a cell's colours carry.
fn tag_of(cell: &avt::Cell) -> Option<u64> {
    match (cell.pen().foreground(), cell.pen().background()) {
        (Some(Color::RGB(f)), Some(Color::RGB(b))) => {
            Some(u64::from_le_bytes([f.r, f.g, f.b, b.r, b.g, b.b, 0, 0]))
        }
        _ => None,
    }
}

/// The terminal size emulated for a requested one.
fn bounded(cols: usize, rows: usize) -> (usize, usize) {
    let cols = cols.clamp(1, MAX_COLUMNS);
    let rows = rows.clamp(1, MAX_ROWS).min(MAX_CELLS / cols).max(1);
    (cols, rows)
}

/// The emulated output terminal.
struct Screen {
    parser: avt::Parser,
    term: Terminal,
    /// The last drawn character (what REP repeats).
    last: Option<char>,
    /// Line feeds since the held lines were last searched.
    scrolled: usize,
}

impl Screen {
    /// A screen of (at most) `cols` by `rows`; `None` only if the emulator refuses the size
    /// (never for a bounded one), and then every drawn character is masked.
    fn new(cols: usize, rows: usize) -> Option<Self> {
        let (cols, rows) = bounded(cols, rows);
        // Scrollback as tall as the screen: held lines are searched there after they scroll
        // off.
        let term = Terminal::with_scrollback(cols, rows, Some(rows))
            .map_err(|e| tracing::warn!(error = %e, "terminal emulator refused a size"))
            .ok()?;
        Some(Screen {
            parser: avt::Parser::new(),
            term,
            last: None,
            scrolled: 0,
        })
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
        let spans = cells[first..=last]
            .iter()
            .flatten()
            .filter(|c| c.end > c.start);
        let start = spans.clone().map(|c| c.start).min();
        let end = spans.map(|c| c.end).max();
        if let (Some(start), Some(end)) = (start, end) {
            out.push((rule, start..end));
        }
    }
}

/// A stream being masked as the screen shows it; see the module documentation.
pub struct Scanner {
    direction: Direction,
    utf8: Utf8,
    /// Output: the emulated terminal.
    screen: Option<Screen>,
    /// Input: the line editor.
    editor: LineEditor,
    /// Drawn characters by event number; `events[0]` is event `first_event`.
    events: VecDeque<Cell>,
    first_event: u64,
    /// Absolute offset of the next byte.
    pos: u64,
    /// Where the raw bytes of the next drawn character begin.
    span_start: u64,
    /// Drawn characters in arrival order (separators included as cells).
    stream: Vec<Cell>,
    /// Absolute offset just past the last line end seen.
    line_end: Option<u64>,
    /// Raw bytes not yet released; `raw[0]` is at absolute offset `base`.
    raw: Vec<u8>,
    base: u64,
    /// Ranges found that reach past what was released.
    masks: Vec<Range<u64>>,
    /// Values already counted (rule, start), so a value seen again is counted once.
    counted: BTreeSet<(usize, u64)>,
    /// Values found per detector since the last [`Scanner::take_counts`].
    counts: Vec<u64>,
    decoded: Vec<(char, bool)>,
}

impl Scanner {
    /// A scanner for one stream, on a terminal of 80 columns by 24 rows until told its size.
    pub fn new(direction: Direction) -> Self {
        Self::with_size(direction, 80, 24)
    }

    /// A scanner for one stream on a terminal of `cols` by `rows` (bounded, see
    /// [`MAX_CELLS`]).
    pub fn with_size(direction: Direction, cols: usize, rows: usize) -> Self {
        Scanner {
            direction,
            utf8: Utf8::default(),
            screen: match direction {
                Direction::Output => Screen::new(cols, rows),
                Direction::Input => None,
            },
            editor: LineEditor::default(),
            events: VecDeque::new(),
            first_event: 0,
            pos: 0,
            span_start: 0,
            stream: Vec::new(),
            line_end: None,
            raw: Vec::new(),
            base: 0,
            masks: Vec::new(),
            counted: BTreeSet::new(),
            counts: Vec::new(),
            decoded: Vec::new(),
        }
    }

    /// The terminal was resized (a resize message): the emulated screen follows, within the
    /// bounds.
    pub fn resize(&mut self, masker: &OutputMasker, cols: usize, rows: usize) {
        // What a resize could cut or reflow is searched first.
        self.search_held(masker);
        if let Some(screen) = &mut self.screen {
            let (cols, rows) = bounded(cols, rows);
            screen.term.resize(cols, rows);
        }
    }

    /// Bytes held back.
    pub fn pending(&self) -> usize {
        self.raw.len()
    }

    /// Take in `data`; returns the masked bytes that can be released now (possibly none).
    pub fn push(&mut self, masker: &OutputMasker, data: &[u8]) -> Vec<u8> {
        let mut decoded = std::mem::take(&mut self.decoded);
        for &b in data {
            decoded.clear();
            self.utf8.push(b, &mut decoded);
            for &(c, with_b) in &decoded {
                let end = if with_b { self.pos + 1 } else { self.pos };
                match self.direction {
                    Direction::Output => self.output_char(masker, c, end),
                    Direction::Input => self.input_char(c, end),
                }
            }
            self.pos += 1;
        }
        self.decoded = decoded;
        self.raw.extend_from_slice(data);
        let end = self.base + self.raw.len() as u64;
        let cut = if let Some(line_end) = self.line_end.filter(|e| *e > self.base) {
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

    fn separator(&mut self, c: char, end: u64) {
        self.stream.push(Cell {
            c,
            start: end.saturating_sub(1),
            end,
        });
    }

    /// A drawn character: a new event.
    fn draw(&mut self, c: char, end: u64) -> Cell {
        let cell = Cell {
            c,
            start: self.span_start,
            end,
        };
        self.events.push_back(cell);
        self.span_start = end;
        cell
    }

    fn output_char(&mut self, masker: &OutputMasker, c: char, end: u64) {
        let Some(screen) = &mut self.screen else {
            // No emulator: every drawn character is masked (fail closed).
            if !c.is_control() && !c.is_whitespace() {
                self.masks.push(self.span_start..end);
            }
            self.span_start = end;
            return;
        };
        let Some(function) = screen.parser.feed(c) else {
            return;
        };
        match function {
            Function::Print(ch) => {
                if invisible(ch) {
                    // Its bytes join the next character's span.
                    return;
                }
                let id = self.first_event + self.events.len() as u64;
                if let Some(screen) = &mut self.screen {
                    screen.term.execute([tag(id), Function::Print(ch)]);
                    screen.last = Some(ch);
                }
                let cell = self.draw(ch, end);
                self.stream.push(cell);
                return;
            }
            Function::Rep(n) => {
                let Some(ch) = screen.last else {
                    self.span_start = end;
                    return;
                };
                let id = self.first_event + self.events.len() as u64;
                let cols = screen.term.size().0;
                screen.term.execute([tag(id), Function::Rep(n)]);
                let cell = self.draw(ch, end);
                let n = usize::from(n.max(1)).min(cols);
                self.stream.extend(std::iter::repeat_n(cell, n));
                return;
            }
            // Colours draw no text (and the emulator's colours carry the event numbers);
            // titles and other OSC strings are not on the screen.
            Function::Sgr(_) | Function::Osc(_) => {}
            Function::Lf | Function::Nel => {
                // A bare line feed is read as the terminal driver writes it (`\r\n`), as
                // the replay does.
                screen.term.execute([function, Function::Cr]);
                screen.scrolled += 1;
                let search_now = screen.scrolled >= SEARCH_EVERY_SCROLL;
                self.separator('\n', end);
                self.line_end = Some(end);
                if search_now {
                    self.search_held(masker);
                }
            }
            Function::Ht | Function::Cht(_) | Function::Cbt(_) => {
                screen.term.execute(function);
                self.separator('\t', end);
            }
            Function::Bs => {
                // Overstrike in arrival order: the character before is drawn over (also at
                // the right margin, where a terminal does not move back over it).
                screen.term.execute(function);
                if self
                    .stream
                    .last()
                    .is_some_and(|c| !matches!(c.c, '\n' | '\t'))
                {
                    self.stream.pop();
                }
            }
            Function::Cr
            | Function::Cub(_)
            | Function::Cuf(_)
            | Function::Cha(_)
            | Function::Ich(_)
            | Function::Dch(_)
            | Function::Ech(_)
            | Function::El(_)
            | Function::Sm(_)
            | Function::Rm(_)
            | Function::Hts
            | Function::Tbc(_)
            | Function::Ctc(_)
            | Function::G1d4(_)
            | Function::Gzd4(_)
            | Function::Si
            | Function::So => screen.term.execute(function),
            // Everything else may move to another row, scroll or switch screens: the arrival
            // order is broken.
            other => {
                screen.term.execute(other);
                self.separator('\n', end);
            }
        }
        self.span_start = end;
    }

    fn input_char(&mut self, c: char, end: u64) {
        if invisible(c) && !c.is_control() {
            return;
        }
        let cell = Cell {
            c,
            start: self.span_start,
            end,
        };
        self.span_start = end;
        if self.editor.feed(cell) {
            self.separator('\n', end);
            self.line_end = Some(end);
        } else if !c.is_control() {
            self.stream.push(cell);
        }
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

    /// The cells of the screen's lines (rows joined where text wrapped) that hold a character
    /// drawn by bytes not yet released; with `cursor_only`, only the cursor's line.
    fn held_lines(&self, cursor_only: bool) -> Vec<Vec<Option<Cell>>> {
        let Some(screen) = &self.screen else {
            return Vec::new();
        };
        let held_from =
            self.first_event + self.events.partition_point(|c| c.end <= self.base) as u64;
        let cursor_row = screen.term.cursor().row;
        let visible = screen.term.screen().visible_lines().len();
        let lines: Vec<&avt::Line> = screen.term.screen().all_lines().collect();
        let offset = lines.len().saturating_sub(visible);
        let mut out = Vec::new();
        let mut logical: Vec<Option<Cell>> = Vec::new();
        let mut held = false;
        let mut has_cursor = false;
        for (i, line) in lines.iter().enumerate() {
            for cell in line.cells() {
                if cell.width() == 0 {
                    continue;
                }
                let id = tag_of(cell);
                held |= id.is_some_and(|id| id >= held_from);
                let c = cell.char();
                let known = id
                    .and_then(|id| id.checked_sub(self.first_event))
                    .and_then(|k| usize::try_from(k).ok())
                    .and_then(|k| self.events.get(k))
                    .filter(|e| e.c == c && c != ' ');
                logical.push(Some(known.copied().unwrap_or(Cell {
                    c,
                    start: 0,
                    end: 0,
                })));
            }
            has_cursor |= i == offset + cursor_row;
            if !line.is_wrapped() || i + 1 == lines.len() {
                let line = std::mem::take(&mut logical);
                if held && (!cursor_only || has_cursor) {
                    out.push(line);
                }
                held = false;
                has_cursor = false;
            }
        }
        out
    }

    /// Search the held lines now (before they can scroll away or be reflowed).
    fn search_held(&mut self, masker: &OutputMasker) {
        let mut found = Vec::new();
        for line in self.held_lines(false) {
            search(masker, &line, &mut found);
        }
        self.note(found);
        if let Some(screen) = &mut self.screen {
            screen.scrolled = 0;
        }
    }

    /// Keep found values as masks, counted once each.
    fn note(&mut self, found: Vec<Found>) {
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
    }

    /// The lines the screen (or the line editor) shows that are still being written: the
    /// cursor's line, or the line being typed.
    fn current_lines(&self) -> Vec<Vec<Option<Cell>>> {
        match self.direction {
            Direction::Output => self.held_lines(true),
            Direction::Input => vec![self.editor.line().iter().copied().map(Some).collect()],
        }
    }

    /// Where a possible unfinished value begins among the held bytes, with the raw spans of
    /// its held characters; searched in the stream view and in the current line.
    fn unfinished(&self, masker: &OutputMasker) -> Option<(u64, Vec<Range<u64>>)> {
        let mut views: Vec<Vec<Option<Cell>>> =
            vec![self.stream.iter().copied().map(Some).collect()];
        views.extend(self.current_lines());
        let mut first: Option<u64> = None;
        let mut spans = Vec::new();
        if self.direction == Direction::Input && self.editor.blind() {
            // A line the model cannot follow: all of it is a possible value.
            let start = self.editor.line_start().max(self.base);
            let end = self.base + self.raw.len() as u64;
            if start < end {
                let spans = std::iter::once(start..end).collect();
                return Some((start, spans));
            }
        }
        for cells in &views {
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
                .filter(|c| c.end > self.base && c.end > c.start)
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
        let stream = &self.stream;
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
        let stream: Vec<Option<Cell>> = self.stream.iter().copied().map(Some).collect();
        search(masker, &stream, &mut found);
        match self.direction {
            Direction::Output => {
                for line in self.held_lines(false) {
                    search(masker, &line, &mut found);
                }
            }
            Direction::Input => {
                for ended in self.editor.take_ended() {
                    if let Some(blind) = ended.blind {
                        self.masks.push(blind);
                    }
                    let cells: Vec<Option<Cell>> = ended.cells.into_iter().map(Some).collect();
                    search(masker, &cells, &mut found);
                }
                let line: Vec<Option<Cell>> =
                    self.editor.line().iter().copied().map(Some).collect();
                search(masker, &line, &mut found);
                if self.editor.blind() {
                    // Fail closed: what is released of a blind line is masked.
                    let start = self.editor.line_start();
                    self.masks.push(start..cut.max(start));
                }
            }
        }
        if let Some(screen) = &mut self.screen {
            screen.scrolled = 0;
        }
        self.note(found);
        let take = usize::try_from(cut.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.raw.len());
        let mut out: Vec<u8> = self.raw.drain(..take).collect();
        for m in &self.masks {
            let from = m.start.max(self.base);
            let to = m.end.min(cut);
            if from < to {
                let (a, b) = ((from - self.base) as usize, (to - self.base) as usize);
                out[a..b].iter_mut().for_each(|b| {
                    // Line ends stay, so a masked typed line still ends where it did.
                    if !matches!(*b, b'\r' | b'\n') {
                        *b = b'*';
                    }
                });
            }
        }
        self.base = cut;
        self.masks.retain(|m| m.end > cut);
        // Events of released bytes are no longer needed (their cells are context).
        while self.events.front().is_some_and(|e| e.end <= cut) {
            self.events.pop_front();
            self.first_event += 1;
        }
        // What stays as context: in the stream view the characters after the cut and a
        // window before it.
        let keep_from = self
            .stream
            .iter()
            .position(|c| c.end > cut)
            .unwrap_or(self.stream.len());
        let keep_from = if self.line_end.is_some_and(|e| e >= cut) {
            keep_from
        } else {
            keep_from.saturating_sub(WINDOW)
        };
        self.stream.drain(..keep_from);
        if self.stream.len() > 2 * WINDOW + MAX_PENDING {
            let extra = self.stream.len() - (2 * WINDOW + MAX_PENDING);
            self.stream.drain(..extra);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn masker() -> OutputMasker {
        OutputMasker::new(&[]).expect("detectors")
    }

    fn run(direction: Direction, frames: &[&[u8]]) -> String {
        let m = masker();
        let mut s = Scanner::new(direction);
        let mut out = Vec::new();
        for f in frames {
            out.extend(s.push(&m, f));
        }
        out.extend(s.flush(&m));
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn values_decorated_or_split_are_masked_and_length_kept() {
        let email = "alice.meyer@example.com";
        for frames in [
            vec![&b"mail \x1b[1malice\x1b[0m.meyer@example.com done\n"[..]],
            vec![&b"mail alice.me\xe2\x80\x8byer@example.com\n"[..]],
            vec![&b"mail xxxxx.meyer@example.com\ralice\n"[..]],
            vec![&b"mail alice.mXX\x08\x08eyer@example.com\n"[..]],
            vec![&b"bad \xff byte alice.meyer@example.com\n"[..]],
            vec![&b"mail alice.m"[..], &b"eyer@exa"[..], &b"mple.com\n"[..]],
        ] {
            let raw: Vec<u8> = frames.concat();
            let out = run(Direction::Output, &frames);
            assert_eq!(out.len(), String::from_utf8_lossy(&raw).len(), "{out:?}");
            assert!(!out.contains("meyer@"), "{out:?}");
            assert!(!out.contains(email), "{out:?}");
        }
    }

    #[test]
    fn a_value_across_the_long_line_flush_is_masked() {
        let mut line = "x".repeat(MAX_PENDING - 10).into_bytes();
        line.extend_from_slice(b" alice.meyer@example.com tail\n");
        let (a, b) = line.split_at(MAX_PENDING + 2);
        let out = run(Direction::Output, &[a, b]);
        assert!(
            !out.contains("meyer@example"),
            "{}",
            &out[MAX_PENDING - 20..]
        );
    }

    #[test]
    fn typed_input_one_key_at_a_time_with_corrections() {
        let typed = b"echo alice.meyer@examplx\x7f\x08e.com\r";
        let frames: Vec<&[u8]> = typed.chunks(1).collect();
        let out = run(Direction::Input, &frames);
        assert!(out.starts_with("echo "), "{out:?}");
        assert!(!out.contains("meyer"), "{out:?}");
    }

    #[test]
    fn values_drawn_by_moving_the_cursor_are_masked() {
        for data in [
            &b"alice@\x1b[2;1Hother row\x1b[1;7Hexample.com\n"[..],
            b"mail: example.com\x1b[17Dalice@\x1b[11C\n",
            b"x\n\x1b[1A      example.com\x1b[17Dalice@\n",
            b"     @example.com\x1b[G\x1b[1;32malice\x1b[0m\n",
        ] {
            let out = run(Direction::Output, &[data]);
            assert_eq!(out.len(), data.len());
            assert!(
                !out.contains("alice") && !out.contains("example.com"),
                "{out:?}"
            );
        }
    }

    #[test]
    fn quiet_output_releases_only_what_cannot_start_a_value() {
        let m = masker();
        let mut s = Scanner::new(Direction::Output);
        assert!(s.push(&m, b"$ ").is_empty());
        assert_eq!(s.release_quiet(&m, false), b"$ ");
        assert!(s.push(&m, b"contact: alice@exa").is_empty());
        assert_eq!(s.release_quiet(&m, false), b"contact: ");
        assert!(
            s.release_quiet(&m, false).is_empty(),
            "the possible value stays held"
        );
        let rest = s.push(&m, b"mple.com, ok\n");
        assert_eq!(String::from_utf8_lossy(&rest), "*****************, ok\n");
    }

    #[test]
    fn a_possible_value_held_too_long_is_released_masked_and_its_end_too() {
        let m = masker();
        let mut s = Scanner::new(Direction::Output);
        assert!(s.push(&m, b"to \x1b[31malice@\x1b[0mexa").is_empty());
        let first = s.release_quiet(&m, true);
        assert_eq!(
            String::from_utf8_lossy(&first),
            "to \x1b[31m******\x1b[0m***"
        );
        // The rest arrives after a cursor move back: the screen shows alice@example.com.
        let rest = s.push(&m, b"\x1b[3Dexample.com\n");
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            !rest.contains("example") && !rest.contains("mple.com"),
            "{rest:?}"
        );
        // And one that never becomes a value is masked all the same (fail closed).
        assert!(s.push(&m, b"4111 1111").is_empty());
        assert_eq!(s.release_quiet(&m, true), b"*********");
    }

    #[test]
    fn whole_texts_are_masked_with_counts() {
        let (text, counts) = mask_text(
            &masker(),
            "sh -c 'grep alice.meyer@example.com /data'",
            Direction::Input,
        );
        assert_eq!(text, "sh -c 'grep *********************** /data'");
        assert_eq!(counts.iter().sum::<u64>(), 1);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Samples of every detector the recordings apply: the built-in ones and a policy's
        /// regular expression (a US SSN).
        const SAMPLES: &[&str] = &[
            "alice.meyer@example.com",
            "Olga.Popescu1@mail.example.org",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
            "+49 876 5566038",
            "123-45-6789",
        ];

        const SEPARATORS: &[&str] = &[" ", ", ", "\t", " | ", ": ", "; ", " (", ") ", "\""];

        /// What may sit between two characters of a value without changing the screen.
        const DECORATIONS: &[&str] = &[
            "",
            "\x1b[31m",
            "\x1b[0m",
            "\x1b[1;38;5;208m",
            "\u{200b}",
            "\u{2060}",
            "\u{feff}",
            "#\x08",
        ];

        fn masker() -> OutputMasker {
            let policy: portcullis_crds::sidecar_config::PolicyConfig =
                serde_json::from_value(serde_json::json!({
                    "name": "gdpr",
                    "masking": [{"name": "ssn", "detector": "regex",
                                 "pattern": "\\b\\d{3}-\\d{2}-\\d{4}\\b", "strategy": "redact"}]
                }))
                .expect("policy");
            OutputMasker::new(&[policy]).expect("detectors")
        }

        /// The text with the decorations taken out (what the screen shows of it).
        fn undecorated(text: &str) -> String {
            let mut out = text.to_owned();
            for d in DECORATIONS.iter().filter(|d| !d.is_empty()) {
                out = out.replace(d, "");
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn every_sample_is_masked_however_surrounded_decorated_or_split(
                sample in prop::sample::select(SAMPLES),
                prefix in "[a-zA-Z0-9 ]{0,24}",
                suffix in "[a-zA-Z0-9 ]{0,24}",
                before in prop::sample::select(SEPARATORS),
                after in prop::sample::select(SEPARATORS),
                decorations in prop::collection::vec(0..DECORATIONS.len(), 40),
                filler in prop_oneof![Just(0usize), 4000usize..4200],
                bad_byte in any::<bool>(),
                cuts in prop::collection::vec(1usize..300, 0..12),
                input in any::<bool>(),
            ) {
                let mut line = Vec::new();
                line.extend_from_slice("w".repeat(filler).as_bytes());
                if bad_byte {
                    line.extend_from_slice(b"\xff\xc3 ");
                }
                line.extend_from_slice(prefix.as_bytes());
                line.extend_from_slice(before.as_bytes());
                for (i, c) in sample.chars().enumerate() {
                    if i > 0 {
                        line.extend_from_slice(DECORATIONS[decorations[i % 40]].as_bytes());
                    }
                    line.extend_from_slice(c.to_string().as_bytes());
                }
                line.extend_from_slice(after.as_bytes());
                line.extend_from_slice(suffix.as_bytes());
                line.extend_from_slice(if input { b"\r" } else { b"\r\n" });
                let m = masker();
                let mut scanner = Scanner::new(if input { Direction::Input } else { Direction::Output });
                let mut out = Vec::new();
                let mut at = 0;
                for cut in cuts {
                    let end = (at + cut).min(line.len());
                    out.extend(scanner.push(&m, &line[at..end]));
                    at = end;
                }
                out.extend(scanner.push(&m, &line[at..]));
                out.extend(scanner.flush(&m));
                prop_assert_eq!(out.len(), line.len());
                let shown = undecorated(&String::from_utf8_lossy(&out));
                prop_assert!(!shown.contains(sample), "{:?}", shown);
                let compact: String = sample.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                let shown_compact: String = shown.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                if compact.len() >= 8 {
                    prop_assert!(!shown_compact.contains(&compact), "{:?}", shown);
                }
                prop_assert!(scanner.take_counts().iter().sum::<u64>() >= 1);
            }

            #[test]
            fn record_fields_are_masked_whole(
                sample in prop::sample::select(SAMPLES),
                prefix in "[a-zA-Z0-9 ]{0,24}",
                suffix in "[a-zA-Z0-9 ]{0,24}",
                before in prop::sample::select(SEPARATORS),
                after in prop::sample::select(SEPARATORS),
            ) {
                let text = format!("{prefix}{before}{sample}{after}{suffix}");
                let masked = masker().mask_text(&text);
                prop_assert!(!masked.contains(sample), "{}", masked);
            }
        }
    }
}
