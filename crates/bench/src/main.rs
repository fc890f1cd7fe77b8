//! `orch-bench`: what orch costs, measured against the same work done by the
//! plain `docker` CLI (and git) in the same run, alternating the two, and
//! printed as a markdown table with ratios. No assertions: the figures go in
//! BENCHMARKS.md.
//!
//! Run with `just bench` (or `cargo run --release -p orch-bench -- --quick`);
//! name sections (`trivial worktree ctrl-c orphans registry memory daemon gitrepo queue cluster network`, or `submissions` for the first figure of `cluster` alone) to run
//! only those.
//! Needs a Docker engine, the image `orch-agent:dev` and a release build of
//! `orch` next to this binary.

#![expect(
    clippy::expect_used,
    reason = "a benchmark harness stops at its first failure, naming it"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use orch_registry::{Finish, Registry, State, Store, TaskOwner, TaskProgress, TaskRecord, now_ms};
use uuid::Uuid;

const IMAGE: &str = "orch-agent:dev";

mod cluster;
mod daemon;
mod gitrepo;
mod network;

pub(crate) struct Config {
    rounds: usize,
    cleanup_ns: Vec<usize>,
    orphan_ns: Vec<usize>,
    registry_sizes: Vec<usize>,
    many: usize,
    /// Tasks through the daemon for its throughput figure.
    throughput: usize,
    /// Tasks through the daemon in all, for its memory figure.
    submissions: usize,
    /// Submissions per client for the latency figure.
    latency_rounds: usize,
    /// Tasks through the cluster's queue alone.
    queue_tasks: usize,
    /// Runs of the queue alone, each on a fresh database.
    queue_runs: usize,
    /// Kills of a node, for the rescue latency.
    rescues: usize,
    /// Trivial tasks through one node, then three.
    spread: usize,
}

fn main() {
    // `orch-bench --fill <orch.db> <n>`: only fill a registry, to time or
    // profile commands against it by hand.
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, db, n] = args.as_slice() {
        if flag == "--fill" {
            let n = n.parse().expect("a number of tasks");
            fill_registry(Path::new(db), n);
            return;
        }
    }
    let quick = args.iter().any(|a| a == "--quick");
    let config = if quick {
        Config {
            rounds: 5,
            cleanup_ns: vec![1, 10],
            orphan_ns: vec![10],
            registry_sizes: vec![1_000, 10_000],
            many: 10,
            throughput: 100,
            submissions: 1_000,
            latency_rounds: 5,
            queue_tasks: 2_000,
            queue_runs: 2,
            rescues: 1,
            spread: 30,
        }
    } else {
        Config {
            rounds: 20,
            cleanup_ns: vec![1, 10, 50],
            orphan_ns: vec![10, 100],
            registry_sizes: vec![1_000, 10_000, 100_000],
            many: 50,
            throughput: 1_000,
            submissions: 10_000,
            latency_rounds: 20,
            queue_tasks: 10_000,
            queue_runs: 7,
            rescues: 3,
            spread: 120,
        }
    };
    let bench = match Bench::new() {
        Ok(bench) => bench,
        Err(e) => {
            eprintln!("orch-bench: {e}");
            std::process::exit(2);
        }
    };
    let mut report = Report::default();
    report.line(format!(
        "Machine: {}; {} CPUs; Docker engine {}; {}",
        machine(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench.docker_version(),
        if quick { "quick run" } else { "full run" }
    ));
    report.line(format!("Date: {}", date()));
    report.line(String::new());

    // Sections may be named to run only those.
    let only: Vec<&str> = args[1..]
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| only.is_empty() || only.contains(&name);
    if run("trivial") {
        bench.trivial(&config, &mut report);
    }
    if run("worktree") {
        bench.worktree(&config, &mut report);
    }
    if run("ctrl-c") {
        bench.cleanup_after_ctrl_c(&config, &mut report);
    }
    if run("orphans") {
        bench.cleanup_orphans(&config, &mut report);
    }
    if run("registry") {
        bench.registry_scale(&config, &mut report);
    }
    if run("memory") {
        bench.memory(&config, &mut report);
    }
    if run("daemon") {
        bench.daemon(&config, &mut report);
    }
    if run("gitrepo") {
        bench.gitrepo(&config, &mut report);
    }
    if run("queue") {
        bench.queue(&config, &mut report);
    }
    if run("cluster") {
        bench.cluster(&config, &mut report);
    } else if run("submissions") {
        let rows = bench.submissions(&config);
        report.table(
            "10. The cluster: submissions alone",
            &["figure", "value"],
            rows,
        );
    }
    if run("network") {
        bench.network(&config, &mut report);
    }

    let text = report.text();
    print!("{text}");
    let out = PathBuf::from("target/bench.md");
    if std::fs::write(&out, &text).is_ok() {
        eprintln!("orch-bench: written to {}", out.display());
    }
}

