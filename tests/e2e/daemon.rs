//! The daemon (SPEC 9): `orch serve` driven through its socket with a real
//! HTTP client and with the CLI.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::json;

use crate::helper::{self, TestEnv, code, stderr};
use crate::require_docker;

fn spec(env: &TestEnv, desc: &str) -> serde_json::Value {
    json!({ "project": env.project, "desc": desc })
}

#[test]
fn the_concurrency_limit_holds_and_every_task_runs() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&["--concurrency", "2"]);
    let ids: Vec<String> = (0..6)
        .map(|i| daemon.submit(spec(&env, &format!("echo task {i}; sleep 1"))))
        .collect();
    let mut most = 0;
    helper::wait_for("every task to end", Duration::from_secs(120), || {
        let running = env
            .containers()
            .iter()
            .filter(|(_, state)| state == "running")
            .count();
        most = most.max(running);
        assert!(running <= 2, "{running} containers at once");
        ids.iter()
            .all(|id| daemon.task(id)["state"] == "succeeded")
            .then_some(())
    });
    assert_eq!(most, 2, "it did run two at once");
    let logs = daemon.request("GET", &format!("/v1/tasks/{}/logs", ids[3]), None);
    assert_eq!(logs.body, "task 3\n");
}

#[test]
fn the_queue_runs_by_priority_then_in_submission_order() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&["--concurrency", "1"]);
    let blocker = daemon.submit(spec(&env, "sleep 2"));
    helper::wait_for("the blocker to run", Duration::from_secs(30), || {
        (daemon.task(&blocker)["state"] == "running").then_some(())
    });
    let body = |desc: &str, priority: i64| {
        let mut s = spec(&env, desc);
        s["priority"] = json!(priority);
        daemon.submit(s)
    };
    let first = body("exit 0", 0);
    let second = body("exit 0", 0);
    let urgent = body("exit 0", 5);
    let third = body("exit 0", 0);
    let started: Vec<i64> = [&urgent, &first, &second, &third]
        .iter()
        .map(|id| {
            daemon.wait_ended(id, Duration::from_secs(60))["started_at"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        started.windows(2).all(|w| w[0] <= w[1]),
        "priority, then FIFO: {started:?}"
    );
}

#[test]
fn cancel_a_queued_and_a_running_task() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&["--concurrency", "1"]);
    let running = daemon.submit(spec(&env, "progress 30 going; sleep 300"));
    let queued = daemon.submit(spec(&env, "echo never"));
    helper::wait_for("the progress", Duration::from_secs(30), || {
        let p = daemon.request("GET", &format!("/v1/tasks/{running}/progress"), None);
        (p.json()["percent"] == 30).then_some(())
    });
    let progress = daemon
        .request("GET", &format!("/v1/tasks/{running}/progress"), None)
        .json();
    assert_eq!(progress["message"], "going");
    assert!(progress["updated_at"].as_i64().is_some());
    // The queued one, from the CLI.
    let out = env.orch().args(["cancel", &queued]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(daemon.task(&queued)["state"], "cancelled");
    assert!(
        env.tasks()
            .iter()
            .any(|t| t["id"] == queued.as_str() && t["started_at"].is_null())
    );
    // The running one, through the API, waiting for its end.
    let answer = daemon.request(
        "DELETE",
        &format!("/v1/tasks/{}?wait=1", &running[..13]),
        None,
    );
    assert_eq!(answer.status, 202, "{}", answer.body);
    let record = answer.json();
    assert_eq!(record["state"], "cancelled");
    assert_eq!(record["reason"], "cancelled (orch cancel)");
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

#[test]
fn logs_follow_a_running_task_to_its_end() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&[]);
    let id = daemon.submit(spec(
        &env,
        "echo first; sleep 1; echo second; sleep 1; echo done",
    ));
    let answer = daemon.request("GET", &format!("/v1/tasks/{id}/logs?follow=1"), None);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "first\nsecond\ndone\n");
    assert_eq!(daemon.task(&id)["state"], "succeeded");
}

