//! Many hosts (SPEC 12): three `orch serve` nodes, each with its own home
//! and, where the machine allows, its own Docker engine, sharing one real
//! PostgreSQL database. Hosts die, freeze and come back; the database
//! restarts; a task is cancelled and followed from a node that does not run
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orch_testkit::dockerd::Engine;
use orch_testkit::postgres;
use rustix::process::Signal;

use crate::helper::{self, Certs, IMAGE, Running, TestEnv, code, stderr, wait_for, wait_for_opt};
use crate::require_docker;

/// The node lease of these tests: short, so that deaths are seen soon.
const LEASE: &str = "4s";
const LEASE_TIME: Duration = Duration::from_secs(4);
/// Every node's token (a cluster shares one).
const TOKEN: &str = "cluster-test-token-1234567890";

/// One node: its own home, engine and daemon.
struct Node {
    name: String,
    dir: tempfile::TempDir,
    port: u16,
    docker_host: Option<String>,
    daemon: Option<Running>,
    db: String,
    config: PathBuf,
    /// Mutual TLS between nodes and their users, where the test asks.
    tls: Option<std::sync::Arc<Certs>>,
}

impl Node {
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `orch` as this node's host runs it.
    fn orch(&self) -> Command {
        let mut cmd = Command::new(helper::orch_bin());
        cmd.env("ORCH_HOME", self.home())
            .env("ORCH_CONFIG", &self.config)
            .env("ORCH_REGISTRY", &self.db)
            .env("ORCH_TOKEN", TOKEN)
            .env("ORCH_NODE_LEASE", LEASE)
            .env("ORCH_NODE_NAME", &self.name)
            .env_remove("RUST_LOG")
            .env_remove("ORCH_FAIL_POINT")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        match &self.docker_host {
            Some(host) => cmd.env("DOCKER_HOST", host),
            None => cmd.env_remove("DOCKER_HOST"),
        };
        if let Some(certs) = &self.tls {
            cmd.env("ORCH_TLS_CA", certs.path("ca.pem"))
                .env("ORCH_TLS_CERT", certs.path("client.pem"))
                .env("ORCH_TLS_KEY", certs.path("client.key"));
        }
        cmd
    }

    /// Starts its daemon and waits until it answers.
    fn start(&mut self, concurrency: usize) {
        self.start_failing(concurrency, None);
    }

    /// The same, the daemon failing at `fail_point` (`ORCH_FAIL_POINT`).
    fn start_failing(&mut self, concurrency: usize, fail_point: Option<&str>) {
        let mut cmd = self.orch();
        if let Some(point) = fail_point {
            cmd.env("ORCH_FAIL_POINT", point);
        }
        let listen = format!("127.0.0.1:{}", self.port);
        cmd.args(["serve", "--concurrency", &concurrency.to_string()])
            .args(["--listen", &listen])
            .args(["--node-name", &self.name]);
        match &self.tls {
            Some(certs) => cmd
                .args(["--advertise", &format!("https://localhost:{}", self.port)])
                .arg("--tls-cert")
                .arg(certs.path("server.pem"))
                .arg("--tls-key")
                .arg(certs.path("server.key"))
                .arg("--tls-client-ca")
                .arg(certs.path("ca.pem")),
            None => cmd.args(["--advertise", &format!("http://{listen}")]),
        };
        let running = Running::spawn(cmd);
        let socket = self.home().join("orch.sock");
        wait_for("the node to answer", Duration::from_secs(30), || {
            let said = running.stderr_text();
            assert!(!said.contains("orch: error"), "{}: {said}", self.name);
            healthy(&socket).then_some(())
        });
        self.daemon = Some(running);
    }

    fn signal(&self, signal: Signal) {
        if let Some(daemon) = &self.daemon {
            daemon.signal(signal);
        }
    }

