//! A catalogue of hostile tasks (SPEC 10), on an image with a real shell
//! and git: each tries one way to run code on the host or to change the
//! user's repository, as the host user and as root. Each test asserts that
//! nothing ran on the host (a marker file outside every mount stays absent)
//! and that the user's repository is unchanged byte for byte but for the
//! task's branch, after the task, after a later task, and after `orch
//! cleanup --older-than 0s`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::helper::{self, SHELL_IMAGE, TestEnv, code, stderr};
use crate::require_docker;

/// Everything of the user's repository a task must not change: every file
/// under `.git` (objects, which only ever gain the task branch's, and logs
/// aside), every ref but the task branches, and the working tree.
pub(crate) fn user_repo(env: &TestEnv) -> (BTreeMap<PathBuf, Vec<u8>>, String) {
    let top = &env.project;
    let mut files = BTreeMap::new();
    let mut stack = vec![top.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(top).unwrap().to_path_buf();
            let shown = rel.to_string_lossy();
            if shown.starts_with(".git/objects")
                || shown.starts_with(".git/logs")
                || shown.starts_with(".git/refs/heads/orch")
            {
                continue;
            }
            let meta = path.symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                let mode = meta.permissions().mode();
                let mut bytes = std::fs::read(&path).unwrap_or_default();
                bytes.extend_from_slice(format!("\nmode {mode:o}").as_bytes());
                files.insert(rel, bytes);
            }
        }
    }
    let refs = env
        .git(&["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .filter(|l| !l.starts_with("refs/heads/orch/"))
        .collect::<Vec<_>>()
        .join("\n");
    (files, refs)
}

/// A project on the shell image whose tasks run `sh -c <desc>`, as `user`.
fn project(user: &str) -> TestEnv {
    let env = TestEnv::new();
    env.git_project(
        SHELL_IMAGE,
        &format!("command = [\"sh\", \"-c\", \"{{desc}}\"]\nuser = \"{user}\"\nkeep_failed_workspace = false"),
    );
    // A hook and a config of the user's own, which must stay as they are.
    std::fs::write(
        env.project.join(".git/hooks/pre-push"),
        "#!/bin/sh\nexit 0\n",
    )
    .unwrap();
    env
}

/// Runs a hostile script in a task and then checks the host: no marker,
/// the user's repository as it was (but for the task's branch), after the
/// task, after a benign task, and after a cleanup. Returns the hostile
/// task's id.
pub(crate) fn attack(user: &str, script: impl Fn(&Path) -> String) -> (TestEnv, String) {
    let env = project(user);
    let marker = env.project.parent().unwrap().join("MARKER");
    let before = user_repo(&env);
    let out = env.task(&script(&marker), &[]);
    let err = stderr(&out);
    let id = helper::task_id(&err);
    let check = |when: &str| {
        assert!(
            !marker.exists(),
            "{user}, {when}: something the task wrote ran on the host"
        );
        let now = user_repo(&env);
        for (path, bytes) in &before.0 {
            assert_eq!(
                now.0.get(path),
                Some(bytes),
                "{user}, {when}: {} changed",
                path.display()
            );
        }
        assert_eq!(
            now.0.len(),
            before.0.len(),
            "{user}, {when}: files appeared: {:?}",
            now.0
                .keys()
                .filter(|k| !before.0.contains_key(*k))
                .collect::<Vec<_>>()
        );
        assert_eq!(now.1, before.1, "{user}, {when}: a ref changed");
    };
    check("after the task");
    let later = env.task("git status; git log --oneline -1; echo fine", &[]);
    assert_eq!(code(&later), 0, "{}", stderr(&later));
    check("after a later task");
    let cleanup = env
        .orch()
        .args(["cleanup", "--older-than", "0s"])
        .output()
        .unwrap();
    assert_eq!(code(&cleanup), 0, "{}", stderr(&cleanup));
    check("after cleanup");
    assert!(env.containers().is_empty());
    assert!(env.task_dirs().is_empty(), "{:?}", env.task_dirs());
    (env, id)
}

pub(crate) const USERS: [&str; 2] = ["host", "root"];

#[test]
fn hooks_the_task_writes_never_run_on_the_host() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        let (env, id) = attack(user, |marker| {
            let hooks = [
                "pre-commit",
                "post-commit",
                "post-checkout",
                "reference-transaction",
                "post-index-change",
                "post-merge",
                "post-rewrite",
                "pre-auto-gc",
            ];
            let mut s = String::new();
            for hook in hooks {
                s.push_str(&format!(
                    "printf '#!/bin/sh\\ntouch {m}\\n' > .git/hooks/{hook}; chmod +x .git/hooks/{hook}; ",
                    m = marker.display()
                ));
            }
            s.push_str("echo work > work.txt; git add work.txt; git commit -q -m from-the-task; echo pending > pending.txt");
            s
        });
        assert_eq!(
            env.git(&["show", &format!("orch/{id}:work.txt")]),
            "work",
            "{user}"
        );
        assert_eq!(
            env.git(&["show", &format!("orch/{id}:pending.txt")]),
            "pending",
            "{user}"
        );
    }
}

