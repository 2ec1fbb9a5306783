//! One command vector: the program it names, looked through wrappers, shells, interpreters
//! and programs that run other commands, from the tables in [`super::tables`].

use super::options;
use super::script::{self, MAX_DEPTH};
use super::tables::{self, Dialect, Interpreter, Leading, Runs, Wrapper};
use super::{basename, Analysis, Command, Word};

/// What is known while a command is analysed.
#[derive(Debug, Default)]
pub(crate) struct Context {
    /// Standard input is attached.
    pub stdin: bool,
    /// Nesting depth (scripts, wrappers).
    pub depth: usize,
    /// Functions the script defines (their bodies are analysed where defined).
    pub functions: Vec<String>,
    /// Files the script's redirections wrote.
    pub written: Vec<String>,
    /// The dialect of the script being analysed (`None` outside scripts).
    pub dialect: Option<Dialect>,
    /// Words and scripts analysed so far (bounded by [`MAX_WORK`]).
    pub work: usize,
}

/// Most words and scripts one analysis expands (brace expansions and nested substitutions
/// multiply); past it the command is unproven.
pub(crate) const MAX_WORK: usize = 20_000;

impl Context {
    /// Count one unit of work; `false` (and the command unproven) once the bound is passed.
    pub fn spend(&mut self, out: &mut Analysis) -> bool {
        self.work += 1;
        if self.work > MAX_WORK {
            out.unproven("", "the command is too large to analyse");
            return false;
        }
        true
    }
}

impl Context {
    pub fn new(stdin: bool) -> Self {
        Context {
            stdin,
            ..Default::default()
        }
    }
}

const FROM_STDIN: &str = "(arguments read from standard input)";

/// Analyse one command: `words` after expansion, with its environment and writes.
pub(crate) fn command(
    words: &[Word],
    env: Vec<Word>,
    writes: Vec<Word>,
    ctx: &mut Context,
    out: &mut Analysis,
) {
    let Some(program) = words.first() else { return };
    let cmd = Command {
        argv: words.to_vec(),
        own: words.len(),
        env,
        writes,
    };
    for e in &cmd.env {
        let name = e.text().split(['=', '[', '+']).next().unwrap_or_default();
        if tables::dangerous_variable(name) {
            out.unproven(
                e.text(),
                format!("{name} changes what programs run or which files they run"),
            );
        }
    }
    let Some(prog) = program.known().map(str::to_owned) else {
        out.unproven(program.text(), "the program is only known at run time");
        out.commands.push(cmd);
        return;
    };
    if prog.is_empty() {
        out.unproven(prog.as_str(), "the program name is empty");
        out.commands.push(cmd);
        return;
    }
    if ctx.depth >= MAX_DEPTH {
        out.unproven(prog.as_str(), "commands are nested too deeply");
        out.commands.push(cmd);
        return;
    }
    if ctx
        .written
        .iter()
        .any(|w| *w == prog || basename(w) == prog.trim_start_matches("./"))
    {
        out.unproven(
            prog.as_str(),
            "this file was written earlier by the same command and is run",
        );
    }
    let name = basename(&prog).to_owned();
    let norm = tables::normalise(&name).to_owned();
    if ctx.functions.contains(&prog) {
        out.commands.push(cmd);
        return;
    }
    if tables::DECLARATION_BUILTINS.contains(&name.as_str()) {
        for w in &words[1..] {
            let n = w.text().split(['=', '[', '+']).next().unwrap_or_default();
            if tables::dangerous_variable(n) {
                out.unproven(
                    w.text(),
                    format!("setting {n} changes what programs run or which files they run"),
                );
            }
        }
    }
    ctx.depth += 1;
    if tables::CODE_BUILTINS.contains(&name.as_str()) {
        code_builtin(&name, words, cmd, ctx, out);
    } else if let Some(w) = tables::wrapper(&name) {
        wrapper(w, &name, words, cmd, ctx, out);
    } else if let Some(dialect) = tables::shell(&norm) {
        shell(dialect, &name, words, cmd, ctx, out);
    } else if name == "busybox" {
        busybox(words, cmd, ctx, out);
    } else if let Some(it) = tables::interpreter(&norm) {
        interpreter(it, &name, words, cmd, ctx, out);
    } else {
        match name.as_str() {
            "find" => find(words, cmd, ctx, out),
            "sed" => sed(words, cmd, out),
            "tar" => tar(words, cmd, out),
            "rsync" => rsync(words, cmd, out),
            "git" => git(words, cmd, out),
            "ssh" | "scp" | "sftp" => ssh(&name, words, cmd, out),
            _ => {
                if tables::OPAQUE_RUNNERS.contains(&name.as_str())
                    || tables::OPAQUE_RUNNERS.contains(&norm.as_str())
                {
                    out.unproven(
                        name.as_str(),
                        "this program runs commands given to it in ways the analysis does not follow",
                    );
                } else if ctx.stdin && tables::INTERACTIVE_RUNNERS.contains(&norm.as_str()) {
                    out.unproven(
                        name.as_str(),
                        "this program runs commands typed into it, and standard input is attached",
                    );
                }
                out.commands.push(cmd);
            }
        }
    }
    ctx.depth -= 1;
}

