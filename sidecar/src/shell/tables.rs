//! What the analysis knows about programs, from their manuals: wrappers that run another
//! command (and which of their options take an argument), shells and their dialects,
//! interpreters and the flags that give them inline code, builtins that run or redefine code,
//! programs that run commands in ways that are not followed, and environment variables that
//! make a program run other files.

/// How a program's options are read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Short options that take an argument (attached or the next word).
    pub short_arg: &'static str,
    /// Short options with an optional attached argument.
    pub short_optional: &'static str,
    /// Short options without an argument.
    pub short_flag: &'static str,
    /// Long options (without `--`) that take an argument.
    pub long_arg: &'static [&'static str],
    /// Long options with an optional `=argument`.
    pub long_optional: &'static [&'static str],
    /// Long options without an argument.
    pub long_flag: &'static [&'static str],
    /// `-NUM` is an option (`nice -10`).
    pub numeric: bool,
    /// A lone `-` is an option (`env -`).
    pub dash_is_option: bool,
}

const NO_OPTIONS: Options = Options {
    short_arg: "",
    short_optional: "",
    short_flag: "",
    long_arg: &[],
    long_optional: &[],
    long_flag: &["help", "version"],
    numeric: false,
    dash_is_option: false,
};

/// Words between a wrapper's options and the command it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leading {
    /// None: the command follows the options.
    None,
    /// One word (timeout's duration, flock's file, taskset's mask, chroot's root).
    One,
    /// One word when it is a number (chrt's priority).
    Numeric,
}

/// How a wrapper runs its command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// Executes the remaining words as a command vector.
    Exec,
    /// Joins the remaining words with spaces and runs them with `sh -c` (watch).
    JoinedShell,
    /// Executes the remaining words with more arguments read from standard input (xargs).
    StdinArguments,
    /// Runs only the command given to one of its options (script -c, su -c).
    OptionOnly,
}

/// A program that runs another command.
#[derive(Clone, Copy, Debug)]
pub struct Wrapper {
    /// Program names.
    pub names: &'static [&'static str],
    /// Its options.
    pub options: Options,
    /// Words before the command.
    pub leading: Leading,
    /// How it runs the command.
    pub runs: Runs,
    /// `NAME=value` words before the command set its environment.
    pub assignments: bool,
    /// Options whose argument is a shell command (run with `sh -c`).
    pub command_options: &'static [&'static str],
    /// Options that make it run no command.
    pub no_command_options: &'static [&'static str],
    /// Options whose argument is a file it writes.
    pub write_options: &'static [&'static str],
    /// Options that make what it runs unknown, with the reason.
    pub unproven_options: &'static [(&'static str, &'static str)],
    /// The command run when none is given (xargs: echo).
    pub default_command: Option<&'static str>,
    /// Without a command: what runs is unknown (an interactive shell), with the reason.
    pub without_command: Option<&'static str>,
}

const WRAPPER: Wrapper = Wrapper {
    names: &[],
    options: NO_OPTIONS,
    leading: Leading::None,
    runs: Runs::Exec,
    assignments: false,
    command_options: &[],
    no_command_options: &[],
    write_options: &[],
    unproven_options: &[],
    default_command: None,
    without_command: None,
};

