//! What an exec command runs: the command vector, looked through wrappers (`env`, `sudo`,
//! `timeout`, ...) and shells (`sh -c SCRIPT`, each command of the script), as the command
//! lines the exec guardrails judge.
//!
//! Where the command cannot be known before it runs (an interactive shell reading standard
//! input, a script file, command substitution, `eval`, inline interpreter code), the analysis
//! says so and the guardrails treat the exec as the riskiest match (fail closed).

use brush_parser::word::WordPiece;
use brush_parser::{ParserOptions, Token};

/// How deep `sh -c "sh -c '...'"` nesting is followed.
const MAX_DEPTH: usize = 4;

/// The result of analysing one command vector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Every command line the exec runs, as words joined by spaces (program first).
    pub commands: Vec<String>,
    /// Why (part of) the command cannot be analysed, if it cannot.
    pub unanalysable: Option<String>,
}

impl Analysis {
    fn opaque(&mut self, why: impl Into<String>) {
        if self.unanalysable.is_none() {
            self.unanalysable = Some(why.into());
        }
    }
}

/// Analyse a command vector. `stdin` says whether standard input is attached (a shell
/// without `-c` then runs whatever arrives there).
pub fn analyse(argv: &[String], stdin: bool) -> Analysis {
    let mut out = Analysis::default();
    if argv.is_empty() || argv[0].is_empty() {
        out.opaque("the exec has no command");
        return out;
    }
    simple(argv, stdin, 0, &mut out);
    out
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "fish"];
const INTERPRETERS: &[(&str, &[&str])] = &[
    ("python", &["-c"]),
    ("python3", &["-c"]),
    ("python2", &["-c"]),
    ("perl", &["-e", "-E"]),
    ("ruby", &["-e"]),
    ("node", &["-e", "--eval", "-p", "--print"]),
    ("php", &["-r"]),
    ("lua", &["-e"]),
    ("awk", &[]),
    ("gawk", &[]),
];

/// Analyse one simple command (already split into words).
fn simple(argv: &[String], stdin: bool, depth: usize, out: &mut Analysis) {
    let Some(program) = argv.first() else { return };
    let name = basename(program);
    let rest = &argv[1..];
    match name {
        "env" => {
            let mut i = 0;
            while let Some(w) = rest.get(i) {
                if w == "-S" || w.starts_with("--split-string") {
                    out.opaque("env -S splits a string into a command at run time");
                    return;
                }
                if w == "-u" || w == "-C" || w == "--unset" || w == "--chdir" {
                    i += 2;
                } else if w.starts_with('-') || w.contains('=') {
                    i += 1;
                } else {
                    break;
                }
            }
            wrapped(argv, rest.get(i..), stdin, depth, out);
        }
        "sudo" | "doas" => {
            let mut i = 0;
            while let Some(w) = rest.get(i) {
                if matches!(
                    w.as_str(),
                    "-u" | "-g" | "-h" | "-p" | "-C" | "-D" | "-r" | "-t" | "-U"
                ) {
                    i += 2;
                } else if w.starts_with('-') || w.contains('=') {
                    i += 1;
                } else {
                    break;
                }
            }
            wrapped(argv, rest.get(i..), stdin, depth, out);
        }
        "nice" | "ionice" | "stdbuf" | "setsid" | "nohup" | "exec" | "command" | "builtin"
        | "time" | "unbuffer" | "chrt" | "taskset" | "xargs" => {
            let mut i = 0;
            while let Some(w) = rest.get(i) {
                if matches!(
                    w.as_str(),
                    "-n" | "-c" | "-p" | "-o" | "-e" | "-i" | "-I" | "-L" | "-d" | "-s"
                ) {
                    i += 2;
                } else if w.starts_with('-') {
                    i += 1;
                } else {
                    break;
                }
            }
            // chrt and taskset take a priority or CPU mask before the command.
            if matches!(name, "chrt" | "taskset") && i < rest.len() {
                i += 1;
            }
            wrapped(argv, rest.get(i..), stdin, depth, out);
        }
        "timeout" => {
            let mut i = 0;
            while let Some(w) = rest.get(i) {
                if w == "-s" || w == "-k" || w == "--signal" || w == "--kill-after" {
                    i += 2;
                } else if w.starts_with('-') {
                    i += 1;
                } else {
                    break;
                }
            }
            // The duration.
            wrapped(argv, rest.get(i + 1..), stdin, depth, out);
        }
        "chroot" => wrapped(argv, rest.get(1..), stdin, depth, out),
        "busybox" => match rest.first() {
            Some(applet) if !applet.starts_with('-') => simple(rest, stdin, depth, out),
            _ => out.commands.push(join(argv)),
        },
        "eval" | "source" | "." => {
            out.commands.push(join(argv));
            out.opaque(format!("{name} runs code that is only known at run time"));
        }
        "watch" => {
            let mut i = 0;
            while let Some(w) = rest.get(i) {
                if w == "-n" || w == "-d" || w == "--interval" {
                    i += 2;
                } else if w.starts_with('-') {
                    i += 1;
                } else {
                    break;
                }
            }
            out.commands.push(join(argv));
            match rest.get(i..) {
                Some(words) if !words.is_empty() => script(&words.join(" "), depth + 1, out),
                _ => out.opaque("watch without a command"),
            }
        }
        _ if SHELLS.contains(&name) => shell(argv, stdin, depth, out),
        _ => {
            out.commands.push(join(argv));
            if let Some((_, flags)) = INTERPRETERS.iter().find(|(n, _)| *n == name) {
                if flags.is_empty() && !rest.is_empty() {
                    out.opaque(format!("{name} runs a program given on its command line"));
                } else if rest.iter().any(|w| flags.contains(&w.as_str())) {
                    out.opaque(format!("{name} runs inline code"));
                }
            }
        }
    }
}

