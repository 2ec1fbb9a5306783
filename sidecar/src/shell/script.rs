//! A shell script, parsed with `brush-parser` and walked: every simple command (in lists,
//! pipelines, loops, conditionals, functions, subshells, substitutions) with its words
//! expanded, its environment assignments and its redirections.

use brush_parser::ast::{
    self, Command as AstCommand, CommandPrefixOrSuffixItem, CompoundCommand, CompoundList,
    ExtendedTestExpr, IoFileRedirectKind, IoFileRedirectTarget, IoRedirect,
};
use brush_parser::{Parser, ParserOptions};

use super::argv::{self, Context};
use super::tables::{self, Dialect};
use super::words::{self, expand};
use super::{Analysis, Word};

/// How deep scripts in scripts (`sh -c "sh -c '...'"`, substitutions) are followed.
pub const MAX_DEPTH: usize = 8;

/// Analyse a script in a dialect.
pub(super) fn script(code: &str, dialect: Dialect, ctx: &mut Context, out: &mut Analysis) {
    if dialect == Dialect::Other {
        out.unproven(code, "scripts of this shell are not analysed");
        return;
    }
    if ctx.depth >= MAX_DEPTH {
        out.unproven(code, "scripts are nested too deeply");
        return;
    }
    if !ctx.spend(out) {
        return;
    }
    if fd_number_out_of_range(code) {
        out.unproven(
            code,
            "the script redirects a file descriptor number too large to be one",
        );
        return;
    }
    let mut parser = Parser::new(
        std::io::Cursor::new(code.as_bytes()),
        &ParserOptions::default(),
    );
    let program = match parser.parse_program() {
        Ok(p) => p,
        Err(e) => {
            out.unproven(code, format!("the script does not parse: {e}"));
            return;
        }
    };
    ctx.depth += 1;
    let saved = (ctx.stdin, ctx.dialect);
    ctx.dialect = Some(dialect);
    // Within a script every command has standard input (a pipe, a here-document or the
    // script's own).
    ctx.stdin = true;
    let mut walker = Walker { dialect, ctx, out };
    for list in &program.complete_commands {
        walker.list(list);
    }
    (ctx.stdin, ctx.dialect) = saved;
    ctx.depth -= 1;
}

/// Whether the script holds a run of digits right before `<` or `>` that does not fit an
/// `i32`: brush-parser (0.4, the latest release) reads such a run as a redirection's file
/// descriptor number and panics on the overflow, so the script is not given to it. The
/// analysis also runs under `catch_unwind` (see `guarded`), which fails closed on any other
/// panic of the parser.
fn fd_number_out_of_range(code: &str) -> bool {
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if matches!(b.get(i), Some(b'<' | b'>')) && code[start..i].parse::<i32>().is_err() {
            return true;
        }
    }
    false
}

struct Walker<'a> {
    dialect: Dialect,
    ctx: &'a mut Context,
    out: &'a mut Analysis,
}