/// Wrappers, from coreutils, util-linux, findutils, procps, sudo and the shell builtins.
pub const WRAPPERS: &[Wrapper] = &[
    Wrapper {
        names: &["env"],
        options: Options {
            short_arg: "uCSa",
            short_flag: "iv0",
            long_arg: &["unset", "chdir", "split-string", "argv0"],
            long_optional: &["default-signal", "ignore-signal", "block-signal"],
            long_flag: &[
                "ignore-environment",
                "null",
                "debug",
                "list-signal-handling",
                "help",
                "version",
            ],
            dash_is_option: true,
            ..NO_OPTIONS
        },
        assignments: true,
        unproven_options: &[
            ("-S", "env -S splits a string into a command at run time"),
            (
                "--split-string",
                "env -S splits a string into a command at run time",
            ),
        ],
        ..WRAPPER
    },
    Wrapper {
        names: &["nice"],
        options: Options {
            short_arg: "n",
            long_arg: &["adjustment"],
            numeric: true,
            ..NO_OPTIONS
        },
        ..WRAPPER
    },
    Wrapper {
        names: &["nohup", "builtin"],
        ..WRAPPER
    },
    Wrapper {
        names: &["timeout"],
        options: Options {
            short_arg: "ks",
            short_flag: "fpv",
            long_arg: &["kill-after", "signal"],
            long_flag: &[
                "foreground",
                "preserve-status",
                "verbose",
                "help",
                "version",
            ],
            ..NO_OPTIONS
        },
        leading: Leading::One,
        ..WRAPPER
    },
    Wrapper {
        names: &["xargs"],
        options: Options {
            short_arg: "aEdILnPs",
            short_optional: "eil",
            short_flag: "0oprtx",
            long_arg: &[
                "arg-file",
                "delimiter",
                "max-args",
                "max-procs",
                "max-chars",
                "process-slot-var",
            ],
            long_optional: &["eof", "replace", "max-lines"],
            long_flag: &[
                "null",
                "interactive",
                "no-run-if-empty",
                "verbose",
                "exit",
                "show-limits",
                "open-tty",
                "help",
                "version",
            ],
            ..NO_OPTIONS
        },
        runs: Runs::StdinArguments,
        default_command: Some("echo"),
        ..WRAPPER
    },
    Wrapper {
        names: &["taskset"],
        options: Options {
            short_flag: "apc",
            long_flag: &["all-tasks", "pid", "cpu-list", "help", "version"],
            ..NO_OPTIONS
        },
        leading: Leading::One,
        no_command_options: &["-p", "--pid"],
        ..WRAPPER
    },
    Wrapper {
        names: &["chrt"],
        options: Options {
            short_arg: "TPD",
            short_flag: "abdfimoprRvhV",
            long_arg: &["sched-runtime", "sched-period", "sched-deadline"],
            long_flag: &[
                "all-tasks",
                "batch",
                "deadline",
                "fifo",
                "idle",
                "max",
                "other",
                "pid",
                "rr",
                "reset-on-fork",
                "verbose",
                "help",
                "version",
            ],
            ..NO_OPTIONS
        },
        leading: Leading::Numeric,
        no_command_options: &["-p", "--pid", "-m", "--max"],
        ..WRAPPER
    },
    Wrapper {
        names: &["ionice"],
        options: Options {
            short_arg: "cnpPu",
            short_flag: "thV",
            long_arg: &["class", "classdata", "pid", "pgid", "uid"],
            long_flag: &["ignore", "help", "version"],
            ..NO_OPTIONS
        },
        no_command_options: &["-p", "--pid", "-P", "--pgid", "-u", "--uid"],
        ..WRAPPER
    },
    Wrapper {
        names: &["stdbuf"],
        options: Options {
            short_arg: "ioe",
            long_arg: &["input", "output", "error"],
            ..NO_OPTIONS
        },
        ..WRAPPER
    },
    Wrapper {
        names: &["time"],
        options: Options {
            short_arg: "fo",
            short_flag: "apqvV",
            long_arg: &["format", "output"],
            long_flag: &[
                "append",
                "portability",
                "quiet",
                "verbose",
                "help",
                "version",
            ],
            ..NO_OPTIONS
        },
        write_options: &["-o", "--output"],
        ..WRAPPER
    },
    Wrapper {
        names: &["exec"],
        options: Options {
            short_arg: "a",
            short_flag: "cl",
            ..NO_OPTIONS
        },
        ..WRAPPER
    },
    Wrapper {
        names: &["command"],
        options: Options {
            short_flag: "pvV",
            ..NO_OPTIONS
        },
        no_command_options: &["-v", "-V"],
        ..WRAPPER
    },
    Wrapper {
        names: &["setsid"],
        options: Options {
            short_flag: "cfwhV",
            long_flag: &["ctty", "fork", "wait", "help", "version"],
            ..NO_OPTIONS
        },
        ..WRAPPER
    },
    Wrapper {
        names: &["flock"],
        options: Options {
            short_arg: "wEc",
            short_flag: "sxeunoFhV",
            long_arg: &["wait", "timeout", "conflict-exit-code", "command"],
            long_flag: &[
                "shared",
                "exclusive",
                "unlock",
                "nb",
                "nonblock",
                "close",
                "no-fork",
                "verbose",
                "help",
                "version",
            ],
            ..NO_OPTIONS
        },
        leading: Leading::One,
        command_options: &["-c", "--command"],
        ..WRAPPER
    },
    Wrapper {
        names: &["sudo"],
        options: Options {
            short_arg: "aCcDgpRrTtUu",
            short_optional: "h",
            short_flag: "ABbEeHiKklNnPSsVv",
            long_arg: &[
                "close-from",
                "chdir",
                "group",
                "host",
                "prompt",
                "chroot",
                "role",
                "type",
                "command-timeout",
                "other-user",
                "user",
                "login-class",
            ],
            long_optional: &["preserve-env"],
            long_flag: &[
                "askpass",
                "background",
                "bell",
                "edit",
                "set-home",
                "help",
                "login",
                "remove-timestamp",
                "reset-timestamp",
                "list",
                "non-interactive",
                "preserve-groups",
                "stdin",
                "shell",
                "version",
                "validate",
            ],
            ..NO_OPTIONS
        },
        assignments: true,
        no_command_options: &["-l", "--list", "-v", "--validate", "-V", "--version", "-K"],
        unproven_options: &[
            ("-i", "sudo -i runs a login shell, which runs profile files"),
            (
                "--login",
                "sudo -i runs a login shell, which runs profile files",
            ),
            ("-s", "sudo -s runs the user's shell"),
            ("--shell", "sudo -s runs the user's shell"),
            ("-e", "sudoedit runs an editor"),
            ("--edit", "sudoedit runs an editor"),
        ],
        ..WRAPPER
    },
    Wrapper {
        names: &["doas"],
        options: Options {
            short_arg: "aCu",
            short_flag: "Lns",
            ..NO_OPTIONS
        },
        no_command_options: &["-C", "-L"],
        unproven_options: &[("-s", "doas -s runs the user's shell")],
        without_command: Some("doas without a command runs a shell"),
        ..WRAPPER
    },
    Wrapper {
        names: &["watch"],
        options: Options {
            short_arg: "nq",
            short_optional: "d",
            short_flag: "bcCegprtwxhv",
            long_arg: &["interval", "equexit"],
            long_optional: &["differences"],
            long_flag: &[
                "beep", "color", "no-color", "errexit", "chgexit", "precise", "no-rerun",
                "no-title", "no-wrap", "exec", "help", "version",
            ],
            ..NO_OPTIONS
        },
        runs: Runs::JoinedShell,
        ..WRAPPER
    },
    Wrapper {
        names: &["script"],
        options: Options {
            short_arg: "cEBIOTmo",
            short_optional: "t",
            short_flag: "aefqhV",
            long_arg: &[
                "command",
                "echo",
                "log-io",
                "log-in",
                "log-out",
                "log-timing",
                "logging-format",
                "output-limit",
            ],
            long_optional: &["timing"],
            long_flag: &[
                "append", "return", "flush", "force", "quiet", "help", "version",
            ],
            ..NO_OPTIONS
        },
        runs: Runs::OptionOnly,
        command_options: &["-c", "--command"],
        write_options: &[
            "-B",
            "--log-io",
            "-I",
            "--log-in",
            "-O",
            "--log-out",
            "-T",
            "--log-timing",
        ],
        without_command: Some("script without -c runs an interactive shell"),
        ..WRAPPER
    },
    Wrapper {
        names: &["su", "runuser"],
        options: Options {
            short_arg: "cgGsuw",
            short_flag: "flmpPhV",
            long_arg: &[
                "command",
                "session-command",
                "group",
                "supp-group",
                "shell",
                "user",
                "whitelist-environment",
            ],
            long_flag: &[
                "fast",
                "login",
                "preserve-environment",
                "pty",
                "help",
                "version",
            ],
            dash_is_option: true,
            ..NO_OPTIONS
        },
        runs: Runs::OptionOnly,
        command_options: &["-c", "--command", "--session-command"],
        unproven_options: &[
            ("-", "a login shell runs profile files"),
            ("-l", "a login shell runs profile files"),
            ("--login", "a login shell runs profile files"),
            (
                "-u",
                "runuser -u runs a command the analysis does not follow",
            ),
            (
                "--user",
                "runuser -u runs a command the analysis does not follow",
            ),
        ],
        without_command: Some("su without -c runs an interactive shell"),
        ..WRAPPER
    },
    Wrapper {
        names: &["chroot"],
        options: Options {
            long_arg: &["userspec", "groups"],
            long_flag: &["skip-chdir", "help", "version"],
            ..NO_OPTIONS
        },
        leading: Leading::One,
        without_command: Some("chroot without a command runs an interactive shell"),
        ..WRAPPER
    },
];

