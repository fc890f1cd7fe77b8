//! The conventions around a task that users expect of a CLI: completions a
//! real bash loads, a man page, clap's hints kept in the one-line error,
//! help with examples and exit codes.

use std::process::Command;
use std::time::Duration;

use crate::helper::{self, TestEnv, code, stderr, stdout};
use crate::require_docker;

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
    // Every command's help shows how it is used and what it exits with.
    for command in [
        "task",
        "ps",
        "show",
        "logs",
        "cancel",
        "wait",
        "push",
        "diff",
        "merge",
        "rm",
        "cleanup",
        "du",
        "serve",
        "submit",
        "completions",
        "man",
    ] {
        let out = env.orch().args([command, "--help"]).output().unwrap();
        assert_eq!(code(&out), 0, "{command}");
        let help = stdout(&out);
        assert!(
            help.contains(&format!("Examples:\n  orch {command}")),
            "{command}: {help}"
        );
        assert!(help.contains("Exit codes:"), "{command}: {help}");
    }
}

/// `ps -q`, `--state` and `--project` pick tasks as docker's filters do;
/// `logs --tail N` prints the last N lines (then follows with -f); `wait`
/// prints each task's exit code and exits with it, as `orch task` did.
#[test]
fn listing_tailing_and_waiting() {
    require_docker!();
    let env = TestEnv::new();
    let out = env
        .orch()
        .arg("task")
        .arg(&env.project)
        .arg("echo one; echo two; echo three; exit 3")
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let failed = helper::task_id(&stderr(&out));
    let out = env
        .orch()
        .args(["task", "-d"])
        .arg(&env.project)
        .arg("echo started; sleep 120")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let running = stdout(&out).trim().to_owned();
    helper::wait_for("it to run", Duration::from_secs(60), || {
        let out = env
            .orch()
            .args(["ps", "-q", "--state", "running"])
            .output()
            .unwrap();
        (stdout(&out).trim() == helper::short(&running)).then_some(())
    });
    let ids = |args: &[&str]| {
        let out = env.orch().arg("ps").args(args).output().unwrap();
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        let mut ids: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        ids.sort();
        ids
    };
    let mut both = vec![helper::short(&failed), helper::short(&running)];
    both.sort();
    assert_eq!(ids(&["-q"]), vec![helper::short(&running)], "live only");
    assert_eq!(ids(&["-qa"]), both);
    assert_eq!(
        ids(&["-q", "--state", "failed"]),
        vec![helper::short(&failed)],
        "implies -a"
    );
    assert_eq!(ids(&["-qa", "--project", "proj"]), both);
    assert!(ids(&["-qa", "--project", "another"]).is_empty());
    // A project by its path, as orch task takes it.
    assert_eq!(
        ids(&["-qa", "--project", env.project.to_str().unwrap()]),
        both
    );
    assert!(ids(&["-q", "--state", "paused"]).is_empty());
    let json = env
        .orch()
        .args(["ps", "--json", "--state", "failed"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json}");
    // --tail.
    let out = env
        .orch()
        .args(["logs", "--tail", "2", &failed])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "two\nthree\n");
    let out = env
        .orch()
        .args(["logs", "-n", "1", "-f", &failed])
        .output()
        .unwrap();
    assert_eq!((stdout(&out).as_str(), code(&out)), ("three\n", 3));
    let out = env
        .orch()
        .args(["logs", "-n", "0", &failed])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "");
    // wait: at once for an ended task; until the end for a running one.
    let out = env.orch().args(["wait", &failed]).output().unwrap();
    assert_eq!((stdout(&out).as_str(), code(&out)), ("3\n", 3));
    let mut waiting = env.orch();
    waiting.args(["wait", &running]);
    let waiting = helper::Running::spawn(waiting);
    let out = env.orch().args(["cancel", &running]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let waited = waiting.wait(Duration::from_secs(60));
    assert_eq!(waited.code(), Some(130), "cancelled: {}", waited.stderr);
    let out = env.orch().args(["wait", "ffffffff"]).output().unwrap();
    assert_eq!(code(&out), 1);
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

/// A task gets a writable, private `HOME` and the user's git identity (as
/// git reads it in the project: its own config first), so that an agent's
/// `git commit` works; the commit reaches the user's repository under that
/// name. A project can keep the image's home and no identity.
#[test]
fn a_task_has_a_writable_home_and_the_users_git_identity() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("") else {
        return;
    };
    // Without the identity git_project gives every task.
    std::fs::write(
        env.project.join("orch.toml"),
        format!(
            "image = \"{}\"\ncommand = [\"sh\", \"-c\", \"{{desc}}\"]\nstop_grace = \"2s\"\n",
            helper::SHELL_IMAGE
        ),
    )
    .unwrap();
    env.git(&["commit", "-qam", "no identity in orch.toml"]);
    env.git(&["config", "user.name", "Ada Lovelace"]);
    env.git(&["config", "user.email", "ada@example.com"]);
    let out = env
        .orch()
        .arg("task")
        .arg(&env.project)
        .arg(
            "echo home=$HOME; ls -ld $HOME; touch ~/.probe && echo writable; \
             git config --global core.editor true && echo change > f.txt && git add f.txt && \
             git commit -qm work && git log -1 --format=%an/%ae/%cn",
        )
        .output()
        .unwrap();
    let said = stdout(&out);
    assert_eq!(code(&out), 0, "{said}{}", stderr(&out));
    assert!(said.contains("home=/home/orch"), "{said}");
    assert!(said.contains("drwx------"), "private: {said}");
    assert!(said.contains("writable"), "{said}");
    assert!(
        said.contains("Ada Lovelace/ada@example.com/Ada Lovelace"),
        "{said}"
    );
    let id = helper::task_id(&stderr(&out));
    let author = env.git(&["log", "-1", "--format=%an <%ae>", &format!("orch/{id}")]);
    assert_eq!(author.trim(), "Ada Lovelace <ada@example.com>");
    // One variable of the task's own changes that one alone.
    let out = env
        .orch()
        .args(["task", "-e", "GIT_AUTHOR_NAME=A Robot"])
        .arg(&env.project)
        .arg("echo more > g.txt && git add g.txt && git commit -qm again && git log -1 --format=%an/%ae/%cn/%ce")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("A Robot/ada@example.com/Ada Lovelace/ada@example.com"),
        "{}",
        stdout(&out)
    );
    // The project's choice: the image's home, no identity.
    std::fs::write(
        env.project.join("orch.toml"),
        format!(
            "image = \"{}\"\ncommand = [\"sh\", \"-c\", \"{{desc}}\"]\nstop_grace = \"2s\"\n\
             home = \"image\"\ngit_identity = false\nworkspace = \"none\"\n",
            helper::SHELL_IMAGE
        ),
    )
    .unwrap();
    let out = env
        .orch()
        .arg("task")
        .arg(&env.project)
        .arg("echo home=$HOME; echo name=${GIT_AUTHOR_NAME:-none}")
        .output()
        .unwrap();
    let said = stdout(&out);
    assert_eq!(code(&out), 0, "{said}{}", stderr(&out));
    assert!(!said.contains("home=/home/orch"), "{said}");
    assert!(said.contains("name=none"), "{said}");
    // A bad value is one line naming it.
    std::fs::write(
        env.project.join("orch.toml"),
        format!("image = \"{}\"\nhome = \"nowhere\"\n", helper::SHELL_IMAGE),
    )
    .unwrap();
    let out = env
        .orch()
        .arg("task")
        .arg(&env.project)
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("home"), "{}", stderr(&out));
}

