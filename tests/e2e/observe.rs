//! Seeing what orch does (SPEC 11): metrics a real Prometheus scrapes,
//! stuck-task alerts, signed webhooks, and the dashboard in a real browser.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::json;

use crate::helper::web::{self, Browser, Killed, tool_ready};
use crate::helper::{self, TestEnv};
use crate::require_docker;

fn spec(env: &TestEnv, desc: &str) -> serde_json::Value {
    json!({ "project": env.project, "desc": desc })
}

/// Every metric SPEC 11 names.
const METRICS: [&str; 12] = [
    "orch_tasks_submitted_total",
    "orch_tasks_finished_total",
    "orch_tasks",
    "orch_task_duration_seconds",
    "orch_queue_wait_seconds",
    "orch_cleanup_runs_total",
    "orch_cleanup_removed_total",
    "orch_cleanup_freed_bytes_total",
    "orch_reaped_total",
    "orch_stuck_tasks",
    "orch_workspace_bytes",
    "orch_webhook_failures_total",
];

#[test]
fn the_metrics_count_real_work_and_promtool_accepts_them() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&["--concurrency", "3"]);
    let ids: Vec<String> = ["exit 0", "echo hi", "exit 3"]
        .iter()
        .map(|desc| daemon.submit(spec(&env, desc)))
        .collect();
    for id in &ids {
        daemon.wait_ended(id, Duration::from_secs(60));
    }
    // A task's record ends a moment before the daemon counts it: wait for
    // all three to be counted.
    let text = helper::wait_for("the counters", Duration::from_secs(30), || {
        let text = daemon.request("GET", "/metrics", None).body;
        text.contains("orch_task_duration_seconds_count 3")
            .then_some(text)
    });
    for line in [
        "orch_tasks_submitted_total 3",
        "orch_tasks_finished_total{state=\"succeeded\"} 2",
        "orch_tasks_finished_total{state=\"failed\"} 1",
        "orch_tasks_finished_total{state=\"cancelled\"} 0",
        "orch_task_duration_seconds_count 3",
        "orch_queue_wait_seconds_count 3",
        "orch_tasks{state=\"running\"} 0",
        "orch_tasks{state=\"queued\"} 0",
        "orch_cleanup_runs_total{strategy=\"orphans\"} 1",
        "orch_stuck_tasks 0",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    for name in METRICS {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    for id in &ids {
        assert!(!text.contains(id.as_str()), "a task id is a label");
    }
    // Prometheus asks for OpenMetrics and gets it.
    let open = helper::web::http_unix(
        &daemon.socket,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);

    if tool_ready("promtool", "prometheus") {
        let mut check = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_real_prometheus_scrapes_the_daemon() {
    require_docker!();
    if !tool_ready("prometheus", "prometheus") {
        return;
    }
    let env = TestEnv::new();
    let token = "scrape-token-0123456789";
    let daemon = env.serve_with(&["--listen", "127.0.0.1:0"], |cmd| {
        cmd.env("ORCH_TOKEN", token);
    });
    let id = daemon.submit(spec(&env, "exit 0"));
    daemon.wait_ended(&id, Duration::from_secs(60));

    let dir = env.home.with_file_name("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: orch\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: [\"{}\"]\n",
            dir.join("token").display(),
            daemon.tcp_addr()
        ),
    )
    .unwrap();
    let port = web::free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = Killed(
        std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let query = "/api/v1/query?query=orch_tasks_finished_total%7Bstate%3D%22succeeded%22%7D";
    let value = helper::wait_for(
        "Prometheus to answer for orch_tasks_finished_total",
        Duration::from_secs(120),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            let answer = web::http(&format!("127.0.0.1:{port}"), "GET", query, &[], None);
            // 503 while it starts.
            if answer.status != 200 {
                return None;
            }
            let result = answer.json()["data"]["result"].as_array()?.first()?.clone();
            Some(result["value"][1].as_str()?.to_owned())
        },
    );
    assert_eq!(value, "1", "the scraped count of succeeded tasks");
}

#[test]
fn a_stuck_task_is_alerted_once_and_cleared_by_its_output() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve_with(&[], |cmd| {
        cmd.env("ORCH_STUCK_AFTER", "3s");
    });
    let events = web::events(&daemon.socket);
    let id = daemon.submit(spec(
        &env,
        "progress 10 starting; sleep 8; echo alive; sleep 1",
    ));
    let (mut last_sign, mut stuck_at, mut unstuck, mut stuck) = (None, None, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let event = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the task to finish within a minute");
        let ours = event.data["id"] == id.as_str() || event.data["task"]["id"] == id.as_str();
        if !ours {
            continue;
        }
        match event.kind.as_str() {
            "task.progress" => last_sign = Some(Instant::now()),
            "task.stuck" => {
                stuck += 1;
                stuck_at = Some(Instant::now());
                // While it lasts: the alert list and the gauge say so.
                let alerts = daemon.request("GET", "/v1/alerts", None).json();
                assert_eq!(alerts[0]["id"], id.as_str(), "{alerts}");
                let metrics = daemon.request("GET", "/metrics", None).body;
                assert!(metrics.contains("orch_stuck_tasks 1"), "{metrics}");
            }
            "task.unstuck" => unstuck += 1,
            "task.finished" => break,
            _ => {}
        }
    }
    assert_eq!(stuck, 1, "one alert for one silence");
    assert_eq!(unstuck, 1, "its output cleared it");
    let latency = stuck_at.unwrap() - last_sign.unwrap();
    eprintln!("stuck alert {latency:?} after the task's last sign of life (stuck_after 3s)");
    assert!(latency >= Duration::from_secs(3), "{latency:?}");
    let metrics = daemon.request("GET", "/metrics", None).body;
    assert!(metrics.contains("orch_stuck_tasks 0"), "{metrics}");
    assert_eq!(daemon.request("GET", "/v1/alerts", None).body, "[]");
    let said = daemon.running.stderr_text();
    assert!(
        said.contains("task is stuck"),
        "a warning in the log: {said}"
    );
}

/// HMAC-SHA256 of `body`, as a receiver checks it (independently of orch).
fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn webhooks_are_signed_and_a_dead_receiver_holds_nothing_up() {
    require_docker!();
    let env = TestEnv::new();
    let (addr, received) = web::receiver();
    let dead = format!("127.0.0.1:{}", web::free_port());
    std::fs::write(
        &env.config,
        format!(
            "[[webhooks]]\nurl = \"http://{addr}/hook\"\nsecret = \"webhook-secret\"\n\n\
             [[webhooks]]\nurl = \"http://{dead}/never\"\nevents = [\"task.finished\"]\n"
        ),
    )
    .unwrap();
    let daemon = env.serve(&["--concurrency", "2"]);
    let ok = daemon.submit(spec(&env, "exit 0"));
    let failed = daemon.submit(spec(&env, "exit 4"));

    let mut finished = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished.len() < 2 {
        let got = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("both task.finished webhooks");
        let signature = web::header(&got.head, "x-orch-signature").unwrap_or_default();
        assert_eq!(
            signature,
            expected_signature("webhook-secret", &got.body),
            "{}",
            got.head
        );
        assert!(got.head.starts_with("POST /hook "), "{}", got.head);
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(
            web::header(&got.head, "x-orch-event"),
            body["type"].as_str()
        );
        if body["type"] == "task.finished" {
            finished.insert(
                body["task"]["id"].as_str().unwrap().to_owned(),
                body["task"]["state"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert_eq!(finished[&ok], "succeeded");
    assert_eq!(finished[&failed], "failed");
    // Both arrived while the dead receiver was still being retried: it
    // delayed neither the tasks nor the other receiver.
    let metrics = daemon.request("GET", "/metrics", None).body;
    assert!(
        metrics.contains("orch_webhook_failures_total{event=\"task.finished\"} 0"),
        "{metrics}"
    );
    // Its deliveries are given up in the end: logged and counted, never
    // fatal.
    helper::wait_for(
        "the dead receiver's deliveries to be given up",
        Duration::from_secs(120),
        || {
            let metrics = daemon.request("GET", "/metrics", None).body;
            metrics
                .contains("orch_webhook_failures_total{event=\"task.finished\"} 2")
                .then_some(())
        },
    );
    assert!(daemon.running.stderr_text().contains("webhook given up"));
    assert_eq!(daemon.request("GET", "/healthz", None).status, 200);

    // A cleanup's report goes out too (one that removes something).
    let answer = daemon.request("POST", "/v1/cleanup", Some(r#"{"older_than": "1s"}"#));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let cleanup = helper::wait_for("cleanup.done", Duration::from_secs(30), || {
        let got = received.recv_timeout(Duration::from_secs(1)).ok()?;
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        (body["type"] == "cleanup.done" && body["trigger"] == "request").then_some(body)
    });
    assert_eq!(cleanup["report"]["total"]["records"], 2, "{cleanup}");
}

#[test]
fn the_dashboard_cookie_is_httponly_strict_and_refused_cross_site() {
    require_docker!();
    let env = TestEnv::new();
    let token = "cookie-token-0123456789";
    let daemon = env.serve_with(&["--listen", "127.0.0.1:0"], |cmd| {
        cmd.env("ORCH_TOKEN", token);
    });
    let addr = daemon.tcp_addr();
    let get = |path: &str, headers: &[(&str, &str)]| web::http(&addr, "GET", path, headers, None);

    assert_eq!(get("/", &[]).status, 401);
    assert_eq!(get("/?token=wrong-token-0123456789", &[]).status, 401);
    let opened = get(&format!("/?token={token}"), &[]);
    assert_eq!(opened.status, 303);
    assert_eq!(web::header(&opened.head, "location"), Some("/"));
    let cookie = web::header(&opened.head, "set-cookie").unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let cookie_header = cookie.split(';').next().unwrap().to_owned();
    let page = get("/", &[("Cookie", &cookie_header)]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>orch</title>"));
    let policy = web::header(&page.head, "content-security-policy").unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert_eq!(web::header(&page.head, "x-frame-options"), Some("DENY"));
    assert_eq!(get("/v1/tasks", &[("Cookie", &cookie_header)]).status, 200);

    // A change made with the cookie must come from the dashboard itself.
    let id = daemon.submit(spec(&env, "sleep 300"));
    let delete = |headers: &[(&str, &str)]| {
        web::http(&addr, "DELETE", &format!("/v1/tasks/{id}"), headers, None).status
    };
    assert_eq!(
        delete(&[("Cookie", &cookie_header)]),
        403,
        "no dashboard header"
    );
    assert_eq!(
        delete(&[
            ("Cookie", &cookie_header),
            ("X-Orch-Request", "dashboard"),
            ("Origin", "http://evil.example"),
        ]),
        403,
        "another origin"
    );
    assert_eq!(
        delete(&[
            ("Cookie", &cookie_header),
            ("X-Orch-Request", "dashboard"),
            ("Sec-Fetch-Site", "cross-site"),
        ]),
        403,
        "a cross-site fetch"
    );
    assert_eq!(daemon.task(&id)["cancel_requested"], false);
    let origin = format!("http://{addr}");
    assert_eq!(
        delete(&[
            ("Cookie", &cookie_header),
            ("X-Orch-Request", "dashboard"),
            ("Origin", &origin),
        ]),
        202
    );
    daemon.wait_ended(&id, Duration::from_secs(60));
}

#[test]
fn the_dashboard_in_a_real_browser_shows_a_task_and_cancels_it() {
    require_docker!();
    if !tool_ready("chromedriver", "chromium-driver") {
        return;
    }
    let env = TestEnv::new();
    // Tasks with workspaces, so that the disk chart has something to show.
    env.git_project(helper::IMAGE, "");
    let token = "browser-token-0123456789";
    let daemon = env.serve_with(&["--listen", "127.0.0.1:0", "--concurrency", "1"], |cmd| {
        cmd.env("ORCH_TOKEN", token);
    });
    let addr = daemon.tcp_addr();
    let running = daemon.submit(spec(&env, "progress 40 compiling the world; sleep 300"));
    let queued = daemon.submit(spec(&env, "sleep 1"));
    helper::wait_for("the task's progress", Duration::from_secs(60), || {
        (daemon.task(&running)["progress"] == 40).then_some(())
    });
    let container = daemon.task(&running)["container"]
        .as_str()
        .unwrap()
        .to_owned();

    let browser = Browser::start();
    browser.open(&format!("http://{addr}/?token={token}"));
    assert_eq!(
        browser.url(),
        format!("http://{addr}/"),
        "the token leaves the address bar"
    );
    helper::wait_for(
        "the running row with its progress",
        Duration::from_secs(30),
        || {
            let cell = browser.find(&format!("#task-{running} td.progress"))?;
            let text = browser.text(&cell);
            text.contains("40%").then_some(())
        },
    );
    let state = browser.find(&format!("#task-{running} td.state")).unwrap();
    assert_eq!(browser.text(&state), "running");
    let waiting = browser.find(&format!("#task-{queued} td.state")).unwrap();
    assert_eq!(browser.text(&waiting), "queued");
    let shot = helper::repo_root().join("target/dashboard.png");
    std::fs::write(&shot, browser.screenshot()).unwrap();
    eprintln!("screenshot: {}", shot.display());

    let cancel = browser
        .find(&format!("#task-{running} button.cancel"))
        .unwrap();
    browser.click(&cancel);
    let record = daemon.wait_ended(&running, Duration::from_secs(60));
    assert_eq!(record["state"], "cancelled");
    helper::wait_for("its container to go", Duration::from_secs(30), || {
        (!env.containers().iter().any(|(name, _)| *name == container)).then_some(())
    });
    helper::wait_for("the page to drop its row", Duration::from_secs(30), || {
        browser
            .find(&format!("#task-{running}"))
            .is_none()
            .then_some(())
    });
    daemon.wait_ended(&queued, Duration::from_secs(60));
}
