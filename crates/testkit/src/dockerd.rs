//! Extra Docker engines standing for extra hosts: a `dockerd` with its own
//! config file, data and exec roots, pid file, socket, and a bridge of its
//! own that the test makes (never `--bridge none`: a dockerd started with
//! it deletes the host's `docker0`). Images come from the main engine
//! (`docker save | docker load`). Stopped, unmounted and deleted with its
//! bridge when dropped, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One extra engine.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    bridge: String,
    child: Option<Child>,
    n: u8,
}

impl Engine {
    /// Starts engine `n` (1 to 200) with `images` loaded; `None` (said
    /// loudly) where the machine cannot: not root, or no `dockerd`.
    pub fn start(n: u8, images: &[&str]) -> Option<Engine> {
        if !crate::is_root() || which("dockerd").is_none() {
            eprintln!(
                "NOTE: extra Docker engines need root and dockerd; the cluster runs its nodes on the one engine"
            );
            return None;
        }
        let root = std::env::temp_dir().join(format!("orch-testengine-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("the engine's directory");
        // Its own config: the machine's may set a data-root, which clashes
        // with the flag.
        std::fs::write(root.join("daemon.json"), "{}").unwrap();
        let bridge = format!("orchtest{n}");
        let _ = run("ip", &["link", "del", &bridge]);
        assert!(
            run("ip", &["link", "add", &bridge, "type", "bridge"]),
            "make bridge {bridge}"
        );
        assert!(run(
            "ip",
            &["addr", "add", &format!("10.231.{n}.1/24"), "dev", &bridge]
        ));
        assert!(run("ip", &["link", "set", &bridge, "up"]));
        let mut engine = Engine {
            root,
            bridge,
            child: None,
            n,
        };
        engine.launch();
        for image in images {
            engine.load(image);
        }
        Some(engine)
    }

    /// The socket, as `DOCKER_HOST` names it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }

    /// Starts its dockerd and waits until it answers.
    fn launch(&mut self) {
        let log = std::fs::File::create(self.root.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(self.root.join("daemon.json"))
            .arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("docker.pid"))
            .arg("-H")
            .arg(self.host())
            .args(["--bridge", &self.bridge])
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver",
                "vfs",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "engine {} did not start: {}",
                self.n,
                std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers(&self) -> bool {
        Command::new("docker")
            .args(["-H", &self.host(), "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Copies `image` from the main engine.
    fn load(&self, image: &str) {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker save {image} | docker -H {} load -q",
                self.host()
            ))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "load {image} into engine {}", self.n);
    }

    /// Stops its dockerd (SIGKILL if `hard`; its containers die with it
    /// either way, as a host's would) and waits for it to be gone.
    pub fn stop(&mut self, hard: bool) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(
                    child.id() as i32,
                    if hard { libc::SIGKILL } else { libc::SIGTERM },
                );
            }
            let _ = child.wait();
        }
        if hard {
            // Its containers' shims outlive a killed dockerd: as the host
            // died, they die.
            let exec = self.root.join("exec");
            let _ = Command::new("pkill")
                .args(["-KILL", "-f"])
                .arg(exec.display().to_string())
                .status();
        }
    }

    /// Starts it again after [`Engine::stop`] (a host coming back).
    pub fn restart(&mut self) {
        self.launch();
    }

    /// `docker` against this engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(["-H", &self.host()]);
        cmd
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Its containers first, so that nothing of them outlives it.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker -H {h} ps -aq | xargs -r docker -H {h} rm -f",
                    h = self.host()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.stop(false);
        let exec = self.root.join("exec");
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(exec.display().to_string())
            .status();
        unmount_under(&self.root);
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// Unmounts everything mounted under `root`, deepest first.
fn unmount_under(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(root))
        .collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in under {
        let _ = Command::new("umount").args(["-l", path]).status();
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.exists())
    })
}
