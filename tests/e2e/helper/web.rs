//! Outside programs the observability tests talk to: plain HTTP over TCP,
//! the daemon's event stream, a webhook receiver, Prometheus, and a real
//! browser through chromedriver (WebDriver).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::helper::wait_for;
use crate::helper::{Answer, parse_answer};

/// True when `program` is installed; otherwise skips loudly, or fails when
/// `ORCH_REQUIRE_DOCKER=1` (CI installs it).
pub(crate) fn tool_ready(program: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("ORCH_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("{program} is not installed (Debian: apt-get install {package})");
        }
        eprintln!("!!!!!!!! SKIPPING: {program} is not installed (Debian: {package}) !!!!!!!!");
    }
    found
}

/// A port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request over TCP (`Connection: close`), with extra header
/// lines.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body.unwrap_or(""));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    // Some servers (chromedriver) keep the connection open: read the head,
    // then as many bytes as it announces.
    let mut reader = BufReader::new(stream);
    let mut answer = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        answer.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let head = String::from_utf8_lossy(&answer).into_owned();
    match header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(length) => {
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            answer.extend_from_slice(&body);
        }
        None => {
            reader.read_to_end(&mut answer).unwrap();
        }
    }
    parse_answer(&answer)
}

/// One GET over the daemon's socket with extra header lines.
pub(crate) fn http_unix(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: orch\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    parse_answer(&answer)
}

/// The value of header `name` in a raw answer's head.
pub(crate) fn header<'a>(raw_head: &'a str, name: &str) -> Option<&'a str> {
    raw_head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub(crate) struct SseEvent {
    pub(crate) kind: String,
    pub(crate) data: serde_json::Value,
}

/// Subscribes to the daemon's `/v1/events` over its socket; events arrive
/// on the channel as they come (HTTP/1.0, so the body is not chunked).
pub(crate) fn events(socket: &Path) -> mpsc::Receiver<SseEvent> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .write_all(b"GET /v1/events HTTP/1.0\r\nHost: orch\r\n\r\n")
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        let mut kind = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                let data = serde_json::from_str(d.trim()).unwrap_or(serde_json::Value::Null);
                if tx
                    .send(SseEvent {
                        kind: std::mem::take(&mut kind),
                        data,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

/// A request a webhook receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

/// A webhook receiver on loopback: answers 200 to each POST and hands
/// over what it got.
pub(crate) fn receiver() -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let length: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send(Received { head, body }).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A child process killed when dropped.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A browser session through chromedriver.
pub(crate) struct Browser {
    driver: Killed,
    addr: String,
    session: String,
}

/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// chromedriver and a headless chromium.
    pub(crate) fn start() -> Browser {
        let port = free_port();
        let driver = Killed(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--log-path={}",
                    std::env::temp_dir()
                        .join(format!("orch-chromedriver-{port}.log"))
                        .display()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let addr = format!("127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(30), || {
            TcpStream::connect(&addr).ok()
        });
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,720"],
            },
        }}});
        let answer = http(
            &addr,
            "POST",
            "/session",
            &[],
            Some(&capabilities.to_string()),
        );
        assert_eq!(answer.status, 200, "chromedriver: {}", answer.body);
        let session = answer.json()["value"]["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        Browser {
            driver,
            addr,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        http(
            &self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            &[],
            body.as_deref(),
        )
    }

    pub(crate) fn open(&self, url: &str) {
        let answer = self.call("POST", "/url", Some(serde_json::json!({ "url": url })));
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    pub(crate) fn url(&self) -> String {
        self.call("GET", "/url", None).json()["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element `css` selects, if any.
    pub(crate) fn find(&self, css: &str) -> Option<String> {
        let answer = self.call(
            "POST",
            "/element",
            Some(serde_json::json!({ "using": "css selector", "value": css })),
        );
        (answer.status == 200)
            .then(|| answer.json()["value"][ELEMENT].as_str().map(str::to_owned))
            .flatten()
    }

    /// Its visible text ("" if it went away meanwhile).
    pub(crate) fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .json()["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub(crate) fn click(&self, element: &str) {
        let answer = self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(serde_json::json!({})),
        );
        assert_eq!(answer.status, 200, "click: {}", answer.body);
    }

    /// A PNG of the page.
    pub(crate) fn screenshot(&self) -> Vec<u8> {
        let answer = self.call("GET", "/screenshot", None);
        base64(answer.json()["value"].as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
        let _ = &self.driver;
    }
}

/// Standard base64, decoded.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
