//! What a command runs, with the shell's own semantics: the analysis that exec guardrails (and
//! any other protocol that runs commands) judge.
//!
//! A command vector (`["sh", "-c", "ls /tmp && rm x"]`) is resolved into every program it
//! runs, each with its arguments, looked through wrappers (`env`, `timeout`, `xargs`, `sudo`,
//! `find -exec`, ...; the options of each come from [`tables`]) and through shell scripts
//! (parsed with `brush-parser`, words expanded as the shell expands them: quotes removed,
//! ANSI-C `$'..'` decoded, braces expanded).
//!
//! Whatever the analysis cannot know before the command runs is reported, never kept as
//! literal text:
//! - a word whose value is only known at run time (parameter or command substitution, a
//!   pathname glob, `~`) is [`Word::Unknown`];
//! - anything that makes the set of programs unknown (a glob or expansion as the program,
//!   `eval`, `source`, aliases, inline or standard-input interpreter code, a login shell's
//!   profile files, `BASH_ENV`/`ENV`, an unknown wrapper option, a file written earlier and
//!   run later) is an [`Unproven`] with the word that caused it;
//! - output redirections into files are recorded as writes of the command.
//!
//! A policy that allows only what it lists refuses every command with an unknown word or an
//! unproven part; a policy that lists what it refuses judges unproven parts as its riskiest
//! rule.

mod argv;
mod options;
mod script;
pub mod tables;
mod words;

use std::fmt;

/// One word of a command as it will run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Word {
    /// The word's value, known before the command runs.
    Known(String),
    /// A word only known at run time, as written.
    Unknown(String),
}

impl Word {
    /// The value (known) or the text as written (unknown).
    pub fn text(&self) -> &str {
        match self {
            Word::Known(s) | Word::Unknown(s) => s,
        }
    }

    /// The value, when known.
    pub fn known(&self) -> Option<&str> {
        match self {
            Word::Known(s) => Some(s),
            Word::Unknown(_) => None,
        }
    }
}

/// A program the command runs, with its arguments.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Command {
    /// Program and arguments. For a wrapper (`timeout 5 ls`) this is the whole line; the
    /// wrapped command is a command of its own.
    pub argv: Vec<Word>,
    /// How many words of `argv` belong to this program itself (a wrapper's own options; the
    /// words after them are the command it runs). Equal to `argv.len()` for other programs.
    pub own: usize,
    /// Environment assignments the program starts with (`NAME=value`, from the script or a
    /// wrapper such as `env`).
    pub env: Vec<Word>,
    /// Files the command's output redirections write.
    pub writes: Vec<Word>,
}

impl Command {
    /// The words of the command line joined by spaces (unknown words as written).
    pub fn line(&self) -> String {
        join(self.argv.iter().map(Word::text))
    }

    /// The program word.
    pub fn program(&self) -> &Word {
        static EMPTY: Word = Word::Known(String::new());
        self.argv.first().unwrap_or(&EMPTY)
    }

    /// Whether every word (program, arguments, environment, redirections) is known.
    pub fn fully_known(&self) -> bool {
        self.argv
            .iter()
            .chain(&self.env)
            .chain(&self.writes)
            .all(|w| matches!(w, Word::Known(_)))
    }

    /// The first word that is not known, if any.
    pub fn first_unknown(&self) -> Option<&Word> {
        self.argv
            .iter()
            .chain(&self.env)
            .chain(&self.writes)
            .find(|w| matches!(w, Word::Unknown(_)))
    }

    /// The command line with its environment and writes, for the audit record.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.env.iter().map(|w| w.text().to_owned()).collect();
        parts.push(self.line());
        for w in &self.writes {
            parts.push(format!("> {}", w.text()));
        }
        parts.join(" ")
    }
}

/// A part of the command the analysis cannot prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unproven {
    /// The word that made it unproven.
    pub word: String,
    /// Why.
    pub why: String,
}

impl fmt::Display for Unproven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.word, self.why)
    }
}

/// The result of analysing a command vector or a script.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Every program the command runs (wrappers included), in order.
    pub commands: Vec<Command>,
    /// What cannot be proven, in order of discovery.
    pub unproven: Vec<Unproven>,
}

impl Analysis {
    pub(crate) fn unproven(&mut self, word: impl Into<String>, why: impl Into<String>) {
        let u = Unproven {
            word: word.into(),
            why: why.into(),
        };
        if !self.unproven.contains(&u) && self.unproven.len() < 32 {
            self.unproven.push(u);
        }
    }