fn texts(words: &[Word]) -> Vec<String> {
    words.iter().map(|w| w.text().to_owned()).collect()
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

/// `eval`, `source`, `alias`, `trap` and the other builtins that run or redefine code.
fn code_builtin(name: &str, words: &[Word], cmd: Command, ctx: &mut Context, out: &mut Analysis) {
    out.commands.push(cmd);
    let args = &words[1..];
    let has = |flag: &str| {
        args.iter()
            .any(|w| w.text().starts_with('-') && w.text().contains(flag.trim_start_matches('-')))
    };
    match name {
        "eval" => {
            if let Some(code) = args.iter().map(Word::known).collect::<Option<Vec<_>>>() {
                script::script(&code.join(" "), Dialect::Unknown, ctx, out);
            }
            out.unproven("eval", "eval runs text as code when the command runs");
        }
        "source" | "." => out.unproven(
            args.first().map(Word::text).unwrap_or(name),
            "source runs the commands of a file",
        ),
        "alias" => {
            if let Some(w) = args.iter().find(|w| w.text().contains('=')) {
                out.unproven(w.text(), "an alias changes what a later command word runs");
            }
        }
        "enable" if has("-f") => out.unproven(
            "enable -f",
            "enable -f loads a builtin from a shared library",
        ),
        "hash" if has("-p") => {
            out.unproven("hash -p", "hash -p changes which file a command name runs")
        }
        "fc" if !has("-l") => out.unproven("fc", "fc runs commands from the history"),
        "bind" if has("-x") => out.unproven("bind -x", "bind -x runs a command on a key"),
        "complete" | "compgen" if has("-C") || has("-F") => {
            out.unproven(name, "completion runs a command or function")
        }
        "mapfile" | "readarray" if has("-C") => out.unproven(name, "-C runs a callback"),
        "trap" => {
            let rest: Vec<&Word> = args
                .iter()
                .skip_while(|w| matches!(w.text(), "-p" | "-l" | "-P"))
                .skip_while(|w| w.text() == "--")
                .collect();
            if let [action, _signal, ..] = rest.as_slice() {
                match action {
                    Word::Known(code) if code == "-" || code.is_empty() => {}
                    Word::Known(code) => script::script(code, Dialect::Unknown, ctx, out),
                    Word::Unknown(t) => {
                        out.unproven(t.as_str(), "the trap's command is only known at run time")
                    }
                }
            }
        }
        _ => {}
    }
}

/// A wrapper from the table: its options, then the command it runs.
fn wrapper(
    w: &'static Wrapper,
    name: &str,
    words: &[Word],
    mut cmd: Command,
    ctx: &mut Context,
    out: &mut Analysis,
) {
    let args = texts(&words[1..]);
    let (opts, mut i) = match options::parse(&w.options, &args) {
        Ok(r) => r,
        Err(e) => {
            out.unproven(
                e.word,
                format!("{name}: {}; the command it runs is not known", e.why),
            );
            out.commands.push(cmd);
            return;
        }
    };
    if let Some(u) = words[1..=i.min(words.len() - 1)]
        .iter()
        .skip(1)
        .find(|x| matches!(x, Word::Unknown(_)))
    {
        out.unproven(
            u.text(),
            format!("an option of {name} is only known at run time"),
        );
    }
    if words[1..]
        .first()
        .is_some_and(|x| matches!(x, Word::Unknown(_)))
    {
        out.unproven(
            words[1].text(),
            format!("an option of {name} is only known at run time"),
        );
    }
    let mut scripts: Vec<String> = Vec::new();
    let mut runs = w.runs;
    let mut replace: Option<String> = None;
    for o in &opts {
        if let Some((_, why)) = w.unproven_options.iter().find(|(n, _)| *n == o.name) {
            out.unproven(o.name.as_str(), *why);
        }
        if w.no_command_options.contains(&o.name.as_str()) {
            out.commands.push(cmd);
            return;
        }
        if w.write_options.contains(&o.name.as_str()) {
            if let Some(v) = &o.value {
                cmd.writes.push(Word::Known(v.clone()));
                ctx.written.push(v.clone());
            }
        }
        if w.command_options.contains(&o.name.as_str()) {
            if let Some(v) = &o.value {
                scripts.push(v.clone());
            }
        }
        if name == "exec" && ctx.dialect != Some(Dialect::Bash) {
            out.unproven(
                o.name.as_str(),
                "exec options are read differently by bash, dash and busybox sh",
            );
        }
        if name == "watch" && matches!(o.name.as_str(), "-x" | "--exec") {
            runs = Runs::Exec;
        }
        if name == "xargs" && matches!(o.name.as_str(), "-I" | "-i" | "--replace") {
            replace = Some(o.value.clone().unwrap_or_else(|| "{}".into()));
        }
    }
    let mut inner_env = Vec::new();
    if w.assignments {
        while let Some(Word::Known(a)) = words.get(1 + i) {
            if !is_assignment(a) {
                break;
            }
            inner_env.push(Word::Known(a.clone()));
            i += 1;
        }
    }
    match w.leading {
        Leading::None => {}
        Leading::One => {
            if 1 + i < words.len() {
                i += 1;
            }
        }
        Leading::Numeric => {
            if words
                .get(1 + i)
                .and_then(Word::known)
                .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
            {
                i += 1;
            }
        }
    }
    // flock FILE -c COMMAND
    if !w.command_options.is_empty() {
        if let Some(flag) = words.get(1 + i).and_then(Word::known) {
            if w.command_options.contains(&flag)
                || w.command_options
                    .iter()
                    .any(|c| c.starts_with("--") && flag.starts_with(&format!("{c}=")))
            {
                match flag.split_once('=') {
                    Some((_, v)) => scripts.push(v.to_owned()),
                    None => match words.get(2 + i) {
                        Some(Word::Known(v)) => scripts.push(v.clone()),
                        Some(Word::Unknown(v)) => {
                            out.unproven(v.as_str(), "the command is only known at run time")
                        }
                        None => {}
                    },
                }
                i = words.len() - 1;
            }
        }
    }
    let start = (1 + i).min(words.len());
    let inner = &words[start..];
    cmd.own = start;
    out.commands.push(cmd);
    for s in &scripts {
        script::script(s, Dialect::Unknown, ctx, out);
    }
    if runs == Runs::OptionOnly {
        if let Some(x) = inner.iter().find(|x| x.text().starts_with('-')) {
            out.unproven(
                x.text(),
                format!(
                    "{name} reads options after its arguments; the command it runs is not known"
                ),
            );
        }
        if scripts.is_empty() {
            if let Some(why) = w.without_command {
                out.unproven(name, why);
            }
        }
        return;
    }
    if inner.is_empty() {
        if !scripts.is_empty() {
            return;
        }
        if let Some(d) = w.default_command {
            command(
                &[Word::Known(d.into()), Word::Unknown(FROM_STDIN.into())],
                inner_env,
                Vec::new(),
                ctx,
                out,
            );
        } else if let Some(why) = w.without_command {
            out.unproven(name, why);
        }
        return;
    }
    match runs {
        Runs::Exec | Runs::OptionOnly => command(inner, inner_env, Vec::new(), ctx, out),
        Runs::JoinedShell => match inner.iter().map(Word::known).collect::<Option<Vec<_>>>() {
            Some(parts) => script::script(&parts.join(" "), Dialect::Unknown, ctx, out),
            None => out.unproven(name, "the command it runs is only known at run time"),
        },
        Runs::StdinArguments => {
            let mut v: Vec<Word> = inner
                .iter()
                .map(|x| match (&replace, x) {
                    (Some(r), Word::Known(t)) if t.contains(r.as_str()) => Word::Unknown(t.clone()),
                    _ => x.clone(),
                })
                .collect();
            v.push(Word::Unknown(FROM_STDIN.into()));
            command(&v, inner_env, Vec::new(), ctx, out)
        }
    }
}

/// A shell: `-c SCRIPT` is analysed in the shell's dialect; a shell that reads standard
/// input, a script file, or startup files runs commands the analysis cannot see.
fn shell(
    dialect: Dialect,
    name: &str,
    words: &[Word],
    mut cmd: Command,
    ctx: &mut Context,
    out: &mut Analysis,
) {
    let mut i = 1;
    let mut command_mode = false;
    let mut stdin_mode = false;
    while let Some(w) = words.get(i) {
        let Some(t) = w.known() else {
            out.unproven(w.text(), "the shell's arguments are only known at run time");
            out.commands.push(cmd);
            return;
        };
        if t == "--" || t == "-" {
            i += 1;
            break;
        }
        if let Some(long) = t.strip_prefix("--") {
            match long {
                "login" => out.unproven(t, "a login shell runs profile files"),
                "rcfile" | "init-file" => {
                    out.unproven(t, "the shell runs this startup file");
                    i += 1;
                }
                "norc" | "noprofile" | "posix" | "restricted" | "verbose" | "version" | "help"
                | "noediting" | "debug" | "debugger" | "dump-strings" | "dump-po-strings"
                | "wordexp" | "pretty-print" => {}
                _ => out.unproven(t, "an unknown shell option"),
            }
            i += 1;
            continue;
        }
        if (t.starts_with('-') || t.starts_with('+')) && t.len() > 1 {
            let mut takes = 0;
            for c in t[1..].chars() {
                match c {
                    'c' if t.starts_with('-') => command_mode = true,
                    's' => stdin_mode = true,
                    'l' => out.unproven(t, "a login shell runs profile files"),
                    'i' => out.unproven(
                        t,
                        "an interactive shell runs startup files and the commands typed into it",
                    ),
                    'o' | 'O' => takes += 1,
                    c if c.is_ascii_alphabetic() => {}
                    _ => out.unproven(t, "an unknown shell option"),
                }
            }
            i += 1 + takes;
            continue;
        }
        break;
    }
    if command_mode {
        match words.get(i) {
            None => out.unproven(name, "-c without a command"),
            Some(Word::Unknown(t)) => {
                out.unproven(t.as_str(), "the shell's script is only known at run time")
            }
            Some(Word::Known(code)) => {
                cmd.own = i;
                out.commands.push(cmd);
                script::script(code, dialect, ctx, out);
                return;
            }
        }
    } else if stdin_mode || words.get(i).is_none() {
        if ctx.stdin {
            out.unproven(
                name,
                format!("{name} reads its commands from standard input"),
            );
        }
    } else if let Some(file) = words.get(i) {
        out.unproven(file.text(), "the shell runs this script file");
    }
    out.commands.push(cmd);
}

/// `busybox APPLET ARGS` runs the applet.
fn busybox(words: &[Word], mut cmd: Command, ctx: &mut Context, out: &mut Analysis) {
    match words.get(1) {
        Some(Word::Known(applet)) if !applet.starts_with('-') => {
            cmd.own = 1;
            out.commands.push(cmd);
            match tables::shell(applet) {
                Some(_) if matches!(applet.as_str(), "sh" | "ash" | "hush") => {
                    let inner = words[1..].to_vec();
                    shell(
                        Dialect::Busybox,
                        applet,
                        &inner,
                        Command {
                            argv: inner.clone(),
                            own: inner.len(),
                            ..Default::default()
                        },
                        ctx,
                        out,
                    )
                }
                _ => command(&words[1..], Vec::new(), Vec::new(), ctx, out),
            }
        }
        Some(Word::Unknown(t)) => {
            out.unproven(t.as_str(), "the busybox applet is only known at run time");
            out.commands.push(cmd);
        }
        _ => out.commands.push(cmd),
    }
}

/// An interpreter: inline code and programs read from standard input are unproven; a
/// program file named on the command line is judged by the command line.
fn interpreter(
    it: &Interpreter,
    name: &str,
    words: &[Word],
    cmd: Command,
    ctx: &mut Context,
    out: &mut Analysis,
) {
    out.commands.push(cmd);
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let Some(t) = w.known() else { break };
        if t == "--" {
            i += 1;
            break;
        }
        if t == "-" || !t.starts_with('-') {
            break;
        }
        if let Some(long) = t.strip_prefix("--") {
            let given = long.split('=').next().unwrap_or_default();
            if !given.is_empty() && it.code_long.iter().any(|c| c.starts_with(given)) {
                out.unproven(t, format!("{name} runs the code given to this option"));
                return;
            }
            if it.long_arg.contains(&given) && !long.contains('=') {
                i += 1;
            }
            i += 1;
            continue;
        }
        let cluster = &t[1..];
        for (at, c) in cluster.char_indices() {
            if it.code_short.contains(c) {
                out.unproven(
                    t,
                    format!("{name} -{c} runs code given on its command line"),
                );
                return;
            }
            if it.short_arg.contains(c) {
                if cluster[at + c.len_utf8()..].is_empty() {
                    i += 1;
                }
                break;
            }
        }
        i += 1;
    }
    match words.get(i) {
        None => {
            if ctx.stdin {
                out.unproven(
                    name,
                    format!("{name} reads its program from standard input"),
                );
            }
        }
        Some(Word::Known(t)) if t == "-" => {
            if ctx.stdin {
                out.unproven(
                    name,
                    format!("{name} reads its program from standard input"),
                );
            }
        }
        Some(Word::Unknown(t)) => out.unproven(
            t.as_str(),
            format!("the program {name} runs is only known at run time"),
        ),
        Some(Word::Known(t)) => {
            if it.positional_code {
                if ["system", "|", ">", "@", "getline"]
                    .iter()
                    .any(|x| t.contains(x))
                {
                    out.unproven(
                        t.as_str(),
                        "the awk program can run commands or write files",
                    );
                }
            } else if ctx.written.contains(t) {
                out.unproven(
                    t.as_str(),
                    "this file was written earlier by the same command and is run",
                );
            }
        }
    }
}

