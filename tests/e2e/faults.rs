//! Ordinary faults must not lose anything: a terminal that hangs up, Ctrl+Z
//! at a terminal, many tasks on one repository, a full disk, an engine
//! that drops out for a moment, refusals the engine gives late, and kill -9
//! between the record and the container.

use std::io::Write;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::helper::{self, IMAGE, OnPty, TestEnv, code, stderr};
use crate::require_docker;

/// The paused state of a container, as Docker reports it.
fn paused(name: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Paused}}", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

#[test]
fn a_terminal_that_hangs_up_stops_the_task_gracefully() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let mut cmd = env.orch();
    cmd.arg("task")
        .arg(&env.project)
        .arg("write started.txt yes; echo ready; progress 30 working; sleep 120");
    let mut orch = OnPty::spawn(cmd);
    env.wait_running();
    helper::wait_for("the task's output", Duration::from_secs(10), || {
        orch.text().contains("ready").then_some(())
    });
    let id = helper::task_id(&orch.text());
    orch.hang_up();
    let status = helper::wait_for("orch to exit", Duration::from_secs(30), || {
        orch.child.try_wait().unwrap()
    });
    assert_eq!(
        status.code(),
        Some(129),
        "exit 129 after SIGHUP: {status:?}"
    );
    let record = env.show(&id);
    assert_eq!(record["state"], "cancelled");
    assert_eq!(record["reason"], "cancelled (SIGHUP)");
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    assert!(env.task_dirs().is_empty(), "cancelled: removed by policy");
    assert_eq!(
        env.git(&["show", &format!("orch/{id}:started.txt")]),
        "yes",
        "its work saved first"
    );
}

/// A shell that dies sends SIGHUP to its jobs again (and tmux, closing a
/// session, does the same): hang-ups after the first never force, so the
/// task's TERM trap runs within its grace and its work is saved.
#[test]
fn repeated_hang_ups_never_force_the_stop() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("stop_grace = \"30s\"") else {
        return;
    };
    let mut cmd = env.orch();
    cmd.arg("task").arg(&env.project).arg(
        "trap 'sleep 1; echo trapped > trapped.txt; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
    );
    let mut orch = OnPty::spawn(cmd);
    helper::wait_for("the task's output", Duration::from_secs(20), || {
        orch.text().contains("ready").then_some(())
    });
    let id = helper::task_id(&orch.text());
    orch.hang_up();
    let mut sent = 0;
    let status = helper::wait_for("orch to exit", Duration::from_secs(60), || {
        if sent < 10 {
            let _ = rustix::process::kill_process(orch.pid(), rustix::process::Signal::HUP);
            sent += 1;
        }
        orch.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(129), "{status:?}");
    let record = env.show(&id);
    assert_eq!(
        record["reason"], "cancelled (SIGHUP)",
        "not forced: {record}"
    );
    assert_eq!(
        env.git(&["show", &format!("orch/{id}:trapped.txt")]),
        "trapped",
        "the task's TERM trap ran"
    );
    assert!(env.containers().is_empty());
}

/// After a hang-up, a second interrupt (a person pressing Ctrl+C, a
/// SIGTERM from a supervisor) does force, and the record says what did.
#[test]
fn an_interrupt_after_a_hang_up_forces_and_the_record_says_so() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "stop_grace = \"60s\"");
    let task = env.spawn_task("trap-term; echo ready; sleep 300", &[]);
    task.wait_stderr("task ", Duration::from_secs(10));
    env.wait_running();
    let id = helper::task_id(&task.stderr_text());
    task.signal(rustix::process::Signal::HUP);
    task.wait_stderr("SIGHUP received", Duration::from_secs(10));
    task.signal(rustix::process::Signal::HUP);
    task.signal(rustix::process::Signal::INT);
    let done = task.wait(Duration::from_secs(30));
    assert_eq!(done.code(), Some(129), "{}", done.stderr);
    let record = env.show(&id);
    assert_eq!(
        record["reason"], "cancelled (SIGHUP, forced by SIGINT)",
        "{record}"
    );
    assert!(env.containers().is_empty());
}

