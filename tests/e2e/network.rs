//! Reaching orch over a network: TLS on the daemon's listener (with
//! certificates made for the test by openssl), mutual TLS, a certificate
//! read again on SIGHUP, the CLI against a remote daemon (`ORCH_HOST`),
//! a read-only token, webhooks to https receivers, and the README's curl
//! recipes run as written.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::process::Signal;

use crate::helper::{self, Certs, TestEnv, code, stderr, stdout, wait_for, web};
use crate::require_docker;

const TOKEN: &str = "network-test-token-0123456789";
const READ_TOKEN: &str = "network-read-token-0123456789";

/// A daemon serving TLS on a free loopback port; its https URL.
fn tls_daemon(env: &TestEnv, certs: &Certs, extra: &[&str]) -> (helper::Daemon, String) {
    let port = web::free_port();
    let listen = format!("127.0.0.1:{port}");
    let cert = certs.path("server.pem");
    let key = certs.path("server.key");
    let mut args = vec![
        "--listen",
        &listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let read_file = env.home.parent().unwrap().join("read-token");
    std::fs::write(&read_file, READ_TOKEN).unwrap();
    let daemon = env.serve_with(&args, |cmd| {
        cmd.env("ORCH_TOKEN", TOKEN)
            .env("ORCH_READ_TOKEN_FILE", &read_file);
    });
    (daemon, format!("https://localhost:{port}"))
}

/// `orch` against the daemon at `host`, as a user elsewhere would run it.
fn remote(env: &TestEnv, host: &str, ca: &Path) -> Command {
    let mut cmd = env.orch();
    cmd.env("ORCH_HOST", host)
        .env("ORCH_TOKEN", TOKEN)
        .env("ORCH_TLS_CA", ca)
        // Not the daemon's home: nothing local may be used.
        .env("ORCH_HOME", env.home.parent().unwrap().join("elsewhere"));
    cmd
}

/// Every verb through `ORCH_HOST` over TLS: the same output and exit codes
/// as on the daemon's own host.
#[test]
fn the_cli_runs_every_verb_against_a_remote_daemon() {
    require_docker!();
    let certs = Certs::make();
    let env = TestEnv::new();
    let (daemon, host) = tls_daemon(&env, &certs, &["--concurrency", "1"]);
    let ca = certs.path("ca.pem");
    // task: submitted, followed, its exit code orch's.
    let out = remote(&env, &host, &ca)
        .arg("task")
        .arg(&env.project)
        .arg("echo from-remote; exit 3")
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stdout(&out).contains("from-remote"), "{}", stdout(&out));
    let id = helper::task_id(&stderr(&out));
    // show, ps, logs: as locally.
    let local = env.orch().args(["show", &id]).output().unwrap();
    let far = remote(&env, &host, &ca)
        .args(["show", &id, "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&far), 0, "{}", stderr(&far));
    let far: serde_json::Value = serde_json::from_slice(&far.stdout).unwrap();
    assert_eq!(far["exit_code"], 3);
    assert_eq!(code(&local), 0);
    let ps = remote(&env, &host, &ca)
        .args(["ps", "-a"])
        .output()
        .unwrap();
    assert_eq!(code(&ps), 0, "{}", stderr(&ps));
    assert!(stdout(&ps).contains(&helper::short(&id)), "{}", stdout(&ps));
    let logs = remote(&env, &host, &ca)
        .args(["logs", "-f", &id])
        .output()
        .unwrap();
    assert_eq!(code(&logs), 3, "logs -f exits with the task's code");
    assert!(stdout(&logs).contains("from-remote"));
    let tail = remote(&env, &host, &ca)
        .args(["logs", "--tail", "1", &id])
        .output()
        .unwrap();
    assert_eq!(stdout(&tail), "from-remote\n", "{}", stderr(&tail));
    let waited = remote(&env, &host, &ca)
        .args(["wait", &id])
        .output()
        .unwrap();
    assert_eq!((stdout(&waited).as_str(), code(&waited)), ("3\n", 3));
    let quiet = remote(&env, &host, &ca)
        .args(["ps", "-q", "--state", "failed"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&quiet).trim(),
        &helper::short(&id),
        "{}",
        stderr(&quiet)
    );
    // submit, then cancel it while it runs.
    let out = remote(&env, &host, &ca)
        .args(["submit"])
        .arg(&env.project)
        .arg("sleep 60")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let queued = stdout(&out).trim().to_owned();
    wait_for("it to run", Duration::from_secs(60), || {
        (daemon
            .request("GET", &format!("/v1/tasks/{queued}"), None)
            .json()["state"]
            == "running")
            .then_some(())
    });
    let out = remote(&env, &host, &ca)
        .args(["cancel", &queued])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("cancelled"), "{}", stdout(&out));
    // cleanup and du.
    let out = remote(&env, &host, &ca)
        .args(["cleanup", "--older-than", "0s", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("Would clean up"), "{}", stdout(&out));
    let out = remote(&env, &host, &ca)
        .args(["du", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Through the socket too (unix://).
    let socket = format!("unix://{}", daemon.socket.display());
    let out = env
        .orch()
        .env("ORCH_HOST", &socket)
        .args(["ps", "-a"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&helper::short(&id)));
    // Commands of the daemon's own host are refused, naming why, as bad
    // usage.
    for args in [
        vec!["push", id.as_str()],
        vec!["diff", id.as_str()],
        vec!["rm", id.as_str()],
    ] {
        let out = remote(&env, &host, &ca).args(&args).output().unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("own host"), "{}", stderr(&out));
    }
    assert!(env.containers().is_empty() || wait_for_opt_empty(&env));
}

fn wait_for_opt_empty(env: &TestEnv) -> bool {
    helper::wait_for_opt(Duration::from_secs(30), || env.containers().is_empty())
}

/// A CA that did not sign the daemon's certificate is refused, in one
/// line naming the certificate's problem; mutual TLS refuses a client
/// without a certificate and takes one with.
#[test]
fn certificates_are_checked_both_ways() {
    require_docker!();
    let certs = Certs::make();
    let env = TestEnv::new();
    let client_ca = certs.path("ca.pem");
    let (_daemon, host) = tls_daemon(
        &env,
        &certs,
        &["--tls-client-ca", client_ca.to_str().unwrap()],
    );
    let out = remote(&env, &host, &certs.path("other-ca.pem"))
        .args(["ps"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_ne!(code(&out), 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("certificate"), "{err}");
    // Trusted, but no client certificate: the daemon refuses.
    let out = remote(&env, &host, &certs.path("ca.pem"))
        .args(["ps"])
        .output()
        .unwrap();
    assert_ne!(code(&out), 0, "{}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("requires a client certificate"), "{err}");
    // With one: in.
    let out = remote(&env, &host, &certs.path("ca.pem"))
        .env("ORCH_TLS_CERT", certs.path("client.pem"))
        .env("ORCH_TLS_KEY", certs.path("client.key"))
        .args(["ps"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// SIGHUP reads the certificate again: new connections get the new one,
/// a stream open before goes on.
#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    require_docker!();
    let certs = Certs::make();
    let env = TestEnv::new();
    let (daemon, host) = tls_daemon(&env, &certs, &[]);
    let serial = |certs: &Certs| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo | openssl s_client -connect {} -servername localhost 2>/dev/null | openssl x509 -noout -serial",
                host.trim_start_matches("https://").replace("localhost", "127.0.0.1")
            ))
            .current_dir(certs.dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let before = serial(&certs);
    assert!(before.starts_with("serial="), "{before}");
    // A stream that stays open across the reload.
    let mut follow = remote(&env, &host, &certs.path("ca.pem"));
    let id = {
        let out = remote(&env, &host, &certs.path("ca.pem"))
            .arg("submit")
            .arg(&env.project)
            .arg("echo one; sleep 3; echo two")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    follow.args(["logs", "-f", &id]);
    let following = helper::Running::spawn(follow);
    wait_for("the stream", Duration::from_secs(30), || {
        following.stdout_text().contains("one").then_some(())
    });
    certs.signed("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1");
    daemon.running.signal(Signal::HUP);
    daemon
        .running
        .wait_stderr("read again", Duration::from_secs(10));
    let after = serial(&certs);
    assert_ne!(before, after, "new connections get the new certificate");
    let done = following.wait(Duration::from_secs(60));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(
        done.stdout.contains("two"),
        "the open stream went on: {}",
        done.stdout
    );
    // The daemon is still serving.
    assert_eq!(daemon.request("GET", "/healthz", None).status, 200);
}

/// A read-only token lists, shows, follows and scrapes; it cannot submit,
/// cancel or clean up.
#[test]
fn a_read_only_token_only_reads() {
    require_docker!();
    let certs = Certs::make();
    let env = TestEnv::new();
    let (daemon, host) = tls_daemon(&env, &certs, &[]);
    let curl = |method: &str, path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "3",
            ])
            .arg("--cacert")
            .arg(certs.path("ca.pem"))
            .args([
                "-X",
                method,
                "-H",
                &format!("Authorization: Bearer {READ_TOKEN}"),
            ])
            .args(["-H", "Content-Type: application/json", "-d", "{}"])
            .arg(format!("{host}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // A task to read about, submitted with the full token.
    let id = daemon.submit(serde_json::json!({
        "project": env.project, "desc": "echo read-me"
    }));
    daemon.wait_ended(&id, Duration::from_secs(60));
    let reads = [
        "/healthz".to_owned(),
        "/v1/tasks?all=1".to_owned(),
        format!("/v1/tasks/{id}"),
        format!("/v1/tasks/{id}/progress"),
        format!("/v1/tasks/{id}/logs"),
        format!("/v1/tasks/{id}/logs?follow=1"),
        "/v1/du".to_owned(),
        "/v1/events".to_owned(),
        "/v1/cleanups".to_owned(),
        "/v1/alerts".to_owned(),
        "/metrics".to_owned(),
        "/".to_owned(),
        "/dashboard.js".to_owned(),
    ];
    for path in &reads {
        assert_eq!(curl("GET", path), "200", "GET {path}");
    }
    for (method, path) in [
        ("POST", "/v1/tasks".to_owned()),
        ("DELETE", format!("/v1/tasks/{id}")),
        (
            "DELETE",
            "/v1/tasks/0192f0f1-3e4f-7000-8000-000000000000".to_owned(),
        ),
        ("POST", "/v1/cleanup".to_owned()),
        ("PUT", "/v1/tasks".to_owned()),
        ("PATCH", format!("/v1/tasks/{id}")),
    ] {
        assert_eq!(curl(method, &path), "403", "{method} {path}");
    }
    // Nothing it asked for happened: one task, still there.
    let tasks = daemon.request("GET", "/v1/tasks?all=1", None).json();
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
}

/// Plain HTTP on an address other than loopback only when asked, with a
/// warning.
#[test]
fn plain_http_beyond_loopback_needs_to_be_asked_for() {
    require_docker!();
    let env = TestEnv::new();
    let listen = format!("0.0.0.0:{}", web::free_port());
    let out = env
        .orch()
        .args(["serve", "--listen", &listen])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("--insecure-http"), "{}", stderr(&out));
    let daemon = env.serve_with(&["--listen", &listen, "--insecure-http"], |cmd| {
        cmd.env("ORCH_TOKEN", TOKEN);
    });
    daemon
        .running
        .wait_stderr("in the clear", Duration::from_secs(10));
}

/// Webhooks to https receivers: one whose certificate the hook's CA
/// signed gets signed deliveries; one with a certificate of another CA
/// gets nothing, and the failure is counted with its reason.
#[test]
fn webhooks_reach_https_receivers_and_refuse_bad_certificates() {
    require_docker!();
    if !web::tool_ready("socat", "socat") {
        return;
    }
    let certs = Certs::make();
    certs.signed(
        "bad",
        "other-ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    );
    let env = TestEnv::new();
    let got = certs.path("received");
    let good_port = web::free_port();
    let bad_port = web::free_port();
    let receiver = |port: u16, cert: &str| {
        Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                certs.path(&format!("{cert}.pem")).display(),
                certs.path(&format!("{cert}.key")).display()
            ))
            .arg(format!(
                "SYSTEM:'cat >> {}; printf \"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n\"'",
                got.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let good = web::Killed(receiver(good_port, "server"));
    let bad = web::Killed(receiver(bad_port, "bad"));
    std::fs::write(
        &env.config,
        format!(
            "[[webhooks]]\nurl = \"https://localhost:{good_port}/hook\"\nevents = [\"task.finished\"]\nsecret = \"s3\"\nca = \"{ca}\"\n\n\
             [[webhooks]]\nurl = \"https://localhost:{bad_port}/hook\"\nevents = [\"task.finished\"]\nca = \"{ca}\"\n",
            ca = certs.path("ca.pem").display()
        ),
    )
    .unwrap();
    let daemon = env.serve(&[]);
    let answer = daemon.request(
        "POST",
        "/v1/tasks",
        Some(&serde_json::json!({ "project": env.project, "desc": "exit 0" }).to_string()),
    );
    assert_eq!(answer.status, 201, "{}", answer.body);
    wait_for("a delivery", Duration::from_secs(60), || {
        std::fs::read_to_string(&got)
            .ok()
            .filter(|t| t.contains("task.finished"))
    });
    let received = std::fs::read_to_string(&got).unwrap();
    // Header names are case-insensitive (HTTP/1.1 clients differ).
    assert!(
        received
            .to_ascii_lowercase()
            .contains("x-orch-signature: sha256="),
        "{received}"
    );
    assert!(received.contains("POST /hook"), "{received}");
    wait_for(
        "the bad receiver's failure counted",
        Duration::from_secs(120),
        || {
            let metrics = daemon.request("GET", "/metrics", None).body;
            metrics
                .lines()
                .any(|l| l.starts_with("orch_webhook_failures_total{event=\"task.finished\"} 1"))
                .then_some(())
        },
    );
    assert!(
        daemon.running.stderr_text().contains("certificate"),
        "the reason is said: {}",
        daemon.running.stderr_text()
    );
    drop((good, bad));
}

/// The README's curl recipes for a TLS listener, run as written.
#[test]
fn the_readmes_curl_recipes_work_as_written() {
    require_docker!();
    let certs = Certs::make();
    let env = TestEnv::new();
    let (_daemon, host) = tls_daemon(&env, &certs, &[]);
    let token_file = certs.path("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let readme = std::fs::read_to_string(helper::repo_root().join("README.md")).unwrap();
    // The recipe with --cacert, its continued lines joined.
    let recipe = readme
        .split("```sh\n")
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("--cacert"))
        .expect("README has a curl --cacert recipe")
        .replace("\\\n", " ");
    let recipe = recipe
        .replace("~/.config/orch/token", token_file.to_str().unwrap())
        .replace(
            "~/.config/orch/ca.pem",
            certs.path("ca.pem").to_str().unwrap(),
        )
        .replace("https://node-a.example.com:7443", &host);
    let out = Command::new("sh").arg("-c").arg(&recipe).output().unwrap();
    assert!(out.status.success(), "{recipe}: {}", stderr(&out));
    assert!(stdout(&out).starts_with('['), "{}", stdout(&out));
    // With the read-only token: the same list; a submission refused.
    let read_file = certs.path("read-token");
    std::fs::write(&read_file, READ_TOKEN).unwrap();
    let reading = recipe.replace(token_file.to_str().unwrap(), read_file.to_str().unwrap());
    let out = Command::new("sh").arg("-c").arg(&reading).output().unwrap();
    assert!(out.status.success(), "{reading}: {}", stderr(&out));
    let submitting = reading.replace(
        "--config -",
        &format!(
            "-o /dev/null -w '%{{http_code}}' -X POST -d '{{\"project\":\"{}\",\"desc\":\"true\"}}' --config -",
            env.project.display()
        ),
    ).replace("--fail ", "");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&submitting)
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "403", "{submitting}: {}", stderr(&out));
}
