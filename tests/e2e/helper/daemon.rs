//! A real `orch serve` of a test's home, and a small HTTP/1.1 client for
//! its socket (raw enough to send malformed requests too).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::helper::{Running, TestEnv, wait_for};

/// A running daemon; SIGKILLed if still running when dropped.
pub(crate) struct Daemon {
    pub(crate) running: Running,
    pub(crate) socket: PathBuf,
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

impl TestEnv {
    /// `orch serve` on this home with `args`; waits until it answers.
    pub(crate) fn serve(&self, args: &[&str]) -> Daemon {
        self.serve_with(args, |_| {})
    }

    /// The same, with a hook to change the command first.
    pub(crate) fn serve_with(&self, args: &[&str], change: impl FnOnce(&mut Command)) -> Daemon {
        let mut cmd = self.orch();
        cmd.arg("serve").args(args);
        change(&mut cmd);
        let socket = args
            .iter()
            .position(|a| *a == "--socket")
            .map(|i| PathBuf::from(args[i + 1]))
            .unwrap_or_else(|| self.home.join("orch.sock"));
        let running = Running::spawn(cmd);
        let daemon = Daemon { running, socket };
        wait_for("the daemon to answer", Duration::from_secs(30), || {
            let said = daemon.running.stderr_text();
            assert!(!said.contains("orch: error"), "the daemon failed: {said}");
            daemon
                .try_request("GET", "/healthz", None)
                .ok()
                .filter(|a| a.status == 200)
        });
        daemon
    }
}

impl Daemon {
    /// One request over the socket.
    pub(crate) fn request(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub(crate) fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Answer> {
        self.try_request_typed(method, path, body, "application/json")
    }

    /// A request whose body says it is of `content_type` (`curl -d` says
    /// `application/x-www-form-urlencoded`).
    pub(crate) fn try_request_typed(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        content_type: &str,
    ) -> std::io::Result<Answer> {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: orch\r\nConnection: close\r\n");
        if let Some(body) = body {
            raw.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        raw.push_str("\r\n");
        raw.push_str(body.unwrap_or(""));
        let answer = exchange(
            &self.socket,
            raw.as_bytes(),
            false,
            Duration::from_secs(120),
        )?;
        Ok(parse_answer(&answer))
    }

    /// `POST /v1/tasks`; the new task's id.
    pub(crate) fn submit(&self, body: serde_json::Value) -> String {
        let answer = self.request("POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.json()["id"].as_str().unwrap().to_owned()
    }

    /// `GET /v1/tasks/<id>`.
    pub(crate) fn task(&self, id: &str) -> serde_json::Value {
        let answer = self.request("GET", &format!("/v1/tasks/{id}"), None);
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    }

    /// Waits until the task is in a terminal state; its record.
    pub(crate) fn wait_ended(&self, id: &str, limit: Duration) -> serde_json::Value {
        wait_for(&format!("task {id} to end"), limit, || {
            let task = self.task(id);
            let state = task["state"].as_str().unwrap_or_default().to_owned();
            (!["queued", "creating", "running"].contains(&state.as_str())).then_some(task)
        })
    }

    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        self.running.signal(signal);
    }

    /// The TCP address it said it serves on (`--listen`).
    /// (Its log goes through a thread of its own, so the line may come a
    /// moment after the daemon answers.)
    pub(crate) fn tcp_addr(&self) -> String {
        wait_for(
            "the daemon to say its address",
            Duration::from_secs(10),
            || {
                let said = self.running.stderr_text();
                let rest = said.split("http://").nth(1)?;
                let addr = rest.split(|c: char| c == ';' || c.is_whitespace()).next()?;
                (!addr.is_empty() && rest.len() > addr.len()).then(|| addr.to_owned())
            },
        )
    }
}

/// `GET path` over the socket of a daemon this test did not start through
/// [`TestEnv::serve`](crate::helper::TestEnv::serve).
pub(crate) fn get(socket: &PathBuf, path: &str) -> std::io::Result<Answer> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: orch\r\nConnection: close\r\n\r\n");
    let answer = exchange(socket, raw.as_bytes(), false, Duration::from_secs(120))?;
    Ok(parse_answer(&answer))
}

/// Writes `raw` to the socket, closes our side (so a truncated request
/// ends there), and reads whatever comes back until the daemon closes the
/// connection (or `limit` passes).
pub(crate) fn send_raw(socket: &PathBuf, raw: &[u8], limit: Duration) -> std::io::Result<Vec<u8>> {
    exchange(socket, raw, true, limit)
}

fn exchange(
    socket: &PathBuf,
    raw: &[u8],
    half_close: bool,
    limit: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    stream.write_all(raw)?;
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// Status and (de-chunked) body of an HTTP/1.1 answer.
pub(crate) fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        head: head.to_owned(),
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            out.push_str(&rest[..size.min(rest.len())]);
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.running.child.try_wait() {
            // A test that did not stop its daemon: stop it gracefully so its
            // tasks are torn down before the env checks for leaks.
            self.running.signal(rustix::process::Signal::TERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.running.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