/// `--memory`, `--cpus` and `--network` per task, on the command line and
/// in the API, over the project's settings; bad values are one line.
#[test]
fn limits_and_network_per_task() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("workspace = \"none\"\nmemory = \"1g\"") else {
        return;
    };
    let probe = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                 tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    let out = env
        .orch()
        .args([
            "task",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--network",
            "none",
        ])
        .arg(&env.project)
        .arg(probe)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "67108864\nlo\n");
    // Through the daemon's API.
    let daemon = env.serve(&[]);
    let id = daemon.submit(serde_json::json!({
        "project": env.project, "desc": probe, "memory": "96m", "network": "none", "cpus": 0.5
    }));
    let task = daemon.wait_ended(&id, Duration::from_secs(60));
    assert_eq!(task["state"], "succeeded", "{task}");
    let log = daemon.request("GET", &format!("/v1/tasks/{id}/logs"), None);
    assert_eq!(log.body, "100663296\nlo\n");
    let refused = daemon.request(
        "POST",
        "/v1/tasks",
        Some(
            &serde_json::json!({"project": env.project, "desc": "true", "memory": "lots"})
                .to_string(),
        ),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    drop(daemon);
    for (flag, value) in [("--memory", "lots"), ("--cpus", "-1"), ("--network", "")] {
        let out = env
            .orch()
            .arg("task")
            .arg(format!("{flag}={value}"))
            .arg(&env.project)
            .arg("true")
            .output()
            .unwrap();
        assert_eq!(code(&out), 125, "{flag}");
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
    }
}

/// Where a task starts: `orch.toml` found upward from a subdirectory (the
/// task's working directory is that subdirectory); a bare name that is a
/// directory gets the hint `./name`.
#[test]
fn the_project_is_found_from_a_subdirectory() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("") else {
        return;
    };
    let sub = env.project.join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("here.txt"), "x").unwrap();
    env.git(&["add", "."]);
    env.git(&["commit", "-qm", "sub"]);
    let out = env
        .orch()
        .current_dir(&sub)
        .args(["task", ".", "ls"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("here.txt"), "{}", stdout(&out));
    let out = env.orch().args(["ps", "-a", "--json"]).output().unwrap();
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        tasks[0]["project"], "proj",
        "named after where orch.toml is"
    );
    let out = env
        .orch()
        .current_dir(env.project.parent().unwrap())
        .args(["task", "proj", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("say ./proj"), "{}", stderr(&out));
}