/// A wrapper (`env`, `sudo`, ...) and the command it runs.
fn wrapped(
    argv: &[String],
    inner: Option<&[String]>,
    stdin: bool,
    depth: usize,
    out: &mut Analysis,
) {
    match inner {
        Some(words) if !words.is_empty() && depth < MAX_DEPTH => {
            // The wrapper line is judged too, so a guardrail on `sudo *` still applies.
            out.commands.push(join(argv));
            simple(words, stdin, depth + 1, out);
        }
        Some(words) if !words.is_empty() => {
            out.commands.push(join(argv));
            out.opaque("commands nested too deeply");
        }
        _ => out.commands.push(join(argv)),
    }
}

/// A shell: `sh -c SCRIPT` analyses the script; a shell reading standard input or a script
/// file runs commands the sidecar cannot see in advance.
fn shell(argv: &[String], stdin: bool, depth: usize, out: &mut Analysis) {
    let name = basename(&argv[0]);
    out.commands.push(join(argv));
    let mut command_flag = false;
    let mut i = 1;
    while let Some(w) = argv.get(i) {
        if w == "--" {
            i += 1;
            break;
        }
        if w == "-o" || w == "+o" || w == "-O" || w == "+O" {
            i += 2;
            continue;
        }
        if (w.starts_with('-') || w.starts_with('+')) && w.len() > 1 && !w.starts_with("--") {
            if w[1..].contains('c') {
                command_flag = true;
            }
            i += 1;
            continue;
        }
        if w.starts_with("--") {
            i += 1;
            continue;
        }
        break;
    }
    match (command_flag, argv.get(i)) {
        (true, Some(code)) if depth < MAX_DEPTH => script(code, depth + 1, out),
        (true, Some(_)) => out.opaque("shells nested too deeply"),
        (true, None) => out.opaque(format!("{name} -c without a command")),
        (false, Some(file)) => out.opaque(format!("{name} runs the script file {file}")),
        (false, None) if stdin => out.opaque(format!(
            "an interactive {name} reads its commands from standard input"
        )),
        (false, None) => {}
    }
}

/// Reserved words that only join commands.
const JOINERS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}",
];
/// Reserved words whose constructs are not followed.
const OPAQUE_WORDS: &[&str] = &["for", "case", "select", "function", "[[", "((", "coproc"];
const SEPARATORS: &[&str] = &[
    ";", "&&", "||", "|", "&", "|&", "\n", "(", ")", ";;", ";&", ";;&",
];
const REDIRECTIONS: &[&str] = &[">", ">>", "<", ">&", "<&", ">|", "&>", "&>>", "<>"];