/// `find`: `-exec`, `-execdir`, `-ok` and `-okdir` run commands; `-delete` and `-fprint*`
/// write.
fn find(words: &[Word], mut cmd: Command, ctx: &mut Context, out: &mut Analysis) {
    let mut inner: Vec<Vec<Word>> = Vec::new();
    let mut i = 1;
    while let Some(w) = words.get(i) {
        match w.text() {
            "-exec" | "-execdir" | "-ok" | "-okdir" => {
                let rest = &words[i + 1..];
                match rest
                    .iter()
                    .position(|x| matches!(x.known(), Some(";") | Some("+")))
                {
                    Some(end) => {
                        inner.push(
                            rest[..end]
                                .iter()
                                .map(|x| match x {
                                    Word::Known(t) if t.contains("{}") => Word::Unknown(t.clone()),
                                    _ => x.clone(),
                                })
                                .collect(),
                        );
                        i += end + 2;
                        continue;
                    }
                    None => out.unproven(w.text(), "find's command has no terminating ; or +"),
                }
            }
            "-delete" => cmd.writes.push(Word::Unknown("(files found)".into())),
            "-fprint" | "-fprint0" | "-fprintf" | "-fls" => {
                if let Some(f) = words.get(i + 1) {
                    cmd.writes.push(f.clone());
                }
            }
            _ if matches!(w, Word::Unknown(_)) => {
                out.unproven(
                    w.text(),
                    "a find expression only known at run time may run commands",
                );
            }
            _ => {}
        }
        i += 1;
    }
    out.commands.push(cmd);
    for argv in inner {
        if argv.is_empty() {
            continue;
        }
        command(&argv, Vec::new(), Vec::new(), ctx, out);
    }
}