#[test]
fn sigterm_stops_running_tasks_keeps_queued_ones_and_a_restart_runs_them() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&["--concurrency", "1"]);
    let running = daemon.submit(spec(&env, "trap-term; echo ready; sleep 300"));
    let queued = daemon.submit(spec(&env, "echo later"));
    // Running is not enough: a SIGTERM before the trap is set ends it at once.
    wait_ready(&env, &running);
    daemon.signal(Signal::TERM);
    let mut daemon = daemon;
    let status = helper::wait_for("the daemon to exit", Duration::from_secs(60), || {
        daemon.running.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{}", daemon.running.stderr_text());
    let tasks = env.tasks();
    let find = |id: &str| tasks.iter().find(|t| t["id"] == id).unwrap().clone();
    assert_eq!(find(&running)["state"], "cancelled");
    // It traps SIGTERM, so its grace ran out.
    assert_eq!(
        find(&running)["reason"],
        "cancelled (daemon shutdown; killed: still running 2s after SIGTERM)"
    );
    assert_eq!(find(&queued)["state"], "queued");
    assert!(env.containers().is_empty());
    assert!(
        !env.home.join("orch.sock").exists(),
        "its socket goes with it"
    );

    let again = env.serve(&[]);
    assert_eq!(
        again.wait_ended(&queued, Duration::from_secs(60))["state"],
        "succeeded"
    );
}

#[test]
fn sigkill_of_the_daemon_reaps_its_tasks_and_keeps_the_queue() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&["--concurrency", "2"]);
    let running: Vec<String> = (0..2)
        .map(|_| daemon.submit(spec(&env, "sleep 300")))
        .collect();
    let queued = daemon.submit(spec(&env, "echo later"));
    env.wait_running_count(2);
    daemon.signal(Signal::KILL);
    let killed = Instant::now();
    helper::wait_for("the watchdog to reap", Duration::from_secs(30), || {
        env.containers().is_empty().then_some(())
    });
    eprintln!(
        "daemon SIGKILL to its containers gone: {:?}",
        killed.elapsed()
    );
    helper::wait_for("the records to be lost", Duration::from_secs(30), || {
        running
            .iter()
            .all(|id| env.show(id)["state"] == "lost")
            .then_some(())
    });
    assert_eq!(env.show(&queued)["state"], "queued");
    // A socket left by a dead daemon is replaced.
    assert!(env.home.join("orch.sock").exists());
    let again = env.serve(&[]);
    assert_eq!(
        again.wait_ended(&queued, Duration::from_secs(60))["state"],
        "succeeded"
    );
    // The next daemon's metrics count what the watchdog reaped.
    let metrics = again.request("GET", "/metrics", None).body;
    assert!(
        metrics.contains("orch_reaped_total{by=\"watchdog\"} 2"),
        "{metrics}"
    );
}

/// As `systemctl stop` of a unit whose stop times out: SIGTERM to the
/// daemon, SIGTERM, SIGHUP and SIGINT to the rest of its cgroup, then
/// SIGKILL of the daemon mid-way through its graceful stop. The watchdog
/// outlives the first signals and reaps what the daemon left.
#[test]
fn the_watchdog_survives_a_signal_to_the_whole_group_and_reaps() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&[]);
    let mut body = spec(&env, "trap-term; echo ready; sleep 300");
    body["stop_grace"] = json!("20s");
    let id = daemon.submit(body);
    wait_ready(&env, &id);
    let watchdogs = env.watchdogs();
    assert_eq!(watchdogs.len(), 1, "one watchdog for the daemon's session");

    for signal in [Signal::TERM, Signal::HUP, Signal::INT] {
        let pid = rustix::process::Pid::from_raw(watchdogs[0]).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
    daemon.signal(Signal::TERM);
    // The daemon stops accepting work and stops its task gracefully (a
    // grace of 20 s, which the task ignores); the stop timeout runs out
    // before that.
    helper::wait_for(
        "the daemon to stop accepting",
        Duration::from_secs(30),
        || {
            daemon
                .try_request("GET", "/healthz", None)
                .map_or(true, |a| a.status != 200)
                .then_some(())
        },
    );
    assert_eq!(env.watchdogs(), watchdogs, "the watchdog is still there");
    daemon.signal(Signal::KILL);
    // The watchdog gives the task its grace too.
    helper::wait_for("the watchdog to reap", Duration::from_secs(90), || {
        env.containers().is_empty().then_some(())
    });
    helper::wait_for("the record to be lost", Duration::from_secs(30), || {
        (env.show(&id)["state"] == "lost").then_some(())
    });
}