/// A stderr nobody reads (a stopped pager, a terminal on scroll lock): the
/// pipe fills, and orch must still run the task and clean up, whatever
/// it logs.
#[test]
fn a_stderr_that_stops_taking_writes_blocks_nothing() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let (read_end, write_end) = rustix::pipe::pipe().unwrap();
    // Full before orch starts: its first write to stderr would block.
    rustix::fs::fcntl_setfl(&write_end, rustix::fs::OFlags::NONBLOCK).unwrap();
    while rustix::io::write(&write_end, &[b'.'; 4096]).is_ok() {}
    rustix::fs::fcntl_setfl(&write_end, rustix::fs::OFlags::empty()).unwrap();
    let mut cmd = env.orch();
    cmd.arg("task")
        .arg(&env.project)
        .arg("flood 200000; write done.txt yes")
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(write_end));
    let mut child = cmd.spawn().unwrap();
    let status = helper::wait_for("orch to end", Duration::from_secs(60), || {
        child.try_wait().unwrap()
    });
    drop(read_end);
    assert_eq!(status.code(), Some(0));
    let task = env.tasks().into_iter().next().unwrap();
    assert_eq!(task["state"], "succeeded");
    assert!(env.containers().is_empty());
}

#[test]
fn ctrl_z_freezes_the_task_and_its_timeout_until_orch_continues() {
    require_docker!();
    let env = TestEnv::new();
    let timeout = Duration::from_secs(4);
    let mut cmd = env.orch();
    cmd.arg("task")
        .arg(&env.project)
        .arg("echo ready; sleep 3; echo finished")
        .args(["--timeout", "4s"]);
    let orch = OnPty::spawn(cmd);
    let name = env.wait_running();
    helper::wait_for("the task's output", Duration::from_secs(10), || {
        orch.text().contains("ready").then_some(())
    });
    let started = Instant::now();
    orch.type_keys(b"\x1a");
    helper::wait_for("orch to stop", Duration::from_secs(10), || {
        (orch.process_state() == Some('T')).then_some(())
    });
    assert!(paused(&name), "the task is frozen with orch");
    let ps = env.ok(&["ps"]);
    assert!(ps.contains("paused"), "ps says so: {ps}");
    assert_eq!(env.tasks()[0]["paused"], true);
    // ... and its filter takes what STATUS shows.
    let paused_ids = env.ok(&["ps", "-q", "--state", "paused"]);
    assert_eq!(paused_ids.lines().count(), 1, "{paused_ids}");
    let shown = env.ok(&["show", paused_ids.trim()]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("status") && l.ends_with("paused")),
        "{shown}"
    );
    // Stay stopped past the task's whole timeout: a clock that kept
    // counting would time the task out the moment orch continues.
    helper::wait_for("the timeout to pass on the clock", timeout * 2, || {
        (started.elapsed() > timeout + Duration::from_secs(1)).then_some(())
    });
    assert!(paused(&name), "still frozen while orch is stopped");
    rustix::process::kill_process(orch.pid(), Signal::CONT).unwrap();
    helper::wait_for("the task to be thawed", Duration::from_secs(10), || {
        (!paused(&name)).then_some(())
    });
    let mut orch = orch;
    let status = helper::wait_for("orch to exit", Duration::from_secs(30), || {
        orch.child.try_wait().unwrap()
    });
    assert_eq!(
        status.code(),
        Some(0),
        "the task ran its 3 s within its 4 s of running time: {}",
        orch.text()
    );
    assert!(orch.text().contains("finished"), "{}", orch.text());
    assert!(env.containers().is_empty());
    assert_eq!(env.tasks()[0]["paused"], false, "thawed, then ended");
}

#[test]
fn diagnostics_to_a_pipe_carry_no_colour_codes() {
    require_docker!();
    let env = TestEnv::new();
    // A workspace, so that there are git steps to log.
    env.git_project(IMAGE, "");
    let out = env
        .orch()
        .env_remove("NO_COLOR")
        .args(["-vv", "task"])
        .arg(&env.project)
        .arg("echo hi")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("DEBUG"), "diagnostics were written: {text}");
    assert!(!text.contains('\u{1b}'), "no escape codes: {text:?}");
}

