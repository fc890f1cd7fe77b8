//! Fixtures for driving the real `orch` binary against the real Docker
//! engine.
//!
//! Every [`TestEnv`] owns a fresh `ORCH_HOME` (so its own instance id) and
//! project directory; when it drops, it removes whatever containers of its
//! instance are left and fails the test if there were any. Every wait has a
//! deadline.

mod certs;
mod daemon;
mod proxy;
mod pty;
pub(crate) mod web;

pub(crate) use certs::Certs;
pub(crate) use daemon::{Answer, Daemon, get, parse_answer, send_raw};
pub(crate) use proxy::{Mode, Proxy};
pub(crate) use pty::OnPty;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub(crate) const IMAGE: &str = "orch-agent:dev";
/// The same plus git, for tasks that commit (built by `scripts/build-image git`).
pub(crate) const GIT_IMAGE: &str = "orch-agent-git:dev";
/// A real shell (busybox) and git, for hostile tasks (built by
/// `scripts/build-image shell`).
pub(crate) const SHELL_IMAGE: &str = "orch-shell-git:dev";

/// Skips the test, loudly, when no Docker engine answers; fails it instead
/// under `ORCH_REQUIRE_DOCKER=1`.
#[macro_export]
macro_rules! require_docker {
    () => {
        if !$crate::helper::docker_ready() {
            return;
        }
    };
}

/// True when the engine answers and the task image exists (built once per
/// test run if missing).
pub(crate) fn docker_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let answers = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !answers {
            if std::env::var("ORCH_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("ORCH_REQUIRE_DOCKER=1 but no Docker engine answers (is the daemon running? DOCKER_HOST?)");
            }
            eprintln!();
            eprintln!("!!!!!!!! SKIPPING DOCKER TESTS: no Docker engine answers !!!!!!!!");
            eprintln!("!!!!!!!! set ORCH_REQUIRE_DOCKER=1 to make this a failure  !!!!!!!!");
            eprintln!();
            return false;
        }
        ensure_image();
        true
    })
}

/// Builds the task image from the agent as it is now, once per run (an
/// image left from an older agent would lack its newer steps): quick when
/// nothing changed.
fn ensure_image() {
    let script = repo_root().join("scripts/build-image");
    let status = Command::new(&script)
        .status()
        .expect("run scripts/build-image");
    assert!(status.success(), "building {IMAGE} failed");
}

/// True when the shell image exists or could be built; without Debian's
/// busybox-static it skips loudly, but fails under `ORCH_REQUIRE_DOCKER=1`.
pub(crate) fn shell_image_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let present = Command::new("docker")
            .args(["image", "inspect", SHELL_IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if present {
            return true;
        }
        let built = Command::new(repo_root().join("scripts/build-image"))
            .arg("shell")
            .status()
            .is_ok_and(|s| s.success());
        if !built {
            if std::env::var("ORCH_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("cannot build {SHELL_IMAGE}: install Debian's busybox-static");
            }
            eprintln!("!!!!!!!! SKIPPING HOSTILE-TASK TESTS: no busybox-static to build {SHELL_IMAGE} !!!!!!!!");
        }
        built
    })
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub(crate) fn orch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_orch")
}