/// Markdown, accumulated.
#[derive(Default)]
pub(crate) struct Report {
    lines: Vec<String>,
}

impl Report {
    fn line(&mut self, line: String) {
        eprintln!("{line}");
        self.lines.push(line);
    }

    fn table(&mut self, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
        self.line(format!("### {title}"));
        self.line(String::new());
        self.line(format!("| {} |", header.join(" | ")));
        self.line(format!("|{}", " --- |".repeat(header.len())));
        for row in rows {
            self.line(format!("| {} |", row.join(" | ")));
        }
        self.line(String::new());
    }

    fn text(&self) -> String {
        self.lines.join("\n") + "\n"
    }
}

/// Median and p95 of samples.
pub(crate) struct Stats {
    median: Duration,
    p95: Duration,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |p: f64| {
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    };
    Stats {
        median: at(0.5),
        p95: at(0.95),
    }
}

/// `docker rm -f` of `names` in one call, timed.
fn time_docker_rm(names: &[String]) -> Duration {
    let start = Instant::now();
    let status = quiet(Command::new("docker").args(["rm", "-f"]).args(names)).status();
    assert!(status.is_ok_and(|s| s.success()), "docker rm -f failed");
    start.elapsed()
}

/// A row comparing orch with docker at size `n`: medians, ratio, p95s.
fn versus_row(n: usize, ours: &[Duration], theirs: &[Duration]) -> Vec<String> {
    let (o, t) = (stats(ours), stats(theirs));
    vec![
        n.to_string(),
        ms(o.median),
        ms(t.median),
        ratio(o.median, t.median),
        ms(o.p95),
        ms(t.p95),
    ]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(ours: Duration, theirs: Duration) -> String {
    format!("{:.2}", ours.as_secs_f64() / theirs.as_secs_f64())
}

pub(crate) struct Bench {
    orch: PathBuf,
    root: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs a command to its end; returns its status and its peak RSS in KiB.
#[expect(clippy::zombie_processes, reason = "reaped by wait4 in wait_rusage")]
fn run_measured(cmd: &mut Command) -> (ExitStatus, u64) {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    wait_rusage(child.id())
}

/// `wait4` for `pid`: its exit status and peak RSS (KiB).
fn wait_rusage(pid: u32) -> (ExitStatus, u64) {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: rusage is plain old data, zero is a valid value; wait4 fills
    // it for the child we spawned and have not waited for yet.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = i32::try_from(pid).unwrap_or(i32::MAX);
    // SAFETY: valid pointers to locals; `pid` is our own child.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    (
        ExitStatus::from_raw(status),
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
    )
}

pub(crate) fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

pub(crate) fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kb| format!(", {} GiB RAM", kb / 1024 / 1024));
    format!("{cpu}{mem}")
}