/// Whether a sed script runs commands (`e`, `s///e`) or writes files (`w`, `s///w`).
pub fn sed_runs_or_writes(script: &str) -> bool {
    let b: Vec<char> = script.chars().collect();
    let mut i = 0;
    let skip_delimited = |i: &mut usize, delim: char| -> bool {
        while *i < b.len() {
            if b[*i] == '\\' {
                *i += 2;
                continue;
            }
            if b[*i] == delim {
                *i += 1;
                return true;
            }
            *i += 1;
        }
        false
    };
    while i < b.len() {
        let c = b[i];
        match c {
            ' ' | '\t' | '\n' | ';' | '{' | '}' | '!' | ',' | '$' | '~' | '+' | '0'..='9' => i += 1,
            '/' => {
                i += 1;
                if !skip_delimited(&mut i, '/') {
                    return true;
                }
                // Address flags I and M.
                while i < b.len() && matches!(b[i], 'I' | 'M') {
                    i += 1;
                }
            }
            '\\' => {
                let Some(&d) = b.get(i + 1) else { return true };
                i += 2;
                if !skip_delimited(&mut i, d) {
                    return true;
                }
            }
            's' | 'y' => {
                let Some(&d) = b.get(i + 1) else { return true };
                if d == '\\' || d == '\n' {
                    return true;
                }
                i += 2;
                if !skip_delimited(&mut i, d) || !skip_delimited(&mut i, d) {
                    return true;
                }
                if c == 's' {
                    while i < b.len() && !matches!(b[i], ';' | '\n' | '}') {
                        if matches!(b[i], 'e' | 'w' | 'W') {
                            return true;
                        }
                        if !(b[i].is_ascii_digit()
                            || matches!(b[i], 'g' | 'p' | 'i' | 'I' | 'm' | 'M' | ' '))
                        {
                            return true;
                        }
                        i += 1;
                    }
                }
            }
            'e' | 'w' | 'W' => return true,
            'a' | 'i' | 'c' | 'r' | 'R' | '#' | ':' | 'b' | 't' | 'T' => {
                while i < b.len()
                    && b[i] != '\n'
                    && !(matches!(c, 'b' | 't' | 'T' | ':') && matches!(b[i], ';' | '}'))
                {
                    i += 1;
                }
            }
            'd' | 'D' | 'g' | 'G' | 'h' | 'H' | 'n' | 'N' | 'p' | 'P' | 'x' | 'z' | '=' | 'F'
            | 'q' | 'Q' | 'l' | 'L' => i += 1,
            _ => return true,
        }
    }
    false
}

