//! The cluster (SPEC 12) measured, on a real PostgreSQL the bench starts:
//! the queue alone, submission latency over a large registry, how soon a
//! dead node's task is rescued, what idle nodes cost the database, and
//! trivial tasks through one node and through three.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use orch_registry::{Claimant, Finish, Postgres, State, Store, TaskRecord, now_ms};
use orch_testkit::postgres;
use uuid::Uuid;

use crate::daemon::{get, submission_latency};
use crate::{Bench, Config, IMAGE, Report, fill, ms, ratio, stats};

/// The node lease of the rescue figure (short, so that it is quick to
/// take; the figure is given against it).
const LEASE: &str = "6s";

/// A node of the bench: `orch serve` on a home of its own, against the
/// shared database; stopped with SIGTERM when dropped.
struct Node {
    child: Child,
    socket: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

impl Bench {
    fn node(&self, home: &Path, db: &str, name: &str, concurrency: usize) -> Node {
        let child = self
            .orch(home)
            .args(["serve", "--concurrency", &concurrency.to_string()])
            .args(["--node-name", name])
            .env("ORCH_REGISTRY", db)
            .env("ORCH_NODE_LEASE", LEASE)
            .env("ORCH_CLEANUP_INTERVAL", "1h")
            .spawn()
            .expect("spawn orch serve");
        let socket = home.join("orch.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "node {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Node { child, socket }
    }

    /// The queue alone: three nodes (threads, each with its own pool)
    /// claiming, starting and finishing while three clients submit, on a
    /// real PostgreSQL; no container.
    pub(crate) fn queue(&self, config: &Config, report: &mut Report) {
        let Some(server) = postgres::server() else {
            report.line("(queue: PostgreSQL is not installed; skipped)".into());
            return;
        };
        let n = config.queue_tasks;
        // Runs vary with how the queue fills: when the claimants keep up,
        // it stays short; when the submitters run ahead, thousands wait.
        let mut runs: Vec<QueueRun> = (0..config.queue_runs)
            .map(|_| queue_run(&server.database(), n))
            .collect();
        runs.sort_by_key(|r| r.wall);
        let rate = |r: &QueueRun| format!("{:.0}", n as f64 / r.wall.as_secs_f64());
        let all = |pick: fn(&QueueRun) -> &Vec<Duration>| -> Vec<Duration> {
            runs.iter().flat_map(|r| pick(r).iter().copied()).collect()
        };
        let (claims, submits, changes) =
            (all(|r| &r.claims), all(|r| &r.submits), all(|r| &r.changes));
        let p99 = |samples: &[Duration]| {
            let mut sorted = samples.to_vec();
            sorted.sort();
            sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
        };
        report.table(
            &format!(
                "9. The cluster's queue alone: {n} tasks submitted (3 clients), claimed, started and finished (3 nodes) on PostgreSQL {}, {} runs",
                server_version(&server.database()),
                runs.len()
            ),
            &["figure", "value"],
            vec![
                vec![
                    "tasks per second (submit + claim + start + finish): median (slowest, fastest run)".into(),
                    format!(
                        "{} ({}, {})",
                        rate(&runs[runs.len() / 2]),
                        rate(&runs[runs.len() - 1]),
                        rate(&runs[0])
                    ),
                ],
                vec!["claim p50 / p99".into(), format!("{} / {}", ms(stats(&claims).median), ms(p99(&claims)))],
                vec!["submit p50 / p99".into(), format!("{} / {}", ms(stats(&submits).median), ms(p99(&submits)))],
                vec![
                    "start or finish p50 / p99".into(),
                    format!("{} / {}", ms(stats(&changes).median), ms(p99(&changes))),
                ],
            ],
        );
    }
}

/// What one run of the queue took.
struct QueueRun {
    wall: Duration,
    claims: Vec<Duration>,
    submits: Vec<Duration>,
    changes: Vec<Duration>,
}

/// Three nodes (threads, each with its own pool) claiming, starting and
/// finishing `n` tasks while three clients submit them, on the database
/// `db`.
fn queue_run(db: &str, n: usize) -> QueueRun {
    {
        let db = db.to_owned();
        let lease = Duration::from_secs(30);
        let submitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(6));
        let start = Instant::now();
        let submitters: Vec<_> = (0..3)
            .map(|k| {
                let (db, barrier) = (db.clone(), barrier.clone());
                let submitted = submitted.clone();
                std::thread::spawn(move || {
                    let store = Postgres::open(&db).expect("open the database");
                    barrier.wait();
                    let mut took = Vec::new();
                    for i in (k..n).step_by(3) {
                        let mut task = TaskRecord::new(
                            Uuid::now_v7(),
                            "bench",
                            &format!("queued {i}"),
                            State::Queued,
                            "orch-bench",
                            IMAGE,
                        );
                        task.queue.spec = Some("{}".into());
                        let at = Instant::now();
                        store.insert(&task).expect("submit");
                        took.push(at.elapsed());
                        submitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    took
                })
            })
            .collect();
        let nodes: Vec<_> = (0..3)
            .map(|k| {
                let (db, barrier) = (db.clone(), barrier.clone());
                let submitted = submitted.clone();
                std::thread::spawn(move || {
                    let store = Arc::new(Postgres::open(&db).expect("open the database"));
                    // As a node does: one claim loop, the claimed tasks
                    // started and finished by the runs in flight (two here,
                    // so that the node's pool of 3 is in use).
                    let (hand, work) = std::sync::mpsc::channel::<TaskRecord>();
                    let work = Arc::new(std::sync::Mutex::new(work));
                    let runs: Vec<_> = (0..2)
                        .map(|_| {
                            let (store, work) = (store.clone(), work.clone());
                            std::thread::spawn(move || {
                                let mut changes = Vec::new();
                                loop {
                                    let next = work.lock().expect("queue").recv();
                                    let Ok(task) = next else {
                                        break;
                                    };
                                    let at = Instant::now();
                                    store
                                        .mark_running(&task.attempt(), now_ms(), lease)
                                        .expect("start");
                                    changes.push(at.elapsed());
                                    let at = Instant::now();
                                    store
                                        .finish(
                                            &task.attempt(),
                                            &Finish {
                                                state: State::Succeeded,
                                                exit_code: Some(0),
                                                reason: "exited 0".into(),
                                                at: now_ms(),
                                            },
                                        )
                                        .expect("finish");
                                    changes.push(at.elapsed());
                                }
                                changes
                            })
                        })
                        .collect();
                    let claimant = Claimant {
                        session: format!("bench-{k}"),
                        node: Some((format!("node-{k}"), format!("node-{k}"))),
                        ..Claimant::default()
                    };
                    barrier.wait();
                    let mut claims = Vec::new();
                    loop {
                        let at = Instant::now();
                        let claimed = store.claim(&claimant, lease).expect("claim");
                        let Some(task) = claimed else {
                            if submitted.load(std::sync::atomic::Ordering::SeqCst) >= n {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        };
                        claims.push(at.elapsed());
                        hand.send(task).expect("a run to take it");
                    }
                    drop(hand);
                    let changes: Vec<Duration> = runs
                        .into_iter()
                        .flat_map(|run| run.join().expect("run"))
                        .collect();
                    (claims, changes)
                })
            })
            .collect();
        let submits: Vec<Duration> = submitters
            .into_iter()
            .flat_map(|t| t.join().expect("submitter"))
            .collect();
        let (claims, changes): (Vec<_>, Vec<_>) =
            nodes.into_iter().map(|t| t.join().expect("node")).unzip();
        let claims: Vec<Duration> = claims.concat();
        let changes: Vec<Duration> = changes.concat();
        let wall = start.elapsed();
        assert_eq!(claims.len(), n, "every task claimed once");
        QueueRun {
            wall,
            claims,
            submits,
            changes,
        }
    }
}

impl Bench {
    /// Submission latency through a real node, with the largest registry
    /// size of finished records in the database.
    pub(crate) fn submissions(&self, config: &Config) -> Vec<Vec<String>> {
        let Some(server) = postgres::server() else {
            return vec![vec!["(PostgreSQL is not installed; skipped)".into()]];
        };
        // Submission latency, 100,000 finished records in the database.
        let db = server.database();
        let size = config.registry_sizes.last().copied().unwrap_or(0);
        let fillers: Vec<_> = (0..4)
            .map(|k| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let store = Postgres::open(&db).expect("open the database");
                    fill(&store, (k * size / 4)..((k + 1) * size / 4), size);
                })
            })
            .collect();
        for filler in fillers {
            filler.join().expect("fill");
        }
        let (home, project) = self.home("cluster-latency", false);
        let node = self.node(&home, &db, "latency", 1);
        let (s, p99) = submission_latency(&node.socket, &project, 50, config.latency_rounds);
        drop(node);
        vec![vec![
            format!("submission latency, 50 clients, {size} finished records: p50 / p95 / p99"),
            format!("{} / {} / {}", ms(s.median), ms(s.p95), ms(p99)),
        ]]
    }

