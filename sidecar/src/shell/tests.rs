use super::*;

fn v(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn lines(a: &Analysis) -> Vec<String> {
    a.commands.iter().map(Command::line).collect()
}

fn sh(code: &str) -> Analysis {
    analyse(&v(&["sh", "-c", code]), false)
}

fn bash(code: &str) -> Analysis {
    analyse(&v(&["bash", "-c", code]), false)
}

fn runs(a: &Analysis, line: &str) -> bool {
    lines(a).iter().any(|l| l == line)
}

#[test]
fn plain_commands_are_themselves() {
    let a = analyse(&v(&["ls", "-l", "/tmp"]), false);
    assert_eq!(lines(&a), vec!["ls -l /tmp"]);
    assert!(a.unproven.is_empty());
    assert!(a.commands[0].fully_known());
}

#[test]
fn scripts_are_split_into_commands() {
    let a = sh("cd /tmp && rm -rf 'data dir'; echo \"done\" | tee log");
    assert_eq!(
        lines(&a)[1..],
        ["cd /tmp", "rm -rf data dir", "echo done", "tee log"]
    );
    assert!(a.unproven.is_empty(), "{:?}", a.unproven);
}

#[test]
fn ansi_c_and_brace_expansion_are_performed() {
    let a = bash("$'\\x72m' -rf X");
    assert!(runs(&a, "rm -rf X"), "{:?}", lines(&a));
    let a = bash("{rm,-rf,X}");
    assert!(runs(&a, "rm -rf X"), "{:?}", lines(&a));
    // In `sh` (bash, dash or busybox) the two readings differ: unproven.
    assert!(!sh("{rm,-rf,X}").unproven.is_empty());
    assert!(!sh("$'\\x72m' X").unproven.is_empty());
}

#[test]
fn globs_and_expansions_in_program_position_are_unproven() {
    for code in [
        "/bin/r? -rf X",
        "/bin/[r]m X",
        "$X -rf /",
        "$(echo rm) X",
        "`echo rm` X",
        "~/bin/x",
    ] {
        let a = sh(code);
        assert!(!a.unproven.is_empty(), "{code}: {:?}", a);
    }
    let a = sh("ls $HOME");
    assert!(a.unproven.is_empty());
    assert!(!a.commands[1].fully_known());
}

#[test]
fn aliases_eval_source_are_unproven() {
    for code in [
        "alias x=rm; x -rf /",
        "eval rm -rf /",
        ". /tmp/x",
        "source x",
        "trap 'rm -rf /' EXIT",
    ] {
        let a = bash(code);
        assert!(
            !a.unproven.is_empty() || runs(&a, "rm -rf /"),
            "{code}: {a:?}"
        );
    }
}

#[test]
fn files_shells_run_without_naming_them() {
    for (argv, stdin) in [
        (v(&["env", "BASH_ENV=/tmp/x", "bash", "-c", "ls"]), false),
        (v(&["bash", "-l", "-c", "ls"]), false),
        (v(&["bash", "--login"]), false),
        (v(&["bash", "--rcfile", "/tmp/x", "-c", "ls"]), false),
        (v(&["sh", "-c", "ENV=/tmp/x sh -i"]), false),
        (v(&["sh", "-c", "export PROMPT_COMMAND='rm x'"]), false),
        (
            v(&["sh", "-c", "echo 'rm -rf x' > /tmp/p; sh /tmp/p"]),
            false,
        ),
        (v(&["sh", "-c", "HOME=/tmp bash -lc ls"]), false),
        (v(&["bash"]), true),
        (v(&["bash", "-c", "BASH_CMDS[ls]=/tmp/x; ls"]), false),
        (v(&["bash", "-c", "TEXTDOMAINDIR=/tmp ls"]), false),
        (v(&["sh", "/tmp/script"]), false),
    ] {
        let a = analyse(&argv, stdin);
        assert!(!a.unproven.is_empty(), "{argv:?}: {a:?}");
    }
}

#[test]
fn output_redirections_are_writes() {
    let a = sh("echo hi > /tmp/x; ls 2>/dev/null; ls >&2");
    assert_eq!(a.commands[1].writes, vec![Word::Known("/tmp/x".into())]);
    assert!(a.commands[2].writes.is_empty());
    assert!(a.commands[3].writes.is_empty());
}

#[test]
fn wrappers_are_read_from_their_tables() {
    for (argv, inner) in [
        (v(&["xargs", "-P", "4", "rm", "-rf"]), "rm"),
        (v(&["nice", "--adjustment", "5", "rm", "x"]), "rm"),
        (v(&["nice", "--adj=5", "rm", "x"]), "rm"),
        (v(&["nice", "-10", "rm", "x"]), "rm"),
        (v(&["taskset", "-c", "0", "rm", "x"]), "rm"),
        (v(&["chrt", "-o", "0", "rm", "x"]), "rm"),
        (v(&["timeout", "-s", "KILL", "5", "rm", "x"]), "rm"),
        (v(&["time", "-f", "%e", "rm", "x"]), "rm"),
        (v(&["ionice", "-c", "3", "rm", "x"]), "rm"),
        (v(&["stdbuf", "-oL", "rm", "x"]), "rm"),
        (v(&["setsid", "-f", "rm", "x"]), "rm"),
        (v(&["sudo", "-u", "root", "rm", "x"]), "rm"),
        (v(&["env", "-i", "A=1", "rm", "x"]), "rm"),
        (v(&["nohup", "rm", "x"]), "rm"),
        (v(&["busybox", "rm", "x"]), "rm"),
        (v(&["find", ".", "-exec", "rm", "{}", ";"]), "rm"),
        (v(&["find", ".", "-execdir", "rm", "{}", "+"]), "rm"),
        (v(&["flock", "/tmp/l", "rm", "x"]), "rm"),
        (v(&["flock", "/tmp/l", "-c", "rm x"]), "rm"),
        (v(&["script", "-q", "-c", "rm x", "/dev/null"]), "rm"),
        (v(&["watch", "-n", "1", "rm", "x"]), "rm"),
        (v(&["sh", "-c", "exec -a ls rm x"]), "rm"),
        (v(&["command", "-p", "rm", "x"]), "rm"),
    ] {
        let a = analyse(&argv, false);
        assert!(
            a.commands.iter().any(|c| c.program().text() == inner),
            "{argv:?}: {:?}",
            lines(&a)
        );
    }
    // An option the table does not know: the command is not known.
    assert!(!analyse(&v(&["nice", "--bogus", "rm"]), false)
        .unproven
        .is_empty());
    assert!(!analyse(&v(&["env", "-S", "rm x"]), false)
        .unproven
        .is_empty());
}

#[test]
fn runners_and_interpreters_are_looked_through_or_unproven() {
    for (argv, stdin) in [
        (v(&["python3", "-Ic", "x"]), false),
        (v(&["python3.12", "-c", "x"]), false),
        (v(&["perl", "-le", "x"]), false),
        (v(&["python3", "-"]), true),
        (v(&["perl"]), true),
        (v(&["mawk", "BEGIN{system(\"rm x\")}"]), false),
        (v(&["nawk", "BEGIN{system(\"rm x\")}"]), false),
        (v(&["sed", "1e rm x", "f"]), false),
        (v(&["sed", "s/a/rm x/e", "f"]), false),
        (
            v(&[
                "tar",
                "cf",
                "/dev/null",
                "x",
                "--checkpoint=1",
                "--checkpoint-action=exec=rm x",
            ]),
            false,
        ),
        (v(&["tar", "xf", "a.tar", "--to-command=rm x"]), false),
        (v(&["rsync", "-e", "rm x", "a", "b:"]), false),
        (v(&["git", "-c", "core.pager=rm x", "log"]), false),
        (v(&["ssh", "-o", "ProxyCommand=rm x", "h"]), false),
        (v(&["rbash", "-c", "$X"]), false),
        (v(&["node", "--ev", "x"]), false),
    ] {
        let a = analyse(&argv, stdin);
        assert!(!a.unproven.is_empty(), "{argv:?}: {a:?}");
    }
    // Ordinary read-only commands are proven.
    for argv in [
        v(&["sed", "-n", "1,5p", "/etc/os-release"]),
        v(&["awk", "{print $1}", "/etc/hosts"]),
        v(&["python3", "/app/check.py"]),
        v(&["tar", "tf", "a.tar"]),
        v(&["git", "log", "-1"]),
        v(&["find", "/var/log", "-name", "*.log"]),
    ] {
        let a = analyse(&argv, false);
        assert!(a.unproven.is_empty(), "{argv:?}: {a:?}");
    }
}

#[test]
fn unknown_words_are_reported_as_such() {
    let a = bash("ls /var/log/*.log");
    assert_eq!(
        a.commands[1].argv[1],
        Word::Unknown("/var/log/*.log".into())
    );
    let a = analyse(&v(&["xargs", "rm"]), false);
    assert!(!a.commands[1].fully_known());
}

#[test]
fn any_input_is_analysed_without_panicking_and_within_bounds() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let alphabet: Vec<char> = "ab rm$'\"\\`(){}[]*?~;&|<>=!#\n\t-xc0,.{}"
        .chars()
        .collect();
    for _ in 0..3000 {
        let len = rng.random_range(0..40);
        let code: String = (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        let _ = analyse(&v(&["bash", "-c", &code]), true);
        let _ = analyse_script(&code, false);
    }
    // Brace expansions that multiply through nested substitutions stay bounded.
    let bomb = "{1..200}$(x{1..200}$(y{1..200}$(z{1..200})))";
    let started = std::time::Instant::now();
    let a = bash(bomb);
    assert!(!a.unproven.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_shape_keeps_program_and_options_and_hides_operands_only_of_plain_programs() {
    let v = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        super::shape(&v(&["rm", "-rf", "/tmp/a", "--one-file-system"]), false),
        Some(v(&["rm", "-rf", "?", "--one-file-system"]))
    );
    assert_eq!(
        super::shape(&v(&["ls", "--color=always", "--", "-x"]), false),
        Some(v(&["ls", "--color=?", "--", "?"]))
    );
    // Code, commands and scripts are never hidden behind a placeholder.
    for argv in [
        &["sh", "-c", "rm -rf /"][..],
        &["bash", "script.sh"],
        &["python3", "-c", "print(1)"],
        &["env", "rm", "x"],
        &["timeout", "5", "rm", "x"],
        &["xargs", "rm"],
        &["find", "/", "-delete"],
        &["sed", "-i", "s/a/b/", "f"],
        &["git", "-c", "core.pager=sh", "log"],
        &["tar", "xf", "a.tar"],
        &["busybox", "rm", "x"],
        &["eval", "rm x"],
    ] {
        assert_eq!(super::shape(&v(argv), false), None, "{argv:?}");
    }
}

#[test]
fn a_file_descriptor_number_that_overflows_is_unproven_without_a_panic() {
    // As found by fuzzing: brush-parser panics on `2222222222222222> out`; the script is
    // refused before the parser sees it, at every depth, and nothing panics.
    for code in [
        "env O=2 tbmeo.t 5 nie -n 1 xar\0\0\08m < list 2222222222222222> out/.txt",
        "ls 99999999999>/tmp/x",
        "cat 2147483648</etc/passwd",
        "echo $(rm -rf / 4294967296>&2)",
        "sh -c 'ls 12345678901>x'",
    ] {
        let a = sh(code);
        assert!(
            a.unproven.iter().any(|u| u.why.contains("file descriptor")),
            "{code}: {:?}",
            a.unproven
        );
        let a = analyse_script(code, false);
        assert!(
            a.unproven.iter().any(|u| u.why.contains("file descriptor")),
            "{code}: {:?}",
            a.unproven
        );
    }
    // Numbers that fit are file descriptors as before.
    let a = sh("ls 2>/dev/null");
    assert!(a.unproven.is_empty(), "{:?}", a.unproven);
    assert!(runs(&a, "ls"), "{:?}", lines(&a));
}