/// The wrapper a program name is.
pub fn wrapper(name: &str) -> Option<&'static Wrapper> {
    WRAPPERS.iter().find(|w| w.names.contains(&name))
}

/// The shell language a shell reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// bash (and rbash): brace expansion, ANSI-C quoting, `[[`, arithmetic.
    Bash,
    /// A POSIX shell (dash, posh): no brace expansion, no `$'..'`.
    Posix,
    /// busybox ash and hush.
    Busybox,
    /// `sh`: whichever shell the image links there (dash, bash or busybox), so only what all
    /// of them read alike is proven.
    Unknown,
    /// A shell whose language is not analysed (zsh, ksh, fish, csh, ...).
    Other,
}

/// The dialect of a shell program, or `None` when the name is not a shell.
pub fn shell(name: &str) -> Option<Dialect> {
    Some(match name {
        "bash" | "rbash" => Dialect::Bash,
        "dash" | "posh" => Dialect::Posix,
        "ash" | "hush" => Dialect::Busybox,
        "sh" => Dialect::Unknown,
        "zsh" | "ksh" | "mksh" | "pdksh" | "oksh" | "lksh" | "rksh" | "ksh93" | "yash" | "fish"
        | "csh" | "tcsh" | "rc" | "es" | "scsh" | "elvish" | "nu" | "xonsh" | "pwsh"
        | "powershell" | "ion" | "oil" | "osh" | "ysh" | "brush" => Dialect::Other,
        _ => return None,
    })
}

