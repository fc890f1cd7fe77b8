//! The chaos test: kill orch at random moments, by random means, and check
//! that nothing it owned survives.
//!
//! Each iteration starts one to three `orch task` processes of random kinds
//! (exit at once, sleep, trap SIGTERM, spawn children, flood output) and
//! kills each at a random moment (including between the container's create
//! call and its start) with a random method: SIGINT, SIGTERM, SIGHUP,
//! SIGKILL, SIGKILL 20 to 60 ms after start (between the record and the
//! container), SIGKILL once the workspace exists and no container does, a
//! panic, or `abort()`; and in some iterations the engine drops out for a
//! moment right after the kills (every orch of the test talks to it through
//! a proxy). Then it waits and checks: no container of the instance, no
//! record left `creating`/`running`, no dangling worktree, workspaces and
//! branches only where the policy keeps them (none for a task that never
//! ran); and at the end, that a control task of another instance was never
//! touched.
//!
//! `ORCH_CHAOS_ITERATIONS` (default 30) sets the length, `ORCH_CHAOS_SEED`
//! replays a run; `just chaos` runs the long version.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::helper::{self, Running, TestEnv};
use crate::require_docker;

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Signal(Signal),
    /// SIGKILL 20 to 60 ms after start: between the record and the container.
    KillEarly,
    /// SIGKILL with the workspace made and no container yet.
    KillAfterWorkspace,
    Panic,
    Abort,
}

const KINDS: [&str; 5] = [
    "exit 0",
    "echo up; sleep 30",
    "trap-term; echo up; sleep 30",
    "spawn 3; echo up; sleep 30",
    "flood 3000000; sleep 30",
];

const METHODS: [Method; 8] = [
    Method::Signal(Signal::INT),
    Method::Signal(Signal::TERM),
    Method::Signal(Signal::HUP),
    Method::Signal(Signal::KILL),
    Method::KillEarly,
    Method::KillAfterWorkspace,
    Method::Panic,
    Method::Abort,
];