    /// Real nodes on a real PostgreSQL: submission latency over a large
    /// registry, rescue after kill -9, idle cost, and trivial tasks
    /// through one node and three.
    pub(crate) fn cluster(&self, config: &Config, report: &mut Report) {
        let Some(server) = postgres::server() else {
            report.line("(cluster: PostgreSQL is not installed; skipped)".into());
            return;
        };
        let mut rows = self.submissions(config);

        // Idle: three nodes wait; what they hold and cost the database.
        let db = server.database();
        let nodes: Vec<Node> = (0..3)
            .map(|k| {
                let (home, _) = self.home(&format!("cluster-idle-{k}"), false);
                self.node(&home, &db, &format!("idle-{k}"), 2)
            })
            .collect();
        std::thread::sleep(Duration::from_secs(5));
        let connections = connections(&db);
        let before = postgres_cpu();
        let window = Duration::from_secs(if config.rescues > 1 { 60 } else { 20 });
        std::thread::sleep(window);
        let cpu = postgres_cpu().saturating_sub(before);
        drop(nodes);
        rows.push(vec![
            "connections held by 3 idle nodes (pool + listener each)".into(),
            connections.to_string(),
        ]);
        rows.push(vec![
            format!(
                "database CPU while 3 nodes idle, over {}s",
                window.as_secs()
            ),
            format!(
                "{} ms ({:.2} %)",
                cpu.as_millis(),
                cpu.as_secs_f64() * 100.0 / window.as_secs_f64()
            ),
        ]);

        // Rescue: a node killed mid-task; how long until another ended it.
        let mut rescues = Vec::new();
        for round in 0..config.rescues {
            let db = server.database();
            let (home_a, _) = self.home(&format!("cluster-rescue-a{round}"), false);
            let (home_b, project) = self.home(&format!("cluster-rescue-b{round}"), false);
            let mut b = self.node(&home_b, &db, "victim", 2);
            let store = Postgres::open(&db).expect("open the database");
            // Only the victim is there to take it; the rescuer comes after.
            let (status, body) = crate::daemon::submit_to(&b.socket, &project, "sleep 600");
            assert_eq!(status, 201, "{body}");
            let id: Uuid = serde_json::from_str::<serde_json::Value>(&body).expect("json")["id"]
                .as_str()
                .and_then(|i| i.parse().ok())
                .expect("an id");
            wait(|| {
                store
                    .get(&id)
                    .ok()
                    .flatten()
                    .is_some_and(|t| t.state == State::Running)
            });
            let _a = self.node(&home_a, &db, "rescuer", 2);
            let killed = Instant::now();
            let _ = b.child.kill();
            let _ = b.child.wait();
            wait(|| {
                store
                    .get(&id)
                    .ok()
                    .flatten()
                    .is_some_and(|t| t.state == State::Lost)
            });
            rescues.push(killed.elapsed());
            drop(b);
            let _ = self.orch(&home_b).args(["cleanup", "--all"]).status();
        }
        let rescue = stats(&rescues);
        rows.push(vec![
            format!(
                "kill -9 of a node to its running task recorded lost (lease {LEASE}; {} kills)",
                rescues.len()
            ),
            format!("median {}, worst {}", ms(rescue.median), ms(rescue.p95)),
        ]);

        // Trivial tasks through one node, then three (on one engine here).
        let n = config.spread;
        let mut times = Vec::new();
        for count in [1, 3] {
            let db = server.database();
            let mut project = PathBuf::new();
            let nodes: Vec<Node> = (0..count)
                .map(|k| {
                    let (home, p) = self.home(&format!("cluster-spread-{count}-{k}"), false);
                    project = p;
                    self.node(&home, &db, &format!("spread-{k}"), 4)
                })
                .collect();
            let store = Postgres::open(&db).expect("open the database");
            let start = Instant::now();
            for _ in 0..n {
                let (status, body) = crate::daemon::submit_to(&nodes[0].socket, &project, "exit 0");
                assert_eq!(status, 201, "{body}");
            }
            wait(|| {
                let ended = store
                    .count_by_state()
                    .map(|c| {
                        c.iter()
                            .filter(|(s, _)| s == "succeeded")
                            .map(|(_, n)| *n)
                            .sum::<i64>()
                    })
                    .unwrap_or(0);
                ended as usize >= n
            });
            times.push(start.elapsed());
            let _ = get(&nodes[0].socket, "/healthz");
        }
        rows.push(vec![
            format!("{n} trivial tasks, concurrency 4 per node: 1 node"),
            ms(times[0]),
        ]);
        rows.push(vec![
            format!("{n} trivial tasks, concurrency 4 per node: 3 nodes"),
            ms(times[1]),
        ]);
        rows.push(vec![
            "ratio 3 nodes / 1 node".into(),
            ratio(times[1], times[0]),
        ]);
        report.table(
            "10. The cluster: real nodes on one PostgreSQL (release build, one engine)",
            &["figure", "value"],
            rows,
        );
    }
}

/// Waits (bounded) until `done`.
fn wait(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done() {
        assert!(Instant::now() < deadline, "the cluster did not get there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server's version, as it says it.
fn server_version(db: &str) -> String {
    postgres_query(db, "SHOW server_version")
}

/// Connections open to the database `db`.
fn connections(db: &str) -> String {
    let name = db.rsplit('/').next().unwrap_or_default();
    postgres_query(
        db,
        &format!("SELECT count(*)::text FROM pg_stat_activity WHERE datname = '{name}'"),
    )
}

fn postgres_query(db: &str, sql: &str) -> String {
    let mut client = ::postgres::Client::connect(db, ::postgres::NoTls).expect("connect");
    client
        .query_one(sql, &[])
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default()
}

/// CPU time (user and system) of every PostgreSQL process so far.
fn postgres_cpu() -> Duration {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim() != "postgres" {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime: fields 14 and 15, the 12th and 13th after comm.
        let used: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
            .sum();
        total += used;
    }
    Duration::from_millis(total * 1000 / ticks)
}