fn date() -> String {
    sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

impl Bench {
    fn new() -> Result<Bench, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let orch = me.with_file_name("orch");
        if !orch.exists() {
            return Err(format!(
                "no orch binary at {}: build it first (cargo build --release -p orch-cli)",
                orch.display()
            ));
        }
        let ok = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "no image {IMAGE}: run `just image` (scripts/build-image)"
            ));
        }
        let root = std::env::temp_dir().join(format!("orch-bench-{}", std::process::id()));
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        std::fs::write(root.join("config.toml"), "").map_err(|e| e.to_string())?;
        Ok(Bench { orch, root })
    }

    fn docker_version(&self) -> String {
        sh(
            "docker",
            &[
                "version",
                "--format",
                "{{.Server.Version}} (API {{.Server.APIVersion}})",
            ],
        )
    }

    /// A fresh orch home with a project using the offline image.
    fn home(&self, name: &str, workspace: bool) -> (PathBuf, PathBuf) {
        let home = self.root.join(name).join("home");
        let project = self.root.join(name).join("project");
        std::fs::create_dir_all(&project).expect("create project");
        let mode = if workspace { "worktree" } else { "none" };
        std::fs::write(
            project.join("orch.toml"),
            format!(
                "image = \"{IMAGE}\"\ncommand = [\"/orch-agent\", \"{{desc}}\"]\nstop_grace = \"10s\"\nworkspace = \"{mode}\"\n"
            ),
        )
        .expect("write orch.toml");
        (home, project)
    }

    /// A fresh home that one finished task has created (instance id,
    /// registry), with its project.
    fn primed_home(&self, name: &str) -> (PathBuf, PathBuf) {
        let (home, project) = self.home(name, false);
        let status = self
            .orch(&home)
            .arg("task")
            .arg(&project)
            .arg("exit 0")
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "the first task in {name} failed"
        );
        (home, project)
    }

    fn orch(&self, home: &Path) -> Command {
        let mut cmd = Command::new(&self.orch);
        cmd.env("ORCH_HOME", home)
            .env("ORCH_CONFIG", self.root.join("config.toml"))
            .env_remove("RUST_LOG");
        quiet(&mut cmd);
        cmd
    }

    fn instance_id(home: &Path) -> String {
        std::fs::read_to_string(home.join("instance-id"))
            .expect("instance id")
            .trim()
            .to_owned()
    }

    fn count_containers(filter: &str) -> usize {
        sh("docker", &["ps", "-aq", "--filter", filter])
            .lines()
            .count()
    }

    /// A trivial task: `orch task` vs `docker run --rm --init`.
    fn trivial(&self, config: &Config, report: &mut Report) {
        let (home, project) = self.home("trivial", false);
        // Warm up both (image layers, page cache, the orch home).
        for _ in 0..2 {
            quiet(Command::new("docker").args([
                "run",
                "--rm",
                "--init",
                IMAGE,
                "/orch-agent",
                "exit 0",
            ]))
            .status()
            .ok();
            self.orch(&home)
                .arg("task")
                .arg(&project)
                .arg("exit 0")
                .status()
                .ok();
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..config.rounds {
            let start = Instant::now();
            let status = self
                .orch(&home)
                .arg("task")
                .arg(&project)
                .arg("exit 0")
                .status();
            assert!(status.is_ok_and(|s| s.success()));
            ours.push(start.elapsed());
            let start = Instant::now();
            let status = quiet(Command::new("docker").args([
                "run",
                "--rm",
                "--init",
                IMAGE,
                "/orch-agent",
                "exit 0",
            ]))
            .status();
            assert!(status.is_ok_and(|s| s.success()));
            theirs.push(start.elapsed());
        }
        let (o, t) = (stats(&ours), stats(&theirs));
        report.table(
            &format!(
                "1. Trivial task, start to exit ({} rounds, alternating)",
                config.rounds
            ),
            &["", "median", "p95"],
            vec![
                vec![
                    "`orch task p \"exit 0\"` (no workspace)".into(),
                    ms(o.median),
                    ms(o.p95),
                ],
                vec!["`docker run --rm --init`".into(), ms(t.median), ms(t.p95)],
                vec![
                    "ratio orch/docker".into(),
                    ratio(o.median, t.median),
                    ratio(o.p95, t.p95),
                ],
            ],
        );
    }

    /// A task with a workspace, on a generated 5,000-file repository and on
    /// a real tree (this repository's own `git archive HEAD`), against the
    /// same by hand: `git worktree add`, `docker run` with the mounts, the
    /// task's work committed, `git worktree remove`.
    fn worktree(&self, config: &Config, report: &mut Report) {
        let (home, project) = self.home("worktree", true);
        for i in 0..5000 {
            let dir = project.join(format!("src/d{}", i / 100));
            std::fs::create_dir_all(&dir).expect("create");
            std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).expect("write");
        }
        self.workspace_rounds(
            config,
            report,
            &home,
            &project,
            "2. Task with a workspace of a generated 5,000-file repository",
        );
        let (home, project) = self.home("real-tree", true);
        let toml = std::fs::read(project.join("orch.toml")).expect("read orch.toml");
        // This repository, wherever the benchmark is run from.
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        sh(
            "sh",
            &[
                "-c",
                &format!(
                    "git -C '{source}' archive HEAD | tar -x -C '{}'",
                    project.display()
                ),
            ],
        );
        std::fs::write(project.join("orch.toml"), toml).expect("write orch.toml");
        let files = sh(
            "sh",
            &["-c", &format!("git -C '{source}' ls-files | wc -l")],
        );
        self.workspace_rounds(
            config,
            report,
            &home,
            &project,
            &format!("2b. Task with a workspace of a real tree (this repository, {files} files)"),
        );
    }

    /// Rounds of one task that writes a file, with orch and by hand.
    fn workspace_rounds(
        &self,
        config: &Config,
        report: &mut Report,
        home: &Path,
        project: &Path,
        title: &str,
    ) {
        let git = |dir: &Path, args: &[&str]| {
            let mut full = vec!["-C", dir.to_str().expect("utf-8 path")];
            full.extend_from_slice(&[
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@example.com",
            ]);
            full.extend_from_slice(args);
            sh("git", &full)
        };
        git(project, &["init", "--quiet", "--initial-branch=main"]);
        git(project, &["add", "."]);
        git(project, &["commit", "--quiet", "-m", "the tree"]);
        let plain = project.parent().expect("a parent").join("plain");
        let common = project.join(".git");
        let task = "write result.txt done";
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..config.rounds + 1 {
            let start = Instant::now();
            let status = self.orch(home).arg("task").arg(project).arg(task).status();
            assert!(status.is_ok_and(|s| s.success()));
            let o = start.elapsed();

            let start = Instant::now();
            let wt = plain.join(format!("t{round}"));
            let wt_s = wt.to_str().expect("utf-8 path").to_owned();
            git(
                project,
                &[
                    "worktree",
                    "add",
                    "--quiet",
                    "-b",
                    &format!("plain/{round}"),
                    &wt_s,
                ],
            );
            let status = quiet(
                Command::new("docker")
                    .args(["run", "--rm", "--init"])
                    .args([
                        "-v",
                        &format!("{wt_s}:{wt_s}"),
                        "-v",
                        &format!("{0}:{0}", common.display()),
                        "-w",
                        &wt_s,
                        IMAGE,
                        "/orch-agent",
                        task,
                    ]),
            )
            .status();
            assert!(status.is_ok_and(|s| s.success()));
            git(&wt, &["add", "--all"]);
            git(&wt, &["commit", "--quiet", "-m", "the task's work"]);
            git(project, &["worktree", "remove", "--force", &wt_s]);
            let t = start.elapsed();
            if round > 0 {
                ours.push(o);
                theirs.push(t);
            }
        }
        let (o, t) = (stats(&ours), stats(&theirs));
        report.table(
            &format!("{title} ({} rounds)", config.rounds),
            &["", "median", "p95"],
            vec![
                vec![
                    "`orch task` (own repository cloned, mounted, work brought home, removed)"
                        .into(),
                    ms(o.median),
                    ms(o.p95),
                ],
                vec![
                    "by hand: `git worktree add` + `docker run --rm --init -v` + commit + `git worktree remove`"
                        .into(),
                    ms(t.median),
                    ms(t.p95),
                ],
                vec![
                    "ratio orch/by hand".into(),
                    ratio(o.median, t.median),
                    ratio(o.p95, t.p95),
                ],
            ],
        );
    }

    /// Cleanup after Ctrl+C: SIGINT to N running foreground tasks (N orch
    /// processes) until Docker lists none, vs `docker rm -f` of N running
    /// containers.
    fn cleanup_after_ctrl_c(&self, config: &Config, report: &mut Report) {
        let mut rows = Vec::new();
        for &n in &config.cleanup_ns {
            let rounds = (config.rounds / 4).max(2);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let (home, project) = self.primed_home(&format!("ctrlc-{n}-{round}"));
                let filter = format!("label=orch.instance={}", Self::instance_id(&home));
                let mut children: Vec<_> = (0..n)
                    .map(|_| {
                        self.orch(&home)
                            .arg("task")
                            .arg(&project)
                            .arg("sleep 600")
                            .spawn()
                            .expect("spawn orch")
                    })
                    .collect();
                while sh(
                    "docker",
                    &[
                        "ps",
                        "-q",
                        "--filter",
                        &filter,
                        "--filter",
                        "status=running",
                    ],
                )
                .lines()
                .count()
                    < n
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let start = Instant::now();
                for child in &children {
                    let _ = rustix::process::kill_process(
                        rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0))
                            .expect("pid"),
                        rustix::process::Signal::INT,
                    );
                }
                while Self::count_containers(&filter) > 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                ours.push(start.elapsed());
                for child in &mut children {
                    let _ = child.wait();
                }

                let names: Vec<String> = (0..n)
                    .map(|i| format!("orch-bench-rm-{round}-{i}"))
                    .collect();
                for name in &names {
                    sh(
                        "docker",
                        &[
                            "run",
                            "-d",
                            "--init",
                            "--name",
                            name,
                            IMAGE,
                            "/orch-agent",
                            "sleep 600",
                        ],
                    );
                }
                theirs.push(time_docker_rm(&names));
            }
            rows.push(versus_row(n, &ours, &theirs));
        }
        report.table(
            "3. Cleanup after Ctrl+C: SIGINT to N running tasks (N orch processes) until Docker lists none, vs `docker rm -f` of N",
            &["N", "orch median", "docker rm -f median", "ratio", "orch p95", "docker p95"],
            rows,
        );
    }

    /// `orch cleanup --all` of N orphaned containers vs `docker rm -f`.
    fn cleanup_orphans(&self, config: &Config, report: &mut Report) {
        let mut rows = Vec::new();
        for &n in &config.orphan_ns {
            let rounds = (config.rounds / 4).max(2);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let (home, _) = self.primed_home(&format!("orphans-{n}-{round}"));
                let instance = Self::instance_id(&home);
                let create = |prefix: &str, labelled: bool| -> Vec<String> {
                    (0..n)
                        .map(|i| {
                            let name = format!("{prefix}-{round}-{i}");
                            let mut args = vec!["run", "-d", "--init", "--name", &name];
                            let label = format!("orch.instance={instance}");
                            if labelled {
                                args.extend(["--label", "orch.managed=true", "--label", &label]);
                            }
                            args.extend([IMAGE, "/orch-agent", "sleep 600"]);
                            sh("docker", &args);
                            name
                        })
                        .collect()
                };
                create("orch-bench-orphan", true);
                let start = Instant::now();
                let status = self.orch(&home).args(["cleanup", "--all"]).status();
                assert!(status.is_ok_and(|s| s.success()));
                ours.push(start.elapsed());
                assert_eq!(
                    Self::count_containers(&format!("label=orch.instance={instance}")),
                    0
                );

                let names = create("orch-bench-plain", false);
                theirs.push(time_docker_rm(&names));
            }
            rows.push(versus_row(n, &ours, &theirs));
        }
        report.table(
            "4. `orch cleanup --all` of N orphaned (running) containers vs `docker rm -f` of N",
            &[
                "N",
                "orch median",
                "docker rm -f median",
                "ratio",
                "orch p95",
                "docker p95",
            ],
            rows,
        );
    }

    /// Registry scale: `orch ps -a --json` and `orch cleanup --dry-run` at
    /// growing registries of finished tasks, generated through the library.
    fn registry_scale(&self, config: &Config, report: &mut Report) {
        let mut rows = Vec::new();
        let mut previous: Option<(Duration, Duration)> = None;
        for &size in &config.registry_sizes {
            let (home, _) = self.primed_home(&format!("registry-{size}"));
            fill_registry(&home.join("orch.db"), size);
            let time = |args: &[&str]| {
                let mut samples = Vec::new();
                for _ in 0..5 {
                    let start = Instant::now();
                    let status = self.orch(&home).args(args).status();
                    assert!(status.is_ok_and(|s| s.success()), "orch {args:?}");
                    samples.push(start.elapsed());
                }
                stats(&samples).median
            };
            let ps = time(&["ps", "-a", "--json"]);
            let ps_table = time(&["ps", "-a"]);
            let dry = time(&["cleanup", "--dry-run"]);
            let dry_all = time(&["cleanup", "--dry-run", "--older-than", "0s"]);
            let growth = |now: Duration, before: Option<Duration>| {
                before.map_or("-".into(), |b| {
                    format!("x{:.1}", now.as_secs_f64() / b.as_secs_f64())
                })
            };
            rows.push(vec![
                size.to_string(),
                ms(ps_table),
                ms(ps),
                growth(ps, previous.map(|p| p.0)),
                ms(dry),
                growth(dry, previous.map(|p| p.1)),
                ms(dry_all),
            ]);
            previous = Some((ps, dry));
        }
        report.table(
            "5. Registry scale: finished tasks in the registry (median of 5)",
            &[
                "tasks",
                "`ps -a`",
                "`ps -a --json`",
                "growth",
                "`cleanup --dry-run`",
                "growth",
                "`cleanup --dry-run --older-than 0s` (plans every task)",
            ],
            rows,
        );
    }

    /// Peak RSS of `orch task` for one task, and of each of N at once.
    fn memory(&self, config: &Config, report: &mut Report) {
        let (home, project) = self.primed_home("memory");
        let (status, one) = run_measured(
            self.orch(&home)
                .arg("task")
                .arg(&project)
                .arg("echo hi; sleep 1"),
        );
        assert!(status.success());
        let (status, flood) = run_measured(
            self.orch(&home)
                .arg("task")
                .arg(&project)
                .arg("flood 50000000"),
        );
        assert!(status.success());
        let children: Vec<_> = (0..config.many)
            .map(|_| {
                self.orch(&home)
                    .arg("task")
                    .arg(&project)
                    .arg("sleep 2")
                    .spawn()
                    .expect("spawn orch")
            })
            .collect();
        let peaks: Vec<u64> = children.iter().map(|c| wait_rusage(c.id()).1).collect();
        let max = peaks.iter().copied().max().unwrap_or(0);
        let sum: u64 = peaks.iter().sum();
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        report.table(
            "6. Peak RSS of `orch task` (release build; the watchdog is a separate process)",
            &["run", "peak RSS"],
            vec![
                vec!["one task (`echo hi; sleep 1`)".into(), mib(one)],
                vec!["one task printing 50 MB".into(), mib(flood)],
                vec![
                    format!("{} tasks at once: largest process", config.many),
                    mib(max),
                ],
                vec![
                    format!("{} tasks at once: all orch processes together", config.many),
                    mib(sum),
                ],
            ],
        );
    }
}