impl Walker<'_> {
    fn bash_only(&mut self, what: &str) {
        if self.dialect != Dialect::Bash {
            self.out.unproven(
                what,
                "this syntax is bash's; POSIX shells read it differently",
            );
        }
    }

    fn list(&mut self, list: &CompoundList) {
        for item in &list.0 {
            let and_or = &item.0;
            self.pipeline(&and_or.first);
            for next in &and_or.additional {
                match next {
                    ast::AndOr::And(p) | ast::AndOr::Or(p) => self.pipeline(p),
                }
            }
        }
    }

    fn pipeline(&mut self, p: &ast::Pipeline) {
        if p.timed.is_some() && self.dialect != Dialect::Bash {
            self.out.unproven(
                "time",
                "time is a keyword in bash and a program (with its own options) in POSIX shells",
            );
        }
        for c in &p.seq {
            self.command(c);
        }
    }

    fn words(&mut self, w: &ast::Word) -> Vec<Word> {
        expand(&w.value, self.dialect, self.ctx, self.out)
    }

    fn command(&mut self, c: &AstCommand) {
        match c {
            AstCommand::Simple(s) => self.simple(s),
            AstCommand::Compound(cc, redirects) => {
                self.compound(cc);
                if let Some(r) = redirects {
                    let mut writes = Vec::new();
                    for r in &r.0 {
                        self.redirect(r, &mut writes);
                    }
                    for w in writes {
                        self.out
                            .unproven(w.text(), "an output redirection writes this file");
                    }
                }
            }
            AstCommand::Function(f) => {
                self.ctx.functions.push(f.fname.value.clone());
                self.compound(&f.body.0);
                if let Some(r) = &f.body.1 {
                    let mut writes = Vec::new();
                    for r in &r.0 {
                        self.redirect(r, &mut writes);
                    }
                    for w in writes {
                        self.out
                            .unproven(w.text(), "an output redirection writes this file");
                    }
                }
            }
            AstCommand::ExtendedTest(t, _) => {
                self.bash_only("[[ ]]");
                self.test(&t.expr);
            }
        }
    }

    fn test(&mut self, e: &ExtendedTestExpr) {
        match e {
            ExtendedTestExpr::And(a, b) | ExtendedTestExpr::Or(a, b) => {
                self.test(a);
                self.test(b);
            }
            ExtendedTestExpr::Not(a) | ExtendedTestExpr::Parenthesized(a) => self.test(a),
            ExtendedTestExpr::UnaryTest(_, w) => {
                let words = self.words(w);
                if let [Word::Known(v)] = words.as_slice() {
                    if v.contains('[') {
                        self.out.unproven(
                            v.as_str(),
                            "[[ -v ]] evaluates an array subscript as arithmetic",
                        );
                    }
                }
            }
            ExtendedTestExpr::BinaryTest(op, a, b) => {
                let left = self.words(a);
                let right = self.words(b);
                let arithmetic = matches!(
                    op.to_string().as_str(),
                    "-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge"
                );
                if arithmetic {
                    for w in left.iter().chain(&right) {
                        if !w.known().is_some_and(|v| {
                            v.trim().chars().all(|c| c.is_ascii_digit() || c == '-')
                        }) {
                            self.out.unproven(w.text(), "[[ ]] evaluates the operands of -eq and the like as arithmetic, which can run commands");
                        }
                    }
                }
            }
        }
    }

    fn compound(&mut self, cc: &CompoundCommand) {
        match cc {
            CompoundCommand::Arithmetic(a) => {
                self.bash_only("((...))");
                words::arithmetic(&a.expr.value, self.out);
            }
            CompoundCommand::ArithmeticForClause(f) => {
                self.bash_only("for ((...))");
                for e in [&f.initializer, &f.condition, &f.updater]
                    .into_iter()
                    .flatten()
                {
                    words::arithmetic(&e.value, self.out);
                }
                self.list(&f.body.list);
            }
            CompoundCommand::BraceGroup(b) => self.list(&b.list),
            CompoundCommand::Subshell(s) => self.list(&s.list),
            CompoundCommand::ForClause(f) => {
                if tables::dangerous_variable(&f.variable_name) {
                    self.out.unproven(
                        f.variable_name.as_str(),
                        "the loop assigns a variable that changes what programs run",
                    );
                }
                for w in f.values.iter().flatten() {
                    self.words(w);
                }
                self.list(&f.body.list);
            }
            CompoundCommand::CaseClause(c) => {
                self.words(&c.value);
                for item in &c.cases {
                    for p in &item.patterns {
                        self.words(p);
                    }
                    if let Some(l) = &item.cmd {
                        self.list(l);
                    }
                }
            }
            CompoundCommand::IfClause(i) => {
                self.list(&i.condition);
                self.list(&i.then);
                for e in i.elses.iter().flatten() {
                    if let Some(c) = &e.condition {
                        self.list(c);
                    }
                    self.list(&e.body);
                }
            }
            CompoundCommand::WhileClause(w) | CompoundCommand::UntilClause(w) => {
                self.list(&w.0);
                self.list(&w.1.list);
            }
            CompoundCommand::Coprocess(c) => {
                self.bash_only("coproc");
                self.command(&c.body);
            }
        }
    }

    /// A redirection: substitutions in it are analysed; output into a file is a write.
    fn redirect(&mut self, r: &IoRedirect, writes: &mut Vec<Word>) {
        match r {
            IoRedirect::File(_, kind, target) => match target {
                IoFileRedirectTarget::Filename(w) => {
                    let ws = self.words(w);
                    let target = single(ws, &w.value);
                    if matches!(
                        kind,
                        IoFileRedirectKind::Write
                            | IoFileRedirectKind::Append
                            | IoFileRedirectKind::Clobber
                            | IoFileRedirectKind::ReadAndWrite
                    ) {
                        self.write(target, writes);
                    }
                }
                IoFileRedirectTarget::Fd(_) => {}
                IoFileRedirectTarget::ProcessSubstitution(_, sub) => {
                    self.bash_only("process substitution");
                    self.list(&sub.list);
                }
                IoFileRedirectTarget::Duplicate(w) => {
                    let ws = self.words(w);
                    let target = single(ws, &w.value);
                    let fd = target.known().is_some_and(|v| {
                        v == "-" || v.trim_end_matches('-').chars().all(|c| c.is_ascii_digit())
                    });
                    if !fd {
                        // `>& FILE` writes FILE (bash).
                        if matches!(kind, IoFileRedirectKind::DuplicateOutput) {
                            self.write(target, writes);
                        } else {
                            self.out.unproven(
                                w.value.as_str(),
                                "the redirection's target is only known at run time",
                            );
                        }
                    }
                }
            },
            IoRedirect::HereDocument(_, doc) => {
                if doc.requires_expansion {
                    match word::parse_heredoc(&doc.doc.value) {
                        Some(pieces) => {
                            for code in pieces {
                                script(&code, self.dialect, self.ctx, self.out);
                            }
                        }
                        None => self
                            .out
                            .unproven(doc.doc.value.as_str(), "the here-document does not parse"),
                    }
                }
            }
            IoRedirect::HereString(_, w) => {
                self.bash_only("<<<");
                self.words(w);
            }
            IoRedirect::OutputAndError(w, _) => {
                self.bash_only("&>");
                let ws = self.words(w);
                let target = single(ws, &w.value);
                self.write(target, writes);
            }
        }
    }

    fn write(&mut self, target: Word, writes: &mut Vec<Word>) {
        if let Some(t) = target.known() {
            if tables::SAFE_SINKS.contains(&t) {
                return;
            }
            self.ctx.written.push(t.to_owned());
        }
        writes.push(target);
    }

    fn simple(&mut self, s: &ast::SimpleCommand) {
        let mut env: Vec<Word> = Vec::new();
        let mut argv: Vec<Word> = Vec::new();
        let mut writes: Vec<Word> = Vec::new();
        let item = |w: &mut Self,
                    i: &CommandPrefixOrSuffixItem,
                    prefix: bool,
                    argv: &mut Vec<Word>,
                    env: &mut Vec<Word>,
                    writes: &mut Vec<Word>| match i {
            CommandPrefixOrSuffixItem::IoRedirect(r) => w.redirect(r, writes),
            CommandPrefixOrSuffixItem::Word(word) => {
                let ws = w.words(word);
                argv.extend(ws);
            }
            CommandPrefixOrSuffixItem::AssignmentWord(a, word) => {
                let name = match &a.name {
                    ast::AssignmentName::VariableName(n) => n.clone(),
                    ast::AssignmentName::ArrayElementName(n, _) => {
                        w.out.unproven(
                            word.value.as_str(),
                            "an array subscript is evaluated as arithmetic, which can run commands",
                        );
                        n.clone()
                    }
                };
                if tables::dangerous_variable(&name) {
                    w.out.unproven(
                        word.value.as_str(),
                        format!(
                            "assigning {name} changes what programs run or which files they run"
                        ),
                    );
                }
                let value = match &a.value {
                    ast::AssignmentValue::Scalar(v) => {
                        let ws = w.words(v);
                        match ws.as_slice() {
                            [Word::Known(v)] => Word::Known(format!("{name}={v}")),
                            _ => Word::Unknown(word.value.clone()),
                        }
                    }
                    ast::AssignmentValue::Array(items) => {
                        w.bash_only("array assignment");
                        for (k, v) in items {
                            if let Some(k) = k {
                                w.words(k);
                            }
                            w.words(v);
                        }
                        Word::Unknown(word.value.clone())
                    }
                };
                if prefix {
                    env.push(value);
                } else {
                    argv.push(value);
                }
            }
            CommandPrefixOrSuffixItem::ProcessSubstitution(_, sub) => {
                w.bash_only("process substitution");
                w.list(&sub.list);
                argv.push(Word::Unknown("<(...)".into()));
            }
        };
        if let Some(prefix) = &s.prefix {
            for i in &prefix.0 {
                item(self, i, true, &mut argv, &mut env, &mut writes);
            }
        }
        if let Some(w) = &s.word_or_name {
            let ws = self.words(w);
            argv.extend(ws);
        }
        if let Some(suffix) = &s.suffix {
            for i in &suffix.0 {
                item(self, i, false, &mut argv, &mut env, &mut writes);
            }
        }
        if argv.is_empty() {
            // Assignments and redirections only: no program runs.
            for w in writes {
                self.out
                    .unproven(w.text(), "an output redirection writes this file");
            }
            return;
        }
        argv::command(&argv, env, writes, self.ctx, self.out);
    }
}