#[test]
fn twenty_tasks_on_one_repository_at_once_all_run() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    let git_dir = env.project.join(".git");
    let config = std::fs::read(git_dir.join("config")).unwrap();
    let runs: Vec<(usize, helper::Running)> = (0..20)
        .map(|i| (i, env.spawn_task(&format!("write mine.txt {i}"), &[])))
        .collect();
    for (i, run) in runs {
        let finished = run.wait(Duration::from_secs(180));
        assert_eq!(finished.code(), Some(0), "task {i}: {}", finished.stderr);
        let id = helper::task_id(&finished.stderr);
        assert_eq!(
            env.git(&["show", &format!("orch/{id}:mine.txt")]),
            i.to_string(),
            "task {i}'s work on its branch"
        );
    }
    let tasks = env.tasks();
    assert_eq!(tasks.len(), 20);
    assert!(tasks.iter().all(|t| t["state"] == "succeeded"), "{tasks:?}");
    assert!(env.task_dirs().is_empty(), "{:?}", env.task_dirs());
    assert_eq!(env.worktrees().len(), 1, "{:?}", env.worktrees());
    assert_eq!(env.git(&["branch", "--list", "orch/*"]).lines().count(), 20);
    assert_eq!(
        std::fs::read(git_dir.join("config")).unwrap(),
        config,
        "the user's config is never written"
    );
    assert!(env.containers().is_empty());
}

#[test]
fn an_engine_connection_dropped_mid_task_loses_none_of_its_output() {
    require_docker!();
    let env = TestEnv::new();
    let proxy = helper::Proxy::start();
    let mut cmd = env.orch_via(&proxy);
    cmd.arg("task")
        .arg(&env.project)
        .arg("echo one; sleep 3; echo two; exit 0");
    let running = helper::Running::spawn(cmd);
    helper::wait_for("the first line", Duration::from_secs(30), || {
        running.stdout_text().contains("one").then_some(())
    });
    // Every connection to the engine drops, the output stream's included,
    // and new ones are refused for a second.
    proxy.outage(Duration::from_secs(1));
    let finished = running.wait(Duration::from_secs(60));
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr);
    let id = helper::task_id(&finished.stderr);
    let log = std::fs::read_to_string(env.home.join("logs").join(format!("{id}.log"))).unwrap();
    assert_eq!(log, "one\ntwo\n", "the whole output, once");
    assert_eq!(finished.stdout, "one\ntwo\n", "and on the terminal");
    assert!(env.containers().is_empty());
}

#[test]
fn cleanup_rides_out_an_engine_that_drops_out_for_two_seconds() {
    require_docker!();
    let env = TestEnv::new();
    // Twenty tasks whose orch died, their containers still running.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| s.spawn(|| crate::cleanup::orphan(&env, "sleep 300")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(env.containers().len(), 20);

    let proxy = helper::Proxy::start();
    let mut cmd = env.orch_via(&proxy);
    cmd.args(["-v", "cleanup", "--all"]);
    let cleanup = helper::Running::spawn(cmd);
    helper::wait_for("the first removals", Duration::from_secs(60), || {
        (env.containers().len() < 20).then_some(())
    });
    proxy.outage(Duration::from_secs(2));
    let finished = cleanup.wait(Duration::from_secs(120));
    assert_eq!(
        finished.code(),
        Some(0),
        "everything was removed in the end: {}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    for id in &ids {
        assert!(
            finished.stdout.contains(&format!("cleaned task {id}")),
            "{id}: {}",
            finished.stdout
        );
    }
    assert!(
        finished
            .stdout
            .contains("Cleaned up 20 task(s): 20 all; 20 containers"),
        "{}",
        finished.stdout
    );
}

#[test]
fn the_watchdog_keeps_trying_while_the_engine_is_gone() {
    require_docker!();
    let env = TestEnv::new();
    let proxy = helper::Proxy::start();
    let mut cmd = env.orch_via(&proxy);
    cmd.arg("task").arg(&env.project).arg("sleep 300");
    let running = helper::Running::spawn(cmd);
    env.wait_running();
    running.wait_stderr("task ", Duration::from_secs(10));
    let id = helper::task_id(&running.stderr_text());
    proxy.cut();
    running.signal(Signal::KILL);
    let outage = Instant::now();
    helper::wait_for("two seconds of outage", Duration::from_secs(5), || {
        (outage.elapsed() >= Duration::from_secs(2)).then_some(())
    });
    assert_eq!(
        env.containers().len(),
        1,
        "nothing could be removed meanwhile"
    );
    proxy.set(helper::Mode::Pass);
    helper::wait_for("the watchdog to reap", Duration::from_secs(30), || {
        env.containers().is_empty().then_some(())
    });
    helper::wait_for("the record to be lost", Duration::from_secs(10), || {
        (env.show(&id)["state"] == "lost").then_some(())
    });
}

