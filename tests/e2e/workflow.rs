//! The conventions around a task that users expect of a CLI: completions a
//! real bash loads, a man page, clap's hints kept in the one-line error,
//! help with examples and exit codes.

use std::process::Command;

use crate::helper::{TestEnv, code, stderr, stdout};

/// `orch completions bash` loads into a real bash (`complete -p orch`) and
/// completes subcommands and flags; zsh and fish scripts are made too.
#[test]
fn completions_load_into_a_real_bash_and_complete() {
    let env = TestEnv::new();
    let script = env.home.parent().unwrap().join("orch.bash");
    let out = env.orch().args(["completions", "bash"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::write(&script, &out.stdout).unwrap();
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {}; complete -p orch; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; \
             COMP_POINT=${{#COMP_LINE}}; _orch orch '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &program])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let subcommands = complete("orch p");
    let registered = subcommands.lines().next().unwrap_or_default();
    assert!(
        registered.starts_with("complete ") && registered.ends_with("-F _orch orch"),
        "{subcommands}"
    );
    let offered: Vec<&str> = subcommands.lines().skip(1).collect();
    assert!(
        offered.contains(&"ps") && offered.contains(&"push"),
        "{offered:?}"
    );
    assert!(
        !offered.contains(&"__watchdog"),
        "hidden commands stay hidden"
    );
    let flags = complete("orch ps --");
    assert!(flags.lines().any(|l| l == "--all"), "{flags}");
    for shell in ["zsh", "fish"] {
        let out = env.orch().args(["completions", shell]).output().unwrap();
        assert_eq!(code(&out), 0, "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("orch"), "{shell}");
    }
    let out = env.orch().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("tcsh"), "{}", stderr(&out));
}

/// `orch man` is a man page with a section per command, readable by man.
#[test]
fn the_man_page_covers_every_command() {
    let env = TestEnv::new();
    let out = env.orch().arg("man").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH orch 1"), "{page}");
    for command in [
        "task", "ps", "show", "logs", "cancel", "push", "cleanup", "du", "serve", "submit",
    ] {
        assert!(
            page.contains(&format!(".SH \"ORCH {}\"", command.to_uppercase())),
            "{command}"
        );
    }
    assert!(!page.contains("__watchdog"));
    assert!(page.contains("Exit codes"), "the exit codes are in it");
    // Rendered by the real man, where there is one.
    let has_man = Command::new("sh")
        .args(["-c", "command -v man"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_man {
        let page_file = env.home.parent().unwrap().join("orch.1");
        std::fs::write(&page_file, &out.stdout).unwrap();
        let rendered = Command::new("man")
            .arg("-l")
            .arg(&page_file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(rendered.status.success(), "{}", stderr(&rendered));
        assert!(stdout(&rendered).contains("--keep-workspace"));
    }
}

/// A typo gets clap's hint in orch's one-line error, exit 2 (125 for
/// `orch task`, as `docker run`); `--help` shows examples and exit codes.
#[test]
fn a_typo_gets_a_hint_and_help_shows_examples() {
    let env = TestEnv::new();
    let out = env.orch().arg("pss").output().unwrap();
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("'ps'"), "{err}");
    let out = env
        .orch()
        .args(["task", "--detatch", ".", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("'--detach'"), "{}", stderr(&out));
    let out = env.orch().arg("--help").output().unwrap();
    assert!(stdout(&out).contains("Examples:"), "{}", stdout(&out));
    assert!(stdout(&out).contains("124 timed out"));
    let out = env.orch().args(["task", "--help"]).output().unwrap();
    assert!(stdout(&out).contains("124 timed out"), "{}", stdout(&out));
}
