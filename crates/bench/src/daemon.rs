//! `orch serve` measured: many tasks in one process, throughput against
//! `xargs -P4 docker run --rm --init`, memory over many submissions, and
//! submission latency under load.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Bench, Config, IMAGE, Report, fill_registry, ms, ratio, stats};

/// A daemon of a bench home; stopped with SIGTERM when dropped.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        signal(&self.child, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// One HTTP/1.1 request over the socket (`Connection: close`): the status
/// and the body.
fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connect to the daemon");
    let body = body.unwrap_or("");
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: orch\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(raw.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("receive");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Resident and peak resident memory of a process, KiB (`VmRSS`, `VmHWM`).
pub(crate) fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `clients` clients submitting `per_client` tasks each through `socket`,
/// all at once: the median, p95 and p99 of the answers' latency.
pub(crate) fn submission_latency(
    socket: &Path,
    project: &Path,
    clients: usize,
    per_client: usize,
) -> (crate::Stats, Duration) {
    let socket = socket.to_path_buf();
    latency_of(project, clients, per_client, move |body| {
        request(&socket, "POST", "/v1/tasks", Some(body))
    })
}

/// `clients` clients submitting `per_client` tasks each with `submit`
/// (which sends a body and answers the status and body), all at once,
/// after one round each that is not counted: the median, p95 and p99 of
/// the answers' latency.
pub(crate) fn latency_of(
    project: &Path,
    clients: usize,
    per_client: usize,
    submit: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
) -> (crate::Stats, Duration) {
    let barrier = Arc::new(Barrier::new(clients));
    let submit = Arc::new(submit);
    // The submitted tasks queue behind one slot; the daemon's stop leaves
    // them queued, and the home goes with the bench.
    let body = Arc::new(json!({ "project": project, "desc": "exit 0" }).to_string());
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (barrier, body, submit) = (barrier.clone(), body.clone(), submit.clone());
            std::thread::spawn(move || {
                // One round first, not counted: the daemon's first answers
                // also open its connections and start its threads.
                barrier.wait();
                let (status, answer) = submit(&body);
                assert_eq!(status, 201, "submit: {answer}");
                barrier.wait();
                (0..per_client)
                    .map(|_| {
                        let start = Instant::now();
                        let (status, answer) = submit(&body);
                        assert_eq!(status, 201, "submit: {answer}");
                        start.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let samples: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let p99 = {
        let mut sorted = samples.clone();
        sorted.sort();
        sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
    };
    (stats(&samples), p99)
}

/// Submits `desc` of `project` through a daemon's socket: the status and
/// the answer.
pub(crate) fn submit_to(socket: &Path, project: &Path, desc: &str) -> (u16, String) {
    let body = json!({ "project": project, "desc": desc }).to_string();
    request(socket, "POST", "/v1/tasks", Some(&body))
}

/// One HTTP request over a daemon's socket (for the cluster's bench).
pub(crate) fn get(socket: &Path, path: &str) -> (u16, String) {
    request(socket, "GET", path, None)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Bench {
    fn serve(&self, home: &Path, concurrency: usize) -> Daemon {
        self.serve_with(home, concurrency, |_| ())
    }

    /// A daemon of `home`, its command changed by `change` first.
    pub(crate) fn serve_with(
        &self,
        home: &Path,
        concurrency: usize,
        change: impl FnOnce(&mut Command),
    ) -> Daemon {
        let mut cmd = self.orch(home);
        cmd.args(["serve", "--concurrency", &concurrency.to_string()])
            .env("ORCH_CLEANUP_INTERVAL", "1h");
        change(&mut cmd);
        let child = cmd.spawn().expect("spawn orch serve");
        let socket = home.join("orch.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket }
    }

    /// The daemon section.
    pub(crate) fn daemon(&self, config: &Config, report: &mut Report) {
        let (home, project) = self.primed_home("daemon");
        let spec = |desc: &str| json!({ "project": project, "desc": desc }).to_string();
        let submit = |daemon: &Daemon, desc: &str| {
            let (status, body) = request(&daemon.socket, "POST", "/v1/tasks", Some(&spec(desc)));
            assert_eq!(status, 201, "submit: {body}");
        };
        // Idle: no task queued, creating or running, read from the
        // metrics (a listing of thousands of queued tasks would load the
        // daemon it measures).
        let wait_idle = |daemon: &Daemon| loop {
            let (_, text) = request(&daemon.socket, "GET", "/metrics", None);
            let live: u64 = text
                .lines()
                .filter(|l| l.starts_with("orch_tasks{"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
            if live == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut rows = Vec::new();

        // Many tasks at once in one process.
        {
            let daemon = self.serve(&home, config.many);
            for _ in 0..config.many {
                submit(&daemon, "sleep 5");
            }
            wait_idle(&daemon);
            let (_, peak) = memory(daemon.child.id());
            rows.push(vec![
                format!("{} tasks running at once: daemon's peak RSS", config.many),
                mib(peak),
            ]);
        }

        // Throughput at concurrency 4, against xargs -P4 docker run.
        let n = config.throughput;
        let daemon = self.serve(&home, 4);
        let start = Instant::now();
        for _ in 0..n {
            submit(&daemon, "exit 0");
        }
        wait_idle(&daemon);
        let ours = start.elapsed();
        let (after_first, _) = memory(daemon.child.id());
        let start = Instant::now();
        let mut xargs = Command::new("xargs")
            .args([
                "-P4",
                "-n1",
                "docker",
                "run",
                "--rm",
                "--init",
                IMAGE,
                "/orch-agent",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("xargs");
        {
            let mut stdin = xargs.stdin.take().expect("stdin");
            for _ in 0..n {
                stdin.write_all(b"'exit 0'\n").expect("feed xargs");
            }
        }
        assert!(xargs.wait().is_ok_and(|s| s.success()), "xargs failed");
        let theirs = start.elapsed();
        rows.push(vec![
            format!("{n} trivial tasks through the API at concurrency 4"),
            ms(ours),
        ]);
        rows.push(vec![
            "the same with `xargs -P4 docker run --rm --init`".into(),
            ms(theirs),
        ]);
        rows.push(vec!["ratio daemon/xargs".into(), ratio(ours, theirs)]);

        // Memory after many more tasks, run the same way: in batches of the
        // same size, so that both readings are taken with the queue empty.
        let more = config.submissions.saturating_sub(n);
        for batch in (0..more).step_by(n.max(1)) {
            for _ in batch..(batch + n).min(more) {
                submit(&daemon, "exit 0");
            }
            wait_idle(&daemon);
        }
        let (after_all, _) = memory(daemon.child.id());
        rows.push(vec![
            format!("daemon's RSS after {n} tasks"),
            mib(after_first),
        ]);
        rows.push(vec![
            format!("daemon's RSS after {} tasks", n + more),
            mib(after_all),
        ]);
        rows.push(vec![
            "ratio".into(),
            format!("{:.2}", after_all as f64 / after_first.max(1) as f64),
        ]);
        drop(daemon);
        report.table(
            "7. The daemon: many tasks in one process (release build)",
            &["run", "figure"],
            rows,
        );

        // Submission latency: 50 clients at once, with 100,000 finished
        // tasks in the registry.
        let (home, project) = self.primed_home("daemon-latency");
        fill_registry(
            &home.join("orch.db"),
            config.registry_sizes.last().copied().unwrap_or(0),
        );
        let daemon = self.serve(&home, 1);
        let clients = 50;
        let per_client = config.latency_rounds;
        let (s, p99) = submission_latency(&daemon.socket, &project, clients, per_client);
        drop(daemon);
        report.table(
            &format!(
                "8. Submission latency: {clients} clients submitting {per_client} tasks each at once, {} finished tasks in the registry",
                config.registry_sizes.last().copied().unwrap_or(0)
            ),
            &["p50", "p95", "p99"],
            vec![vec![ms(s.median), ms(s.p95), ms(p99)]],
        );
    }
}