/// `sed`: script files, `e` and `w` commands, and in-place edits.
fn sed(words: &[Word], mut cmd: Command, out: &mut Analysis) {
    let mut scripts: Vec<Word> = Vec::new();
    let mut sandbox = false;
    let mut explicit = false;
    let mut positional: Vec<&Word> = Vec::new();
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let t = w.text();
        if matches!(w, Word::Unknown(_)) && t.starts_with('-') {
            out.unproven(t, "a sed option only known at run time");
        }
        if t == "--" {
            positional.extend(&words[i + 1..]);
            break;
        }
        if let Some(long) = t.strip_prefix("--") {
            let (n, v) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let full = [
                "expression",
                "file",
                "in-place",
                "line-length",
                "sandbox",
                "posix",
                "debug",
                "follow-symlinks",
                "null-data",
                "separate",
                "unbuffered",
                "regexp-extended",
                "quiet",
                "silent",
                "zero-terminated",
                "binary",
                "help",
                "version",
            ]
            .into_iter()
            .filter(|o| o.starts_with(n))
            .collect::<Vec<_>>();
            let name = match full.as_slice() {
                [one] => *one,
                _ if full.contains(&n) => n,
                _ => {
                    out.unproven(t, "an unknown or ambiguous sed option");
                    i += 1;
                    continue;
                }
            };
            match name {
                "expression" | "file" | "line-length" => {
                    let value = match v {
                        Some(v) => Word::Known(v),
                        None => {
                            i += 1;
                            words
                                .get(i)
                                .cloned()
                                .unwrap_or(Word::Unknown(String::new()))
                        }
                    };
                    match name {
                        "expression" => {
                            explicit = true;
                            scripts.push(value)
                        }
                        "file" => {
                            explicit = true;
                            out.unproven(value.text(), "sed runs the script in this file")
                        }
                        _ => {}
                    }
                }
                "in-place" => cmd
                    .writes
                    .push(Word::Unknown("(files edited in place)".into())),
                "sandbox" => sandbox = true,
                _ => {}
            }
            i += 1;
            continue;
        }
        if t.starts_with('-') && t.len() > 1 {
            let cluster = &t[1..];
            for (at, c) in cluster.char_indices() {
                let rest = &cluster[at + c.len_utf8()..];
                match c {
                    'e' | 'f' | 'l' => {
                        let value = if rest.is_empty() {
                            i += 1;
                            words
                                .get(i)
                                .cloned()
                                .unwrap_or(Word::Unknown(String::new()))
                        } else {
                            Word::Known(rest.to_owned())
                        };
                        if c == 'e' {
                            explicit = true;
                            scripts.push(value);
                        } else if c == 'f' {
                            explicit = true;
                            out.unproven(value.text(), "sed runs the script in this file");
                        }
                        break;
                    }
                    'i' => {
                        cmd.writes
                            .push(Word::Unknown("(files edited in place)".into()));
                        break;
                    }
                    'n' | 'E' | 'r' | 's' | 'u' | 'z' | 'b' => {}
                    _ => out.unproven(t, "an unknown sed option"),
                }
            }
            i += 1;
            continue;
        }
        positional.push(w);
        i += 1;
    }
    if !explicit {
        if let Some(first) = positional.first() {
            scripts.push((*first).clone());
        }
    }
    for s in &scripts {
        match s {
            Word::Known(t) if !sandbox && sed_runs_or_writes(t) => out.unproven(
                t.as_str(),
                "the sed script runs commands (e) or writes files (w)",
            ),
            Word::Unknown(t) if !sandbox => {
                out.unproven(t.as_str(), "the sed script is only known at run time")
            }
            _ => {}
        }
    }
    out.commands.push(cmd);
}

