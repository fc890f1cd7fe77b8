//! Hostile tasks against what orch itself reads and parses of their work,
//! and against the daemon's doors: objects named through another
//! repository, a tree that expands without end, a budget the tree would
//! exempt, names git would block on, a save that takes too long, idle
//! connections by the thousand, and a kept workspace set up to run code
//! when the user debugs it. As the host user and as root where it matters.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::helper::{self, SHELL_IMAGE, TestEnv, code, stderr, web};
use crate::hostile::{USERS, attack};
use crate::require_docker;

/// The record's notes, as `orch show --json` has them.
fn notes(env: &TestEnv, id: &str) -> String {
    env.show(id)["notes"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A line `../../lnk ` (trailing space) in the task's alternates, `lnk`
/// the user's objects and `lnk ` another repository on the host: the
/// task's commit names a blob only that repository has. The blob never
/// reaches the user's repository; the task's files still come home.
#[test]
fn objects_of_another_repository_never_reach_the_users() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        let other = tempfile::tempdir().unwrap();
        let other_repo = other.path().join("secret-repo");
        std::fs::create_dir_all(&other_repo).unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(&other_repo)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        git(&["init", "--quiet"]);
        std::fs::write(other_repo.join("secret"), "the host's secret\n").unwrap();
        let secret = git(&["hash-object", "-w", "secret"]);
        let objects = other_repo.join(".git/objects");
        let (env, id) = attack(user, |_| {
            format!(
                "mine=$(head -1 .git/objects/info/alternates); ln -s \"$mine\" lnk; \
                 ln -s {objects} 'lnk '; printf '../../lnk \\n' >> .git/objects/info/alternates; \
                 git update-index --add --cacheinfo 100644,{secret},stolen; \
                 t=$(git write-tree --missing-ok); c=$(git commit-tree $t -p HEAD -m steal); \
                 git update-ref HEAD $c; echo work > work.txt",
                objects = objects.display()
            )
        });
        let found = std::process::Command::new("git")
            .arg("-C")
            .arg(&env.project)
            .args(["cat-file", "-e", &secret])
            .status()
            .unwrap();
        assert!(
            !found.success(),
            "{user}: the secret reached the user's repository"
        );
        assert_eq!(
            env.git(&["show", &format!("orch/{id}:work.txt")]),
            "work",
            "{user}"
        );
        env.git(&["fsck", "--strict"]);
    }
}

/// Six objects that expand to 10^10 paths as the task's HEAD: the save
/// measures them and does not use them; the files come home, the host's
/// git never grows.
#[test]
fn a_tree_bomb_is_measured_not_expanded() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        let (env, id) = attack(user, |_| {
            "b=$(echo x | git hash-object -w --stdin); m=\"100644 blob $b\"; \
             for l in 1 2 3 4 5; do i=0; : > /tmp/l; \
             while [ $i -lt 100 ]; do printf '%s\\te%d\\n' \"$m\" $i >> /tmp/l; i=$((i+1)); done; \
             t=$(git mktree < /tmp/l); m=\"040000 tree $t\"; done; \
             c=$(git commit-tree $t -p HEAD -m bomb); git update-ref HEAD $c; echo work > work.txt"
                .to_owned()
        });
        assert_eq!(
            env.git(&["show", &format!("orch/{id}:work.txt")]),
            "work",
            "{user}"
        );
        let log = env.git(&["log", "--format=%s", &format!("orch/{id}")]);
        assert!(!log.contains("bomb"), "{user}: the bomb came home: {log}");
    }
}

