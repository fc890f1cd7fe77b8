//! `orch cleanup`: reconciliation and retention, only ever within this
//! instance, never touching a live task but with `--all`.

use std::time::Duration;

use rustix::process::Signal;

use crate::helper::{self, TestEnv, code, stderr, stdout};
use crate::require_docker;

/// Kills orch with SIGKILL right after its task's container started (no
/// watchdog), leaving a live record, a running container and a dead owner.
/// Returns the task id.
pub(crate) fn orphan(env: &TestEnv, desc: &str) -> String {
    let out = env
        .orch()
        .env("ORCH_FAIL_POINT", "after-start:sigkill")
        .env("ORCH_NO_WATCHDOG", "1")
        .arg("task")
        .arg(&env.project)
        .arg(desc)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "orch was killed: {}", stderr(&out));
    helper::task_id(&stderr(&out))
}

/// Everything cleanup could change: records, containers, task directories,
/// logs.
#[derive(Debug, PartialEq)]
struct Observed {
    records: String,
    containers: Vec<(String, String)>,
    dirs: Vec<std::path::PathBuf>,
    logs: Vec<String>,
}

fn state_of(env: &TestEnv) -> Observed {
    let mut logs: Vec<String> = std::fs::read_dir(env.home.join("logs"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    let mut containers = env.containers();
    containers.sort();
    Observed {
        records: env.ok(&["ps", "-a", "--json"]),
        containers,
        dirs: env.task_dirs(),
        logs,
    }
}

#[test]
fn cleanup_reconciles_a_dead_owners_task_and_spares_a_live_one() {
    require_docker!();
    let env = TestEnv::new();
    let live = env.spawn_task("sleep 60", &[]);
    env.wait_running();
    let dead = orphan(&env, "sleep 300");
    assert_eq!(env.containers().len(), 2);

    let before = state_of(&env);
    let dry = env.ok(&["cleanup", "--dry-run"]);
    assert!(
        dry.contains(&format!("would clean task {dead} [orphans]: mark lost")),
        "{dry}"
    );
    assert!(
        dry.contains("Would clean up 1 task(s): 1 orphans; 1 containers"),
        "{dry}"
    );
    assert_eq!(state_of(&env), before, "a dry run changes nothing");

    let out = env.orch().arg("cleanup").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Cleaned up 1 task(s): 1 orphans; 1 containers"),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.show(&dead)["state"], "lost");
    let left = env.containers();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        !left[0].0.contains(&dead.replace('-', "")[..12]),
        "the live task's container stays"
    );

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
        stdout(&out).contains("Cleaned up 1 task(s): 1 all; 1 containers"),
        "{}",
        stdout(&out)
    );
    assert!(b.containers().is_empty());
    assert_eq!(a.containers().len(), 1, "the other instance is untouched");
    assert_eq!(a.containers()[0].1, "running");

    // B's foreground orch sees its task cancelled and exits.
    let finished_b = task_b.wait(Duration::from_secs(30));
    assert_eq!(finished_b.code(), Some(130), "{}", finished_b.stderr);
    assert!(b.tasks().is_empty(), "--all removes records too");
    task_a.signal(Signal::INT);
    assert_eq!(task_a.wait(Duration::from_secs(30)).code(), Some(130));
}

#[test]
fn cleanup_without_a_home_has_nothing_to_do() {
    let env = TestEnv::new();
    let out = env.orch().arg("cleanup").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Cleaned up 0 task(s)"),
        "{}",
        stdout(&out)
    );
    assert!(!env.home.exists(), "cleanup creates no home");
}

#[test]
fn a_task_whose_container_exited_while_orch_was_dead_gets_its_real_exit_code() {
    require_docker!();
    let env = TestEnv::new();
    let id = orphan(&env, "sleep 0.5; exit 7");
    helper::wait_for("the container to exit", Duration::from_secs(30), || {
        env.containers()
            .first()
            .filter(|(_, state)| state == "exited")
            .map(|_| ())
    });
    assert_eq!(env.show(&id)["state"], "running", "nobody has looked yet");
    env.ok(&["cleanup", "--strategy", "orphans"]);
    let record = env.show(&id);
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["exit_code"], 7, "{record}");
    assert!(env.containers().is_empty());
}

#[test]
fn the_next_task_reconciles_what_a_killed_orch_left() {
    require_docker!();
    let env = TestEnv::new();
    let dead = orphan(&env, "sleep 300");
    let out = env.task("echo next", &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    helper::wait_for(
        "the orphan to be reconciled",
        Duration::from_secs(30),
        || (env.show(&dead)["state"] == "lost").then_some(()),
    );
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

#[test]
fn objects_without_records_are_removed() {
    require_docker!();
    let env = TestEnv::new();
    env.ok(&["task", env.project.to_str().unwrap(), "echo make a home"]);
    let instance = env.instance_id().unwrap();
    let stray = format!("orch-stray-{}", &instance[..8]);
    let created = std::process::Command::new("docker")
        .args(["create", "--name", &stray, "--label", "orch.managed=true"])
        .arg("--label")
        .arg(format!("orch.instance={instance}"))
        .args([helper::IMAGE, "/orch-agent", "sleep 60"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let dir = env
        .home
        .join("workspaces/proj/tasks/0192f0e4-7b3a-7c2d-9e1f-4a5b6c7d8e9f");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/file"), "x").unwrap();

    let out = env.ok(&["cleanup", "--strategy", "orphans"]);
    assert!(out.contains("no task record owns it"), "{out}");
    assert!(out.contains("no task record owns this workspace"), "{out}");
    assert!(env.containers().is_empty());
    assert!(!dir.exists());
}

#[test]
fn cleanup_all_with_a_status_touches_only_that_state() {
    require_docker!();
    let env = TestEnv::new();
    let failed = helper::task_id(&stderr(&env.task("exit 1", &[])));
    let live = env.spawn_task("sleep 60", &[]);
    env.wait_running();
    let out = env.ok(&["cleanup", "--all", "--status", "failed"]);
    assert!(
        out.contains(&format!("cleaned task {failed} [all]")),
        "{out}"
    );
    let tasks = env.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(
        tasks[0]["state"], "running",
        "the live task was not cancelled"
    );
    assert_eq!(env.containers().len(), 1);
    live.signal(Signal::INT);
    assert_eq!(live.wait(Duration::from_secs(30)).code(), Some(130));
}