    /// Stops its daemon gracefully (its tasks stop, its watchdog is told).
    fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(daemon.pid()).unwrap(),
                Signal::TERM,
            );
            daemon.wait(Duration::from_secs(60));
        }
    }

    /// `orch submit` through this node; the task's id.
    fn submit(&self, project: &Path, desc: &str, args: &[&str]) -> String {
        let out = self
            .orch()
            .arg("submit")
            .args(args)
            .arg(project)
            .arg(desc)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}: submit: {}", self.name, stderr(&out));
        helper::stdout(&out).trim().to_owned()
    }

    /// Every record of the cluster, as this node's `orch ps -a --json`
    /// (none while the database cannot be reached).
    fn tasks(&self) -> Vec<serde_json::Value> {
        let out = self.orch().args(["ps", "-a", "--json"]).output().unwrap();
        if code(&out) != 0 {
            eprintln!("{}: ps: {}", self.name, stderr(&out));
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// This node's instance id.
    fn instance(&self) -> String {
        std::fs::read_to_string(self.home().join("instance-id"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// `docker` against this node's engine.
    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        if let Some(host) = &self.docker_host {
            cmd.args(["-H", host]);
        }
        cmd
    }

    /// This node's containers: `(task id, state)`.
    fn containers(&self) -> Vec<(String, String)> {
        let out = self
            .docker()
            .args(["ps", "-a", "--filter"])
            .arg(format!("label=orch.instance={}", self.instance()))
            .args(["--format", "{{.Label \"orch.task\"}} {{.State}}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, s)| (t.to_owned(), s.to_owned()))
            .collect()
    }

    /// `format` of each `event` of this node's containers since `since`
    /// (Unix seconds), by the engine's own event log.
    fn events_since(&self, since: u64, event: &str, format: &str) -> Vec<String> {
        let out = self
            .docker()
            .args(["events", "--since", &since.to_string(), "--until"])
            // Whole seconds: an event of this very second is before the
            // next one (docker waits until then).
            .arg((now_secs() + 1).to_string())
            .args(["--filter", "type=container", "--filter"])
            .arg(format!("event={event}"))
            .arg("--filter")
            .arg(format!("label=orch.instance={}", self.instance()))
            .args(["--format", format])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// When (Unix milliseconds) this node's containers died since `since`.
    fn died_since(&self, since: u64) -> Vec<i64> {
        self.events_since(since, "die", "{{.TimeNano}}")
            .iter()
            .filter_map(|l| l.parse::<i64>().ok())
            .map(|ns| ns / 1_000_000)
            .collect()
    }

    /// Task ids of every container this node's engine created since
    /// `since`.
    fn created_since(&self, since: u64) -> Vec<String> {
        self.events_since(since, "create", "{{index .Actor.Attributes \"orch.task\"}}")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(daemon) = &self.daemon {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(daemon.pid()).unwrap(),
                Signal::CONT,
            );
        }
        self.stop();
        let _ = self.orch().args(["cleanup", "--all"]).output();
    }
}

/// Whether a daemon answers `GET /healthz` on `socket`.
fn healthy(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: orch\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A database, a project every node can reach, and three nodes (not
/// started). Engines 1 and 2 of the test's own, where the machine allows
/// (else the one engine, said loudly); `own` engines for nodes that must
/// die alone.
struct Cluster {
    project: TestEnv,
    nodes: Vec<Node>,
    // Dropped after the nodes (fields drop in order).
    _engines: Vec<Engine>,
}

impl Cluster {
    /// `None` where PostgreSQL is not installed (said loudly).
    fn new(engine_base: u8, project_extra: &str) -> Option<Cluster> {
        let db = postgres::server()?.database();
        Cluster::with_db(engine_base, project_extra, db)
    }

    fn with_db(engine_base: u8, project_extra: &str, db: String) -> Option<Cluster> {
        let project = TestEnv::new();
        project.write_project_config(project_extra);
        let mut engines = Vec::new();
        let mut nodes = Vec::new();
        for (i, name) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
            let engine = Engine::start(engine_base + i as u8, &[IMAGE]);
            let docker_host = engine.as_ref().map(Engine::host);
            if let Some(engine) = engine {
                engines.push(engine);
            }
            nodes.push(Node {
                name: name.to_owned(),
                dir: tempfile::Builder::new()
                    .prefix("orch-e2e-node-")
                    .tempdir()
                    .unwrap(),
                port: helper::web::free_port(),
                docker_host,
                daemon: None,
                db: db.clone(),
                config: project.config.clone(),
                tls: None,
            });
        }
        Some(Cluster {
            project,
            nodes,
            _engines: engines,
        })
    }

    fn start(&mut self, concurrency: usize) {
        for node in &mut self.nodes {
            node.start(concurrency);
        }
    }

    /// Waits until every task named is in a terminal state; the records.
    fn wait_ended(&self, ids: &[String], limit: Duration) -> BTreeMap<String, serde_json::Value> {
        let wanted: BTreeSet<&String> = ids.iter().collect();
        wait_for("every task to end", limit, || {
            let tasks: BTreeMap<String, serde_json::Value> = self.nodes[0]
                .tasks()
                .into_iter()
                .filter(|t| wanted.contains(&t["id"].as_str().unwrap_or("").to_owned()))
                .map(|t| (t["id"].as_str().unwrap().to_owned(), t))
                .collect();
            let ended = tasks.len() == ids.len()
                && tasks.values().all(|t| {
                    !["queued", "creating", "running"].contains(&t["state"].as_str().unwrap())
                });
            ended.then_some(tasks)
        })
    }
}

/// 60 tasks submitted to one node run on all three, each exactly once: one
/// container per task across every engine, on its first attempt, and every
/// result recorded.
#[test]
fn sixty_tasks_submitted_to_one_node_run_once_across_three() {
    require_docker!();
    let Some(mut cluster) = Cluster::new(11, "") else {
        return;
    };
    cluster.start(3);
    let since = now_secs();
    let project = cluster.project.project.clone();
    let ids: Vec<String> = (0..60)
        .map(|i| cluster.nodes[0].submit(&project, &format!("sleep 1; echo done {i}"), &[]))
        .collect();
    let tasks = cluster.wait_ended(&ids, Duration::from_secs(240));
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for (id, task) in &tasks {
        assert_eq!(task["state"], "succeeded", "{id}: {task}");
        assert_eq!(task["attempt"], 1, "{id}: one attempt");
        *by_node
            .entry(task["node"].as_str().unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_node.len(), 3, "all three nodes ran tasks: {by_node:?}");
    // Every engine's own event log: one container per task, in all.
    let mut created: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.created_since(since))
        .collect();
    created.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        created, expected,
        "one container per task across the engines"
    );
    // The output of a task that ran elsewhere reads from any node.
    let (elsewhere, _) = tasks
        .iter()
        .find(|(_, t)| t["node"] != "alpha")
        .expect("a task another node ran");
    let out = cluster.nodes[0]
        .orch()
        .args(["logs", elsewhere])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        helper::stdout(&out).contains("done"),
        "{}",
        helper::stdout(&out)
    );
    for node in &cluster.nodes {
        assert!(
            node.containers().is_empty(),
            "{}: {:?}",
            node.name,
            node.containers()
        );
    }
}

/// `max_parallel = 2` holds across three nodes under a burst of 30.
#[test]
fn max_parallel_holds_across_the_cluster() {
    require_docker!();
    let Some(mut cluster) = Cluster::new(14, "max_parallel = 2") else {
        return;
    };
    cluster.start(4);
    let project = cluster.project.project.clone();
    let ids: Vec<String> = (0..30)
        .map(|_| cluster.nodes[1].submit(&project, "sleep 1", &[]))
        .collect();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let tasks = cluster.nodes[2].tasks();
        let live = tasks
            .iter()
            .filter(|t| ["creating", "running"].contains(&t["state"].as_str().unwrap()))
            .count();
        most = most.max(live);
        let done = tasks.iter().filter(|t| t["state"] == "succeeded").count();
        if done == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the burst did not finish: {done} done"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(most <= 2, "{most} ran at once across the cluster");
    assert!(most == 2, "the cap was reached: {most}");
    // A task no live node can take is queued, and its submitter told so.
    let out = cluster.nodes[1]
        .orch()
        .args(["submit", "--constraint", "gpu=true"])
        .arg(&project)
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no live node has gpu=true"),
        "{}",
        stderr(&out)
    );
    let id = helper::stdout(&out).trim().to_owned();
    let cancelled = cluster.nodes[1]
        .orch()
        .args(["cancel", &id])
        .output()
        .unwrap();
    assert_eq!(code(&cancelled), 0, "{}", stderr(&cancelled));
}

/// A host dies: node beta's daemon is killed and its engine with it while
/// it runs tasks. Its running tasks end lost, or run again elsewhere when
/// they may (`--retries 1`), within the lease and 5 s; queued ones run on
/// the others; nothing runs twice at once; when beta and its engine come
/// back, beta reaps what it left.
#[test]
fn a_host_that_dies_loses_nothing_and_reaps_when_it_returns() {
    require_docker!();
    let Some(mut cluster) = Cluster::new(17, "") else {
        return;
    };
    // Beta alone first, so that it holds the long tasks (and, full, no
    // other).
    cluster.nodes[1].start(2);
    let project = cluster.project.project.clone();
    let retried = cluster.nodes[1].submit(&project, "echo started; sleep 30", &["--retries", "1"]);
    let lost = cluster.nodes[1].submit(&project, "echo started; sleep 30", &[]);
    wait_for("beta to run both", Duration::from_secs(60), || {
        let running = cluster.nodes[1]
            .containers()
            .iter()
            .filter(|(_, s)| s == "running")
            .count();
        (running == 2).then_some(())
    });
    cluster.nodes[0].start(2);
    cluster.nodes[2].start(2);
    let queued: Vec<String> = (0..4)
        .map(|_| cluster.nodes[0].submit(&project, "sleep 1", &[]))
        .collect();
    // The host dies: its daemon, and its engine with every container.
    let killed_at = orch_registry::now_ms();
    cluster.nodes[1].signal(Signal::KILL);
    let dead = cluster._engines.get_mut(1).map(|e| e.stop(true));
    if dead.is_none() {
        eprintln!("NOTE: one engine only: beta's containers stay until beta returns");
    }
    let limit = LEASE_TIME + Duration::from_secs(5);
    let rescued_by = Instant::now() + limit;
    let lost_task = wait_for(
        "the lost task to end lost",
        limit + Duration::from_secs(5),
        || {
            cluster.nodes[0]
                .tasks()
                .into_iter()
                .find(|t| t["id"] == lost.as_str() && t["state"] == "lost")
        },
    );
    assert!(Instant::now() <= rescued_by + Duration::from_secs(5));
    let reason = lost_task["reason"].as_str().unwrap_or("");
    assert!(reason.contains("node beta"), "{reason}");
    let tasks = cluster.wait_ended(
        &[vec![retried.clone()], queued.clone()].concat(),
        Duration::from_secs(120),
    );
    let again = &tasks[&retried];
    assert_eq!(again["attempt"], 2, "{again}");
    assert_ne!(again["node"], "beta");
    assert!(
        again["started_at"].as_i64().unwrap() > killed_at,
        "its second run started after the first one's host died"
    );
    for id in &queued {
        assert_eq!(tasks[id]["state"], "succeeded", "{}", tasks[id]);
    }
    // Beta comes back, its engine first: it reaps what it left.
    if let Some(engine) = cluster._engines.get_mut(1) {
        engine.restart();
    }
    cluster.nodes[1].start(2);
    let beta = &cluster.nodes[1];
    assert!(
        wait_for_opt(Duration::from_secs(60), || beta.containers().is_empty()),
        "beta reaped its leftovers: {:?}",
        beta.containers()
    );
    let lost_now = cluster.nodes[1]
        .tasks()
        .into_iter()
        .find(|t| t["id"] == lost.as_str())
        .unwrap();
    assert_eq!(lost_now["state"], "lost", "the rescuer's outcome stands");
    // Back, beta sent the output it kept on its disk: any node shows it.
    let alpha = &cluster.nodes[0];
    let logs = alpha.orch().args(["logs", &lost]).output().unwrap();
    assert_eq!(code(&logs), 0, "{}", stderr(&logs));
    assert!(
        helper::stdout(&logs).contains("started"),
        "{}",
        helper::stdout(&logs)
    );
}

/// A node killed between claiming a task and starting its container (its
/// record `creating`, its workspace made): its watchdog puts the task back
/// in the queue, and another node runs it, on its second attempt, exactly
/// once; the dead node created no container and left no workspace.
#[test]
fn a_task_claimed_but_not_started_runs_elsewhere() {
    require_docker!();
    let Some(mut cluster) = Cluster::new(32, "") else {
        return;
    };
    // With worktrees, so that beta has a workspace to leave.
    cluster.project.git_project(IMAGE, "");
    let since = now_secs();
    cluster.nodes[1].start_failing(1, Some("after-workspace:sigkill"));
    let project = cluster.project.project.clone();
    let id = cluster.nodes[1].submit(&project, "echo ran-here", &[]);
    let beta = cluster.nodes[1].daemon.take().unwrap();
    let died = beta.wait(Duration::from_secs(60));
    assert_eq!(
        died.code(),
        None,
        "killed at the fail point: {}",
        died.stderr
    );
    let queued = wait_for("it to be queued again", Duration::from_secs(30), || {
        cluster.nodes[0]
            .tasks()
            .into_iter()
            .find(|t| t["id"] == id.as_str() && t["state"] == "queued")
    });
    let reason = queued["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("queued again before it started"),
        "{queued}"
    );
    assert_eq!(queued["attempt"], 1, "{queued}");
    let beta_workspaces = cluster.nodes[1].home().join("workspaces");
    cluster.nodes[0].start(2);
    let tasks = cluster.wait_ended(std::slice::from_ref(&id), Duration::from_secs(60));
    let task = &tasks[&id];
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["attempt"], 2, "{task}");
    assert_eq!(task["node"], "alpha", "{task}");
    // Once: one container for it, on alpha; none on beta, nor a workspace.
    let created: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.created_since(since))
        .filter(|t| t == &id)
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(cluster.nodes[1].created_since(since).is_empty());
    let left: Vec<_> = walk_files(&beta_workspaces);
    assert!(left.is_empty(), "beta left {left:?}");
}

/// Every file under `dir` (none if it does not exist).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk_files(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// A partition: node beta is frozen (SIGSTOP) past its lease. Its
/// watchdog removes its containers before the lease runs out (the node
/// fences itself); a rescuer ends its task; when beta thaws, its late
/// writes are refused and the record keeps the rescuer's outcome.
#[test]
fn a_frozen_node_fences_itself_and_its_late_writes_are_refused() {
    require_docker!();
    let Some(mut cluster) = Cluster::new(20, "") else {
        return;
    };
    cluster.nodes[1].start(2);
    let project = cluster.project.project.clone();
    let id = cluster.nodes[1].submit(&project, "echo started; sleep 60", &[]);
    wait_for("beta to run it", Duration::from_secs(60), || {
        cluster.nodes[1]
            .containers()
            .iter()
            .any(|(_, s)| s == "running")
            .then_some(())
    });
    cluster.nodes[0].start(2);
    let since = now_secs();
    cluster.nodes[1].signal(Signal::STOP);
    let rescued = wait_for("a rescuer to end it", LEASE_TIME * 4, || {
        cluster.nodes[0]
            .tasks()
            .into_iter()
            .find(|t| t["id"] == id.as_str() && t["state"] == "lost")
    });
    // Its watchdog, not frozen, fenced it: the container died before the
    // lease ran out and the rescuer wrote its end.
    let died = cluster.nodes[1].died_since(since);
    let rescued_at = rescued["finished_at"].as_i64().unwrap();
    assert!(
        died.first().is_some_and(|&at| at < rescued_at),
        "died at {died:?}, rescued at {rescued_at}"
    );
    cluster.nodes[1].signal(Signal::CONT);
    // Beta wakes, finds its task gone, and writes nothing over it.
    std::thread::sleep(LEASE_TIME);
    let after = cluster.nodes[0]
        .tasks()
        .into_iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap();
    assert_eq!(after["state"], "lost", "{after}");
    assert_eq!(after["reason"], rescued["reason"]);
    assert_eq!(after["finished_at"], rescued["finished_at"]);
    assert!(
        wait_for_opt(Duration::from_secs(30), || cluster.nodes[1]
            .containers()
            .is_empty()),
        "{:?}",
        cluster.nodes[1].containers()
    );
}

/// PostgreSQL restarts while tasks run and queue: no task is lost, no
/// record is left live, every node goes on claiming.
#[test]
fn the_database_restarting_loses_nothing() {
    require_docker!();
    // A server of its own: restarting it must not reach other tests.
    let Some(server) = postgres::Server::dedicated() else {
        return;
    };
    let Some(mut cluster) = Cluster::with_db(23, "", server.database()) else {
        return;
    };
    cluster.start(2);
    let project = cluster.project.project.clone();
    // A restart slower than half the lease (a loaded machine) makes a node
    // stop its tasks itself; with a retry they run again, and still
    // nothing is lost.
    let mut ids: Vec<String> = (0..9)
        .map(|i| cluster.nodes[i % 3].submit(&project, "sleep 2", &["--retries", "2"]))
        .collect();
    wait_for("tasks to run", Duration::from_secs(60), || {
        cluster
            .nodes
            .iter()
            .any(|n| !n.containers().is_empty())
            .then_some(())
    });
    server.restart();
    ids.extend((0..3).map(|i| cluster.nodes[i].submit(&project, "sleep 1", &[])));
    let tasks = cluster.wait_ended(&ids, Duration::from_secs(180));
    for (id, task) in &tasks {
        assert_eq!(task["state"], "succeeded", "{id}: {task}");
    }
    let nodes = tasks
        .values()
        .map(|t| t["node"].as_str().unwrap_or("-").to_owned())
        .collect::<BTreeSet<_>>();
    assert_eq!(nodes.len(), 3, "every node claimed: {nodes:?}");
}

/// PostgreSQL down for longer than the lease, with tasks running and
/// queued: the running ones are stopped by their own nodes before their
/// leases run out and, with a retry left, run again; the queued ones run
/// once the database is back (a claim is fenced by its own fresh lease,
/// not by the outage before it). Every one succeeds.
#[test]
fn an_outage_longer_than_the_lease_loses_nothing() {
    require_docker!();
    let Some(server) = postgres::Server::dedicated() else {
        return;
    };
    let Some(mut cluster) = Cluster::with_db(35, "", server.database()) else {
        return;
    };
    cluster.start(1);
    let project = cluster.project.project.clone();
    let ids: Vec<String> = (0..5)
        .map(|i| cluster.nodes[i % 3].submit(&project, "sleep 4", &["--retries", "1"]))
        .collect();
    wait_for("three tasks to run", Duration::from_secs(60), || {
        (cluster
            .nodes
            .iter()
            .filter(|n| n.containers().iter().any(|(_, s)| s == "running"))
            .count()
            == 3)
            .then_some(())
    });
    server.outage(LEASE_TIME * 2);
    let tasks = cluster.wait_ended(&ids, Duration::from_secs(180));
    for (id, task) in &tasks {
        assert_eq!(task["state"], "succeeded", "{id}: {task}");
    }
    assert!(
        tasks.values().any(|t| t["attempt"] == 2),
        "a task stopped by the outage ran again: {tasks:?}"
    );
}

/// A node's daemon killed (its watchdog lives on) under a task with a
/// retry left: the watchdog removes the container and puts the task back
/// in the queue, and another node runs it again.
#[test]
fn a_task_whose_daemon_dies_is_retried_elsewhere() {
    require_docker!();
    let Some(mut cluster) = Cluster::new(38, "") else {
        return;
    };
    cluster.nodes[1].start(1);
    let project = cluster.project.project.clone();
    let id = cluster.nodes[1].submit(&project, "echo attempt; sleep 3", &["--retries", "1"]);
    wait_for("beta to run it", Duration::from_secs(60), || {
        cluster.nodes[1]
            .containers()
            .iter()
            .any(|(_, s)| s == "running")
            .then_some(())
    });
    cluster.nodes[1].signal(Signal::KILL);
    let queued = wait_for(
        "its watchdog to queue it again",
        Duration::from_secs(60),
        || {
            cluster.nodes[0]
                .tasks()
                .into_iter()
                .find(|t| t["id"] == id.as_str() && t["state"] == "queued")
        },
    );
    assert!(
        queued["reason"]
            .as_str()
            .is_some_and(|r| r.contains("queued again to retry")),
        "{queued}"
    );
    cluster.nodes[0].start(1);
    let tasks = cluster.wait_ended(std::slice::from_ref(&id), Duration::from_secs(60));
    let task = &tasks[&id];
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["attempt"], 2, "{task}");
    assert_eq!(task["node"], "alpha", "{task}");
    assert!(cluster.nodes[1].containers().is_empty());
}