/// A dirty working tree is not ignored without a word: a task started from
/// HEAD says what it will not see, and `--from-worktree` starts one from the
/// tree as it is (tracked changes, deletions, untracked files; not ignored
/// ones), in the foreground and detached, the user's tree, index and
/// branches untouched.
#[test]
fn a_task_starts_from_the_working_tree_when_asked() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("") else {
        return;
    };
    std::fs::write(env.project.join("tracked.txt"), "committed\n").unwrap();
    std::fs::write(env.project.join("gone.txt"), "committed\n").unwrap();
    env.git(&["add", "."]);
    env.git(&["commit", "-qm", "files"]);
    std::fs::write(env.project.join("tracked.txt"), "changed\n").unwrap();
    std::fs::remove_file(env.project.join("gone.txt")).unwrap();
    std::fs::write(env.project.join("new.txt"), "untracked\n").unwrap();
    std::fs::write(env.project.join("secret.log"), "ignored\n").unwrap();
    let head = env.git(&["rev-parse", "HEAD"]);
    let status = env.git(&["status", "--porcelain", "--ignored"]);
    let index = std::fs::read(env.project.join(".git/index")).unwrap();
    let look = "cat tracked.txt; cat new.txt 2>/dev/null; test -e gone.txt && echo gone-is-there; test -e secret.log && echo secret-is-there; true";

    let plain = env.task(look, &[]);
    assert_eq!(code(&plain), 0, "{}", stderr(&plain));
    assert_eq!(stdout(&plain).trim(), "committed\ngone-is-there");
    let warning = stderr(&plain);
    assert!(
        warning.contains("3 uncommitted change(s)") && warning.contains("--from-worktree"),
        "{warning}"
    );

    let snapshot = env.task(look, &["--from-worktree"]);
    assert_eq!(code(&snapshot), 0, "{}", stderr(&snapshot));
    assert_eq!(stdout(&snapshot).trim(), "changed\nuntracked");
    assert!(
        !stderr(&snapshot).contains("uncommitted"),
        "{}",
        stderr(&snapshot)
    );

    let id = env.ok(&[
        "task",
        "-d",
        "--from-worktree",
        env.project.to_str().unwrap(),
        look,
    ]);
    let waited = env.orch().args(["wait", id.trim()]).output().unwrap();
    assert_eq!(code(&waited), 0, "{}", stderr(&waited));
    let logs = env.ok(&["logs", id.trim()]);
    assert!(logs.contains("changed\nuntracked"), "{logs}");

    assert_eq!(
        env.git(&["rev-parse", "HEAD"]),
        head,
        "the user's branch moved"
    );
    assert_eq!(env.git(&["status", "--porcelain", "--ignored"]), status);
    assert_eq!(
        std::fs::read(env.project.join(".git/index")).unwrap(),
        index,
        "the user's index changed"
    );
    let scratch: Vec<_> = std::fs::read_dir(&env.home)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".snapshot"))
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");

    // The task changed nothing, but its branch holds the tree it started
    // from: a merge would bring that in, so the diff shows it, and the
    // branch is not offered as empty.
    let started = helper::task_id(&stderr(&snapshot));
    let diff = env
        .orch()
        .args(["diff", "--stat", &started])
        .output()
        .unwrap();
    assert_eq!(code(&diff), 0, "{}", stderr(&diff));
    let stat = stdout(&diff);
    assert!(
        stat.contains("tracked.txt") && stat.contains("new.txt") && stat.contains("gone.txt"),
        "{stat}"
    );
    assert!(
        stderr(&diff).contains("snapshot of your working tree"),
        "{}",
        stderr(&diff)
    );
    let plan = env.ok(&["cleanup", "--branches", "--dry-run"]);
    assert!(!plan.contains(&started), "{plan}");
    let plain_id = helper::task_id(&stderr(&plain));
    assert!(
        plan.contains(&format!("would delete branch orch/{plain_id} in")),
        "a branch started from HEAD that holds nothing is offered: {plan}"
    );

    let both = env.task("true", &["--from-worktree", "--ref", "HEAD"]);
    assert_eq!(code(&both), 125, "{}", stderr(&both));
    assert_eq!(stderr(&both).trim().lines().count(), 1, "{}", stderr(&both));

    // Submitted to the daemon of this machine, the warning reaches the
    // submitter too; -i and -t, which a queued task cannot have, are
    // refused.
    let daemon = env.serve(&[]);
    let submit = |extra: &[&str]| {
        env.orch()
            .arg("submit")
            .args(extra)
            .arg(&env.project)
            .arg("true")
            .output()
            .unwrap()
    };
    let out = submit(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("3 uncommitted change(s)"),
        "{}",
        stderr(&out)
    );
    let id = stdout(&out).trim().to_owned();
    assert_eq!(
        daemon.wait_ended(&id, Duration::from_secs(60))["state"],
        "succeeded"
    );
    for flag in ["-i", "-t"] {
        let out = submit(&[flag]);
        assert_eq!(code(&out), 125, "{flag}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        assert!(stderr(&out).contains("-i and -t"), "{}", stderr(&out));
    }
}

