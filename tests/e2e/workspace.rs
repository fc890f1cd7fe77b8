//! Workspaces: a worktree per task, mounted where git works, removed by
//! policy without losing work or reaching outside orch's directory.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::helper::{self, GIT_IMAGE, IMAGE, TestEnv, code, stderr};
use crate::require_docker;

#[test]
fn a_commit_made_inside_the_task_lands_on_its_branch() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(GIT_IMAGE, "");
    let out = env.task(
        "write result.txt 42; run git add result.txt; run git commit -q -m from-the-task; run git status --short",
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = helper::task_id(&stderr(&out));
    let branch = format!("orch/{id}");
    assert_eq!(
        env.git(&["log", "-1", "--format=%s", &branch]),
        "from-the-task"
    );
    assert_eq!(env.git(&["show", &format!("{branch}:result.txt")]), "42");
    assert_eq!(
        helper::stdout(&out),
        "",
        "the tree was clean after the commit"
    );
    assert_eq!(env.worktrees().len(), 1, "{:?}", env.worktrees());
    assert!(env.task_dirs().is_empty());
}

#[test]
fn uncommitted_work_is_committed_before_the_workspace_goes() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let out = env.task(
        "write notes/todo.txt remember; write debug.log ignored",
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = helper::task_id(&stderr(&out));
    let branch = format!("orch/{id}");
    assert!(stderr(&out).contains(&format!("uncommitted work saved to {branch}")));
    assert_eq!(
        env.git(&["show", &format!("{branch}:notes/todo.txt")]),
        "remember"
    );
    let files = env.git(&["ls-tree", "-r", "--name-only", &branch]);
    assert!(
        !files.contains("debug.log"),
        "ignored files stay out: {files}"
    );
    // The save commit carries the task's description and id.
    assert_eq!(
        env.git(&["log", "-1", "--format=%s", &branch]),
        "write notes/todo.txt remember; write debug.log ignored"
    );
    assert!(
        env.git(&["log", "-1", "--format=%B", &branch])
            .contains(&format!("Orch-Task: {id}"))
    );
    assert!(env.task_dirs().is_empty());
    assert_eq!(env.worktrees().len(), 1);
    // The task saw its workspace and git worked there.
    let record = env.show(&id);
    assert_eq!(record["workspace_state"], "removed");
}

