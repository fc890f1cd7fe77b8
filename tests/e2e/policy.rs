//! The task's own keep/remove choice (`--keep-workspace`, `--rm-workspace`)
//! holds on every path its teardown can take: its own end, SIGKILL of orch
//! with the watchdog and without it (reconciliation), and `orch cancel`
//! after its owner died.

use std::time::Duration;

use rustix::process::Signal;

use crate::helper::{self, IMAGE, TestEnv, stderr};
use crate::require_docker;

/// A git project whose failures would keep their workspace by default
/// (`keep`), or remove it (`!keep`).
fn project(keep_failed: bool) -> TestEnv {
    let env = TestEnv::new();
    env.git_project(IMAGE, &format!("keep_failed_workspace = {keep_failed}"));
    env
}

/// Starts a task, waits for its container, kills orch with SIGKILL; the
/// task's id.
fn killed(env: &TestEnv, args: &[&str], watchdog: bool) -> String {
    let mut cmd = env.orch();
    if !watchdog {
        cmd.env("ORCH_NO_WATCHDOG", "1");
    }
    cmd.arg("task")
        .arg(&env.project)
        .arg("write work.txt done; sleep 300")
        .args(args);
    let running = helper::Running::spawn(cmd);
    env.wait_running();
    running.wait_stderr("task ", Duration::from_secs(10));
    let id = helper::task_id(&running.stderr_text());
    running.signal(Signal::KILL);
    let _ = running.wait(Duration::from_secs(10));
    id
}

/// Waits until the task's record has ended and its workspace is settled;
/// whether the workspace directory is still there.
fn settled(env: &TestEnv, id: &str) -> bool {
    helper::wait_for(
        "the workspace to be settled",
        Duration::from_secs(60),
        || {
            let record = env.show(id);
            let done = record["state"] != "running"
                && record["state"] != "creating"
                && record["workspace_state"] != "present"
                && record["workspace_state"] != "saving";
            done.then_some(())
        },
    );
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    env.task_dirs().iter().any(|d| d.ends_with(id))
}

#[test]
fn sigkill_with_the_watchdog_keeps_the_tasks_choice() {
    require_docker!();
    // Lost keeps by default; --rm-workspace wins.
    let env = project(true);
    let id = killed(&env, &["--rm-workspace"], true);
    assert!(!settled(&env, &id), "--rm-workspace: removed");
    assert_eq!(env.show(&id)["state"], "lost");
    assert_eq!(
        env.git(&["show", &format!("orch/{id}:work.txt")]),
        "done",
        "its work reached its branch first"
    );
    // Lost removes by default here; --keep-workspace wins.
    let env = project(false);
    let id = killed(&env, &["--keep-workspace"], true);
    assert!(settled(&env, &id), "--keep-workspace: kept");
}

#[test]
fn sigkill_without_the_watchdog_is_settled_by_reconciliation_with_the_tasks_choice() {
    require_docker!();
    for (keep_failed, flag, kept) in [
        (true, "--rm-workspace", false),
        (false, "--keep-workspace", true),
    ] {
        let env = project(keep_failed);
        let id = killed(&env, &[flag], false);
        assert_eq!(env.show(&id)["state"], "running", "nobody ended it yet");
        let out = env
            .orch()
            .args(["cleanup", "--strategy", "orphans"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(settled(&env, &id), kept, "{flag}");
        assert_eq!(env.show(&id)["state"], "lost");
    }
}

#[test]
fn cancel_after_the_owner_died_keeps_the_tasks_choice() {
    require_docker!();
    // Cancelled removes by default; --keep-workspace wins, and the reverse.
    for (flag, kept) in [("--keep-workspace", true), ("--rm-workspace", false)] {
        let env = project(true);
        let id = killed(&env, &[flag], false);
        let out = env.ok(&["cancel", &id]);
        assert!(out.contains(&format!("{id} cancelled")), "{out}");
        assert_eq!(settled(&env, &id), kept, "{flag}");
        assert_eq!(env.show(&id)["state"], "cancelled");
    }
}