/// A size-limited tmpfs, unmounted when dropped; `None` (with a loud
/// note) when these tests do not run as root and cannot mount one.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("!!!!!!!! SKIPPING: mounting a size-limited ORCH_HOME needs root !!!!!!!!");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("orch-tmpfs-")
            .tempdir()
            .unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_loses_the_logs_tail_never_the_tasks_result() {
    require_docker!();
    let Some(tmpfs) = Tmpfs::mount("3m") else {
        return;
    };
    let mut env = TestEnv::new();
    env.home = tmpfs.dir.path().join("home");
    let out = env.task("flood 8000000; echo done; exit 0", &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = helper::task_id(&stderr(&out));
    assert!(
        stderr(&out).contains("the disk holding the task's log is full"),
        "said on stderr: {}",
        stderr(&out)
    );
    let record = env.show(&id);
    assert_eq!(
        record["state"], "succeeded",
        "the result is recorded: {record}"
    );
    assert_eq!(record["exit_code"], 0);
    let log = std::fs::read(env.home.join("logs").join(format!("{id}.log"))).unwrap();
    let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(200)..]).into_owned();
    assert!(
        tail.contains("the log stops here: the disk is full"),
        "noted in the log: {tail}"
    );
    // Everything keeps working on that home.
    let listed = env.tasks();
    assert_eq!(listed.len(), 1);
    let out = env.orch().args(["cleanup"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.containers().is_empty());
    // Filled to the last byte by someone else: a command that cannot open
    // the registry says why, and all is well once there is room again.
    let filler = tmpfs.dir.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut file, &block).is_ok() {}
    drop(file);
    let out = env.orch().args(["ps", "-a"]).output().unwrap();
    if code(&out) != 0 {
        assert!(
            stderr(&out).contains("no space left on the device holding it"),
            "{}",
            stderr(&out)
        );
    }
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(env.tasks().len(), 1, "the registry is intact");
    drop(env);
}

#[test]
fn an_engine_that_never_answers_is_a_clear_error_in_bounded_time() {
    require_docker!();
    let env = TestEnv::new();
    let proxy = helper::Proxy::start();
    proxy.set(helper::Mode::Stall);
    let out = env
        .orch_via(&proxy)
        .arg("task")
        .arg(&env.project)
        .arg("echo hi")
        .output()
        .unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach the Docker engine")
            && stderr(&out).contains("no answer"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn what_can_be_checked_is_refused_before_anything_is_made() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "network = \"orch-no-such-network\"");
    let out = env.task("echo hi", &[]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("no network \"orch-no-such-network\""), "{err}");
    assert!(
        !err.lines().any(|l| l.starts_with("task ")),
        "no task was recorded: {err}"
    );
    assert!(env.tasks().is_empty());
    assert!(env.task_dirs().is_empty());
    assert_eq!(env.git(&["branch", "--list", "orch/*"]), "");
}

#[test]
fn a_refusal_the_engine_gives_late_unwinds_everything_made_for_the_task() {
    require_docker!();
    let env = TestEnv::new();
    // Only the engine knows its minimum memory limit.
    env.git_project(IMAGE, "memory = 1024");
    let before = env.git(&["for-each-ref"]);
    let out = env.task("echo hi", &[]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    let err = stderr(&out);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("orch: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("Minimum memory limit"),
        "the engine's reason in full: {err}"
    );
    let id = helper::task_id(&err);
    let record = env.show(&id);
    assert_eq!(record["state"], "failed");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("Minimum memory limit"),
        "{record}"
    );
    assert!(env.containers().is_empty());
    assert!(
        env.task_dirs().is_empty(),
        "no workspace: {:?}",
        env.task_dirs()
    );
    assert_eq!(env.git(&["for-each-ref"]), before, "no empty branch left");
}

/// A container the engine cannot start (Docker answers 500, and would
/// answer the same every time: here, the network of a container that is
/// not running) fails at once with the engine's words: no retries until a
/// deadline, no warning about an output stream for a container that never
/// ran.
#[test]
fn a_container_that_cannot_start_fails_at_once_with_the_engines_words() {
    require_docker!();
    let env = TestEnv::new();
    let stopped = format!("orch-e2e-stopped-{}", std::process::id());
    let made = std::process::Command::new("docker")
        .args([
            "create",
            "--name",
            &stopped,
            IMAGE,
            "/orch-agent",
            "sleep",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    struct Removed(String);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &self.0])
                .output();
        }
    }
    let _removed = Removed(stopped.clone());
    env.git_project(IMAGE, &format!("network = \"container:{stopped}\""));
    let out = env
        .orch()
        .args(["-vv", "task"])
        .arg(&env.project)
        .arg("never runs")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "{err}");
    assert!(
        err.contains("cannot join network of a non running container"),
        "{err}"
    );
    assert!(
        !err.contains("retrying") && !err.contains("output stream"),
        "retried, or warned of a stream: {err}"
    );
    let id = helper::task_id(&err);
    let record = env.show(&id);
    assert_eq!(record["state"], "failed", "{record}");
    assert!(env.containers().is_empty());
}

