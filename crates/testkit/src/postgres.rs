//! A real PostgreSQL server for the tests of one process: Debian's
//! `initdb` and `pg_ctl` into a temporary directory, on a free port of
//! loopback, run as an unprivileged user when the tests run as root (the
//! server refuses root). One server per test process, started on first use
//! and stopped when the process exits; each test gets a database of its
//! own ([`Server::database`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The password of the server's user `orch`.
pub const PASSWORD: &str = "orch-test-secret";

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Server {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    databases: AtomicUsize,
    control: Mutex<()>,
}

/// The uid and gid the server runs as when the tests run as root.
const NOBODY: (u32, u32) = (65534, 65534);

static SERVER: OnceLock<Option<Server>> = OnceLock::new();

/// The server of this test process, started on first use; `None` (said
/// loudly) where PostgreSQL is not installed, unless the suite requires
/// every real part (then it panics).
pub fn server() -> Option<&'static Server> {
    SERVER
        .get_or_init(|| match bin_dir() {
            Some(bin) => Some(Server::start(bin)),
            None if crate::required() => {
                panic!("ORCH_REQUIRE_DOCKER=1 but PostgreSQL is not installed (apt install postgresql)")
            }
            None => {
                eprintln!("SKIPPED: PostgreSQL is not installed (apt install postgresql); its tests do not run");
                None
            }
        })
        .as_ref()
}

/// Where `initdb` and `pg_ctl` are: Debian keeps them out of `PATH`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Stops the server when the test process exits.
extern "C" fn stop_at_exit() {
    if let Some(Some(server)) = SERVER.get() {
        server.stop();
        let _ = std::fs::remove_dir_all(&server.dir);
    }
}

impl Server {
    /// A server of the caller's own (for a test that restarts it), stopped
    /// and removed when dropped; `None` as [`server`] says.
    pub fn dedicated() -> Option<Dedicated> {
        match bin_dir() {
            Some(bin) => Some(Dedicated(Server::start_in(bin))),
            None if crate::required() => {
                panic!(
                    "ORCH_REQUIRE_DOCKER=1 but PostgreSQL is not installed (apt install postgresql)"
                )
            }
            None => {
                eprintln!(
                    "SKIPPED: PostgreSQL is not installed (apt install postgresql); its tests do not run"
                );
                None
            }
        }
    }

    fn start(bin: PathBuf) -> Server {
        let server = Server::start_in(bin);
        // SAFETY: registering a plain extern "C" function has no
        // preconditions.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        server
    }

    fn start_in(bin: PathBuf) -> Server {
        sweep_abandoned();
        let dir = tempfile::Builder::new()
            .prefix("orch-testpg-")
            .tempdir()
            .expect("a directory for PostgreSQL")
            .keep();
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if crate::is_root() {
            chown_tree(&dir);
        }
        let server = Server {
            dir,
            bin,
            port: crate::free_port(),
            databases: AtomicUsize::new(0),
            control: Mutex::new(()),
        };
        let data = server.dir.join("data");
        let status = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "orch",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            status.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        server.pg_ctl("start");
        server
    }

    /// A command of the server's binaries, run as its user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if crate::is_root() {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={}", NOBODY.0))
                .arg(format!("--regid={}", NOBODY.1))
                .arg("--clear-groups")
                .arg(path);
            cmd
        } else {
            Command::new(path)
        };
        cmd.current_dir(&self.dir).env_remove("PGDATA");
        cmd
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB",
            self.port,
            self.dir.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-o", &options, "-w", "-t", "60", "-m", "fast", action])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {action} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Restarts the server (every connection to it breaks).
    pub fn restart(&self) {
        let _held = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.pg_ctl("restart");
    }

    /// An outage: the server stopped for `down`, then started again.
    pub fn outage(&self, down: std::time::Duration) {
        let _held = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.pg_ctl("stop");
        std::thread::sleep(down);
        self.pg_ctl("start");
    }

    /// Stops the server at once.
    fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` as user `orch` with `password`.
    pub fn url_with(&self, name: &str, password: &str) -> String {
        format!("postgres://orch:{password}@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database of its own: its URL.
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let mut admin =
            postgres::Client::connect(&self.url_with("postgres", PASSWORD), postgres::NoTls)
                .expect("connect to the test server");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a database");
        self.url_with(&name, PASSWORD)
    }

    /// Runs `sql` in database `url` (for a test that plays a newer orch).
    pub fn execute(&self, url: &str, sql: &str) {
        let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
        client.batch_execute(sql).expect("run SQL");
    }
}

/// Gives the tree at `dir` to the server's user.
fn chown_tree(dir: &Path) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", NOBODY.0, NOBODY.1))
        .arg(dir)
        .status()
        .expect("chown");
    assert!(status.success());
}

/// Stops servers that test processes killed before their exit left behind.
fn sweep_abandoned() {
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("orch-testpg-") {
            continue;
        }
        let dir = entry.path();
        let owner: Option<i32> = std::fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = owner.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if alive {
            continue;
        }
        if let Ok(pid) = std::fs::read_to_string(dir.join("data/postmaster.pid")) {
            if let Some(pid) = pid
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
            {
                // SAFETY: signalling a pid read from the abandoned server's
                // own pid file.
                unsafe {
                    libc::kill(pid, libc::SIGQUIT);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A server of one test's own; stopped and removed when dropped.
#[derive(Debug)]
pub struct Dedicated(Server);

impl std::ops::Deref for Dedicated {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.0.stop();
        let _ = std::fs::remove_dir_all(&self.0.dir);
    }
}