#[test]
fn config_the_task_writes_never_steers_the_host() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        let (env, id) = attack(user, |marker| {
            let touch = format!("touch {}", marker.display());
            format!(
                "printf '#!/bin/sh\\n{touch}\\n' > evil.sh; chmod +x evil.sh; \
                 git config core.fsmonitor \"$PWD/evil.sh\"; \
                 git config core.hooksPath \"$PWD/.git/hooks\"; \
                 git config filter.evil.clean \"$PWD/evil.sh\"; \
                 git config filter.evil.smudge \"$PWD/evil.sh\"; \
                 git config filter.evil.required true; \
                 git config diff.evil.textconv \"$PWD/evil.sh\"; \
                 git config core.pager \"$PWD/evil.sh\"; \
                 printf '* filter=evil diff=evil\\n' > .gitattributes; \
                 echo data > data.txt"
            )
        });
        assert_eq!(
            env.git(&["show", &format!("orch/{id}:data.txt")]),
            "data",
            "{user}"
        );
    }
}

#[test]
fn a_git_directory_pointer_the_task_rewrites_is_never_followed() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        for variant in ["gitdir", "commondir"] {
            let (env, id) = attack(user, |marker| {
                let evil = format!(
                    "git init -q evil; printf '#!/bin/sh\\ntouch {m}\\n' > evil/.git/hooks/post-commit; \
                     cp evil/.git/hooks/post-commit evil/.git/hooks/reference-transaction; \
                     chmod +x evil/.git/hooks/*; git -C evil config core.fsmonitor \"$PWD/evil/.git/hooks/post-commit\"; ",
                    m = marker.display()
                );
                let pointer = if variant == "gitdir" {
                    "rm -rf .git; echo \"gitdir: $PWD/evil/.git\" > .git; "
                } else {
                    "echo \"$PWD/evil/.git\" > .git/commondir; "
                };
                format!("echo mine > mine.txt; {evil}{pointer}echo done")
            });
            assert_eq!(
                env.git(&["show", &format!("orch/{id}:mine.txt")]),
                "mine",
                "{user} {variant}: the files are saved anyway"
            );
        }
    }
}

