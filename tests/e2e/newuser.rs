//! What a new user runs into: secrets given to a task, homes and sockets
//! they may not use, a daemon started twice, `logs -f` in a script, and
//! the help of `orch submit`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helper::{self, TestEnv, code, stderr, web};
use crate::require_docker;

/// Values no output of orch may show.
const SECRETS: [&str; 3] = ["value-one-9f8e7d", "value-two-6c5b4a", "value-three-3a2b1c"];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

/// Values given with `-e KEY=VALUE`, `-e KEY` (from orch's environment)
/// and `--env-file` reach the task and appear nowhere else: not in `show`,
/// `ps`, the API, the events, a webhook, the metrics or the daemon's log;
/// the record keeps them only until the task ends.
#[test]
fn values_given_to_a_task_appear_nowhere_else() {
    require_docker!();
    let Some(env) = TestEnv::shell_project("workspace = \"none\"") else {
        return;
    };
    let (addr, received) = web::receiver();
    std::fs::write(
        &env.config,
        format!("[[webhooks]]\nurl = \"http://{addr}/hook\"\n"),
    )
    .unwrap();
    let daemon = env.serve(&["-vv", "--concurrency", "1"]);
    let events = web::events(&daemon.socket);
    let env_file = env.project.parent().unwrap().join("task.env");
    std::fs::write(
        &env_file,
        format!("# a comment\nSECRET_TWO={}\n\n", SECRETS[1]),
    )
    .unwrap();
    // The task proves it got every value, then waits to be looked at.
    // (By their first halves only: the description is shown.)
    let check = "case \"$SECRET_ONE:$SECRET_TWO:$SECRET_THREE\" in \
                 value-one-??????:value-two-??????:value-three-??????) echo got-them; sleep 3;; \
                 *) exit 9;; esac";
    let submitted = env
        .orch()
        .arg("submit")
        .args(["-e", &format!("SECRET_ONE={}", SECRETS[0])])
        .arg("--env-file")
        .arg(&env_file)
        .args(["-e", "SECRET_THREE"])
        .env("SECRET_THREE", SECRETS[2])
        .arg(&env.project)
        .arg(check)
        .output()
        .unwrap();
    assert_eq!(code(&submitted), 0, "{}", stderr(&submitted));
    let id = helper::stdout(&submitted).trim().to_owned();

    // While it can still start or runs.
    helper::wait_for("the task to run", Duration::from_secs(60), || {
        (daemon.task(&id)["state"] == "running").then_some(())
    });
    let live = [
        ("show --json", env.ok(&["show", &id, "--json"])),
        ("ps --json", env.ok(&["ps", "--json"])),
        (
            "GET /v1/tasks",
            daemon.request("GET", "/v1/tasks", None).body,
        ),
        (
            "GET /v1/tasks/{id}",
            daemon.request("GET", &format!("/v1/tasks/{id}"), None).body,
        ),
    ];
    for (what, text) in &live {
        assert_no_secret(what, text);
    }
    let shown = env.show(&id);
    let keys = &shown["spec"]["env"];
    assert!(
        keys.as_array().is_some_and(|k| k.len() == 3),
        "keys may be shown: {shown}"
    );

    let record = daemon.wait_ended(&id, Duration::from_secs(60));
    assert_eq!(
        record["state"], "succeeded",
        "the task got its values: {record}"
    );
    assert!(
        env.ok(&["logs", &id]).contains("got-them"),
        "the task ran its check"
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(event) = events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let finished = event.kind == "task.finished";
        seen.push(event.data.to_string());
        if finished {
            break;
        }
    }
    assert!(seen.len() > 1, "events arrived: {seen:?}");
    for event in &seen {
        assert_no_secret("an event", event);
    }
    let hook = received
        .recv_timeout(Duration::from_secs(30))
        .expect("a webhook");
    assert_no_secret("a webhook", &String::from_utf8_lossy(&hook.body));
    assert_no_secret("the metrics", &daemon.request("GET", "/metrics", None).body);
    let ended = env.show(&id);
    assert_no_secret("the ended record", &ended.to_string());
    assert!(
        ended["spec"]["env"].as_array().is_none_or(|k| k.is_empty()),
        "wiped with its keys once it ended: {ended}"
    );
    daemon.signal(rustix::process::Signal::TERM);
    let log = daemon.running.stderr_text();
    assert!(log.contains("INFO"), "the daemon logged: {log}");
    assert_no_secret("the daemon's log", &log);
}

/// `orch task -d` hands its environment to the supervisor without putting
/// it on a command line, which anyone on the machine can read.
#[test]
fn a_detached_task_gets_its_values_off_the_command_line() {
    require_docker!();
    let env = TestEnv::new();
    let out = env
        .orch()
        .args(["task", "-d", "-e"])
        .arg(format!("SECRET_ONE={}", SECRETS[0]))
        .arg(&env.project)
        .arg("sleep 30")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = helper::stdout(&out).trim().to_owned();
    env.wait_running();
    let mut found = false;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("__supervise") && cmdline.contains(&id) {
            found = true;
            assert_no_secret("the supervisor's command line", &cmdline);
        }
    }
    assert!(found, "the supervisor runs");
    env.ok(&["cancel", &id]);
    helper::wait_for("the task to end", Duration::from_secs(30), || {
        (env.show(&id)["state"] == "cancelled").then_some(())
    });
    assert!(env.containers().is_empty());
}