    /// The first unproven part, as a sentence.
    pub fn first_unproven(&self) -> Option<String> {
        self.unproven.first().map(|u| u.to_string())
    }

    /// The command lines, for the audit record.
    pub fn lines(&self) -> Vec<String> {
        self.commands.iter().map(Command::describe).collect()
    }
}

/// Analyse a command vector run directly (no shell in between), as exec runs it. `stdin`
/// says whether standard input is attached (a shell or interpreter without a program then
/// runs whatever arrives there).
pub fn analyse(argv: &[String], stdin: bool) -> Analysis {
    let mut out = Analysis::default();
    if argv.first().is_none_or(|p| p.is_empty()) {
        out.unproven("", "the command is empty");
        return out;
    }
    let words: Vec<Word> = argv.iter().map(|w| Word::Known(w.clone())).collect();
    guarded(out, |out| {
        let mut ctx = argv::Context::new(stdin);
        argv::command(&words, Vec::new(), Vec::new(), &mut ctx, out);
    })
}

/// Run an analysis; should the parser panic on some input, the command is unproven.
fn guarded(out: Analysis, analyse: impl FnOnce(&mut Analysis)) -> Analysis {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut out = out;
        analyse(&mut out);
        out
    }));
    result.unwrap_or_else(|_| {
        let mut out = Analysis::default();
        out.unproven("", "the command could not be analysed");
        out
    })
}

/// Analyse a shell script as `sh -c SCRIPT` would run it (for protocols that hand a command
/// line to the user's shell, such as SSH).
pub fn analyse_script(code: &str, stdin: bool) -> Analysis {
    guarded(Analysis::default(), |out| {
        let mut ctx = argv::Context::new(stdin);
        script::script(code, tables::Dialect::Unknown, &mut ctx, out);
    })
}

/// Placeholder of an operand in a command's shape.
pub const OPERAND: &str = "?";

/// The shape of a command vector, for a grant that covers any operands: the program and
/// every option word as written (`-rf`, `--force`; the value of `--name=value` replaced by
/// [`OPERAND`]), every other word replaced by [`OPERAND`]. `None` when a shape would hide
/// what runs, and the grant must cover the values: the analysis does not prove the whole
/// command, it runs more than one program, writes files, sets environment variables, or its
/// program is a shell, an interpreter or a wrapper (their operands are code or commands).
pub fn shape(argv: &[String], stdin: bool) -> Option<Vec<String>> {
    let analysis = analyse(argv, stdin);
    let [command] = analysis.commands.as_slice() else {
        return None;
    };
    if !analysis.unproven.is_empty()
        || !command.fully_known()
        || !command.env.is_empty()
        || !command.writes.is_empty()
        || command.own != command.argv.len()
        || command.argv.len() != argv.len()
    {
        return None;
    }
    let program = basename(argv.first()?);
    let name = tables::normalise(program);
    // Programs whose operands are code, commands or scripts the analysis reads.
    let reads_operands = matches!(
        program,
        "busybox" | "find" | "sed" | "tar" | "rsync" | "git" | "ssh" | "scp" | "sftp"
    ) || tables::CODE_BUILTINS.contains(&program)
        || tables::OPAQUE_RUNNERS.contains(&program)
        || tables::OPAQUE_RUNNERS.contains(&name)
        || tables::INTERACTIVE_RUNNERS.contains(&name);
    if reads_operands
        || tables::shell(name).is_some()
        || tables::interpreter(name).is_some()
        || tables::wrapper(program).is_some()
    {
        return None;
    }
    let mut out = vec![argv[0].clone()];
    let mut options = true;
    for word in &argv[1..] {
        if options && word == "--" {
            options = false;
            out.push(word.clone());
        } else if options && word.starts_with('-') && word.len() > 1 {
            out.push(match word.split_once('=') {
                Some((name, _)) if word.starts_with("--") => format!("{name}={OPERAND}"),
                _ => word.clone(),
            });
        } else {
            out.push(OPERAND.to_owned());
        }
    }
    Some(out)
}

/// Words joined by spaces.
pub fn join<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words.into_iter().collect::<Vec<_>>().join(" ")
}

/// The last path component of a program word.
pub fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

#[cfg(test)]
mod tests;