/// `tar`: options that run commands, and extraction (a write).
fn tar(words: &[Word], mut cmd: Command, out: &mut Analysis) {
    const RUNNING: &[&str] = &[
        "checkpoint-action",
        "to-command",
        "use-compress-program",
        "rsh-command",
        "info-script",
        "new-volume-script",
    ];
    for (n, w) in words.iter().enumerate().skip(1) {
        let t = w.text();
        if matches!(w, Word::Unknown(_)) {
            out.unproven(t, "a tar option only known at run time may run a command");
            continue;
        }
        if let Some(long) = t.strip_prefix("--") {
            let given = long.split('=').next().unwrap_or_default();
            if given.len() >= 2 {
                if let Some(o) = RUNNING.iter().find(|o| o.starts_with(given)) {
                    out.unproven(t, format!("tar runs the command given to --{o}"));
                }
            }
            if "extract".starts_with(given) && given.len() >= 3 || given == "get" {
                cmd.writes.push(Word::Unknown("(extracted files)".into()));
            }
        } else if t.starts_with('-') || n == 1 {
            let cluster = t.trim_start_matches('-');
            if cluster.contains('I') || cluster.contains('F') {
                out.unproven(t, "tar -I and -F run a program");
            }
            if cluster.contains('x') {
                cmd.writes.push(Word::Unknown("(extracted files)".into()));
            }
        }
    }
    out.commands.push(cmd);
}