#[test]
fn two_daemons_on_one_home_never_run_one_task_twice() {
    require_docker!();
    let env = TestEnv::new();
    let a_sock = env.home.join("a.sock");
    let b_sock = env.home.join("b.sock");
    let a = env.serve(&["--concurrency", "2", "--socket", a_sock.to_str().unwrap()]);
    let b = env.serve(&["--concurrency", "2", "--socket", b_sock.to_str().unwrap()]);
    let ids: Vec<String> = (0..16)
        .map(|i| {
            let daemon = if i % 2 == 0 { &a } else { &b };
            daemon.submit(spec(&env, &format!("echo ran {i}")))
        })
        .collect();
    let sessions: std::collections::BTreeSet<String> = ids
        .iter()
        .map(|id| {
            let task = a.wait_ended(id, Duration::from_secs(120));
            assert_eq!(task["state"], "succeeded", "{task}");
            task["session"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(sessions.len(), 2, "both daemons ran tasks");
    for (i, id) in ids.iter().enumerate() {
        let log = std::fs::read_to_string(env.home.join("logs").join(format!("{id}.log"))).unwrap();
        assert_eq!(log, format!("ran {i}\n"), "ran exactly once");
    }
}

#[test]
fn the_socket_is_private_and_a_live_daemons_socket_is_never_replaced() {
    require_docker!();
    let env = TestEnv::new();
    let _daemon = env.serve(&[]);
    let mode = std::fs::metadata(env.home.join("orch.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = env.orch().arg("serve").output().unwrap();
    assert_eq!(code(&second), 125);
    assert!(
        stderr(&second).contains("a daemon is already serving on"),
        "{}",
        stderr(&second)
    );
    // submit without a daemon names the socket and `orch serve`.
    let lonely = TestEnv::new();
    let out = lonely
        .orch()
        .args(["submit"])
        .arg(&lonely.project)
        .arg("exit 0")
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("orch.sock") && stderr(&out).contains("orch serve"),
        "{}",
        stderr(&out)
    );
    // The CLI submits through the socket.
    let out = env
        .orch()
        .args(["submit"])
        .arg(&env.project)
        .arg("echo via cli")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = helper::stdout(&out).trim().to_owned();
    assert_eq!(
        _daemon.wait_ended(&id, Duration::from_secs(60))["state"],
        "succeeded"
    );
}

#[test]
fn the_tcp_listener_wants_the_token() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve_with(&["--listen", "127.0.0.1:0"], |cmd| {
        cmd.env("ORCH_TOKEN", "s3cret-token-0123456789");
    });
    let addr = daemon.tcp_addr();
    let get = |path: &str, token: Option<&str>| {
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(token) = token {
            raw.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        raw.push_str("\r\n");
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        std::io::Write::write_all(&mut stream, raw.as_bytes()).unwrap();
        let mut answer = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut answer).unwrap();
        helper::parse_answer(&answer)
    };
    assert_eq!(get("/healthz", None).status, 200);
    let refused = get("/v1/tasks", None);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.json()["error"].as_str().unwrap().contains("Bearer"));
    assert_eq!(get("/v1/tasks", Some("wrong")).status, 401);
    assert_eq!(
        get("/v1/tasks", Some("s3cret-token-0123456789")).status,
        200
    );
}

#[test]
fn bad_requests_get_clear_errors_and_never_hurt_the_daemon() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&[]);
    let error = |method: &str, path: &str, body: Option<&str>, status: u16| {
        let answer = daemon.request(method, path, body);
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        let message = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(!message.contains('\n'), "{message}");
        message
    };
    error("POST", "/v1/tasks", Some("{\"project\": "), 400);
    error("POST", "/v1/tasks", Some("[1, 2]"), 400);
    assert!(
        error(
            "POST",
            "/v1/tasks",
            Some("{\"project\":\"/x\",\"desc\":\"d\",\"imgae\":1}"),
            400
        )
        .contains("imgae")
    );
    let big = format!(
        "{{\"project\":\"/x\",\"desc\":\"{}\"}}",
        "x".repeat(200_000)
    );
    error("POST", "/v1/tasks", Some(&big), 413);
    let refused = error(
        "POST",
        "/v1/tasks",
        Some(&json!({"project": env.project, "desc": "x", "timeout": "soon"}).to_string()),
        422,
    );
    assert!(refused.contains("invalid duration"), "{refused}");
    let refused = error(
        "POST",
        "/v1/tasks",
        Some(&json!({"project": env.project, "desc": "x", "env": {"A=B": "c"}}).to_string()),
        422,
    );
    assert!(
        refused.contains("invalid variable name \"A=B\""),
        "{refused}"
    );
    let refused = error(
        "POST",
        "/v1/tasks",
        Some(&json!({"project": "/nonexistent/dir", "desc": "x"}).to_string()),
        422,
    );
    let out = env
        .orch()
        .args(["task", "/nonexistent/dir", "x"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains(&refused),
        "the same message as orch task: {refused} / {}",
        stderr(&out)
    );
    error("GET", "/v1/tasks/0000ffff", None, 404);
    error("GET", "/v1/tasks/ab", None, 400);
    // A name that no task has.
    error("GET", "/v1/tasks/zz", None, 404);
    error("GET", "/v1/nope", None, 404);
    // Two tasks of one millisecond-prefix: an ambiguous prefix lists both.
    let a = daemon.submit(spec(&env, "exit 0"));
    let b = daemon.submit(spec(&env, "exit 0"));
    let common: String = a
        .chars()
        .zip(b.chars())
        .take_while(|(x, y)| x == y)
        .map(|p| p.0)
        .collect();
    if common.replace('-', "").len() >= 4 {
        let message = error("GET", &format!("/v1/tasks/{common}"), None, 409);
        assert!(message.contains(&a) && message.contains(&b), "{message}");
    }
    // JSON sent as `curl -d` sends it (as a form) is read as JSON: a dry
    // run stays dry, a bad strategy is refused, a task is queued.
    let form = |path: &str, body: &str| {
        daemon
            .try_request_typed(
                "POST",
                path,
                Some(body),
                "application/x-www-form-urlencoded",
            )
            .unwrap()
    };
    let dry = form("/v1/cleanup", r#"{"dry_run":true}"#);
    assert_eq!(
        (dry.status, &dry.json()["dry_run"]),
        (200, &json!(true)),
        "{}",
        dry.body
    );
    assert_eq!(form("/v1/cleanup", r#"{"strategy":"bogus"}"#).status, 422);
    assert_eq!(
        form("/v1/tasks", &spec(&env, "exit 0").to_string()).status,
        201
    );
    assert_eq!(daemon.request("GET", "/healthz", None).status, 200);
}

#[test]
fn an_engine_that_is_down_is_a_503() {
    require_docker!();
    let env = TestEnv::new();
    let proxy = helper::Proxy::start();
    let daemon = env.serve_with(&[], |cmd| {
        cmd.env("DOCKER_HOST", proxy.host());
    });
    proxy.set(helper::Mode::Refuse);
    let answer = daemon.request("POST", "/v1/tasks", Some(&spec(&env, "exit 0").to_string()));
    assert_eq!(answer.status, 503, "{}", answer.body);
    // It does not accept work, and says so to health checks.
    let health = daemon.request("GET", "/healthz", None);
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{}",
        answer.body
    );
    proxy.set(helper::Mode::Pass);
    assert_eq!(daemon.request("GET", "/healthz", None).status, 200);
    let id = daemon.submit(spec(&env, "exit 0"));
    assert_eq!(
        daemon.wait_ended(&id, Duration::from_secs(60))["state"],
        "succeeded"
    );
}

#[test]
fn thousands_of_random_and_truncated_requests_never_stop_it() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&[]);
    let valid = [
        "GET /v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        format!(
            "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{}",
            json!({"project": "/nonexistent", "desc": "x"})
        ),
        "DELETE /v1/tasks/0123 HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "POST /v1/cleanup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"dry_run\":true}".to_owned(),
        "GET /v1/tasks/0123/logs?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..3000 {
        let base = valid[(next() % valid.len() as u64) as usize]
            .as_bytes()
            .to_vec();
        let mut raw = match next() % 4 {
            // Truncated anywhere.
            0 => base[..(next() as usize % base.len().max(1))].to_vec(),
            // Bytes flipped.
            1 => {
                let mut b = base.clone();
                for _ in 0..(next() % 8) {
                    let i = next() as usize % b.len();
                    b[i] = next() as u8;
                }
                b
            }
            // Garbage.
            2 => (0..(next() % 512)).map(|_| next() as u8).collect(),
            // A valid head with a random body.
            _ => {
                let mut b = base.clone();
                b.extend((0..(next() % 256)).map(|_| next() as u8));
                b
            }
        };
        if raw.is_empty() {
            raw.push(b'\n');
        }
        let _ = helper::send_raw(&daemon.socket, &raw, Duration::from_secs(5));
        sent += 1;
    }
    eprintln!("fuzz: {sent} random requests in {:?}", started.elapsed());
    assert_eq!(
        daemon.request("GET", "/healthz", None).status,
        200,
        "still serving"
    );
    let id = daemon.submit(spec(&env, "echo still fine"));
    assert_eq!(
        daemon.wait_ended(&id, Duration::from_secs(60))["state"],
        "succeeded"
    );
    helper::wait_for("its container to go", Duration::from_secs(30), || {
        env.containers().is_empty().then_some(())
    });
}

/// Waits for the task `id` to have printed `ready`: its traps are set.
fn wait_ready(env: &TestEnv, id: &str) {
    let log = env.home.join("logs").join(format!("{id}.log"));
    helper::wait_for("the task to be ready", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|text| text == "ready\n")
            .then_some(())
    });
}