#[test]
fn kill_9_while_unwinding_between_the_branch_and_the_directory_is_finished_by_reconciliation() {
    require_docker!();
    let env = TestEnv::new();
    // The engine refuses the task late: the run unwinds its workspace, and
    // dies once the branch is gone and the directory is not yet.
    env.git_project(IMAGE, "memory = 1024");
    let before = env.git(&["for-each-ref"]);
    let id = killed_at(&env, "unwind-after-branch");
    assert_eq!(
        env.task_dirs().len(),
        1,
        "the directory outlived its branch"
    );
    assert_eq!(env.git(&["for-each-ref"]), before, "the branch is gone");

    let out = env.orch().args(["cleanup"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}\n{}", helper::stdout(&out), stderr(&out));
    assert!(env.task_dirs().is_empty(), "{:?}", env.task_dirs());
    assert_eq!(env.git(&["for-each-ref"]), before);
    let task = env.show(&id);
    assert_eq!(task["state"], "failed", "{task}");
    assert!(
        task["reason"]
            .as_str()
            .unwrap()
            .contains("Minimum memory limit"),
        "{task}"
    );
    assert_eq!(task["workspace_state"], "removed", "{task}");
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

/// The processes that name `path` in their arguments: pid and command line.
fn processes_naming(path: &std::path::Path) -> Vec<(i32, String)> {
    let wanted = path.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    procs
        .filter_map(|p| {
            let p = p.ok()?;
            let pid = p.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&wanted).then_some((pid, cmdline))
        })
        .collect()
}

#[test]
fn kill_9_during_the_clone_leaves_no_git_writing_into_the_workspace() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    // Tens of thousands of refs: the task's clone takes a while to copy them.
    let refs: String = (0..20_000)
        .map(|i| format!("create refs/tags/t{i} HEAD\n"))
        .collect();
    let mut update = std::process::Command::new("git")
        .arg("-C")
        .arg(&env.project)
        .args(["update-ref", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    update
        .stdin
        .take()
        .unwrap()
        .write_all(refs.as_bytes())
        .unwrap();
    assert!(update.wait().unwrap().success());

    let mut cmd = env.orch();
    cmd.env("ORCH_NO_WATCHDOG", "1")
        .arg("task")
        .arg(&env.project)
        .arg("echo never");
    let running = helper::Running::spawn(cmd);
    let (dir, clone) = helper::wait_for(
        "the clone into the workspace",
        Duration::from_secs(30),
        || {
            let dir = env.task_dirs().into_iter().next()?;
            let (pid, _) = processes_naming(&dir)
                .into_iter()
                .find(|(_, cmdline)| cmdline.contains("clone"))?;
            Some((dir, pid))
        },
    );
    running.signal(Signal::KILL);
    let _ = running.wait(Duration::from_secs(10));
    // A clone that outlived orch would go on writing into the directory the
    // next orch's reconciliation removes: held still here so that it cannot
    // finish first. (Stopped before orch died, the kernel would hang it up
    // with its orphaned process group.)
    let clone = rustix::process::Pid::from_raw(clone).unwrap();
    let _ = rustix::process::kill_process(clone, Signal::STOP);
    let died = helper::wait_for_opt(Duration::from_secs(10), || {
        processes_naming(&dir).is_empty()
    });
    let left = processes_naming(&dir);
    for (pid, _) in &left {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(*pid).unwrap(),
            Signal::KILL,
        );
    }
    assert!(died, "git outlived the orch that ran it: {left:?}");
    let out = env.orch().args(["cleanup"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}\n{}", helper::stdout(&out), stderr(&out));
    assert!(env.task_dirs().is_empty(), "{:?}", env.task_dirs());
    assert!(task_branches(&env).is_empty(), "{:?}", task_branches(&env));
    let task = &env.tasks()[0];
    assert_eq!(task["state"], "lost", "{task}");
    assert_eq!(task["workspace_state"], "removed", "{task}");
    // The container, created while git cloned, may land only now.
    settle(&env);
}

/// The `orch/*` branches of the project.
fn task_branches(env: &TestEnv) -> Vec<String> {
    env.git(&[
        "for-each-ref",
        "--format=%(refname:short)",
        "refs/heads/orch/",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn kill_9_between_the_record_and_the_container_is_finished_by_reconciliation() {
    require_docker!();
    let env = TestEnv::new();
    env.git_project(IMAGE, "");
    // At the exact point: record and workspace made, no container.
    let id = killed_at(&env, "after-workspace");
    assert_eq!(env.task_dirs().len(), 1, "a half-made task");
    // And at random instants 20 to 60 ms into the run.
    let mut seed = std::process::id() as u64 | 1;
    for _ in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut cmd = env.orch();
        cmd.env("ORCH_NO_WATCHDOG", "1")
            .arg("task")
            .arg(&env.project)
            .arg("write out.txt x; sleep 30");
        let running = helper::Running::spawn(cmd);
        let at = Duration::from_millis(20 + seed % 41);
        let started = Instant::now();
        helper::wait_for("the moment", Duration::from_secs(1), || {
            (started.elapsed() >= at).then_some(())
        });
        running.signal(Signal::KILL);
        let _ = running.wait(Duration::from_secs(10));
    }
    // A create a killed orch sent may land after a cleanup has looked:
    // the next one (every orch start runs one) takes it.
    let mut out = env.orch().args(["cleanup"]).output().unwrap();
    for _ in 0..3 {
        assert_eq!(code(&out), 0, "{}\n{}", helper::stdout(&out), stderr(&out));
        if env.containers().is_empty() {
            break;
        }
        out = env.orch().args(["cleanup"]).output().unwrap();
    }
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    let tasks = env.tasks();
    assert!(
        tasks
            .iter()
            .all(|t| t["state"] != "creating" && t["state"] != "running"),
        "every half-made task was finished: {tasks:#?}"
    );
    assert_eq!(env.show(&id)["state"], "lost");
    // A workspace in which no task ever ran is gone with its branch; the
    // others follow the policy (lost: kept).
    for dir in env.task_dirs() {
        let dir_id = dir.file_name().unwrap().to_string_lossy().into_owned();
        let task = tasks.iter().find(|t| t["id"] == dir_id.as_str()).unwrap();
        assert!(
            !task["started_at"].is_null(),
            "{dir:?} of a task that never ran: {task}"
        );
    }
    for branch in task_branches(&env) {
        let task = tasks
            .iter()
            .find(|t| format!("orch/{}", t["id"].as_str().unwrap()) == branch);
        assert!(
            task.is_some_and(|t| !t["started_at"].is_null()),
            "branch {branch} of a task that never ran: state {} workspace_state {} reason {} started {}\n{}",
            task.map(|t| t["state"].to_string()).unwrap_or_default(),
            task.map(|t| t["workspace_state"].to_string())
                .unwrap_or_default(),
            task.map(|t| t["reason"].to_string()).unwrap_or_default(),
            task.map(|t| t["started_at"].to_string())
                .unwrap_or_default(),
            helper::stdout(&out)
        );
    }
    assert!(!task_branches(&env).contains(&format!("orch/{id}")));
    assert_eq!(env.worktrees().len(), 1, "{:?}", env.worktrees());
    settle(&env);
}

/// Runs `orch task` (no watchdog) that SIGKILLs itself at fail point
/// `point`; the task's id.
fn killed_at(env: &TestEnv, point: &str) -> String {
    let out = env
        .orch()
        .env("ORCH_FAIL_POINT", format!("{point}:sigkill"))
        .env("ORCH_NO_WATCHDOG", "1")
        .arg("task")
        .arg(&env.project)
        .arg("echo never")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    helper::task_id(&stderr(&out))
}

/// A create a killed orch sent may still land after the cleanups a test
/// ran: what reconciliation at the next start would remove, removed here
/// before the test ends.
fn settle(env: &TestEnv) {
    let mut empty_in_a_row = 0;
    helper::wait_for("the engine to settle", Duration::from_secs(30), || {
        if env.containers().is_empty() {
            empty_in_a_row += 1;
        } else {
            empty_in_a_row = 0;
            let out = env.orch().args(["cleanup"]).output().unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
        }
        // Empty at every look for half a second (looks are 25 ms apart).
        (empty_in_a_row >= 20).then_some(())
    });
}