/// `rsync -e` runs a remote-shell command on this side.
fn rsync(words: &[Word], cmd: Command, out: &mut Analysis) {
    for w in &words[1..] {
        let t = w.text();
        if let Some(long) = t.strip_prefix("--") {
            let given = long.split('=').next().unwrap_or_default();
            if given.len() >= 2 && "rsh".starts_with(given) {
                out.unproven(t, "rsync -e runs a remote-shell command");
            }
        } else if t.starts_with('-') && t[1..].contains('e') {
            out.unproven(t, "rsync -e runs a remote-shell command");
        }
    }
    out.commands.push(cmd);
}

/// `git`: configuration given on the command line can name commands git runs, and some
/// subcommands run commands or hooks given to them.
fn git(words: &[Word], cmd: Command, out: &mut Analysis) {
    const RUNNING_SUBCOMMANDS: &[&str] = &[
        "bisect",
        "submodule",
        "filter-branch",
        "rebase",
        "difftool",
        "mergetool",
        "daemon",
        "instaweb",
        "send-email",
        "web--browse",
        "credential",
        "archimport",
        "cvsimport",
        "svn",
        "p4",
        "help",
    ];
    const RUNNING_OPTIONS: &[&str] = &[
        "--upload-pack",
        "--receive-pack",
        "--exec",
        "--extcmd",
        "--ext-diff",
        "--open-files-in-pager",
        "--tool",
        "--config",
        "-O",
        "-x",
        "-u",
    ];
    let mut global = true;
    for w in &words[1..] {
        let t = w.text();
        if matches!(w, Word::Unknown(_)) {
            out.unproven(
                t,
                "a git argument only known at run time may name a command",
            );
            continue;
        }
        if global {
            if t == "-c"
                || t.starts_with("--config-env")
                || t.starts_with("--exec-path")
                || t.starts_with("-c")
            {
                out.unproven(
                    t,
                    "git -c sets configuration, which can name commands git runs",
                );
                continue;
            }
            if !t.starts_with('-') {
                global = false;
                if RUNNING_SUBCOMMANDS.contains(&t) {
                    out.unproven(t, "this git subcommand runs commands given to it");
                }
            }
            continue;
        }
        if RUNNING_OPTIONS
            .iter()
            .any(|o| t == *o || t.starts_with(&format!("{o}=")))
        {
            out.unproven(t, "this git option names a command git runs");
        }
    }
    out.commands.push(cmd);
}

/// `ssh`/`scp`/`sftp`: options that run local commands.
fn ssh(name: &str, words: &[Word], cmd: Command, out: &mut Analysis) {
    const RUNNING: &[&str] = &[
        "proxycommand",
        "localcommand",
        "permitlocalcommand",
        "knownhostscommand",
        "match",
        "proxyusefdpass",
    ];
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let t = w.text();
        let option = if t == "-o" {
            i += 1;
            words.get(i).map(|x| x.text().to_owned())
        } else {
            t.strip_prefix("-o")
                .filter(|_| t.len() > 2)
                .map(str::to_owned)
        };
        if let Some(o) = option {
            let key = o
                .split(['=', ' '])
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if RUNNING.contains(&key.as_str()) {
                out.unproven(
                    o.as_str(),
                    format!("this {name} option runs a local command"),
                );
            }
        } else if t == "-F" || (name == "scp" && t == "-S") || (name == "sftp" && t == "-S") {
            out.unproven(
                t,
                format!("{name} {t} names a file or program that runs local commands"),
            );
        }
        i += 1;
    }
    out.commands.push(cmd);
}