/// One 150 MiB blob committed under eight names, then eight sparse files
/// of other content where they were: nothing exempts them from the budget,
/// they are left out and named, and the workspace is kept.
#[test]
fn the_save_budget_holds_whatever_the_tree_says() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    let env = TestEnv::new();
    env.git_project(
        SHELL_IMAGE,
        "command = [\"sh\", \"-c\", \"{desc}\"]\nkeep_failed_workspace = false",
    );
    let out = env.task(
        "i=0; while [ $i -lt 8 ]; do truncate -s 150M big$i.bin; i=$((i+1)); done; \
         git add big*.bin; git commit -q -m eight; \
         i=0; while [ $i -lt 8 ]; do rm big$i.bin; truncate -s 150M big$i.bin; \
         printf x | dd of=big$i.bin bs=1 seek=157286399 conv=notrunc 2>/dev/null; i=$((i+1)); done",
        &[],
    );
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let id = helper::task_id(&err);
    let notes = notes(&env, &id);
    assert!(
        notes.contains("8 files") && notes.contains("too large"),
        "{notes}"
    );
    assert_eq!(env.show(&id)["workspace_state"], "kept");
    env.ok(&["cleanup", "--older-than", "0s"]);
    assert!(env.containers().is_empty());
}

/// A FIFO named `.gitignore`, and a repository inside the workspace whose
/// name holds a newline and whose HEAD is a FIFO: git would block on
/// either. The task ends at once, its commits come home, its files stay in
/// the kept workspace, and the record says why.
#[test]
fn names_git_would_block_on_end_the_save_at_once() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        for (what, trap) in [
            ("a FIFO .gitignore", "rm .gitignore; mkfifo .gitignore"),
            (
                "a nested repository named with a newline",
                "d=$(printf 'a\\nb'); mkdir -p \"$d/.git/objects\" \"$d/.git/refs\"; mkfifo \"$d/.git/HEAD\"",
            ),
        ] {
            let env = TestEnv::new();
            env.git_project(
                SHELL_IMAGE,
                &format!("command = [\"sh\", \"-c\", \"{{desc}}\"]\nuser = \"{user}\""),
            );
            let out = env.task(
                &format!(
                    "echo c > committed.txt; git add committed.txt; git commit -q -m c; \
                     echo p > pending.txt; {trap}"
                ),
                &[],
            );
            let err = stderr(&out);
            assert_eq!(code(&out), 0, "{user}, {what}: {err}");
            let id = helper::task_id(&err);
            let record = env.show(&id);
            assert_eq!(
                record["workspace_state"], "kept",
                "{user}, {what}: {record}"
            );
            let notes = notes(&env, &id);
            assert!(
                notes.contains("were saved") && notes.contains("stay in the kept workspace"),
                "{user}, {what}: {notes}"
            );
            assert_eq!(
                env.git(&["show", &format!("orch/{id}:committed.txt")]),
                "c",
                "{user}, {what}: the commits came home"
            );
            env.ok(&["cleanup", "--older-than", "0s"]);
            assert!(env.containers().is_empty());
        }
    }
}

/// A save has a deadline of its own: past it, the workspace is kept, the
/// record says so, and the daemon's slot is free. While a task's work is
/// saved, `ps` and the metrics show it.
#[test]
fn a_save_past_its_deadline_frees_the_slot_and_says_so() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(helper::IMAGE, "");
    let daemon = env.serve_with(&["--concurrency", "1"], |cmd| {
        cmd.env("ORCH_FAIL_POINT", "in-save:pause-6")
            .env("ORCH_SAVE_TIMEOUT", "3");
    });
    let body = |desc: &str| serde_json::json!({"project": env.project.display().to_string(), "desc": desc});
    let slow = daemon.submit(body("write work.txt done"));
    let next = daemon.submit(body("exit 0"));
    helper::wait_for("the save to show", Duration::from_secs(60), || {
        let ps = env.ok(&["ps"]);
        let metrics = daemon.request("GET", "/metrics", None).body;
        (ps.lines()
            .any(|l| l.contains(&helper::short(&slow)) && l.contains("saving"))
            && metrics.contains("orch_tasks{state=\"saving\"} 1"))
        .then_some(())
    });
    let record = daemon.wait_ended(&next, Duration::from_secs(60));
    assert_eq!(record["state"], "succeeded");
    let notes = helper::wait_for("the slow task's notes", Duration::from_secs(30), || {
        let notes = notes(&env, &slow);
        (!notes.is_empty()).then_some(notes)
    });
    assert!(notes.contains("did not finish within 3s"), "{notes}");
    assert_eq!(env.show(&slow)["workspace_state"], "kept");
    drop(daemon);
    assert!(env.containers().is_empty());
}