/// A redirection target is one word (bash refuses an ambiguous redirect).
fn single(words: Vec<Word>, raw: &str) -> Word {
    match <[Word; 1]>::try_from(words) {
        Ok([w]) => w,
        Err(_) => Word::Unknown(raw.to_owned()),
    }
}

/// Here-document bodies: the command substitutions they run.
mod word {
    use brush_parser::word::WordPiece;
    use brush_parser::ParserOptions;

    /// The scripts of the command substitutions of an expanded here-document, or `None`
    /// when it does not parse.
    pub fn parse_heredoc(body: &str) -> Option<Vec<String>> {
        let pieces = brush_parser::word::parse_heredoc(body, &ParserOptions::default()).ok()?;
        let mut scripts = Vec::new();
        collect(body, &pieces, &mut scripts);
        Some(scripts)
    }

    fn collect(
        body: &str,
        pieces: &[brush_parser::word::WordPieceWithSource],
        scripts: &mut Vec<String>,
    ) {
        for p in pieces {
            match &p.piece {
                WordPiece::CommandSubstitution(c) | WordPiece::BackquotedCommandSubstitution(c) => {
                    scripts.push(c.clone())
                }
                WordPiece::DoubleQuotedSequence(inner)
                | WordPiece::GettextDoubleQuotedSequence(inner) => collect(body, inner, scripts),
                // Analysed as the word of a command: substitutions and arithmetic in them.
                WordPiece::ParameterExpansion(_) | WordPiece::ArithmeticExpression(_) => {
                    match body.get(p.start_index..p.end_index) {
                        Some(text)
                            if text.contains("$(") || text.contains('`') || text.contains('[') =>
                        {
                            scripts.push(format!(": {text}"))
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
}