/// One killed orch.
struct Victim {
    running: Running,
    /// Signal to send, and when (None: it kills itself at a fail point).
    signal: Option<(Signal, Duration)>,
    killed_at: Option<Instant>,
    method: Method,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[test]
fn killing_orch_at_random_leaves_nothing_behind() {
    require_docker!();
    let iterations: usize = std::env::var("ORCH_CHAOS_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("ORCH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos: {iterations} iterations, ORCH_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);

    let env = TestEnv::new();
    env.git_project(helper::IMAGE, "stop_grace = \"1s\"");
    let proxy = helper::Proxy::start();
    let mut outages = 0;
    let control = TestEnv::new();
    let control_task = control.spawn_task("sleep 3600", &[]);
    let control_container = control.wait_running();

    let mut leaks = 0;
    let mut kill_to_clean: Vec<Duration> = Vec::new();
    let mut sigkill_to_clean: Vec<Duration> = Vec::new();
    for iteration in 0..iterations {
        let mut victims = Vec::new();
        for _ in 0..=rng.below(3) {
            let kind = *rng.pick(&KINDS);
            let method = *rng.pick(&METHODS);
            let point = *rng.pick(&["after-create", "after-start"]);
            let mut cmd = env.orch_via(&proxy);
            cmd.arg("task")
                .arg(&env.project)
                .arg(kind)
                .stdin(Stdio::null());
            let signal = match method {
                Method::KillEarly => {
                    Some((Signal::KILL, Duration::from_millis(20 + rng.below(41))))
                }
                Method::KillAfterWorkspace => {
                    cmd.env("ORCH_FAIL_POINT", "after-workspace:sigkill");
                    None
                }
                Method::Panic => {
                    cmd.env("ORCH_FAIL_POINT", format!("{point}:panic"));
                    None
                }
                Method::Abort => {
                    cmd.env("ORCH_FAIL_POINT", format!("{point}:abort"));
                    None
                }
                Method::Signal(Signal::KILL) if rng.below(2) == 0 => {
                    // Killed between the create call and the start.
                    cmd.env("ORCH_FAIL_POINT", "after-create:pause");
                    Some((Signal::KILL, Duration::from_millis(700 + rng.below(300))))
                }
                Method::Signal(signal) => Some((signal, Duration::from_millis(rng.below(1500)))),
            };
            victims.push(Victim {
                running: Running::spawn(cmd),
                signal,
                killed_at: None,
                method,
            });
        }
        let started = Instant::now();
        // Fire each signal at its moment.
        let mut pending: Vec<usize> = (0..victims.len()).collect();
        while !pending.is_empty() {
            pending.retain(|&i| {
                let victim = &mut victims[i];
                match victim.signal {
                    Some((signal, at)) if started.elapsed() >= at => {
                        let _ = rustix::process::kill_process(
                            rustix::process::Pid::from_raw(victim.running.pid()).unwrap(),
                            signal,
                        );
                        victim.killed_at = Some(Instant::now());
                        false
                    }
                    Some(_) => true,
                    None => false,
                }
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        // Watch every victim die; a self-inflicted death (panic, abort at a
        // fail point) counts from when it was seen.
        let mut alive: Vec<&mut Victim> = victims.iter_mut().collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !alive.is_empty() {
            alive.retain_mut(|v| match v.running.child.try_wait() {
                Ok(Some(_)) => {
                    v.killed_at.get_or_insert_with(Instant::now);
                    false
                }
                _ => true,
            });
            assert!(
                Instant::now() < deadline,
                "iteration {iteration}: orch did not die"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // Sometimes the engine drops out just as the reaping begins.
        if rng.below(4) == 0 {
            outages += 1;
            proxy.outage(Duration::from_millis(300 + rng.below(1200)));
        }
        let methods: Vec<Method> = victims.iter().map(|v| v.method).collect();
        let last_kill = victims
            .iter()
            .filter_map(|v| v.killed_at)
            .max()
            .unwrap_or(started);
        let last_sigkill = victims
            .iter()
            .filter(|v| {
                matches!(
                    v.method,
                    Method::Signal(Signal::KILL) | Method::KillEarly | Method::KillAfterWorkspace
                )
            })
            .filter_map(|v| v.killed_at)
            .max();
        drop(victims);

        // Wait for the last container of the instance to go.
        let clean = helper::wait_for_opt(Duration::from_secs(30), || env.containers().is_empty());
        let took = last_kill.elapsed();
        if clean {
            kill_to_clean.push(took);
            if let Some(at) = last_sigkill {
                sigkill_to_clean.push(at.elapsed());
            }
        } else {
            let left = env.containers();
            eprintln!("chaos: iteration {iteration} ({methods:?}) leaked {left:?}");
            leaks += left.len();
            let names: Vec<String> = left.into_iter().map(|(n, _)| n).collect();
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&names)
                .output();
        }

        // No record left live (the watchdog ends them just after).
        let settled = helper::wait_for_opt(Duration::from_secs(30), || {
            env.tasks().iter().all(|t| {
                !["creating", "running", "queued"].contains(&t["state"].as_str().unwrap())
                    && (t["workspace"].is_null()
                        || t["workspace_state"] == "kept"
                        || t["workspace_state"] == "removed")
            })
        });
        assert!(
            settled,
            "iteration {iteration}: live records left: {:?}",
            env.tasks()
        );
        let tasks = env.tasks();
        // Workspaces only where the policy keeps them.
        for dir in env.task_dirs() {
            let id = dir.file_name().unwrap().to_string_lossy().into_owned();
            let task = tasks.iter().find(|t| t["id"] == id.as_str());
            let kept = task.is_some_and(|t| {
                ["failed", "timed_out", "lost"].contains(&t["state"].as_str().unwrap())
                    && !t["started_at"].is_null()
            });
            assert!(
                kept,
                "iteration {iteration}: workspace {dir:?} of {task:?} should be gone"
            );
        }
        for task in &tasks {
            if ["succeeded", "cancelled"].contains(&task["state"].as_str().unwrap()) {
                let id = task["id"].as_str().unwrap();
                assert!(
                    !env.task_dirs().iter().any(|d| d.ends_with(id)),
                    "iteration {iteration}: {id} ({}) kept its workspace",
                    task["state"]
                );
            }
        }
        // No branch of a task that never ran.
        for branch in env
            .git(&[
                "for-each-ref",
                "--format=%(refname:short)",
                "refs/heads/orch/",
            ])
            .lines()
        {
            let task = tasks
                .iter()
                .find(|t| format!("orch/{}", t["id"].as_str().unwrap()) == branch);
            assert!(
                task.is_none_or(|t| !t["started_at"].is_null()),
                "iteration {iteration}: branch {branch} of a task that never ran"
            );
        }
        // No dangling worktree entry.
        for worktree in env.worktrees() {
            assert!(
                std::path::Path::new(&worktree).exists(),
                "iteration {iteration}: dangling worktree {worktree}"
            );
        }
    }

    // The other instance's task was never touched.
    let control_now = control.containers();
    assert_eq!(control_now, vec![(control_container, "running".to_owned())]);
    control_task.signal(Signal::INT);
    assert_eq!(control_task.wait(Duration::from_secs(30)).code(), Some(130));

    kill_to_clean.sort();
    sigkill_to_clean.sort();
    eprintln!(
        "chaos: {iterations} iterations ({outages} with an engine outage), {leaks} leaks; last kill or death to clean: max {:?}, p95 {:?}; \
         from the last SIGKILL ({} iterations): max {:?}, p95 {:?}",
        kill_to_clean.last().copied().unwrap_or_default(),
        percentile(&kill_to_clean, 95.0),
        sigkill_to_clean.len(),
        sigkill_to_clean.last().copied().unwrap_or_default(),
        percentile(&sigkill_to_clean, 95.0),
    );
    assert_eq!(leaks, 0, "containers outlived a killed orch");
}