/// Analyse a shell script: every simple command in it.
fn script(code: &str, depth: usize, out: &mut Analysis) {
    let tokens = match brush_parser::tokenize_str(code) {
        Ok(t) => t,
        Err(e) => {
            out.opaque(format!("the shell script does not parse: {e}"));
            return;
        }
    };
    let options = ParserOptions::default();
    let mut words: Vec<String> = Vec::new();
    let mut redirections: Vec<String> = Vec::new();
    let mut pending_redirect: Option<String> = None;
    let flush = |words: &mut Vec<String>, redirections: &mut Vec<String>, out: &mut Analysis| {
        // Leading assignments (`FOO=1 cmd`) set the environment of the command.
        let start = words
            .iter()
            .position(|w| !is_assignment(w))
            .unwrap_or(words.len());
        let argv: Vec<String> = words.drain(..).skip(start).collect();
        if !argv.is_empty() {
            let before = out.commands.len();
            simple(&argv, true, depth, out);
            if !redirections.is_empty() {
                if let Some(first) = out.commands.get_mut(before) {
                    first.push(' ');
                    first.push_str(&redirections.join(" "));
                }
            }
        }
        redirections.clear();
    };
    for token in &tokens {
        match token {
            Token::Operator(op, _) => {
                let op = op.as_str();
                if SEPARATORS.contains(&op) {
                    flush(&mut words, &mut redirections, out);
                } else if REDIRECTIONS.contains(&op) {
                    pending_redirect = Some(op.to_owned());
                } else if op.starts_with("<<") {
                    out.opaque("here-documents are not followed");
                } else {
                    out.opaque(format!("shell operator {op} is not followed"));
                }
            }
            Token::Word(w, _) => {
                let first_word = words.iter().all(|x| is_assignment(x));
                if first_word && pending_redirect.is_none() {
                    if JOINERS.contains(&w.as_str()) {
                        flush(&mut words, &mut redirections, out);
                        continue;
                    }
                    if OPAQUE_WORDS.contains(&w.as_str()) || w.ends_with("()") {
                        out.opaque(format!("shell construct {w} is not followed"));
                        continue;
                    }
                }
                let (literal, expanded) = match literal_word(w, &options) {
                    Ok(l) => l,
                    Err(why) => {
                        out.opaque(why);
                        (w.clone(), true)
                    }
                };
                if let Some(op) = pending_redirect.take() {
                    redirections.push(format!("{op} {literal}"));
                } else {
                    if first_word && !is_assignment(w) && expanded {
                        out.opaque(format!("the command name {w} is expanded at run time"));
                    }
                    words.push(literal);
                }
            }
        }
    }
    flush(&mut words, &mut redirections, out);
}

fn is_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// The text of a word with its quoting removed. Parameter expansions are kept as written;
/// command substitutions run commands and make the word opaque.
fn literal_word(word: &str, options: &ParserOptions) -> Result<(String, bool), String> {
    let pieces = brush_parser::word::parse(word, options)
        .map_err(|e| format!("the shell word {word} does not parse: {e}"))?;
    let mut out = String::new();
    let mut expanded = false;
    for p in &pieces {
        expanded |= append_piece(p, word, &mut out)?;
    }
    Ok((out, expanded))
}

fn append_piece(
    p: &brush_parser::word::WordPieceWithSource,
    word: &str,
    out: &mut String,
) -> Result<bool, String> {
    match &p.piece {
        WordPiece::Text(t) | WordPiece::SingleQuotedText(t) | WordPiece::AnsiCQuotedText(t) => {
            out.push_str(t)
        }
        WordPiece::EscapeSequence(e) => out.push_str(e.strip_prefix('\\').unwrap_or(e)),
        WordPiece::DoubleQuotedSequence(inner) | WordPiece::GettextDoubleQuotedSequence(inner) => {
            let mut expanded = false;
            for q in inner {
                expanded |= append_piece(q, word, out)?;
            }
            return Ok(expanded);
        }
        WordPiece::TildeExpansion(_) => out.push('~'),
        WordPiece::ParameterExpansion(_) | WordPiece::ArithmeticExpression(_) => {
            // Kept as written: the program is known, its argument is not.
            out.push_str(word.get(p.start_index..p.end_index).unwrap_or("$?"));
            return Ok(true);
        }
        WordPiece::CommandSubstitution(c) | WordPiece::BackquotedCommandSubstitution(c) => {
            return Err(format!("command substitution $({c}) runs at run time"));
        }
    }
    Ok(false)
}

