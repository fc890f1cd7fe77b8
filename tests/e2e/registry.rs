//! The registry from the outside: ps, show, logs, cancel, detached tasks,
//! retention strategies, concurrency, and a damaged database.

use std::time::Duration;

use crate::cleanup::orphan;
use crate::helper::{self, Running, TestEnv, code, stderr, stdout};
use crate::require_docker;

/// Waits until `ps --json` shows `id` matching `check`; returns the record.
fn wait_record(
    env: &TestEnv,
    id: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    helper::wait_for(what, Duration::from_secs(30), || {
        env.tasks().into_iter().find(|t| t["id"] == id && check(t))
    })
}

fn spawned_id(env: &TestEnv, running: &Running) -> String {
    running.wait_stderr("task ", Duration::from_secs(30));
    let id = helper::task_id(&running.stderr_text());
    wait_record(env, &id, "the task to run", |t| t["state"] == "running");
    id
}

#[test]
fn ps_shows_a_running_task_with_its_progress_and_show_and_logs_after() {
    require_docker!();
    let env = TestEnv::new();
    let running = env.spawn_task(
        "echo first line; progress 42 crunching numbers; sleep 60",
        &[],
    );
    let id = spawned_id(&env, &running);
    let record = wait_record(&env, &id, "progress 42", |t| t["progress"] == 42);
    assert_eq!(record["progress_message"], "crunching numbers");
    assert_eq!(record["project"], "proj");
    let table = env.ok(&["ps"]);
    assert!(
        table.contains(&helper::short(&id)) && table.contains("42%") && table.contains("running"),
        "{table}"
    );

    env.ok(&["cancel", &id[..8]]);
    let finished = running.wait(Duration::from_secs(30));
    assert_eq!(
        finished.code(),
        Some(130),
        "cancelled from elsewhere: {}",
        finished.stderr
    );

    assert!(
        !env.ok(&["ps"]).contains(&helper::short(&id)),
        "ps lists live tasks only"
    );
    assert!(env.ok(&["ps", "-a"]).contains(&helper::short(&id)));
    let shown = env.show(&id[..6]);
    assert_eq!(shown["state"], "cancelled");
    assert_eq!(shown["reason"], "cancelled (orch cancel)");
    assert!(shown["finished_at"].as_i64().is_some());
    let logs = env.ok(&["logs", &id]);
    assert_eq!(logs, "first line\n::progress::42 crunching numbers\n");
    assert!(env.ok(&["show", &id]).contains("cancelled"));
}