/// Polls `check` until it returns `Some`, or panics after `limit`.
pub(crate) fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Polls `check` until it holds or `limit` passes; returns whether it held.
pub(crate) fn wait_for_opt(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One isolated orch instance plus a project directory.
pub(crate) struct TestEnv {
    /// Removed, with everything in it, when the env drops.
    _dir: tempfile::TempDir,
    pub(crate) home: PathBuf,
    pub(crate) project: PathBuf,
    pub(crate) config: PathBuf,
}

impl TestEnv {
    /// A project using the offline image, with a short stop grace and no
    /// workspace.
    pub(crate) fn new() -> TestEnv {
        let root = tempfile::Builder::new()
            .prefix("orch-e2e-")
            .tempdir()
            .unwrap();
        let home = root.path().join("home");
        let project = root.path().join("proj");
        std::fs::create_dir_all(&project).unwrap();
        let config = root.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let env = TestEnv {
            _dir: root,
            home,
            project,
            config,
        };
        env.write_project_config("");
        env
    }

    /// Rewrites the project's `orch.toml`: the defaults of these tests plus
    /// `extra` lines.
    pub(crate) fn write_project_config(&self, extra: &str) {
        let text = format!(
            "image = \"{IMAGE}\"\ncommand = [\"/orch-agent\", \"{{desc}}\"]\nstop_grace = \"2s\"\nworkspace = \"none\"\n{extra}\n"
        );
        std::fs::write(self.project.join("orch.toml"), text).unwrap();
    }

    /// Makes the project a git repository with one commit, whose tasks get
    /// worktrees, run `image`, and may commit (an identity is set).
    pub(crate) fn git_project(&self, image: &str, extra: &str) {
        let command = if extra.contains("command =") {
            ""
        } else {
            "command = [\"/orch-agent\", \"{desc}\"]\n"
        };
        let grace = if extra.contains("stop_grace =") {
            ""
        } else {
            "stop_grace = \"2s\"\n"
        };
        let text = format!(
            "image = \"{image}\"\n{command}{grace}\
             env = {{ GIT_AUTHOR_NAME = \"task\", GIT_AUTHOR_EMAIL = \"task@example.com\", \
             GIT_COMMITTER_NAME = \"task\", GIT_COMMITTER_EMAIL = \"task@example.com\" }}\n{extra}\n"
        );
        std::fs::write(self.project.join("orch.toml"), text).unwrap();
        std::fs::write(self.project.join(".gitignore"), "*.log\n").unwrap();
        self.git(&["init", "--quiet", "--initial-branch=main"]);
        self.git(&["add", "."]);
        self.git(&["commit", "--quiet", "-m", "initial"]);
    }

    /// A fresh environment whose project runs `sh -c "{desc}"` in the
    /// shell image (with git), `extra` added to its `orch.toml`; none when
    /// that image cannot be had (a loud skip, or a failure under
    /// `ORCH_REQUIRE_DOCKER=1`).
    pub(crate) fn shell_project(extra: &str) -> Option<TestEnv> {
        if !shell_image_ready() {
            return None;
        }
        let env = TestEnv::new();
        env.git_project(
            SHELL_IMAGE,
            &format!("command = [\"sh\", \"-c\", \"{{desc}}\"]\n{extra}"),
        );
        Some(env)
    }

    /// Runs git in the project; returns its stdout.
    pub(crate) fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.project)
            .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
            .args(["-c", "safe.directory=*"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Paths of the project's worktrees, the main one first.
    pub(crate) fn worktrees(&self) -> Vec<String> {
        self.git(&["worktree", "list", "--porcelain"])
            .lines()
            .filter_map(|l| l.strip_prefix("worktree "))
            .map(str::to_owned)
            .collect()
    }

    /// Task directories on disk, under every project.
    pub(crate) fn task_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        let Ok(projects) = std::fs::read_dir(self.home.join("workspaces")) else {
            return dirs;
        };
        for project in projects {
            if let Ok(tasks) = std::fs::read_dir(project.unwrap().path().join("tasks")) {
                dirs.extend(tasks.map(|t| t.unwrap().path()));
            }
        }
        dirs.sort();
        dirs
    }

    /// Runs an orch subcommand, expecting success; returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.orch().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "orch {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `orch ps -a --json`.
    pub(crate) fn tasks(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "-a", "--json"])).unwrap()
    }

    /// `orch show <id> --json`.
    pub(crate) fn show(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["show", id, "--json"])).unwrap()
    }

    /// `orch` with this instance's environment.
    pub(crate) fn orch(&self) -> Command {
        let mut cmd = Command::new(orch_bin());
        cmd.env("ORCH_HOME", &self.home)
            .env("ORCH_CONFIG", &self.config)
            .env_remove("RUST_LOG")
            .env_remove("ORCH_FAIL_POINT")
            .env_remove("ORCH_CLEANUP_COMPLETED_AGE")
            .env_remove("ORCH_CLEANUP_FAILED_AGE")
            .env_remove("ORCH_CLEANUP_STALE_AGE")
            .env_remove("ORCH_CLEANUP_OLD_AGE")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// `orch` that reaches the engine through `proxy`.
    pub(crate) fn orch_via(&self, proxy: &Proxy) -> Command {
        let mut cmd = self.orch();
        cmd.env("DOCKER_HOST", proxy.host());
        cmd
    }

    /// Runs `orch task <project> <desc> [args]` to its end.
    pub(crate) fn task(&self, desc: &str, args: &[&str]) -> Output {
        self.orch()
            .arg("task")
            .arg(&self.project)
            .arg(desc)
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts `orch task` in the background, output captured.
    pub(crate) fn spawn_task(&self, desc: &str, args: &[&str]) -> Running {
        let mut cmd = self.orch();
        cmd.arg("task").arg(&self.project).arg(desc).args(args);
        Running::spawn(cmd)
    }

    /// This instance's id, once a command has created it.
    pub(crate) fn instance_id(&self) -> Option<String> {
        std::fs::read_to_string(self.home.join("instance-id"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Containers of this instance: `(name, state)`.
    pub(crate) fn containers(&self) -> Vec<(String, String)> {
        let Some(id) = self.instance_id() else {
            return Vec::new();
        };
        list_containers(&format!("label=orch.instance={id}"))
    }

    /// Waits until this instance has a running container; returns its name.
    /// Pids of this instance's watchdog processes (their environment names the
    /// home).
    pub(crate) fn watchdogs(&self) -> Vec<i32> {
        let home = format!("ORCH_HOME={}", self.home.display());
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let is_watchdog = cmdline.split(|b| *b == 0).any(|a| a == b"__watchdog");
            let ours = environ.split(|b| *b == 0).any(|v| v == home.as_bytes());
            if is_watchdog && ours {
                pids.push(pid);
            }
        }
        pids
    }

    pub(crate) fn wait_running(&self) -> String {
        self.wait_running_count(1).remove(0)
    }

    /// Waits until this instance has `n` running containers; returns their
    /// names.
    pub(crate) fn wait_running_count(&self, n: usize) -> Vec<String> {
        wait_for(
            &format!("{n} running container(s)"),
            Duration::from_secs(30),
            || {
                let running: Vec<String> = self
                    .containers()
                    .into_iter()
                    .filter(|(_, state)| state == "running")
                    .map(|(name, _)| name)
                    .collect();
                (running.len() == n).then_some(running)
            },
        )
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let left = self.containers();
        if left.is_empty() {
            return;
        }
        let names: Vec<&str> = left.iter().map(|(n, _)| n.as_str()).collect();
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&names)
            .output();
        if !std::thread::panicking() {
            panic!("test leaked containers of its instance: {left:?}");
        }
    }
}

/// `(name, state)` of every container matching a `docker ps` filter.
pub(crate) fn list_containers(filter: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            filter,
            "--format",
            "{{.Names}} {{.State}}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, s)| (n.to_owned(), s.to_owned()))
        .collect()
}

/// An `orch` process running in the background, its output collected.
pub(crate) struct Running {
    pub(crate) child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub(crate) fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Waits until stderr contains `needle`.
    pub(crate) fn wait_stderr(&self, needle: &str, limit: Duration) {
        wait_for(&format!("{needle:?} on stderr"), limit, || {
            self.stderr_text().contains(needle).then_some(())
        });
    }

    /// Waits for the process to exit, at most `limit`; kills it and panics
    /// if it does not.
    pub(crate) fn wait(mut self, limit: Duration) -> Finished {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "orch did not exit within {limit:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Finished {
            status,
            stdout: self.stdout_text(),
            stderr: self.stderr_text(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(
    mut pipe: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// A finished background `orch`.
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Finished {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// The task id that `orch task` printed on stderr.
pub(crate) fn task_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("task "))
        .unwrap_or_else(|| panic!("no task id in stderr:\n{stderr}"))
        .trim()
        .to_owned()
}

/// Output's exit code, with stderr in the failure message.
pub(crate) fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or_else(|| {
        panic!(
            "orch died by a signal; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A task's short id, as `orch ps` shows it: the last 8 hex digits.
pub(crate) fn short(id: &str) -> String {
    id[id.len() - 8..].to_owned()
}