/// An interpreter: a program that runs code given to it.
#[derive(Clone, Copy, Debug)]
pub struct Interpreter {
    /// Names (version suffixes are removed before lookup: `python3.12` is `python`).
    pub names: &'static [&'static str],
    /// Short options that give inline code, anywhere in a cluster (`-Ic`, `-le`).
    pub code_short: &'static str,
    /// Long options that give inline code (GNU abbreviations included).
    pub code_long: &'static [&'static str],
    /// Short options that take an argument.
    pub short_arg: &'static str,
    /// Long options that take an argument as the next word.
    pub long_arg: &'static [&'static str],
    /// The first word after the options is the program text (awk).
    pub positional_code: bool,
}

const INTERPRETER: Interpreter = Interpreter {
    names: &[],
    code_short: "",
    code_long: &[],
    short_arg: "",
    long_arg: &[],
    positional_code: false,
};

/// Interpreters.
pub const INTERPRETERS: &[Interpreter] = &[
    Interpreter {
        names: &["python", "pypy", "ipython"],
        code_short: "cm",
        code_long: &["command"],
        short_arg: "WX",
        long_arg: &["check-hash-based-pycs"],
        ..INTERPRETER
    },
    Interpreter {
        names: &["perl"],
        code_short: "eEMmdx",
        short_arg: "I",
        ..INTERPRETER
    },
    Interpreter {
        names: &["ruby", "irb", "jruby"],
        code_short: "er",
        short_arg: "CIEFTWKx",
        ..INTERPRETER
    },
    Interpreter {
        names: &["node", "nodejs"],
        code_short: "epri",
        code_long: &[
            "eval",
            "print",
            "require",
            "import",
            "loader",
            "experimental-loader",
            "interactive",
        ],
        ..INTERPRETER
    },
    Interpreter {
        names: &["php"],
        code_short: "rBREFa",
        short_arg: "cdzt",
        ..INTERPRETER
    },
    Interpreter {
        names: &["lua", "luajit"],
        code_short: "eli",
        ..INTERPRETER
    },
    Interpreter {
        names: &[
            "Rscript", "R", "julia", "guile", "racket", "expect", "tclsh", "wish", "groovy",
            "jshell", "sbcl", "clisp", "ocaml", "ghci", "scala", "elixir", "erl", "escript",
        ],
        code_short: "eEcLx",
        code_long: &["eval", "expr", "command", "load"],
        ..INTERPRETER
    },
    Interpreter {
        names: &[
            "awk",
            "gawk",
            "mawk",
            "nawk",
            "original-awk",
            "goawk",
            "bwk-awk",
            "onetrue-awk",
        ],
        code_short: "fEeil",
        code_long: &["file", "exec", "source", "include", "load"],
        short_arg: "vFW",
        long_arg: &["assign", "field-separator"],
        positional_code: true,
    },
];