#[test]
fn the_task_cannot_write_the_users_repository() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        let (env, id) = attack(user, |_| {
            // The task learns where the user's repository is from its own
            // clone, and tries everything it can think of.
            "origin=$(git remote get-url origin); echo \"origin is $origin\"; \
             echo evil > \"$origin/HEAD\"; rm -f \"$origin/index\"; \
             mkdir -p \"$origin/hooks\"; echo evil > \"$origin/hooks/post-checkout\"; \
             echo '[core] hooksPath=/x' >> \"$origin/config\"; \
             git --git-dir=\"$origin\" update-ref refs/heads/main HEAD; \
             git --git-dir=\"$origin\" branch evil; git --git-dir=\"$origin\" tag evil; \
             touch \"$origin/objects/evil\"; mkdir \"$origin/objects/ee\"; \
             for d in $(cat .git/objects/info/alternates); do touch \"$d/evil\"; rm -rf \"$d/pack\"; done; \
             ln -s \"$origin/config\" link-to-config; ln -s / root-link; \
             git push origin HEAD:main; echo tried"
                .to_owned()
        });
        let files = env.git(&["ls-tree", "-r", &format!("orch/{id}")]);
        assert!(
            files.contains("120000") && files.contains("link-to-config"),
            "{user}: symbolic links are saved as links, never followed: {files}"
        );
    }
}

#[test]
fn a_directory_the_task_swaps_for_a_link_is_saved_as_the_link() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        // Committed as directories, then left swapped for links to the
        // user's repository and to `/`, a committed file swapped for a
        // directory and another for a FIFO: the save must record the links,
        // never read through them, and lose nothing for the FIFO.
        let (env, id) = attack(user, |_| {
            "origin=$(git remote get-url origin); \
             mkdir -p src etc && echo a > src/a.txt && echo b > etc/b.txt && echo f > was-file && echo p > pipe && \
             git add -A && git commit -q -m dirs && \
             rm -rf src etc was-file pipe && ln -s \"$origin\" src && ln -s / etc && mkfifo pipe && \
             mkdir was-file && echo inside > was-file/inner.txt && echo swapped"
                .to_owned()
        });
        let branch = format!("orch/{id}");
        let files = env.git(&["ls-tree", "-r", &branch]);
        for link in ["src", "etc"] {
            assert!(
                files
                    .lines()
                    .any(|l| l.starts_with("120000") && l.ends_with(&format!("\t{link}"))),
                "{user}: {link} saved as a link: {files}"
            );
            assert!(
                !files.contains(&format!("\t{link}/")),
                "{user}: nothing read through {link}: {files}"
            );
        }
        assert_eq!(
            env.git(&["show", &format!("{branch}:was-file/inner.txt")]),
            "inside",
            "{user}: a file swapped for a directory"
        );
        assert!(
            !files.contains("\tpipe"),
            "{user}: a FIFO holds nothing to save: {files}"
        );
        assert_eq!(
            env.git(&["show", &format!("{branch}~1:src/a.txt")]),
            "a",
            "{user}: the task's own commit is there below its pending work"
        );
    }
}

#[test]
fn a_sparse_file_cannot_make_orch_read_without_end() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        // 100 GiB that cost the task nothing: git would read every byte.
        // The task's end keeps the workspace for it (attack's cleanup then
        // removes it, as retention does).
        let (env, id) = attack(user, |_| {
            "truncate -s 100G huge.bin; echo small > small.txt; echo tried".to_owned()
        });
        let files = env.git(&["ls-tree", "-r", "--name-only", &format!("orch/{id}")]);
        assert!(
            files.contains("small.txt") && !files.contains("huge.bin"),
            "{user}: the rest is saved, the huge file left out: {files}"
        );
    }
}

