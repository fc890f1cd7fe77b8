//! `orch cleanup`: only this instance's containers, only dead owners' unless
//! `--all`.

use std::time::Duration;

use rustix::process::Signal;

use crate::helper::{TestEnv, code, stderr, stdout};
use crate::require_docker;

/// Leaves a running container whose owner is dead, by killing orch with
/// SIGKILL right after the start.
fn orphan(env: &TestEnv) -> String {
    let out = env
        .orch()
        .env("ORCH_FAIL_POINT", "after-start:sigkill")
        .env("ORCH_NO_WATCHDOG", "1")
        .arg("task")
        .arg(&env.project)
        .arg("sleep 300")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "orch was killed: {}", stderr(&out));
    let containers = env.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    containers[0].0.clone()
}

#[test]
fn cleanup_removes_containers_of_dead_owners_only() {
    require_docker!();
    let env = TestEnv::new();
    let dead = orphan(&env);
    let live = env.spawn_task("sleep 60", &[]);
    env.wait_running_count(2);

    let dry = env.orch().args(["cleanup", "--dry-run"]).output().unwrap();
    assert_eq!(code(&dry), 0, "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains(&format!("would remove container {dead}")),
        "{}",
        stdout(&dry)
    );
    assert!(
        stdout(&dry).contains("Would clean up 1 container(s)"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(env.containers().len(), 2, "a dry run changes nothing");

    let out = env.orch().arg("cleanup").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Cleaned up 1 container(s)"),
        "{}",
        stdout(&out)
    );
    let left = env.containers();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0].0, dead, "the live task's container stays");

    live.signal(Signal::INT);
    assert_eq!(live.wait(Duration::from_secs(30)).code(), Some(130));
}

#[test]
fn cleanup_all_in_one_instance_leaves_another_alone() {
    require_docker!();
    let a = TestEnv::new();
    let b = TestEnv::new();
    let task_a = a.spawn_task("sleep 60", &[]);
    let task_b = b.spawn_task("sleep 60", &[]);
    a.wait_running();
    b.wait_running();

    let out = b.orch().args(["cleanup", "--all"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Cleaned up 1 container(s)"),
        "{}",
        stdout(&out)
    );
    assert!(b.containers().is_empty());
    assert_eq!(a.containers().len(), 1, "the other instance is untouched");
    assert_eq!(a.containers()[0].1, "running");

    // B's foreground orch notices its container went away and exits.
    let finished_b = task_b.wait(Duration::from_secs(30));
    assert_ne!(finished_b.code(), Some(0));
    task_a.signal(Signal::INT);
    assert_eq!(task_a.wait(Duration::from_secs(30)).code(), Some(130));
}

#[test]
fn cleanup_without_a_home_has_nothing_to_do() {
    let env = TestEnv::new();
    let out = env.orch().arg("cleanup").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Nothing to clean up"),
        "{}",
        stdout(&out)
    );
    assert!(!env.home.exists(), "cleanup creates no home");
}