/// A thousand idle connections to the TCP listener (no token needed to
/// open one) take nothing from local control or from a task's save; idle
/// connections are closed; a body promised and never sent is not held; the
/// daemon runs with its descriptor limit raised.
#[test]
fn idle_connections_cannot_take_the_daemon_down() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(helper::IMAGE, "");
    // Enough descriptors here for the attack.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let daemon = env.serve(&["--listen", "127.0.0.1:0", "--concurrency", "2"]);
    let addr = daemon.tcp_addr();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.running.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(
        files[3], files[4],
        "soft limit raised to the hard one: {files:?}"
    );
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(stream) = std::net::TcpStream::connect(&addr) {
            idle.push(stream);
        }
    }
    // Local control works, and a task's save does.
    assert_eq!(daemon.request("GET", "/healthz", None).status, 200);
    let id = daemon.submit(serde_json::json!({
        "project": env.project.display().to_string(),
        "desc": "write saved.txt yes",
    }));
    daemon.wait_ended(&id, Duration::from_secs(60));
    let record = helper::wait_for("its workspace to settle", Duration::from_secs(60), || {
        let record = env.show(&id);
        (record["workspace_state"] == "removed" || record["workspace_state"] == "kept")
            .then_some(record)
    });
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["workspace_state"], "removed", "{record}");
    assert_eq!(env.git(&["show", &format!("orch/{id}:saved.txt")]), "yes");
    // Idle ones are closed (and the listener answers again).
    helper::wait_for(
        "idle connections to be closed",
        Duration::from_secs(60),
        || {
            let mut first = &idle[0];
            let mut buf = [0u8; 1];
            first
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            matches!(first.read(&mut buf), Ok(0)).then_some(())
        },
    );
    drop(idle);
    let health = web::http(&addr, "GET", "/healthz", &[], None);
    assert_eq!(health.status, 200, "{health:?}");
    // A 10 GB body announced and never sent is not held open.
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    stream
        .write_all(
            b"POST /v1/tasks HTTP/1.1\r\nHost: orch\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{",
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "held open: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(env.containers().is_empty());
}

/// A task set `core.fsmonitor` (and hooks, and an alias) in its own
/// repository, in a nested one, and in a bare-style git directory it made
/// in a subdirectory; its workspace is kept because it failed, or because
/// it succeeded with work the save could not bring home. Either way the
/// workspace orch hands back is safe for plain git: nothing of the task
/// runs when the user debugs it, wherever in it they run git.
#[test]
fn a_kept_workspace_runs_nothing_when_the_user_debugs_it() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    let endings = [
        ("failed", "exit 1", 1),
        (
            "succeeded, work not saved",
            "rm -f .gitignore; mkfifo .gitignore; exit 0",
            0,
        ),
    ];
    for user in USERS {
        for (ending, end, want) in endings {
            let env = TestEnv::new();
            env.git_project(
                SHELL_IMAGE,
                &format!("command = [\"sh\", \"-c\", \"{{desc}}\"]\nuser = \"{user}\""),
            );
            let marker = env.project.parent().unwrap().join("MARKER");
            let touch = format!("touch {}", marker.display());
            let out = env.task(
                &format!(
                    "printf '#!/bin/sh\\n{touch}\\n' > evil.sh; chmod +x evil.sh; \
                     git config core.fsmonitor \"$PWD/evil.sh\"; git config core.pager \"$PWD/evil.sh\"; \
                     git config alias.st '!{touch}'; cp evil.sh .git/hooks/post-checkout; \
                     git init -q inner; git -C inner config core.fsmonitor \"$PWD/evil.sh\"; \
                     mkdir tools; git init -q --bare tools; git -C tools config core.bare false; \
                     git -C tools config core.worktree ..; git -C tools config core.fsmonitor \"$PWD/evil.sh\"; \
                     echo wip > wip.txt; {end}"
                ),
                &[],
            );
            let err = stderr(&out);
            assert_eq!(code(&out), want, "{user}, {ending}: {err}");
            let id = helper::task_id(&err);
            let kept = env
                .task_dirs()
                .into_iter()
                .find(|d| d.ends_with(&id))
                .unwrap_or_else(|| panic!("{user}, {ending}: kept: {err}"));
            assert!(
                err.contains(&format!("workspace kept at {}", kept.display())),
                "{user}, {ending}: {err}"
            );
            assert_eq!(env.show(&id)["workspace_state"], "kept", "{user}, {ending}");
            for dir in [kept.clone(), kept.join("inner"), kept.join("tools")] {
                for args in [
                    &["status"][..],
                    &["diff"],
                    &["log", "-1"],
                    &["checkout", "-b", "debug"],
                ] {
                    let _ = std::process::Command::new("git")
                        .arg("-C")
                        .arg(&dir)
                        .args(args)
                        .output()
                        .unwrap();
                }
            }
            assert!(
                !marker.exists(),
                "{user}, {ending}: git in the kept workspace ran the task's code"
            );
            if want == 1 {
                assert_eq!(
                    env.git(&["show", &format!("orch/{id}:wip.txt")]),
                    "wip",
                    "{user}: its work is on its branch already"
                );
            }
            env.ok(&["cleanup", "--older-than", "0s"]);
            assert!(!marker.exists());
            assert!(env.containers().is_empty());
        }
    }
}