#[test]
fn git_works_inside_the_task_and_its_commits_and_pending_work_land_on_its_branch() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        let env = project(user);
        let out = env.task(
            "git status --short && echo one > one.txt && git add one.txt && git commit -q -m one && \
             git checkout -q -b side && echo two > two.txt && git add two.txt && git commit -q -m two && \
             git checkout -q - && git merge -q --no-edit side && git log --oneline | wc -l && \
             echo three > three.txt && git add three.txt && git commit -q -m three && \
             git rebase -q HEAD~1 && git diff HEAD~1 --stat && git branch && echo uncommitted > pending.txt",
            &[],
        );
        assert_eq!(code(&out), 0, "{user}: {}", stderr(&out));
        let id = helper::task_id(&stderr(&out));
        let branch = format!("orch/{id}");
        let files = env.git(&["ls-tree", "-r", "--name-only", &branch]);
        for file in ["one.txt", "two.txt", "three.txt", "pending.txt"] {
            assert!(files.contains(file), "{user}: {file} in {files}");
        }
        let log = env.git(&["log", "--format=%s", &branch]);
        assert!(
            log.contains("three") && log.contains("two") && log.contains("one"),
            "{log}"
        );
        let saved = env.git(&["log", "-1", "--format=%B", &branch]);
        assert!(saved.contains(&format!("Orch-Task: {id}")), "{saved}");
        assert!(env.containers().is_empty());
    }
}

/// The mode bits of a path.
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn orchs_home_and_every_file_in_it_are_private_whatever_the_umask() {
    require_docker!();
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    env.git_project(helper::IMAGE, "");
    let mut cmd = env.orch();
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
            Ok(())
        });
    }
    let out = cmd
        .arg("task")
        .arg(&env.project)
        .arg("write out.txt x; exit 1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let home = &env.home;
    assert_eq!(mode(home), 0o700);
    for dir in ["logs", "workspaces", "git-empty", "locks", "locks/repos"] {
        assert_eq!(mode(&home.join(dir)), 0o700, "{dir}");
    }
    let mut files = vec![home.join("instance-id"), home.join("orch.db")];
    for suffix in ["-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", home.join("orch.db").display()));
        if file.exists() {
            files.push(file);
        }
    }
    for dir in ["logs", "locks/repos"] {
        files.extend(
            std::fs::read_dir(home.join(dir))
                .unwrap()
                .flatten()
                .map(|e| e.path()),
        );
    }
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // A home an older orch left readable by others is made private, once.
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(home.join("orch.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.orch().args(["cleanup", "--dry-run"]).output().unwrap();
    assert!(stderr(&out).contains("made it private"), "{}", stderr(&out));
    assert_eq!(mode(home), 0o700);
    assert_eq!(mode(&home.join("orch.db")), 0o600);
    let again = env.orch().args(["cleanup", "--dry-run"]).output().unwrap();
    assert!(!stderr(&again).contains("made it private"), "said once");
}

#[test]
fn text_from_a_task_is_shown_escaped_and_its_output_kept_exact() {
    require_docker!();
    let env = TestEnv::new();
    // (The agent splits its steps on ';', so no sequence here has one.)
    let desc = "progress 40 \u{7}\u{1b}[2Jcleared\u{9b}0m; echo \u{1b}[31mred; sleep 60";
    let running = env.spawn_task(desc, &[]);
    env.wait_running();
    running.wait_stderr("task ", std::time::Duration::from_secs(10));
    let id = helper::task_id(&running.stderr_text());
    helper::wait_for("the progress", std::time::Duration::from_secs(10), || {
        (env.show(&id)["progress"] == 40).then_some(())
    });
    let ps = env.orch().args(["ps"]).output().unwrap();
    let show = env.orch().args(["show", &id]).output().unwrap();
    for (what, out) in [("ps", &ps), ("show", &show)] {
        assert!(
            !out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07),
            "{what} passed control characters through: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("\\x1b[2Jcleared"), "shown escaped: {shown}");
    running.signal(rustix::process::Signal::INT);
    let finished = running.wait(std::time::Duration::from_secs(30));
    assert!(
        finished
            .stdout
            .as_bytes()
            .windows(5)
            .any(|w| w == b"\x1b[31m"),
        "the task's own output stream is byte-exact"
    );
    let logs = env.orch().args(["logs", &id]).output().unwrap();
    assert!(
        logs.stdout.windows(5).any(|w| w == b"\x1b[31m"),
        "and so is its log"
    );
}