#[test]
fn a_failed_task_keeps_its_workspace_until_cleanup() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let out = env.task("write half-done.txt wip; exit 3", &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let id = helper::task_id(&stderr(&out));
    let kept = env.task_dirs();
    assert_eq!(kept.len(), 1);
    assert!(
        stderr(&out).contains(&format!("workspace kept at {}", kept[0].display())),
        "the path is printed: {}",
        stderr(&out)
    );
    assert!(kept[0].join("half-done.txt").exists());
    assert_eq!(
        env.worktrees().len(),
        1,
        "a workspace is a repository of its own"
    );

    let out = env
        .orch()
        .args(["cleanup", "--older-than", "0s"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.task_dirs().is_empty());
    assert_eq!(env.worktrees().len(), 1, "{:?}", env.worktrees());
    let branch = format!("orch/{id}");
    assert_eq!(
        env.git(&["show", &format!("{branch}:half-done.txt")]),
        "wip"
    );
}

#[test]
fn removal_never_follows_a_symlink_out_of_the_workspace() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let victim = env.project.parent().unwrap().join("victim");
    std::fs::create_dir_all(victim.join("inner")).unwrap();
    std::fs::write(victim.join("precious.txt"), "keep me").unwrap();
    std::fs::write(victim.join("inner/also.txt"), "me too").unwrap();
    let desc = format!(
        "symlink {v} to-victim; mkdir deep; symlink {v} deep/again; symlink {v}/precious.txt file-link",
        v = victim.display()
    );
    // Removed at the end (succeeded), and again through cleanup (failed).
    for extra in [vec![], vec!["--keep-workspace"]] {
        let out = env.task(&desc, &extra);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert_eq!(env.task_dirs().len(), 1);
    let out = env
        .orch()
        .args(["cleanup", "--older-than", "0s"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.task_dirs().is_empty());
    assert_eq!(
        std::fs::read_to_string(victim.join("precious.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(
        std::fs::read_to_string(victim.join("inner/also.txt")).unwrap(),
        "me too"
    );
}

/// `orch task` as a user who cannot delete root's files: this user, or,
/// when the tests run as root, `nobody` with access to the Docker socket
/// (the whole test directory is handed to it).
pub(crate) fn task_as_unprivileged(
    env: &TestEnv,
    desc: &str,
    args: &[&str],
) -> std::process::Output {
    use std::os::unix::fs::MetadataExt;
    let mut cmd = env.orch();
    if rustix::process::geteuid().is_root() {
        let socket = std::fs::metadata("/var/run/docker.sock").expect("the Docker socket");
        let root = env.project.parent().unwrap();
        let chown = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(root)
            .status()
            .unwrap();
        assert!(chown.success());
        cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534"])
            .arg(format!("--groups={}", socket.gid()))
            .arg(helper::orch_bin())
            .env("ORCH_HOME", &env.home)
            .env("ORCH_CONFIG", &env.config)
            .env("HOME", root)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null());
    }
    cmd.arg("task")
        .arg(&env.project)
        .arg(desc)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn files_a_root_task_left_read_only_are_removed() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "user = \"root\"");
    let out = task_as_unprivileged(
        &env,
        "mkdir locked/deeper; write locked/deeper/f.txt x; write locked/g.txt y; \
         chmod 444 locked/deeper/f.txt; chmod 555 locked/deeper; chmod 555 locked",
        &["--rm-workspace", "-v"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = helper::task_id(&stderr(&out));
    assert!(env.task_dirs().is_empty(), "{:?}", env.task_dirs());
    assert_eq!(env.worktrees().len(), 1, "{:?}", env.worktrees());
    assert!(
        env.containers().is_empty(),
        "the removal helper is gone too"
    );
    assert_eq!(
        env.git(&["show", &format!("orch/{id}:locked/g.txt")]),
        "y",
        "work saved first"
    );
    assert!(
        stderr(&out).contains("removing them through a container"),
        "the privileged path ran: {}",
        stderr(&out)
    );
}

#[test]
fn sigint_mid_task_leaves_no_dangling_worktree() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let running = env.spawn_task("write started.txt yes; echo ready; sleep 60", &[]);
    env.wait_running();
    helper::wait_for("output", Duration::from_secs(10), || {
        running.stdout_text().contains("ready").then_some(())
    });
    running.signal(Signal::INT);
    let finished = running.wait(Duration::from_secs(30));
    assert_eq!(finished.code(), Some(130), "{}", finished.stderr);
    let id = helper::task_id(&finished.stderr);
    assert!(env.containers().is_empty());
    // Cancelled: removed, work saved.
    assert!(env.task_dirs().is_empty(), "{:?}", env.task_dirs());
    assert_eq!(env.worktrees().len(), 1, "{:?}", env.worktrees());
    assert_eq!(env.git(&["show", &format!("orch/{id}:started.txt")]), "yes");
    assert_eq!(env.show(&id)["state"], "cancelled");
}

#[test]
fn du_matches_du_and_reports_the_largest_removal() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let out = env.task("files bulk 10000 2000; write top.txt x; exit 1", &[]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let dirs = env.task_dirs();
    assert_eq!(dirs.len(), 1);

    let du: serde_json::Value = serde_json::from_str(&env.ok(&["du", "--json"])).unwrap();
    let ours = du["total"]["bytes"].as_u64().unwrap();
    let theirs: u64 = {
        let out = std::process::Command::new("du")
            .args(["-s", "--block-size=1"])
            .arg(&dirs[0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let diff = ours.abs_diff(theirs) as f64 / theirs as f64;
    assert!(
        diff <= 0.01,
        "orch du {ours} vs du -s --block-size=1 {theirs}"
    );
    assert_eq!(du["workspaces"].as_array().unwrap().len(), 1);
    assert!(du["total"]["files"].as_u64().unwrap() >= 10_001);
    let human = env.ok(&["du"]);
    assert!(human.contains("total: 1 workspace(s)"), "{human}");

    let start = Instant::now();
    let out = env
        .orch()
        .args(["-v", "cleanup", "--older-than", "0s"])
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.task_dirs().is_empty());
    assert!(
        helper::stdout(&out).contains("1 workspaces"),
        "{}",
        helper::stdout(&out)
    );
    let removal = stderr(&out)
        .lines()
        .find(|l| l.contains("workspace removed"))
        .map(str::to_owned)
        .expect("-v reports the removal");
    eprintln!(
        "largest workspace removed: {} files, {theirs} bytes; the whole cleanup (work saved first) took {took:?}; {removal}",
        du["total"]["files"]
    );
}

#[test]
fn cleanup_branches_deletes_only_empty_ones() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let empty = helper::task_id(&stderr(&env.task("echo nothing to keep", &[])));
    let full = helper::task_id(&stderr(&env.task("write out.txt data", &[])));
    let dry = env.ok(&["cleanup", "--branches", "--dry-run"]);
    assert!(
        dry.contains(&format!("would delete branch orch/{empty}")),
        "{dry}"
    );
    assert!(!dry.contains(&format!("orch/{full}")), "{dry}");
    assert_eq!(env.git(&["branch", "--list", "orch/*"]).lines().count(), 2);
    env.ok(&["cleanup", "--branches"]);
    let left = env.git(&["branch", "--list", "orch/*"]);
    assert_eq!(left.trim_start_matches(['*', ' ']), format!("orch/{full}"));
}

#[test]
fn cleanup_branches_leaves_the_branch_of_a_running_task() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    // Its branch is still at its base while it runs: empty, but in use.
    let running = env.spawn_task("write out.txt data; sleep 300", &[]);
    env.wait_running();
    running.wait_stderr("task ", Duration::from_secs(10));
    let id = helper::task_id(&running.stderr_text());
    let dry = env.ok(&["cleanup", "--branches", "--dry-run"]);
    assert!(!dry.contains(&format!("orch/{id}")), "{dry}");
    env.ok(&["cleanup", "--branches"]);
    assert_eq!(
        env.git(&["branch", "--list", "orch/*"]).trim(),
        format!("orch/{id}"),
        "the running task's branch is still there"
    );
    env.ok(&["cancel", &id]);
    let finished = running.wait(Duration::from_secs(60));
    assert_eq!(finished.code(), Some(130), "{}", finished.stderr);
    assert!(env.containers().is_empty());
}

#[test]
fn workspace_input_errors_are_clear_and_create_nothing() {
    require_docker!();
    let env = TestEnv::new();
    // Not a repository, and the project asks for a worktree (the default).
    std::fs::write(
        env.project.join("orch.toml"),
        format!("image = \"{IMAGE}\"\ncommand = [\"/orch-agent\", \"{{desc}}\"]\n"),
    )
    .unwrap();
    let out = env.task("echo hi", &[]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("not in a git repository"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("workspace = \"none\""),
        "{}",
        stderr(&out)
    );
    let out = env.task("echo hi", &["--no-workspace"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    env.git_project(IMAGE, "");
    let out = env.task("echo hi", &["--ref", "no-such-branch"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("\"no-such-branch\" names no commit"),
        "{}",
        stderr(&out)
    );
    assert!(env.task_dirs().is_empty());
    assert_eq!(env.git(&["branch", "--list", "orch/*"]), "");
    let tasks = env.tasks();
    assert_eq!(
        tasks.len(),
        1,
        "only the --no-workspace run was recorded: {tasks:?}"
    );
}