/// The user's repository tracks a `.gitignore` that is a link (to a file
/// beside it): the host's git never follows it, so it is no hazard, and the
/// task's work comes home as usual.
#[test]
fn a_linked_gitignore_the_user_tracks_keeps_nothing_from_home() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    let env = TestEnv::new();
    env.git_project(SHELL_IMAGE, "command = [\"sh\", \"-c\", \"{desc}\"]");
    std::fs::write(env.project.join("gitignore.common"), "*.log\n").unwrap();
    let _ = std::fs::remove_file(env.project.join(".gitignore"));
    std::os::unix::fs::symlink("gitignore.common", env.project.join(".gitignore")).unwrap();
    env.git(&["add", "-A"]);
    env.git(&["commit", "-q", "-m", "linked ignore file"]);
    let out = env.task("echo new > work.txt", &[]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let id = helper::task_id(&err);
    assert_eq!(env.git(&["show", &format!("orch/{id}:work.txt")]), "new");
    assert!(env.task_dirs().is_empty(), "removed: {:?}", env.task_dirs());
}

/// orch not root, a root task: a directory the task made unreadable holds
/// work neither orch nor git can read. Nothing is lost: the rest comes
/// home, and the workspace is kept with a note naming the directory.
#[test]
fn a_directory_orch_cannot_read_keeps_its_workspace() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    let env = TestEnv::new();
    env.git_project(
        SHELL_IMAGE,
        "command = [\"sh\", \"-c\", \"{desc}\"]\nuser = \"root\"",
    );
    let out = crate::workspace::task_as_unprivileged(
        &env,
        "mkdir -p d/e; echo x > d/e/f; chmod 000 d/e d; echo y > readable.txt",
        &[],
    );
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let id = helper::task_id(&err);
    assert_eq!(env.show(&id)["workspace_state"], "kept", "{err}");
    let noted = notes(&env, &id);
    assert!(
        noted.contains("cannot read") && noted.contains("\"d\""),
        "{noted}"
    );
    assert_eq!(
        env.git(&["show", &format!("orch/{id}:readable.txt")]),
        "y",
        "the rest came home"
    );
    env.ok(&["cleanup", "--all"]);
    assert!(env.containers().is_empty());
}

/// A kept workspace's task git directory, moved out of the workspace when
/// it was kept, counts in `orch du` with its workspace.
#[test]
fn du_counts_a_kept_workspaces_git_directory() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    let env = TestEnv::new();
    env.git_project(SHELL_IMAGE, "command = [\"sh\", \"-c\", \"{desc}\"]");
    let out = env.task(
        "mkdir -p .git/junk; head -c 8388608 /dev/urandom > .git/junk/blob; exit 1",
        &[],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let du = env.ok(&["du", "--json"]);
    let du: serde_json::Value = serde_json::from_str(&du).unwrap();
    let bytes = du["total"]["bytes"].as_u64().unwrap();
    assert!(bytes >= 8 << 20, "the kept git directory is counted: {du}");
    env.ok(&["cleanup", "--older-than", "0s"]);
}
