//! The watchdog: what cleans up when orch itself is killed.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::helper::{self, TestEnv};
use crate::require_docker;

#[test]
fn sigkill_of_orch_is_cleaned_up_by_the_watchdog_within_seconds() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(helper::IMAGE, "");
    let other = env.spawn_task("sleep 60", &[]);
    let other_container = env.wait_running();
    let victim = env.spawn_task("trap-term; write wip.txt x; sleep 300", &[]);
    env.wait_running_count(2);
    victim.wait_stderr("task ", Duration::from_secs(10));
    let id = helper::task_id(&victim.stderr_text());

    victim.signal(Signal::KILL);
    let killed = Instant::now();
    helper::wait_for(
        "the victim's container to go",
        Duration::from_secs(30),
        || (env.containers().len() == 1).then_some(()),
    );
    let took = killed.elapsed();
    eprintln!("SIGKILL to clean: {took:?}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        env.containers()[0].0,
        other_container,
        "another session's task is untouched"
    );

    // Lost, then its workspace settled (its work saved first).
    let record = helper::wait_for("the record to be lost", Duration::from_secs(10), || {
        let record = env.show(&id);
        let settled = record["workspace_state"] == "kept" || record["workspace_state"] == "removed";
        (record["state"] == "lost" && settled).then_some(record)
    });
    assert_eq!(
        record["workspace_state"], "kept",
        "lost keeps its workspace by policy"
    );
    assert_eq!(
        env.task_dirs().len(),
        2,
        "the victim's kept, the other's in use"
    );
    let text = helper::wait_for("the watchdog's log", Duration::from_secs(10), || {
        let log = std::fs::read_dir(env.home.join("logs"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("watchdog-"))?;
        let text = std::fs::read_to_string(log.path()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&log.metadata().unwrap().permissions());
        text.contains("reaping done").then_some((text, mode))
    });
    let (text, mode) = text;
    assert!(text.contains(&id) && text.contains("clean=true"), "{text}");
    assert_eq!(mode & 0o777, 0o600, "the watchdog's log is private too");

    other.signal(Signal::INT);
    assert_eq!(other.wait(Duration::from_secs(30)).code(), Some(130));
}

#[test]
fn a_clean_exit_leaves_the_watchdog_nothing_to_do() {
    require_docker!();
    let env = TestEnv::new();
    let running = env.spawn_task("sleep 30", &[]);
    env.wait_running();
    assert_eq!(env.watchdogs().len(), 1, "one watchdog per orch task");
    running.signal(Signal::INT);
    assert_eq!(running.wait(Duration::from_secs(30)).code(), Some(130));
    helper::wait_for("the watchdog to exit", Duration::from_secs(5), || {
        env.watchdogs().is_empty().then_some(())
    });
    let logs: Vec<String> = std::fs::read_dir(env.home.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        logs.iter().all(|l| !l.starts_with("watchdog-")),
        "it touched nothing: {logs:?}"
    );
}

#[test]
fn a_stopped_orch_loses_nothing() {
    require_docker!();
    let env = TestEnv::new();
    let running = env.spawn_task("echo up; sleep 60", &[]);
    let container = env.wait_running();
    running.signal(Signal::STOP);
    // Nothing may happen while orch is stopped, however long: watch a while.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            env.containers(),
            vec![(container.clone(), "running".to_owned())]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(env.watchdogs().len(), 1);
    running.signal(Signal::CONT);
    running.signal(Signal::INT);
    let finished = running.wait(Duration::from_secs(30));
    assert_eq!(finished.code(), Some(130), "{}", finished.stderr);
    assert!(env.containers().is_empty());
}

#[test]
fn orch_no_watchdog_disables_it() {
    require_docker!();
    let env = TestEnv::new();
    let mut cmd = env.orch();
    cmd.env("ORCH_NO_WATCHDOG", "1")
        .arg("task")
        .arg(&env.project)
        .arg("sleep 30");
    let running = helper::Running::spawn(cmd);
    env.wait_running();
    assert!(env.watchdogs().is_empty());
    running.signal(Signal::INT);
    assert_eq!(running.wait(Duration::from_secs(30)).code(), Some(130));
}