/// Adds `size` finished tasks to the registry through its own API, as a
/// real orch would have left them: created over the last half hour, finished (so the default thresholds select none).
fn fill_registry(db: &Path, size: usize) {
    let registry = Registry::open(db).expect("open the registry");
    fill(&registry, 0..size, size);
}

/// Adds the finished tasks `range` of `size` to `registry` (see
/// [`fill_registry`]).
pub(crate) fn fill(registry: &dyn Store, range: std::ops::Range<usize>, size: usize) {
    let now = now_ms();
    for i in range {
        let created = now - 1_800_000 + (i as i64 * 1_800_000 / size as i64);
        let id = Uuid::new_v7(uuid::Timestamp::from_unix_time(
            u64::try_from(created / 1000).unwrap_or(0),
            u32::try_from((created % 1000) * 1_000_000).unwrap_or(0),
            0,
            0,
        ));
        let mut record = TaskRecord::new(
            id,
            "bench",
            &format!("generated task {i}"),
            State::Running,
            &format!("orch-{}", &id.simple().to_string()[..12]),
            IMAGE,
        );
        record.created_at = created;
        record.started_at = Some(created + 100);
        record.workspace.keep_failed_workspace = true;
        record.owner = TaskOwner {
            session: "bench".into(),
            pid: 1,
            start: 1,
            boot: "bench".into(),
            attempt: 1,
            ..TaskOwner::default()
        };
        record.progress = TaskProgress {
            percent: Some(100),
            message: Some("done".into()),
            at: Some(created + 500),
        };
        registry.insert(&record).expect("insert");
        let finish = Finish {
            state: if i % 10 == 0 {
                State::Failed
            } else {
                State::Succeeded
            },
            exit_code: Some(if i % 10 == 0 { 1 } else { 0 }),
            reason: "exited".into(),
            at: created + 1000,
        };
        registry.finish(&record.attempt(), &finish).expect("finish");
    }
}