/// Reviewing and taking a result: `orch diff` shows what the task changed
/// against its base, `orch merge` brings it into the user's branch (a
/// merge commit by the user's identity, or `--squash`), refuses a dirty
/// tree, stops on conflicts as git does; and drivers the task's
/// `.gitattributes` names (defined in the user's global config and in the
/// repository's own) never run.
#[test]
fn a_tasks_branch_is_reviewed_and_merged() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("") else {
        return;
    };
    std::fs::write(env.project.join("a.txt"), "one\n").unwrap();
    std::fs::write(env.project.join(".gitignore"), "local.env\n").unwrap();
    env.git(&["add", "."]);
    env.git(&["commit", "-qm", "a"]);
    // The user's global config defines drivers; a task naming them in its
    // .gitattributes must not make orch's git run them.
    let user_home = env.home.parent().unwrap().join("user-home");
    std::fs::create_dir_all(&user_home).unwrap();
    let ran = user_home.join("a-driver-ran");
    let driver = format!("sh -c 'touch {}; cat'", ran.display());
    std::fs::write(
        user_home.join(".gitconfig"),
        format!(
            "[user]\n\tname = Merging User\n\temail = merger@example.com\n\
             [filter \"evil\"]\n\tsmudge = {driver}\n\tclean = {driver}\n\
             [diff \"evil\"]\n\ttextconv = {driver}\n\tcommand = {driver}\n"
        ),
    )
    .unwrap();
    // ... and so does the repository's own config.
    for key in [
        "filter.evil.smudge",
        "filter.evil.clean",
        "merge.evil.driver",
    ] {
        env.git(&["config", key, &driver]);
    }
    let orch = |args: &[&str]| {
        let mut cmd = env.orch();
        cmd.env("HOME", &user_home).args(args);
        cmd.output().unwrap()
    };
    let run = |desc: &str| {
        let out = orch(&["task", env.project.to_str().unwrap(), desc]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        helper::task_id(&stderr(&out))
    };

    let first = run(
        "echo two >> a.txt; echo new > b.txt; printf '* filter=evil diff=evil merge=evil\\n' > .gitattributes",
    );
    let diff = orch(&["diff", &first]);
    assert_eq!(code(&diff), 0, "{}", stderr(&diff));
    let text = stdout(&diff);
    assert!(text.contains("+two") && text.contains("+new"), "{text}");
    assert!(text.contains("diff --git a/b.txt b/b.txt"), "{text}");
    let stat = orch(&["diff", "--stat", &first[..8]]);
    assert!(
        stdout(&stat).contains("3 files changed"),
        "{}",
        stdout(&stat)
    );

    std::fs::write(env.project.join("a.txt"), "mine\n").unwrap();
    let dirty = orch(&["merge", &first]);
    assert_eq!(code(&dirty), 1, "{}", stdout(&dirty));
    assert_eq!(
        stderr(&dirty).trim().lines().count(),
        1,
        "{}",
        stderr(&dirty)
    );
    assert!(
        stderr(&dirty).contains("1 uncommitted change(s)"),
        "{}",
        stderr(&dirty)
    );
    assert_eq!(
        std::fs::read_to_string(env.project.join("a.txt")).unwrap(),
        "mine\n"
    );
    env.git(&["checkout", "--", "a.txt"]);
    // An untracked file of the user's where the branch has one: git would
    // refuse; orch says which in one line.
    std::fs::write(env.project.join("b.txt"), "my own\n").unwrap();
    let blocked = orch(&["merge", &first]);
    assert_eq!(code(&blocked), 1, "{}", stdout(&blocked));
    assert_eq!(
        stderr(&blocked).trim().lines().count(),
        1,
        "{}",
        stderr(&blocked)
    );
    assert!(
        stderr(&blocked).contains("that the merge would overwrite (b.txt)"),
        "{}",
        stderr(&blocked)
    );
    assert_eq!(
        std::fs::read_to_string(env.project.join("b.txt")).unwrap(),
        "my own\n"
    );
    std::fs::remove_file(env.project.join("b.txt")).unwrap();
    // ... and so is an ignored one (a .env of the user's).
    std::fs::write(env.project.join("local.env"), "mine\n").unwrap();
    let sneaky = run("echo theirs > local.env && git add -f local.env && git commit -qm env");
    // A directory where the user's ignored file is.
    let sneaky_dir = run(
        "mkdir local.env && echo x > local.env/cfg && git add -f local.env && git commit -qm dir",
    );
    for (sneaky, squash) in [
        (&sneaky, false),
        (&sneaky, true),
        (&sneaky_dir, false),
        (&sneaky_dir, true),
    ] {
        let mut args = vec!["merge", sneaky.as_str()];
        if squash {
            args.insert(1, "--squash");
        }
        let blocked = orch(&args);
        assert_eq!(code(&blocked), 1, "{}", stdout(&blocked));
        assert!(
            stderr(&blocked).contains("(local.env)"),
            "{}",
            stderr(&blocked)
        );
        assert_eq!(
            std::fs::read_to_string(env.project.join("local.env")).unwrap(),
            "mine\n"
        );
    }
    // ... and a link of the user's there: neither it nor what it points
    // at changes.
    let outside = user_home.join("outside.env");
    std::fs::write(&outside, "elsewhere\n").unwrap();
    std::fs::remove_file(env.project.join("local.env")).unwrap();
    std::os::unix::fs::symlink(&outside, env.project.join("local.env")).unwrap();
    for sneaky in [&sneaky, &sneaky_dir] {
        let blocked = orch(&["merge", sneaky]);
        assert_eq!(code(&blocked), 1, "{}", stdout(&blocked));
        assert!(
            stderr(&blocked).contains("(local.env)"),
            "{}",
            stderr(&blocked)
        );
        assert!(
            std::fs::symlink_metadata(env.project.join("local.env"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "elsewhere\n");
    }

    let merged = orch(&["merge", &first]);
    assert_eq!(code(&merged), 0, "{}", stderr(&merged));
    assert!(
        stdout(&merged).starts_with(&format!("merged orch/{first} into main")),
        "{}",
        stdout(&merged)
    );
    assert_eq!(
        std::fs::read_to_string(env.project.join("a.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert_eq!(
        env.git(&["log", "-1", "--format=%an <%ae> %P"])
            .split(' ')
            .count(),
        5,
        "a merge commit"
    );
    assert!(
        env.git(&["log", "-1", "--format=%an <%ae>"])
            .starts_with("Merging User <merger@example.com>")
    );
    assert!(env.git(&["log", "-1", "--format=%B"]).contains(&first));
    assert!(
        !ran.exists(),
        "a driver named by the task's .gitattributes ran"
    );
    // Merged, the .gitattributes is the user's own: their git may run their
    // drivers from now on. Those of the global config stay, for orch's.
    env.git(&["config", "--remove-section", "filter.evil"]);
    env.git(&["config", "--remove-section", "merge.evil"]);
    let again = orch(&["merge", &first]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing your branch lacks"),
        "{}",
        stdout(&again)
    );

    let second = run("echo three >> a.txt");
    let squashed = orch(&["merge", "--squash", &second]);
    assert_eq!(code(&squashed), 0, "{}", stderr(&squashed));
    assert_eq!(
        env.git(&["log", "-1", "--format=%P"]).split(' ').count(),
        1,
        "one parent"
    );
    assert_eq!(
        env.git(&["log", "-1", "--format=%s"]),
        "echo three >> a.txt"
    );
    assert_eq!(
        std::fs::read_to_string(env.project.join("a.txt")).unwrap(),
        "one\ntwo\nthree\n"
    );

    let third = run("echo theirs > a.txt");
    std::fs::write(env.project.join("a.txt"), "ours\n").unwrap();
    env.git(&["commit", "-qam", "ours"]);
    let conflict = orch(&["merge", &third]);
    assert_eq!(code(&conflict), 1, "{}", stdout(&conflict));
    assert!(
        stderr(&conflict).contains("conflicts in a.txt"),
        "{}",
        stderr(&conflict)
    );
    env.git(&["merge", "--abort"]);
    assert!(
        !ran.exists(),
        "a driver named by the task's .gitattributes ran"
    );

    // A task that committed its work itself: no commit of orch's carries
    // its description, but its branch's reflog does (even where the
    // repository keeps no reflogs).
    env.git(&["config", "core.logAllRefUpdates", "false"]);
    let fourth = run("echo four > d.txt; git add d.txt; git commit -qm 'my own message'");
    let reflog = env.git(&["reflog", "show", "--format=%gs", &format!("orch/{fourth}")]);
    assert!(
        reflog.contains(&format!("orch: task {fourth} started: echo four > d.txt")),
        "{reflog}"
    );

    // cleanup --branches offers the merged branch, even once its record
    // is gone, and keeps the squashed and the conflicting ones (their
    // commits are not in this branch). A kept branch whose record is gone
    // is named with what its task was.
    for id in [&first, &fourth] {
        let removed = orch(&["rm", id]);
        assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    }
    let plan = stdout(&orch(&["cleanup", "--branches", "--dry-run"]));
    assert!(
        plan.contains(&format!(
            "would delete branch orch/{first} (merged) in {}: echo two >> a.txt",
            env.project.display()
        )),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "would keep branch orch/{fourth} in {} (1 commit(s) not merged; its record is gone): echo four > d.txt",
            env.project.display()
        )),
        "{plan}"
    );
    assert!(!plan.contains(&second) && !plan.contains(&third), "{plan}");
    let done = orch(&["cleanup", "--branches"]);
    assert_eq!(code(&done), 0, "{}", stderr(&done));
    assert!(
        stdout(&done).contains(&format!("kept branch orch/{fourth}")),
        "{}",
        stdout(&done)
    );
    let left = env.git(&["branch", "--list", "orch/*"]);
    assert!(
        !left.contains(&first)
            && left.contains(&second)
            && left.contains(&third)
            && left.contains(&fourth),
        "{left}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&orch(&[
        "cleanup",
        "--branches",
        "--dry-run",
        "--json",
    ])))
    .unwrap();
    let kept = &json["repos"][0]["kept"][0];
    assert_eq!(kept["name"], format!("orch/{fourth}"), "{json}");
    assert_eq!(kept["commits"], 1, "{json}");
    // Its record gone, its branch is still reviewed and taken by id, short
    // id or branch name.
    for asked in [
        fourth.clone(),
        helper::short(&fourth),
        format!("orch/{fourth}"),
    ] {
        let diff = orch(&["diff", "--stat", &asked]);
        assert_eq!(code(&diff), 0, "{asked}: {}", stderr(&diff));
        assert!(
            stdout(&diff).contains("d.txt"),
            "{asked}: {}",
            stdout(&diff)
        );
    }
    // A prefix that names live tasks and removed ones is ambiguous.
    let both = orch(&["diff", &fourth[..4]]);
    assert_eq!(code(&both), 1, "{}", stdout(&both));
    assert!(stderr(&both).contains("ambiguous"), "{}", stderr(&both));
    let squashed = orch(&["merge", "--squash", &fourth]);
    assert_eq!(code(&squashed), 0, "{}", stderr(&squashed));
    assert_eq!(
        env.git(&["log", "-1", "--format=%s"]),
        "echo four > d.txt; git add d.txt; git commit -qm 'my own message'"
    );

    let none = orch(&["diff", "ffffffff"]);
    assert_ne!(code(&none), 0);
    assert_eq!(stderr(&none).trim().lines().count(), 1, "{}", stderr(&none));
}