/// Words joined by spaces: the line exec guardrail patterns match.
pub fn join(words: &[String]) -> String {
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn plain_commands_are_themselves() {
        let a = analyse(&v(&["ls", "-l", "/tmp"]), false);
        assert_eq!(a.commands, vec!["ls -l /tmp"]);
        assert_eq!(a.unanalysable, None);
    }

    #[test]
    fn shell_scripts_are_split_into_commands() {
        let a = analyse(
            &v(&[
                "sh",
                "-c",
                "cd /tmp && rm -rf 'data dir'; echo \"done\" | tee log",
            ]),
            false,
        );
        assert_eq!(
            a.commands,
            vec![
                "sh -c cd /tmp && rm -rf 'data dir'; echo \"done\" | tee log",
                "cd /tmp",
                "rm -rf data dir",
                "echo done",
                "tee log"
            ]
        );
        assert_eq!(a.unanalysable, None);
    }

    #[test]
    fn wrappers_and_nested_shells_are_looked_through() {
        let a = analyse(
            &v(&[
                "env",
                "FOO=1",
                "sudo",
                "-u",
                "root",
                "/bin/bash",
                "-ec",
                "timeout 5 psql -c 'select 1'",
            ]),
            false,
        );
        assert!(
            a.commands.contains(&"psql -c select 1".to_owned()),
            "{:?}",
            a.commands
        );
        assert!(a
            .commands
            .contains(&"/bin/bash -ec timeout 5 psql -c 'select 1'".to_owned()));
        assert_eq!(a.unanalysable, None);
    }

    #[test]
    fn what_runs_later_is_unanalysable() {
        for (argv, stdin) in [
            (v(&["bash"]), true),
            (v(&["sh", "/tmp/script.sh"]), false),
            (v(&["sh", "-c", "$(curl -s http://x) --now"]), false),
            (v(&["sh", "-c", "echo `id`"]), false),
            (v(&["sh", "-c", "eval \"$CMD\""]), false),
            (v(&["sh", "-c", "$PROG -x"]), false),
            (v(&["sh", "-c", "for f in *; do rm $f; done"]), false),
            (v(&["sh", "-c", "cat <<EOF\nx\nEOF"]), false),
            (v(&["python3", "-c", "import os; os.remove('x')"]), false),
            (v(&["env", "-S", "rm -rf /"]), false),
            (v(&["sh", "-c", "echo 'unterminated"]), false),
        ] {
            let a = analyse(&argv, stdin);
            assert!(
                a.unanalysable.is_some(),
                "{argv:?} should be unanalysable: {a:?}"
            );
        }
    }

    #[test]
    fn arguments_with_parameters_keep_the_program_known() {
        let a = analyse(&v(&["sh", "-c", "rm -rf $HOME/cache && ls ~"]), false);
        assert_eq!(a.unanalysable, None, "{a:?}");
        assert!(a.commands.iter().any(|c| c.starts_with("rm -rf ")));
        assert!(a.commands.contains(&"ls ~".to_owned()));
    }

    #[test]
    fn redirections_stay_on_the_line() {
        let a = analyse(&v(&["sh", "-c", "echo x > /etc/passwd"]), false);
        assert!(
            a.commands.contains(&"echo x > /etc/passwd".to_owned()),
            "{a:?}"
        );
    }

    #[test]
    fn a_non_interactive_shell_without_input_runs_nothing_else() {
        let a = analyse(&v(&["bash", "--norc"]), false);
        assert_eq!(a.unanalysable, None);
        assert_eq!(a.commands, vec!["bash --norc"]);
    }
}
