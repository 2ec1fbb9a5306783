//! Differential tests of the shell analysis: each script of a corpus (every family of exec
//! guardrail bypasses, the shell's own expansion rules, and scripts generated from fragments)
//! runs under bash, dash and busybox sh with a `PATH` of stub programs that log their argv;
//! every program that really ran must be one the analysis reported (with the same arguments
//! where it says they are known), unless the analysis said the script is unproven.
//!
//! Leaf programs (`rm`, `id`, ...) only log. Wrappers, runners and shells log and then run the
//! real program, so that what they run is traced too. Everything runs in a temporary
//! directory; the stubs never remove anything.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_sidecar::shell::{self, Analysis, Word};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LEAVES: &[&str] = &[
    "rm", "ls", "cat", "id", "touch", "date", "curl", "wget", "python3", "perl", "base64", "ln",
    "chmod", "whoami", "uname", "head", "true", "false",
];
const PASS_THROUGH: &[&str] = &[
    "env", "nice", "nohup", "timeout", "xargs", "taskset", "ionice", "stdbuf", "setsid", "flock",
    "find", "sed", "tar", "mawk", "nawk", "awk", "sh", "bash", "dash", "rbash", "busybox", "time",
    "chrt", "script", "watch",
];

/// Where a program is installed, outside the stub directory.
fn real(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

struct Sandbox {
    _dir: tempfile::TempDir,
    stubs: PathBuf,
    work: PathBuf,
    trace: PathBuf,
}

fn sandbox() -> Sandbox {
    let dir = tempfile::tempdir().expect("temp dir");
    let stubs = dir.path().join("stubs");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&stubs).expect("stubs");
    std::fs::create_dir_all(&work).expect("work");
    let dash = real("dash").expect("dash is installed (e2e/scripts/install-deps.sh)");
    // One write per record (appends of one small write do not interleave).
    let log = "r=\"${0##*/}\"$(printf '\\037')\nfor a in \"$@\"; do r=\"$r$a$(printf '\\037')\"; done\nprintf '%s\\036' \"$r\" >> \"$TRACE\"\n";
    for name in LEAVES {
        let path = stubs.join(name);
        std::fs::write(&path, format!("#!{}\n{log}", dash.display())).expect("stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for name in PASS_THROUGH {
        let Some(target) = real(name) else { continue };
        let path = stubs.join(name);
        std::fs::write(
            &path,
            format!(
                "#!{}\n{log}exec {} \"$@\"\n",
                dash.display(),
                target.display()
            ),
        )
        .expect("stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let trace = dir.path().join("trace");
    Sandbox {
        stubs,
        work,
        trace,
        _dir: dir,
    }
}

/// Run a command vector in the sandbox; the argv of every stub that ran.
fn run(sb: &Sandbox, argv: &[String]) -> Vec<Vec<String>> {
    let _ = std::fs::remove_file(&sb.trace);
    std::fs::write(sb.work.join("victim"), "x").expect("victim");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&sb.work)
        .env_clear()
        .env("PATH", &sb.stubs)
        .env("TRACE", &sb.trace)
        .env("HOME", &sb.work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let text = std::fs::read(&sb.trace).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .split('\u{1e}')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let mut v: Vec<String> = r.split('\u{1f}').map(str::to_owned).collect();
            v.pop();
            v
        })
        .collect()
}

/// Whether the analysed words could be this argv (an unknown word stands for any number of
/// arguments).
fn words_match(words: &[Word], args: &[String]) -> bool {
    match words.split_first() {
        None => args.is_empty(),
        Some((Word::Unknown(_), rest)) => (0..=args.len()).any(|n| words_match(rest, &args[n..])),
        Some((Word::Known(w), rest)) => {
            args.first().is_some_and(|a| a == w) && words_match(rest, &args[1..])
        }
    }
}

fn reported(analysis: &Analysis, ran: &[String]) -> bool {
    analysis.commands.iter().any(|c| {
        let program = match c.program() {
            Word::Known(p) => shell::basename(p) == ran[0],
            Word::Unknown(_) => true,
        };
        program && words_match(&c.argv[1..], &ran[1..])
    })
}

/// Check one command vector; returns a failure description. `proven` counts the runs the
/// analysis called proven (so checked against what ran).
fn check(sb: &Sandbox, argv: &[String], view: &[String], proven: &mut usize) -> Option<String> {
    let analysis = shell::analyse(view, false);
    let ran = run(sb, argv);
    if !analysis.unproven.is_empty() {
        return None;
    }
    *proven += 1;
    for r in &ran {
        if r.is_empty() || (r[0] == shell::basename(&argv[0]) && r[1..] == argv[1..]) {
            continue;
        }
        if !reported(&analysis, r) {
            return Some(format!(
                "{argv:?} ran {r:?}, which the analysis did not report: {:?}",
                analysis.lines()
            ));
        }
    }
    None
}

fn v(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// Scripts of every family, and of the shell's own expansion rules.
const CORPUS: &[&str] = &[
    "rm -rf victim",
    "$'\\x72m' -rf victim",
    "$'\\162\\155' victim",
    "$\"rm\" victim",
    "{rm,-rf,victim}",
    "r{m,x} victim",
    "'r'm victim",
    "\"r\"m victim",
    "\\rm victim",
    "r\\m victim",
    "X=rm; $X victim",
    "$(echo rm) victim",
    "`echo rm` victim",
    "alias x=rm\nx victim",
    "shopt -s expand_aliases\nalias x=rm\nx victim",
    "eval rm victim",
    "f() { rm victim; }; f",
    "if true; then rm victim; fi",
    "for i in a; do rm victim; done",
    "case a in a) rm victim;; esac",
    "while false; do :; done; rm victim",
    "(rm victim)",
    "{ rm victim; }",
    "true && rm victim || id",
    "id | rm victim",
    "rm victim &\nwait",
    "echo $(rm victim)",
    "echo `rm victim`",
    "cat <<EOF\n$(rm victim)\nEOF",
    "cat <<'EOF'\n$(rm victim)\nEOF",
    "x=$(rm victim)",
    "A=1 rm victim",
    "env rm victim",
    "env -i A=1 rm victim",
    "env -- rm victim",
    "nice -n 5 rm victim",
    "nice --adjustment 5 rm victim",
    "nice --adj=5 rm victim",
    "nohup rm victim",
    "timeout 5 rm victim",
    "timeout -s KILL 5 rm victim",
    "timeout --signal=KILL 5 rm victim",
    "echo victim | xargs rm",
    "echo victim | xargs -P 2 rm",
    "echo victim | xargs -I{} rm {}",
    "echo victim | xargs -0 rm",
    "taskset -c 0 rm victim",
    "taskset 1 rm victim",
    "ionice -c 3 rm victim",
    "stdbuf -oL rm victim",
    "setsid rm victim",
    "setsid -w rm victim",
    "flock lock rm victim",
    "flock lock -c 'rm victim'",
    "chrt -o 0 rm victim",
    "time rm victim",
    "exec rm victim",
    "exec -a ls rm victim",
    "command rm victim",
    "command -p rm victim",
    "builtin echo x; rm victim",
    "find . -name victim -exec rm {} \\;",
    "find . -name victim -exec rm {} +",
    "find . -name victim -execdir rm -f {} \\;",
    "sed -n '1e rm victim' victim",
    "sed 's/x/rm victim/e' victim",
    "mawk 'BEGIN{system(\"rm victim\")}'",
    "nawk 'BEGIN{system(\"rm victim\")}'",
    "tar -cf /dev/null --checkpoint=1 --checkpoint-action=exec='rm victim' victim",
    "tar -cf /dev/null --checkpoint=1 --checkpoint-act=exec='rm victim' victim",
    "sh -c 'rm victim'",
    "bash -c 'rm victim'",
    "dash -c 'rm victim'",
    "rbash -c 'rm victim'",
    "busybox sh -c 'rm victim'",
    "busybox rm victim",
    "sh -ec 'rm victim'",
    "sh -c 'sh -c \"rm victim\"'",
    "echo 'rm victim' > p; sh p",
    "echo 'rm victim' | sh",
    "sh <<EOF\nrm victim\nEOF",
    "BASH_ENV=p bash -c true",
    "ln -s rm x; ./x victim",
    "script -qc 'rm victim' /dev/null",
    "trap 'rm victim' EXIT",
    "ls; cat victim; id; date; uname -a",
    "ls -l . && cat victim | head -1",
    "[ -f victim ] && rm victim",
    "test -f victim || rm victim",
    "! rm victim",
    "rm victim 2>/dev/null",
    "rm victim >&2",
    "echo ${X:-$(rm victim)}",
    "echo $((1+2)); rm victim",
    "rm ./*",
    "/bin/r? victim",
];

#[test]
fn every_program_that_runs_is_reported() {
    let sb = sandbox();
    let bash = real("bash").expect("bash");
    let dash = real("dash").expect("dash");
    let busybox =
        real("busybox").expect("busybox is installed (e2e/scripts/install-deps.sh installs it)");
    let mut failures = Vec::new();
    let mut scripts: Vec<String> = CORPUS.iter().map(|s| (*s).to_owned()).collect();
    scripts.extend(generated(150));
    let (mut runs, mut proven) = (0, 0);
    for script in &scripts {
        for (argv, views) in [
            (
                vec![bash.display().to_string(), "-c".into(), script.clone()],
                vec![v(&["bash", "-c", script]), v(&["sh", "-c", script])],
            ),
            (
                vec![dash.display().to_string(), "-c".into(), script.clone()],
                vec![v(&["dash", "-c", script]), v(&["sh", "-c", script])],
            ),
            (
                vec![
                    busybox.display().to_string(),
                    "sh".into(),
                    "-c".into(),
                    script.clone(),
                ],
                vec![
                    v(&["busybox", "sh", "-c", script]),
                    v(&["sh", "-c", script]),
                ],
            ),
        ] {
            for view in views {
                runs += 1;
                if let Some(f) = check(&sb, &argv, &view, &mut proven) {
                    failures.push(format!("{view:?} vs {}: {f}", argv[0]));
                }
            }
        }
    }
    // Command vectors run without a shell, as exec runs them.
    for argv in [
        v(&["nice", "--adjustment", "5", "rm", "victim"]),
        v(&["nice", "-10", "rm", "victim"]),
        v(&["timeout", "5", "rm", "victim"]),
        v(&["env", "-i", "A=1", "rm", "victim"]),
        v(&["find", ".", "-name", "victim", "-exec", "rm", "{}", ";"]),
        v(&["taskset", "-c", "0", "rm", "victim"]),
        v(&["setsid", "-w", "rm", "victim"]),
        v(&["stdbuf", "-oL", "rm", "victim"]),
        v(&["flock", "lock", "rm", "victim"]),
        v(&["time", "-f", "%e", "rm", "victim"]),
        v(&["nohup", "rm", "victim"]),
    ] {
        let mut real_argv = argv.clone();
        real_argv[0] = sb.stubs.join(&argv[0]).display().to_string();
        runs += 1;
        if let Some(f) = check(&sb, &real_argv, &argv, &mut proven) {
            failures.push(f);
        }
    }
    assert!(runs > 1000, "{runs} runs");
    assert!(
        proven * 4 > runs,
        "only {proven} of {runs} runs were proven and checked"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Scripts built from fragments: programs, quoting, wrappers and compound commands.
fn generated(n: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(31);
    let programs = [
        "rm",
        "id",
        "touch",
        "cat",
        "ls",
        "$'\\x72m'",
        "'r'm",
        "r\\m",
        "{rm,id}",
        "$X",
        "$(echo id)",
    ];
    let wrappers = [
        "",
        "nice -n 1 ",
        "timeout 5 ",
        "env A=1 ",
        "nohup ",
        "command ",
        "exec ",
        "setsid ",
        "stdbuf -oL ",
    ];
    let args = [
        "victim",
        "-f victim",
        "\"$HOME\"",
        "x*",
        "{a,b}",
        "$'a\\tb'",
        "'a b'",
        "",
        "2>/dev/null",
        "> out",
    ];
    let mut out = Vec::new();
    for _ in 0..n {
        let mut parts = Vec::new();
        for _ in 0..rng.random_range(1..4) {
            let simple = format!(
                "{}{} {}",
                wrappers[rng.random_range(0..wrappers.len())],
                programs[rng.random_range(0..programs.len())],
                args[rng.random_range(0..args.len())]
            );
            let wrapped = match rng.random_range(0..8) {
                0 => format!("if true; then {simple}; fi"),
                1 => format!("for i in 1; do {simple}; done"),
                2 => format!("( {simple} )"),
                3 => format!("{{ {simple}; }}"),
                4 => format!("f() {{ {simple}; }}; f"),
                5 => format!("echo $({simple})"),
                6 => format!("sh -c '{}'", simple.replace('\'', "")),
                _ => simple,
            };
            parts.push(wrapped);
        }
        let sep = [" ; ", " && ", " || ", " | ", "\n"][rng.random_range(0..5)];
        out.push(parts.join(sep));
    }
    let _ = std::io::stderr().flush();
    out
}