/// Ids people can type: tasks started in the same instant get short ids
/// (8 hex digits, as `ps` shows them) that tell them apart and work
/// wherever an id does; `--name` names a task, unique among live ones,
/// and the name works wherever an id does.
#[test]
fn short_ids_and_names_are_accepted_everywhere() {
    require_docker!();
    let env = TestEnv::new();
    env.write_project_config("");
    let project = env.project.to_str().unwrap().to_owned();
    let detach = |extra: &[&str], desc: &str| {
        let out = env
            .orch()
            .args(["task", "-d"])
            .args(extra)
            .args([project.as_str(), desc])
            .output()
            .unwrap();
        (code(&out), stdout(&out).trim().to_owned(), stderr(&out))
    };
    let mut started = Vec::new();
    for _ in 0..3 {
        let (status, id, err) = detach(&[], "echo hello; sleep 120");
        assert_eq!(status, 0, "{err}");
        started.push(id);
    }
    let quiet = env.ok(&["ps", "-q"]);
    let mut shorts: Vec<&str> = quiet.lines().collect();
    shorts.sort();
    shorts.dedup();
    assert_eq!(shorts.len(), 3, "{quiet}");
    for id in &started {
        let short = helper::short(id);
        assert!(shorts.contains(&short.as_str()), "{short} in {quiet}");
        assert_eq!(env.show(&short)["id"], id.as_str());
        let table = env.ok(&["ps"]);
        assert!(table.lines().any(|l| l.starts_with(&short)), "{table}");
    }

    let (status, named, err) = detach(&["--name", "fix-login"], "echo named; sleep 120");
    assert_eq!(status, 0, "{err}");
    assert_eq!(env.show("fix-login")["id"], named.as_str());
    assert_eq!(env.show("fix-login")["name"], "fix-login");
    assert!(env.ok(&["ps"]).contains("fix-login"));
    let (status, _, err) = detach(&["--name", "fix-login"], "echo twin");
    assert_eq!(status, 125, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("already named \"fix-login\""), "{err}");
    assert!(
        !err.contains("supervisor"),
        "the refusal itself, not wrapped: {err}"
    );
    for (bad, says) in [
        ("deadbeef", "reads as a task id"),
        ("a b", "invalid name: \"a b\": use 1 to 64"),
    ] {
        let (status, _, err) = detach(&["--name", bad], "echo bad");
        assert_eq!(status, 125, "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
    helper::wait_for("its output", Duration::from_secs(60), || {
        env.ok(&["logs", "fix-login"])
            .contains("named")
            .then_some(())
    });
    let cancelled = env.orch().args(["cancel", "fix-login"]).output().unwrap();
    assert_eq!(code(&cancelled), 0, "{}", stderr(&cancelled));
    let waited = env.orch().args(["wait", "fix-login"]).output().unwrap();
    assert_eq!(code(&waited), 130, "{}", stderr(&waited));
    // Ended, its name is free again; `ps --name` lists both.
    let (status, again, err) = detach(&["--name", "fix-login"], "echo again");
    assert_eq!(status, 0, "{err}");
    let listed = env.ok(&["ps", "-q", "--name", "fix-login"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains(&helper::short(&again)));
    let mut all: Vec<&str> = started.iter().map(String::as_str).collect();
    all.push(&again);
    let out = env.orch().arg("cancel").args(&all).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = env.orch().arg("wait").args(&all).output().unwrap();
    assert!(code(&out) == 130 || code(&out) == 0, "{}", stderr(&out));
}

/// Progress is a bar redrawn in place on a wide terminal, and plain lines
/// on a narrow one or with `TERM=dumb`.
#[test]
fn progress_degrades_to_plain_lines_where_a_bar_cannot_be_drawn() {
    require_docker!();
    let env = TestEnv::new();
    env.write_project_config("");
    for (term, columns, bar) in [
        ("xterm", 120, true),
        ("dumb", 120, false),
        ("xterm", 30, false),
    ] {
        let mut cmd = env.orch();
        cmd.env("TERM", term)
            .arg("task")
            .arg(&env.project)
            .arg("progress 40 loading; sleep 1; echo done");
        let mut orch = helper::OnPty::spawn_sized(cmd, columns);
        let status = helper::wait_for("orch to exit", Duration::from_secs(60), || {
            orch.child.try_wait().unwrap()
        });
        assert_eq!(status.code(), Some(0));
        orch.hang_up();
        let text = orch.text();
        assert!(text.contains("done"), "{text}");
        assert_eq!(
            text.contains("orch: progress 40% loading"),
            !bar,
            "TERM={term}, {columns} columns: {text:?}"
        );
        if !bar {
            assert!(!text.contains('\u{1b}'), "no escape sequences: {text:?}");
        }
    }
}

/// `orch rm` removes an ended task whole (record, log, kept workspace),
/// its work on its branch first; `--dry-run` only says so; a live task is
/// refused and keeps running.
#[test]
fn rm_removes_an_ended_task_whole_after_saving_its_work() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(helper::IMAGE, "");
    let out = env.task("write notes.txt kept; exit 3", &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let id = helper::task_id(&stderr(&out));
    let log = env.home.join("logs").join(format!("{id}.log"));
    assert!(log.exists());
    assert_eq!(
        env.task_dirs().len(),
        1,
        "a failed task's workspace is kept"
    );

    let plan = env.ok(&["rm", "--dry-run", &helper::short(&id)]);
    assert!(plan.contains(&id), "{plan}");
    assert!(
        log.exists() && env.task_dirs().len() == 1,
        "a dry run removes nothing"
    );
    assert_eq!(env.show(&id)["state"], "failed");

    let done = env
        .orch()
        .args(["rm", &helper::short(&id)])
        .output()
        .unwrap();
    assert_eq!(code(&done), 0, "{}", stderr(&done));
    let gone = env.orch().args(["show", &id]).output().unwrap();
    assert_eq!(code(&gone), 1, "{}", stdout(&gone));
    assert!(!log.exists());
    assert!(env.task_dirs().is_empty(), "{:?}", env.task_dirs());
    assert_eq!(env.git(&["show", &format!("orch/{id}:notes.txt")]), "kept");

    let live = env
        .orch()
        .args(["task", "-d", env.project.to_str().unwrap(), "sleep 120"])
        .output()
        .unwrap();
    let live = stdout(&live).trim().to_owned();
    let refused = env.orch().args(["rm", &live]).output().unwrap();
    assert_eq!(code(&refused), 1);
    assert_eq!(
        stderr(&refused).trim().lines().count(),
        1,
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("cancel it first"),
        "{}",
        stderr(&refused)
    );
    assert!(!env.show(&live)["state"].as_str().unwrap().ends_with("ed"));
    env.ok(&["cancel", &live]);
}

/// `logs --since` gives what the task wrote since a time (an RFC 3339
/// time, or a duration ago), by the time index beside its log.
#[test]
fn logs_since_a_time() {
    require_docker!();
    let env = TestEnv::new();
    env.write_project_config("");
    let out = env
        .orch()
        .args([
            "task",
            "-d",
            env.project.to_str().unwrap(),
            "echo early; sleep 3; echo late",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    helper::wait_for("its first line", Duration::from_secs(60), || {
        env.ok(&["logs", &id]).contains("early").then_some(())
    });
    // Past the second the first line's mark covers, before the second line.
    let since = std::time::SystemTime::now() + Duration::from_millis(1_200);
    let waited = env.orch().args(["wait", &id]).output().unwrap();
    assert_eq!(code(&waited), 0, "{}", stderr(&waited));
    let at = humantime::format_rfc3339_millis(since).to_string();
    assert_eq!(env.ok(&["logs", "--since", &at, &id]), "late\n");
    assert_eq!(env.ok(&["logs", "--since", "1h", &id]), "early\nlate\n");
    let bad = env
        .orch()
        .args(["logs", "--since", "yesterday", &id])
        .output()
        .unwrap();
    assert_ne!(code(&bad), 0);
    assert!(stderr(&bad).contains("RFC 3339"), "{}", stderr(&bad));
    // The index goes with the log.
    env.ok(&["rm", &id]);
    let logs: Vec<_> = std::fs::read_dir(env.home.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(&id))
        .collect();
    assert!(logs.is_empty(), "{logs:?}");
}

/// `-i` feeds orch's standard input to the task, as `docker run -i`, and
/// the task sees its end; without it the task's input is closed.
#[test]
fn interactive_feeds_stdin_to_the_task() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("workspace = \"none\"") else {
        return;
    };
    let mut child = env
        .orch()
        .args([
            "task",
            "-i",
            env.project.to_str().unwrap(),
            "wc -l; cat /dev/stdin | wc -c",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(b"one\ntwo\nthree\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["3", "0"]
    );
    let closed = env.task("wc -c", &[]);
    assert_eq!(code(&closed), 0, "{}", stderr(&closed));
    assert_eq!(stdout(&closed).trim(), "0");
    // In the background a task has no input of the caller's: refused.
    for flag in ["-i", "-t"] {
        let out = env.task("cat", &["-d", flag]);
        assert_eq!(code(&out), 125, "{flag}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
}

/// `--user UID:GID` of another uid: the workspace is writable for it, git
/// inside works, and its work comes home; what it made is cleaned up.
#[test]
fn another_uid_can_write_its_workspace() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("") else {
        return;
    };
    let out = env.task(
        "id -u; echo hi > made.txt; mkdir -p sub && echo x > sub/f && git add -A && git commit -qm by-other && echo committed",
        &["--user", "4321:4321"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["4321", "committed"]
    );
    let id = helper::task_id(&stderr(&out));
    assert_eq!(env.git(&["show", &format!("orch/{id}:sub/f")]), "x");
    assert_eq!(
        env.git(&["log", "-1", "--format=%s", &format!("orch/{id}")]),
        "by-other"
    );
    assert!(env.task_dirs().is_empty(), "{:?}", env.task_dirs());
    assert!(env.containers().is_empty());
}

/// `orch task -it`: the task gets a terminal the size of orch's, which
/// follows the window when it is resized; orch's terminal is the task's
/// while it runs (raw: keys go to it as typed, but Ctrl+Z, which freezes
/// it and gives the terminal back until orch continues) and comes back as
/// it was.
#[test]
fn a_task_given_the_terminal_has_it_and_gives_it_back() {
    use rustix::termios::LocalModes;
    require_docker!();
    let env = TestEnv::new();
    let mut cmd = env.orch();
    cmd.args(["task", "-it"])
        .arg(&env.project)
        .arg("tty-wait 24x80 30; tty-wait 30x100 30; read-line; echo got the line");
    let mut orch = helper::OnPty::spawn(cmd);
    let cooked = LocalModes::ICANON | LocalModes::ECHO;
    helper::wait_for("the task's terminal", Duration::from_secs(60), || {
        orch.text().contains("tty 24x80").then_some(())
    });
    assert!(
        !orch.local_modes().intersects(cooked),
        "raw while the task runs: {:?}",
        orch.local_modes()
    );
    orch.resize(30, 100);
    helper::wait_for(
        "the task's terminal resized",
        Duration::from_secs(30),
        || orch.text().contains("tty 30x100").then_some(()),
    );
    // Ctrl+Z stays orch's: the task freezes, orch stops, and the terminal
    // is the shell's again until orch continues.
    orch.type_keys(b"\x1a");
    helper::wait_for("orch to stop", Duration::from_secs(30), || {
        (orch.process_state() == Some('T')).then_some(())
    });
    assert!(
        orch.local_modes().contains(cooked),
        "given back while stopped"
    );
    rustix::process::kill_process(orch.pid(), rustix::process::Signal::CONT).unwrap();
    helper::wait_for("the terminal lent again", Duration::from_secs(30), || {
        (!orch.local_modes().intersects(cooked)).then_some(())
    });
    orch.type_keys(b"\r");
    let status = helper::wait_for("orch to exit", Duration::from_secs(60), || {
        orch.child.try_wait().unwrap()
    });
    let text = orch.text();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("got the line"), "{text}");
    assert!(
        orch.local_modes().contains(cooked),
        "given back as it was: {:?}",
        orch.local_modes()
    );
    orch.hang_up();

    // Ctrl+C is a key like any other: the task's terminal interrupts it;
    // orch ends with it and gives its terminal back.
    let mut cmd = env.orch();
    cmd.args(["task", "-it"])
        .arg(&env.project)
        .arg("echo waiting; read-line; echo not interrupted");
    let mut orch = helper::OnPty::spawn(cmd);
    helper::wait_for(
        "the task to wait for a line",
        Duration::from_secs(60),
        || orch.text().contains("waiting").then_some(()),
    );
    helper::wait_for(
        "the terminal to be the task's",
        Duration::from_secs(10),
        || (!orch.local_modes().intersects(cooked)).then_some(()),
    );
    orch.type_keys(b"\x03");
    let status = helper::wait_for("orch to exit", Duration::from_secs(60), || {
        orch.child.try_wait().unwrap()
    });
    let text = orch.text();
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(!text.contains("not interrupted"), "{text}");
    assert!(orch.local_modes().contains(cooked));
    orch.hang_up();
    assert!(env.containers().is_empty());

    // Without a terminal to give, -it is refused before anything is made.
    let out = env
        .orch()
        .args(["task", "-it"])
        .arg(&env.project)
        .arg("echo never")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("not a terminal"), "{}", stderr(&out));
    assert!(env.containers().is_empty());
}