#[test]
fn logs_follow_a_running_task_to_its_end() {
    require_docker!();
    let env = TestEnv::new();
    let running = env.spawn_task("echo one; sleep 1; echo two; sleep 1; echo three", &[]);
    let id = spawned_id(&env, &running);
    let out = env.orch().args(["logs", "-f", &id]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "one\ntwo\nthree\n");
    assert_eq!(running.wait(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(env.show(&id)["state"], "succeeded");
}

#[test]
fn a_detached_task_runs_without_its_caller_and_can_be_cancelled() {
    require_docker!();
    let env = TestEnv::new();
    let out = env.task("echo detached; progress 10; sleep 120", &["-d"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    assert_eq!(id.len(), 36, "prints the id: {id}");
    let record = wait_record(&env, &id, "the detached task to run", |t| {
        t["state"] == "running"
    });
    assert_eq!(record["detached"], true);
    assert_ne!(record["owner_pid"], serde_json::Value::Null);
    helper::wait_for("its output in the log", Duration::from_secs(30), || {
        env.ok(&["logs", &id]).contains("detached").then_some(())
    });

    let out = env.ok(&["cancel", &id]);
    assert!(out.contains(&format!("{id} cancelled")), "{out}");
    assert_eq!(env.show(&id)["state"], "cancelled");
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

#[test]
fn cancelling_a_task_whose_owner_is_dead_does_the_owners_work() {
    require_docker!();
    let env = TestEnv::new();
    let id = orphan(&env, "sleep 300");
    let out = env.ok(&["cancel", &id]);
    assert!(out.contains(&format!("{id} cancelled")), "{out}");
    assert_eq!(env.show(&id)["state"], "cancelled");
    assert!(env.containers().is_empty());
    let out = env.ok(&["cancel", &id]);
    assert!(out.contains("had already ended"), "{out}");
    let bad = env.orch().args(["cancel", "zz!z"]).output().unwrap();
    assert_eq!(code(&bad), 1);
    assert!(stderr(&bad).contains("invalid task id"), "{}", stderr(&bad));
}

/// Runs `orch cleanup` with every threshold from the environment.
fn cleanup_with(env: &TestEnv, ages: &[(&str, &str)], args: &[&str]) -> String {
    let mut cmd = env.orch();
    for (var, age) in ages {
        cmd.env(var, age);
    }
    let out = cmd.arg("cleanup").args(args).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out)
}

fn ids_of(env: &TestEnv) -> Vec<String> {
    env.tasks()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn completed_strategy_by_age_and_state() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(helper::IMAGE, "");
    let ok = helper::task_id(&stderr(&env.task("echo fine", &[])));
    let failed = helper::task_id(&stderr(&env.task("write partial.txt x; exit 2", &[])));
    assert_eq!(
        env.task_dirs().len(),
        1,
        "the failed task's workspace is kept"
    );
    std::thread::sleep(Duration::from_millis(1100));

    let ages = [
        ("ORCH_CLEANUP_COMPLETED_AGE", "1s"),
        ("ORCH_CLEANUP_FAILED_AGE", "1h"),
    ];
    let before = env.tasks();
    let dry = cleanup_with(&env, &ages, &["--strategy", "completed", "--dry-run"]);
    assert!(
        dry.contains(&format!("would clean task {ok} [completed]")),
        "{dry}"
    );
    assert_eq!(env.tasks(), before, "dry run");
    let out = cleanup_with(&env, &ages, &["--strategy", "completed"]);
    assert!(out.contains("Cleaned up 1 task(s): 1 completed"), "{out}");
    assert_eq!(ids_of(&env), vec![failed.clone()]);
    assert!(!env.home.join(format!("logs/{ok}.log")).exists());
    assert!(env.home.join(format!("logs/{failed}.log")).exists());
    assert_eq!(env.task_dirs().len(), 1);

    let ages = [("ORCH_CLEANUP_FAILED_AGE", "1")];
    let out = cleanup_with(
        &env,
        &ages,
        &["--strategy", "completed", "--status", "failed"],
    );
    assert!(out.contains("1 workspaces"), "{out}");
    assert!(env.tasks().is_empty());
    assert!(env.task_dirs().is_empty());
    assert_eq!(env.worktrees().len(), 1);
    assert!(!env.home.join(format!("logs/{failed}.log")).exists());
}

#[test]
fn stale_strategy_marks_lost_after_the_lease() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(helper::IMAGE, "");
    let id = orphan(&env, "sleep 300");
    let ages = [("ORCH_CLEANUP_STALE_AGE", "1s")];
    let out = cleanup_with(&env, &ages, &["--strategy", "stale"]);
    assert!(
        out.contains("Cleaned up 0 task(s)"),
        "the lease still runs: {out}"
    );
    let lease = env.show(&id)["lease_until"].as_i64().unwrap();
    helper::wait_for("the lease to expire", Duration::from_secs(40), || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        (now > lease + 1100).then_some(())
    });
    let out = cleanup_with(&env, &ages, &["--strategy", "stale"]);
    assert!(
        out.contains("Cleaned up 1 task(s): 1 stale; 1 containers"),
        "{out}"
    );
    let record = env.show(&id);
    assert_eq!(record["state"], "lost");
    assert_eq!(
        record["workspace_state"], "kept",
        "lost keeps its workspace"
    );
    assert_eq!(env.task_dirs().len(), 1);
    assert!(env.containers().is_empty());
}

#[test]
fn old_strategy_spares_a_live_task() {
    require_docker!();
    let env = TestEnv::new();
    let done = helper::task_id(&stderr(&env.task("echo old news", &[])));
    let live = env.spawn_task("sleep 60", &[]);
    let live_id = spawned_id(&env, &live);

    let out = cleanup_with(&env, &[], &["--strategy", "old", "--older-than", "0s"]);
    assert!(out.contains("Cleaned up 1 task(s): 1 old"), "{out}");
    assert_eq!(ids_of(&env), vec![live_id.clone()]);
    assert!(!env.home.join(format!("logs/{done}.log")).exists());
    assert_eq!(env.containers().len(), 1, "the live task still runs");

    let out = cleanup_with(&env, &[("ORCH_CLEANUP_OLD_AGE", "0s")], &[]);
    assert!(!out.contains(&live_id), "{out}");
    live.signal(rustix::process::Signal::INT);
    assert_eq!(live.wait(Duration::from_secs(30)).code(), Some(130));
}

#[test]
fn bad_thresholds_are_refused() {
    let env = TestEnv::new();
    let out = env
        .orch()
        .env("ORCH_CLEANUP_OLD_AGE", "someday")
        .arg("cleanup")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("ORCH_CLEANUP_OLD_AGE"),
        "{}",
        stderr(&out)
    );
    let out = env
        .orch()
        .args(["cleanup", "--status", "done"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("unknown task state"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn twenty_concurrent_tasks_share_one_registry() {
    require_docker!();
    let env = TestEnv::new();
    let runs: Vec<(usize, Running)> = (0..20)
        .map(|i| (i, env.spawn_task(&format!("echo task {i}"), &[])))
        .collect();
    for (i, run) in runs {
        let finished = run.wait(Duration::from_secs(120));
        assert_eq!(finished.code(), Some(0), "task {i}: {}", finished.stderr);
        assert_eq!(finished.stdout, format!("task {i}\n"));
        assert!(!finished.stderr.contains("locked"), "{}", finished.stderr);
    }
    let tasks = env.tasks();
    assert_eq!(tasks.len(), 20);
    assert!(
        tasks
            .iter()
            .all(|t| t["state"] == "succeeded" && t["exit_code"] == 0)
    );
    let mut names: Vec<&str> = tasks
        .iter()
        .map(|t| t["container"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 20, "distinct containers");
}

#[test]
fn a_damaged_registry_is_refused_and_left_as_it_is() {
    require_docker!();
    let env = TestEnv::new();
    env.ok(&[
        "task",
        env.project.to_str().unwrap(),
        "echo make a registry",
    ]);
    let db = env.home.join("orch.db");
    let healthy = std::fs::read(&db).unwrap();
    for (name, bytes) in [
        ("garbage", b"definitely not sqlite ".repeat(300)),
        ("truncated", healthy[..healthy.len().min(4096) / 2].to_vec()),
    ] {
        std::fs::write(&db, &bytes).unwrap();
        for args in [
            vec!["ps", "-a"],
            vec!["task", env.project.to_str().unwrap(), "echo x"],
        ] {
            let out = env.orch().args(&args).output().unwrap();
            let err = stderr(&out);
            assert_ne!(code(&out), 0, "{name} {args:?}");
            assert!(
                err.contains(&db.display().to_string()),
                "{name}: names the file: {err}"
            );
            assert!(
                err.contains("move it aside"),
                "{name}: says the way out: {err}"
            );
            assert_eq!(std::fs::read(&db).unwrap(), bytes, "{name}: unchanged");
        }
    }
    assert!(env.containers().is_empty());
}