/// The interpreter a (normalised) program name is.
pub fn interpreter(name: &str) -> Option<&'static Interpreter> {
    INTERPRETERS.iter().find(|i| i.names.contains(&name))
}

/// Programs that run commands given to them in ways the analysis does not follow: whatever
/// they are given makes the command unproven.
pub const OPAQUE_RUNNERS: &[&str] = &[
    "nsenter",
    "unshare",
    "setpriv",
    "prlimit",
    "systemd-run",
    "strace",
    "ltrace",
    "valgrind",
    "parallel",
    "fakeroot",
    "faketime",
    "proot",
    "firejail",
    "numactl",
    "cgexec",
    "sg",
    "newgrp",
    "ip",
    "dbus-run-session",
    "dbus-launch",
    "xvfb-run",
    "catchsegv",
    "torify",
    "torsocks",
    "proxychains",
    "proxychains4",
    "unbuffer",
    "rlwrap",
    "socat",
    "nc",
    "ncat",
    "netcat",
    "tmux",
    "screen",
    "byobu",
    "at",
    "batch",
    "crontab",
    "entr",
    "deno",
    "bun",
    "npx",
    "pkexec",
    "run-parts",
    "start-stop-daemon",
    "daemonize",
    "ssh-agent",
    "with-contenv",
    "s6-setuidgid",
    "chpst",
    "tini",
    "dumb-init",
    "gosu",
    "su-exec",
    "setuidgid",
    "capsh",
    "bwrap",
    "systemd-nspawn",
    "eatmydata",
    "sshpass",
    "ld.so",
    "ld-linux.so",
    "ld-linux-x86-64.so",
    "ld-linux-aarch64.so",
    "ld-musl-x86_64.so",
    "ld-musl-aarch64.so",
];

/// Programs that run commands typed into them (shell escapes of editors, pagers and
/// clients): unproven when standard input is attached.
pub const INTERACTIVE_RUNNERS: &[&str] = &[
    "vi", "vim", "nvim", "view", "vimdiff", "ex", "ed", "red", "emacs", "nano", "pico", "joe",
    "mc", "less", "more", "most", "pg", "man", "gdb", "lldb", "ftp", "sftp", "telnet", "psql",
    "mysql", "mariadb", "sqlite3", "irb", "bc", "dc",
];