/// Cancel on gamma of a task running on alpha: its container is gone when
/// `orch cancel` returns; `logs -f` of it from gamma streams its output,
/// relayed from alpha. The nodes speak mutual TLS: the relay presents the
/// node's client certificate, and a caller without one is refused.
#[test]
fn cancel_and_logs_reach_a_task_on_another_node() {
    require_docker!();
    let Some(mut cluster) = Cluster::new(26, "") else {
        return;
    };
    let certs = std::sync::Arc::new(Certs::make());
    for node in &mut cluster.nodes {
        node.tls = Some(certs.clone());
    }
    cluster.nodes[0].start(2);
    let project = cluster.project.project.clone();
    let id = cluster.nodes[0].submit(&project, "echo hello-from-alpha; sleep 120", &[]);
    let alpha_runs = |cluster: &Cluster| {
        cluster.nodes[0]
            .containers()
            .iter()
            .any(|(t, s)| t == &id && s == "running")
    };
    wait_for("alpha to run it", Duration::from_secs(60), || {
        alpha_runs(&cluster).then_some(())
    });
    cluster.nodes[2].start(2);
    let mut follow = cluster.nodes[2].orch();
    follow.args(["logs", "-f", &id]);
    let following = Running::spawn(follow);
    wait_for("the output through gamma", Duration::from_secs(30), || {
        following
            .stdout_text()
            .contains("hello-from-alpha")
            .then_some(())
    });
    // Gamma's API relays it too, presenting gamma's client certificate.
    let socket = cluster.nodes[2].home().join("orch.sock");
    let answer = helper::get(&socket, &format!("/v1/tasks/{id}/logs")).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("hello-from-alpha"), "{}", answer.body);
    // Without a client certificate alpha takes no one, token or not.
    let out = cluster.nodes[2]
        .orch()
        .env_remove("ORCH_TLS_CERT")
        .env_remove("ORCH_TLS_KEY")
        .env(
            "ORCH_HOST",
            format!("https://localhost:{}", cluster.nodes[0].port),
        )
        .args(["logs", &id])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("requires a client certificate"),
        "{}",
        stderr(&out)
    );
    assert!(!helper::stdout(&out).contains("hello-from-alpha"));
    let started = Instant::now();
    let out = cluster.nodes[2]
        .orch()
        .args(["cancel", &id])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let took = started.elapsed();
    assert!(!alpha_runs(&cluster), "gone when cancel returned");
    eprintln!("cluster: cancel from another node took {took:?}");
    let finished = following.wait(Duration::from_secs(30));
    assert_ne!(
        finished.code(),
        Some(0),
        "logs -f ends with the task: {}",
        finished.stderr
    );
    let record = cluster.nodes[2]
        .tasks()
        .into_iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap();
    assert_eq!(record["state"], "cancelled", "{record}");
}

