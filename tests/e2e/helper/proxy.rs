//! A proxy socket in front of the Docker engine that can refuse, stall and
//! drop connections: the engine as the world sometimes serves it.
//! `DOCKER_HOST=unix://<proxy.path>` sends an orch through it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ENGINE: &str = "/var/run/docker.sock";

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// Forwards everything.
    Pass = 0,
    /// Accepts, then closes at once (a reset or EOF to the client).
    Refuse = 1,
    /// Accepts and never answers.
    Stall = 2,
}

struct Shared {
    mode: AtomicU8,
    open: Mutex<Vec<UnixStream>>,
    stop: AtomicBool,
}

/// The proxy; stops when dropped.
pub(crate) struct Proxy {
    pub(crate) path: PathBuf,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub(crate) fn start() -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("orch-proxy-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Pass as u8),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let accept = shared.clone();
        std::thread::spawn(move || {
            while !accept.stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                match accept.mode.load(Ordering::SeqCst) {
                    1 => drop(client),
                    2 => accept.open.lock().unwrap().push(client),
                    _ => forward(client, &accept),
                }
            }
        });
        Proxy {
            path,
            shared,
            _dir: dir,
        }
    }

    /// `unix://` address for `DOCKER_HOST`.
    pub(crate) fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub(crate) fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// The engine out of reach: every connection open now cut, new ones
    /// refused until the mode is set back.
    pub(crate) fn cut(&self) {
        self.set(Mode::Refuse);
        self.drop_connections();
    }

    /// The engine out of reach for `length`, then back.
    pub(crate) fn outage(&self, length: std::time::Duration) {
        self.cut();
        std::thread::sleep(length);
        self.set(Mode::Pass);
    }

    /// Cuts every connection open now, mid-request or not.
    pub(crate) fn drop_connections(&self) {
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.drop_connections();
    }
}

/// Copies both ways between a client and the engine, each direction on a
/// thread of its own, until either side closes or the proxy cuts it.
fn forward(client: UnixStream, shared: &Arc<Shared>) {
    let Ok(engine) = UnixStream::connect(ENGINE) else {
        return;
    };
    {
        let mut open = shared.open.lock().unwrap();
        open.push(client.try_clone().unwrap());
        open.push(engine.try_clone().unwrap());
    }
    // `whole`: when this direction ends, so does the connection.
    let pipe = |mut from: UnixStream, mut to: UnixStream, whole: bool| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            if whole {
                // On the sockets themselves (clones are kept for `cut`): an
                // engine connection left open with nobody reading it blocks
                // the engine's writer of an attach stream, and with it that
                // container's state, for good.
                let _ = to.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
            } else {
                let _ = to.shutdown(std::net::Shutdown::Write);
            }
        });
    };
    pipe(
        client.try_clone().unwrap(),
        engine.try_clone().unwrap(),
        false,
    );
    pipe(engine, client, true);
}