/// Builtins that run code or change what a later word runs.
pub const CODE_BUILTINS: &[&str] = &[
    "eval",
    "source",
    ".",
    "alias",
    "enable",
    "hash",
    "fc",
    "bind",
    "complete",
    "compgen",
    "mapfile",
    "readarray",
    "trap",
];

/// Builtins whose `NAME=value` or `NAME` words set variables.
pub const DECLARATION_BUILTINS: &[&str] = &[
    "export",
    "declare",
    "typeset",
    "local",
    "readonly",
    "read",
    "printf",
    "getopts",
    "mapfile",
    "readarray",
    "let",
    "unset",
];

/// Environment variables that make a program run other files or commands, or change which
/// program a name runs.
pub const DANGEROUS_VARIABLES: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "PROMPT_COMMAND",
    "PS0",
    "PS1",
    "PS2",
    "PS4",
    "SHELLOPTS",
    "BASHOPTS",
    "PATH",
    "IFS",
    "HOME",
    "ZDOTDIR",
    "XDG_CONFIG_HOME",
    "INPUTRC",
    "FPATH",
    "CDPATH",
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONINSPECT",
    "PYTHONUSERBASE",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "RUBYOPT",
    "RUBYLIB",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PAGER",
    "EDITOR",
    "VISUAL",
    "MANPAGER",
    "MANOPT",
    "LESSOPEN",
    "LESSCLOSE",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "SUDO_EDITOR",
    "TAR_OPTIONS",
    "RSYNC_RSH",
    "RSYNC_CONNECT_PROG",
    "BROWSER",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "OPENSSL_CONF",
    "TMPDIR",
    "SHELL",
    "EXINIT",
    "VIMINIT",
    "MYVIMRC",
    "WGETRC",
    "CURL_HOME",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "CLASSPATH",
    "LUA_INIT",
    "LUA_PATH",
    "LUA_CPATH",
    "PHPRC",
    "PHP_INI_SCAN_DIR",
    "AWKPATH",
    "AWKLIBPATH",
    "POSIXLY_CORRECT",
    "TEXTDOMAIN",
    "TEXTDOMAINDIR",
    "EXECIGNORE",
];

/// Prefixes of such variables.
pub const DANGEROUS_PREFIXES: &[&str] = &[
    "BASH_",
    "LD_",
    "DYLD_",
    "GIT_",
    "NPM_CONFIG_",
    "npm_config_",
    "PIP_",
    "LUA_INIT_",
];

/// Whether assigning a variable can make a program run other code.
pub fn dangerous_variable(name: &str) -> bool {
    DANGEROUS_VARIABLES.contains(&name) || DANGEROUS_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Files a command may write without it counting as a write.
pub const SAFE_SINKS: &[&str] = &[
    "/dev/null",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/fd/1",
    "/dev/fd/2",
    "/proc/self/fd/1",
    "/proc/self/fd/2",
];

/// Directories whose programs a denylist pattern can judge by name.
pub const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

/// A program name without its version suffix (`python3.12` is `python`, `perl5.36` is
/// `perl`), so that every versioned name of an interpreter is known.
pub fn normalise(name: &str) -> &str {
    let mut n = name;
    for suffix in [
        ".static", "-static", "-dbg", ".dbg", "-nosuid", ".nosuid", ".suid",
    ] {
        if let Some(s) = n.strip_suffix(suffix) {
            n = s;
        }
    }
    let trimmed =
        n.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-' || c == '_');
    if trimmed.is_empty() || !trimmed.ends_with(|c: char| c.is_ascii_alphabetic()) {
        n
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_names_are_normalised() {
        assert_eq!(normalise("python3.12"), "python");
        assert_eq!(normalise("python3"), "python");
        assert_eq!(normalise("perl5.36.0"), "perl");
        assert_eq!(normalise("busybox.static"), "busybox");
        assert_eq!(normalise("rm"), "rm");
        assert_eq!(normalise("lua5.4"), "lua");
        assert_eq!(normalise("mawk"), "mawk");
    }
}
