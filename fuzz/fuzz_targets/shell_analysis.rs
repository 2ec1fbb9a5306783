//! Shell scripts built from a grammar of simple commands, lists, pipelines, compound commands
//! and command substitutions, through the exec command analysis; raw command vectors through
//! the direct analysis.
//!
//! Properties: nothing panics; every program that the script names literally as the first
//! word of a simple command is among the commands reported, or the analysis says what it
//! could not prove.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use portcullis_sidecar::shell::{analyse, analyse_script};

const PROGRAMS: &[&str] = &["ls", "cat", "rm", "psql", "curl", "grep", "tar", "python3"];
const WORDS: &[&str] = &["-l", "/tmp", "a b", "x*", "--", "-rf", "$HOME", "~", "1"];

#[derive(Debug)]
enum Node {
    Simple { program: usize, args: Vec<Arg> },
    Pipe(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Seq(Box<Node>, Box<Node>),
    Background(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Subshell(Box<Node>),
    Group(Box<Node>),
    If(Box<Node>, Box<Node>, Option<Box<Node>>),
    While(Box<Node>, Box<Node>),
    For(Vec<usize>, Box<Node>),
    Case(usize, Box<Node>),
}

#[derive(Debug)]
enum Arg {
    Word(usize),
    Single(usize),
    Double(usize),
    Substitution(Box<Node>),
    Redirect(usize),
}

fn node(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Node> {
    let leaf = depth == 0 || u.is_empty();
    let pick = if leaf { 0 } else { u.int_in_range(0..=12)? };
    let sub = |u: &mut Unstructured<'_>| node(u, depth - 1).map(Box::new);
    Ok(match pick {
        0 => {
            let program = u.choose_index(PROGRAMS.len())?;
            let n = u.int_in_range(0..=3)?;
            let mut args = Vec::new();
            for _ in 0..n {
                args.push(match u.int_in_range(0..=4)? {
                    0 => Arg::Word(u.choose_index(WORDS.len())?),
                    1 => Arg::Single(u.choose_index(WORDS.len())?),
                    2 => Arg::Double(u.choose_index(WORDS.len())?),
                    3 if depth > 0 => Arg::Substitution(sub(u)?),
                    _ => Arg::Redirect(u.choose_index(WORDS.len())?),
                });
            }
            Node::Simple { program, args }
        }
        1 => Node::Pipe(sub(u)?, sub(u)?),
        2 => Node::And(sub(u)?, sub(u)?),
        3 => Node::Or(sub(u)?, sub(u)?),
        4 => Node::Seq(sub(u)?, sub(u)?),
        5 => Node::Background(sub(u)?, sub(u)?),
        6 => Node::Not(sub(u)?),
        7 => Node::Subshell(sub(u)?),
        8 => Node::Group(sub(u)?),
        9 => Node::If(
            sub(u)?,
            sub(u)?,
            if bool::arbitrary(u)? {
                Some(sub(u)?)
            } else {
                None
            },
        ),
        10 => Node::While(sub(u)?, sub(u)?),
        11 => Node::For(vec![u.choose_index(WORDS.len())?; 2], sub(u)?),
        _ => Node::Case(u.choose_index(WORDS.len())?, sub(u)?),
    })
}

fn single(w: &str) -> String {
    format!("'{}'", w.replace('\'', r"'\''"))
}

fn render(n: &Node, out: &mut String, programs: &mut Vec<&'static str>) {
    match n {
        Node::Simple { program, args } => {
            out.push_str(PROGRAMS[*program]);
            programs.push(PROGRAMS[*program]);
            for a in args {
                out.push(' ');
                match a {
                    Arg::Word(w) => out.push_str(&single(WORDS[*w])),
                    Arg::Single(w) => out.push_str(&single(WORDS[*w])),
                    Arg::Double(w) => {
                        out.push('"');
                        out.push_str(WORDS[*w]);
                        out.push('"');
                    }
                    Arg::Substitution(inner) => {
                        out.push_str("\"$(");
                        render(inner, out, programs);
                        out.push_str(")\"");
                    }
                    Arg::Redirect(w) => {
                        out.push_str("> ");
                        out.push_str(&single(WORDS[*w]));
                    }
                }
            }
        }
        Node::Pipe(a, b) => bin(a, " | ", b, out, programs),
        Node::And(a, b) => bin(a, " && ", b, out, programs),
        Node::Or(a, b) => bin(a, " || ", b, out, programs),
        Node::Seq(a, b) => bin(a, "; ", b, out, programs),
        Node::Background(a, b) => bin(a, " & ", b, out, programs),
        Node::Not(a) => {
            out.push_str("! ");
            render(a, out, programs);
        }
        Node::Subshell(a) => {
            out.push_str("( ");
            render(a, out, programs);
            out.push_str(" )");
        }
        Node::Group(a) => {
            out.push_str("{ ");
            render(a, out, programs);
            out.push_str("; }");
        }
        Node::If(c, t, e) => {
            out.push_str("if ");
            render(c, out, programs);
            out.push_str("; then ");
            render(t, out, programs);
            if let Some(e) = e {
                out.push_str("; else ");
                render(e, out, programs);
            }
            out.push_str("; fi");
        }
        Node::While(c, b) => {
            out.push_str("while ");
            render(c, out, programs);
            out.push_str("; do ");
            render(b, out, programs);
            out.push_str("; done");
        }
        Node::For(words, b) => {
            out.push_str("for v in");
            for w in words {
                out.push(' ');
                out.push_str(&single(WORDS[*w]));
            }
            out.push_str("; do ");
            render(b, out, programs);
            out.push_str("; done");
        }
        Node::Case(w, b) => {
            out.push_str("case ");
            out.push_str(&single(WORDS[*w]));
            out.push_str(" in *) ");
            render(b, out, programs);
            out.push_str(";; esac");
        }
    }
}

fn bin(a: &Node, op: &str, b: &Node, out: &mut String, programs: &mut Vec<&'static str>) {
    render(a, out, programs);
    out.push_str(op);
    render(b, out, programs);
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mode) = u.int_in_range(0u8..=2) else {
        return;
    };
    match mode {
        // Raw text as a script.
        0 => {
            if let Ok(text) = std::str::from_utf8(u.take_rest()) {
                let _ = analyse_script(text, true);
            }
        }
        // A raw command vector (with and without standard input).
        1 => {
            let Ok(argv) = Vec::<String>::arbitrary_take_rest(u) else {
                return;
            };
            let _ = analyse(&argv, false);
            let _ = analyse(&argv, true);
        }
        // A script from the grammar: every literal program is reported.
        _ => {
            let Ok(tree) = node(&mut u, 5) else {
                return;
            };
            let mut script = String::new();
            let mut programs = Vec::new();
            render(&tree, &mut script, &mut programs);
            let analysis = analyse_script(&script, false);
            // The same script run as `sh -c`.
            let argv = vec!["sh".to_owned(), "-c".to_owned(), script.clone()];
            let wrapped = analyse(&argv, false);
            for (how, analysis) in [("script", &analysis), ("sh -c", &wrapped)] {
                for p in &programs {
                    let reported = analysis
                        .commands
                        .iter()
                        .any(|c| c.program().known() == Some(p));
                    assert!(
                        reported || !analysis.unproven.is_empty(),
                        "{p} in {how} {script:?} is not reported: {analysis:?}"
                    );
                }
            }
        }
    }
});