/// Bad registry settings: an unreachable database, a wrong password, a
/// schema newer than this orch: one line each, exit 125, nothing made.
#[test]
fn bad_registry_settings_are_one_line_errors() {
    require_docker!();
    let Some(server) = postgres::server() else {
        return;
    };
    let env = TestEnv::new();
    let db = server.database();
    let newer = server.database();
    // Migrate it, then play a newer orch.
    let first = env
        .orch()
        .env("ORCH_REGISTRY", &newer)
        .args(["ps"])
        .output()
        .unwrap();
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    server.execute(&newer, "UPDATE orch_schema SET version = 99");
    let unreachable = format!(
        "postgres://orch:x@127.0.0.1:{}/none",
        helper::web::free_port()
    );
    let wrong = server.url_with(db.rsplit('/').next().unwrap(), "not-the-password");
    for (url, says) in [
        (unreachable.as_str(), "connect"),
        (wrong.as_str(), "password"),
        (newer.as_str(), "newer than this orch"),
        ("mysql://nope", "ORCH_REGISTRY"),
    ] {
        let out = env
            .orch()
            .env("ORCH_REGISTRY", url)
            .arg("task")
            .arg(&env.project)
            .arg("exit 0")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(code(&out), 125, "{url}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{url}: one line: {err}");
        assert!(err.contains(says), "{url}: {err}");
        assert!(
            !err.contains("not-the-password"),
            "never the password: {err}"
        );
        assert!(env.containers().is_empty());
        // Every command that needs the registry says so the same way.
        for verb in [&["ps"][..], &["show", "0000"], &["cleanup", "--dry-run"]] {
            let out = env
                .orch()
                .env("ORCH_REGISTRY", url)
                .args(verb)
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(code(&out), 125, "{verb:?} {url}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{verb:?} {url}: {err}");
        }
    }
}