/// `orch` run as someone else: `nobody` when the suite runs as root (who
/// is bound by no permission), else none (the caller makes the home
/// unreadable instead).
fn as_nobody(env: &TestEnv) -> Option<Command> {
    if !rustix::process::getuid().is_root() {
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        helper::orch_bin(),
    ])
    .env("ORCH_HOME", &env.home)
    .env("ORCH_CONFIG", "/dev/null")
    .env("NO_COLOR", "1");
    Some(cmd)
}

/// A home orch cannot read is an error naming it and ORCH_HOME, for every
/// command that reads it, never an empty table.
#[test]
fn a_home_that_cannot_be_read_is_an_error_naming_it() {
    require_docker!();
    let env = TestEnv::new();
    env.ok(&["ps"]);
    let out = env.task("exit 0", &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("ps", vec!["ps"]),
        ("ps --json", vec!["ps", "--json"]),
        ("du", vec!["du"]),
        ("cleanup", vec!["cleanup", "--dry-run"]),
    ];
    for (what, args) in runs {
        let out = match as_nobody(&env) {
            Some(mut cmd) => cmd.args(&args).output().unwrap(),
            None => {
                let mode = std::os::unix::fs::PermissionsExt::from_mode(0o000);
                std::fs::set_permissions(&env.home, mode).unwrap();
                let out = env.orch().args(&args).output().unwrap();
                let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
                std::fs::set_permissions(&env.home, mode).unwrap();
                out
            }
        };
        let err = stderr(&out);
        assert_ne!(code(&out), 0, "{what}: {}", helper::stdout(&out));
        assert!(
            err.contains(&env.home.display().to_string()) && err.contains("ORCH_HOME"),
            "{what}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    }
    // A home under a file: the same, whoever runs it.
    let file = env.project.join("orch.toml");
    let out = env
        .orch()
        .env("ORCH_HOME", file.join("home"))
        .args(["ps"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_ne!(code(&out), 0, "{err}");
    assert!(err.contains("ORCH_HOME"), "{err}");
}

/// A daemon's socket another user may not open: `orch submit` says so,
/// not that no daemon runs.
#[test]
fn a_socket_that_may_not_be_opened_says_permission_denied() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&[]);
    let Some(mut cmd) = as_nobody(&env) else {
        eprintln!("not root: the daemon's socket is this user's own; nothing to deny");
        return;
    };
    let out = cmd
        .arg("submit")
        .arg("--socket")
        .arg(&daemon.socket)
        .arg(&env.project)
        .arg("exit 0")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains("orch serve"), "{err}");
}

/// A second daemon on a live one's socket is refused and writes nothing:
/// not even the API token a TCP listener would need.
#[test]
fn a_refused_second_daemon_writes_nothing() {
    require_docker!();
    let env = TestEnv::new();
    let _daemon = env.serve(&[]);
    let token = env.home.join("api-token");
    assert!(!token.exists());
    let out = env
        .orch()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("already serving"), "{}", stderr(&out));
    assert!(!token.exists(), "the refused daemon wrote its token");
}

/// `orch logs -f` ends with the code `orch task` gave, so that a script
/// can follow a task as it would run it.
#[test]
fn logs_follow_exits_with_the_tasks_code() {
    require_docker!();
    let env = TestEnv::new();
    for (desc, wanted) in [("sleep 1; exit 7", 7), ("sleep 1; exit 0", 0)] {
        let out = env
            .orch()
            .args(["task", "-d"])
            .arg(&env.project)
            .arg(desc)
            .output()
            .unwrap();
        let id = helper::stdout(&out).trim().to_owned();
        let followed = env.orch().args(["logs", "-f", &id]).output().unwrap();
        assert_eq!(code(&followed), wanted, "{desc}: {}", stderr(&followed));
        // Without -f it only prints the log.
        let printed = env.orch().args(["logs", &id]).output().unwrap();
        assert_eq!(code(&printed), 0);
    }
}

/// `orch submit --help` offers only what it accepts.
#[test]
fn submit_offers_no_detach() {
    let out = Command::new(helper::orch_bin())
        .args(["submit", "--help"])
        .output()
        .unwrap();
    let help = helper::stdout(&out);
    assert!(help.contains("--env-file"), "{help}");
    assert!(!help.contains("--detach"), "{help}");
    let out = Command::new(helper::orch_bin())
        .args(["task", "--help"])
        .output()
        .unwrap();
    assert!(helper::stdout(&out).contains("--detach"));
}

/// A foreground daemon says what its first and second Ctrl+C do, in
/// orch's words, not a log line.
#[test]
fn a_foreground_daemon_says_what_ctrl_c_does() {
    require_docker!();
    let env = TestEnv::new();
    let daemon = env.serve(&[]);
    daemon.signal(rustix::process::Signal::INT);
    daemon
        .running
        .wait_stderr("press Ctrl+C again to force", Duration::from_secs(10));
    let said = daemon.running.stderr_text();
    let line = said
        .lines()
        .find(|l| l.contains("press Ctrl+C again"))
        .unwrap_or_default();
    assert!(line.starts_with("orch: SIGINT received"), "{said}");
}