/// A project from a git server on three nodes: each node makes its own
/// mirror, and every task's branch arrives on the server.
#[test]
fn a_url_project_runs_on_three_nodes_and_every_branch_arrives() {
    require_docker!();
    let Some(mut cluster) = Cluster::new(29, "") else {
        return;
    };
    let server = crate::remote::GitServer::start();
    let url = server.repo(
        "shared",
        &format!(
            "image = \"{IMAGE}\"\ncommand = [\"/orch-agent\", \"{{desc}}\"]\nstop_grace = \"2s\"\n"
        ),
    );
    cluster.start(2);
    let ids: Vec<String> = (0..9)
        .map(|i| {
            let out = cluster.nodes[0]
                .orch()
                .args(["submit", &url, &format!("sleep 1; write n.txt {i}")])
                .output()
                .unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            helper::stdout(&out).trim().to_owned()
        })
        .collect();
    cluster.wait_ended(&ids, Duration::from_secs(240));
    // Ended, then pushed while the workspace is settled.
    let tasks = wait_for("every branch pushed", Duration::from_secs(120), || {
        let tasks: BTreeMap<String, serde_json::Value> = cluster.nodes[0]
            .tasks()
            .into_iter()
            .filter(|t| ids.contains(&t["id"].as_str().unwrap_or("").to_owned()))
            .map(|t| (t["id"].as_str().unwrap().to_owned(), t))
            .collect();
        tasks
            .values()
            .all(|t| t["workspace_state"] == "removed")
            .then_some(tasks)
    });
    let branches = server.branches("shared");
    for (id, task) in &tasks {
        assert_eq!(task["state"], "succeeded", "{task}");
        assert_eq!(task["delivered"], true, "{task}");
        assert!(
            branches.contains(&format!("orch/{id}")),
            "{id}: {branches:?}"
        );
    }
    let ran: BTreeSet<&str> = tasks.values().filter_map(|t| t["node"].as_str()).collect();
    for node in &cluster.nodes {
        let mirrors = std::fs::read_dir(node.home().join("mirrors"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "git"))
                    .count()
            })
            .unwrap_or(0);
        if ran.contains(node.name.as_str()) {
            assert_eq!(mirrors, 1, "{}: its own mirror", node.name);
        }
    }
    assert!(ran.len() >= 2, "the tasks spread: {ran:?}");
}
