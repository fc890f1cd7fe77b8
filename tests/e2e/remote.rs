//! Projects from a git server (SPEC 12): a real `git daemon` on localhost,
//! and `file://`. The work arrives on the server as `orch/<id>`; a server
//! that is gone when the task ends leaves the work in the mirror, kept from
//! retention, until `orch push`; nothing a hostile task writes runs on the
//! host or changes the server but by its branch.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helper::{self, IMAGE, SHELL_IMAGE, TestEnv, code, stderr, wait_for};
use crate::require_docker;

/// A `git daemon` serving bare repositories, pushes allowed.
pub(crate) struct GitServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl GitServer {
    pub(crate) fn start() -> GitServer {
        let dir = tempfile::Builder::new()
            .prefix("orch-e2e-gitd-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("base")).unwrap();
        let mut server = GitServer {
            dir,
            port: helper::web::free_port(),
            child: None,
        };
        server.launch();
        server
    }

    fn base(&self) -> PathBuf {
        self.dir.path().join("base")
    }

    fn launch(&mut self) {
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--listen=127.0.0.1",
                "--export-all",
            ])
            .arg(format!("--port={}", self.port))
            .arg(format!("--base-path={}", self.base().display()))
            .arg("--enable=receive-pack")
            .arg(self.base())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // `git daemon` runs git-daemon as a child of its own: the
            // group goes together.
            .process_group(0)
            .spawn()
            .expect("git daemon");
        self.child = Some(child);
        let port = self.port;
        wait_for("git daemon to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// Stops the server (the network gone).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub(crate) fn restart(&mut self) {
        self.launch();
    }

    pub(crate) fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.base().join(format!("{name}.git"))
    }

    /// A repository `name` on the server whose `main` holds `orch.toml`
    /// (`toml`) and a README; its URL.
    pub(crate) fn repo(&self, name: &str, toml: &str) -> String {
        let bare = self.path(name);
        git(
            &self.base(),
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                &bare.to_string_lossy(),
            ],
        );
        let src = self.dir.path().join(format!("src-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        git(&src, &["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(src.join("orch.toml"), toml).unwrap();
        std::fs::write(src.join("README"), "the project\n").unwrap();
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "--quiet", "-m", "initial"]);
        git(&src, &["push", "--quiet", &bare.to_string_lossy(), "main"]);
        self.url(name)
    }

    /// git in the server's repository `name`.
    pub(crate) fn git(&self, name: &str, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(self.path(name))
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

    /// The server's branches of `name`.
    pub(crate) fn branches(&self, name: &str) -> Vec<String> {
        self.git(
            name,
            &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The orch.toml of the server's projects.
fn toml(image: &str, extra: &str) -> String {
    let command = if image == SHELL_IMAGE {
        "command = [\"sh\", \"-c\", \"{desc}\"]"
    } else {
        "command = [\"/orch-agent\", \"{desc}\"]"
    };
    format!(
        "image = \"{image}\"\n{command}\nstop_grace = \"2s\"\n\
         env = {{ GIT_AUTHOR_NAME = \"task\", GIT_AUTHOR_EMAIL = \"task@example.com\", \
         GIT_COMMITTER_NAME = \"task\", GIT_COMMITTER_EMAIL = \"task@example.com\" }}\n{extra}\n"
    )
}

/// The mirrors of a home.
fn mirrors(env: &TestEnv) -> Vec<PathBuf> {
    std::fs::read_dir(env.home.join("mirrors"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "git"))
                .collect()
        })
        .unwrap_or_default()
}

/// `orch task <url>`: the task's commit and its uncommitted work arrive on
/// the server as `orch/<id>`, over `git://` and `file://`; the server's
/// repository stays whole; `ps` names the project.
#[test]
fn a_tasks_work_arrives_on_the_server() {
    require_docker!();
    let server = GitServer::start();
    let git_url = server.repo("api", &toml(IMAGE, ""));
    let file_url = format!("file://{}", server.path("api").display());
    for url in [git_url.as_str(), file_url.as_str()] {
        let env = TestEnv::new();
        let out = env
            .orch()
            .arg("task")
            .arg(url)
            .arg("write pending.txt uncommitted; echo done")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(code(&out), 0, "{url}: {err}");
        let id = helper::task_id(&err);
        let branch = format!("orch/{id}");
        assert!(
            server.branches("api").contains(&branch),
            "{url}: {:?}",
            server.branches("api")
        );
        assert_eq!(
            server.git("api", &["show", &format!("{branch}:pending.txt")]),
            "uncommitted"
        );
        server.git("api", &["fsck", "--strict"]);
        assert_eq!(mirrors(&env).len(), 1, "{url}");
        let listed = env.ok(&["ps", "-a"]);
        assert!(listed.contains("api"), "{listed}");
        assert!(env.task_dirs().is_empty(), "removed once delivered");
        assert!(env.containers().is_empty());
    }
}

/// Twenty tasks on one URL at once: one mirror, every branch arrives.
#[test]
fn twenty_tasks_on_one_url_share_one_mirror() {
    require_docker!();
    let server = GitServer::start();
    let url = server.repo("many", &toml(IMAGE, ""));
    let env = TestEnv::new();
    let running: Vec<helper::Running> = (0..20)
        .map(|i| {
            let mut cmd = env.orch();
            cmd.arg("task").arg(&url).arg(format!("write n.txt {i}"));
            helper::Running::spawn(cmd)
        })
        .collect();
    let mut ids = Vec::new();
    for run in running {
        let done = run.wait(Duration::from_secs(180));
        assert_eq!(done.code(), Some(0), "{}", done.stderr);
        ids.push(helper::task_id(&done.stderr));
    }
    let branches = server.branches("many");
    for id in &ids {
        assert!(
            branches.contains(&format!("orch/{id}")),
            "{id}: {branches:?}"
        );
    }
    assert_eq!(mirrors(&env).len(), 1);
    assert!(env.containers().is_empty());
    // `ps --project` takes the URL form too.
    let listed = env.ok(&["ps", "-aq", "--project", &url]);
    assert_eq!(listed.lines().count(), ids.len(), "{listed}");
}

/// The server is gone when the task ends: the work waits in the mirror
/// and the kept workspace, the record says where and why, retention leaves
/// it, and `orch push` delivers it once the server is back.
#[test]
fn work_the_server_could_not_take_waits_for_orch_push() {
    require_docker!();
    let mut server = GitServer::start();
    let url = server.repo("gone", &toml(IMAGE, ""));
    let env = TestEnv::new();
    let mut cmd = env.orch();
    cmd.arg("task")
        .arg(&url)
        .arg("echo started; sleep 2; write late.txt here");
    let running = helper::Running::spawn(cmd);
    running.wait_stderr("task ", Duration::from_secs(60));
    wait_for("the task to start", Duration::from_secs(60), || {
        running.stdout_text().contains("started").then_some(())
    });
    server.stop();
    let done = running.wait(Duration::from_secs(120));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let id = helper::task_id(&done.stderr);
    let record = env.show(&id);
    assert_eq!(record["delivered"], false, "{record}");
    let notes = record["notes"].as_str().unwrap_or("");
    assert!(
        notes.contains("orch push") && notes.contains("mirror"),
        "{notes}"
    );
    assert_eq!(record["workspace_state"], "kept");
    // Retention leaves undelivered work where it is.
    env.ok(&["cleanup", "--older-than", "0s"]);
    assert_eq!(env.task_dirs().len(), 1, "the workspace stays");
    assert_eq!(mirrors(&env).len(), 1, "the mirror stays");
    // Not even --all takes it, nor do the orphan sweep and mirror
    // retention after it.
    let all = env.ok(&["cleanup", "--all"]);
    assert!(all.contains("has not reached"), "{all}");
    env.ok(&["cleanup", "--strategy", "orphans"]);
    let out = env
        .orch()
        .env("ORCH_MIRROR_MAX_AGE", "1s")
        .args(["cleanup", "--older-than", "0s"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.show(&id)["delivered"], false);
    assert_eq!(env.task_dirs().len(), 1, "the workspace stays");
    assert_eq!(mirrors(&env).len(), 1, "the mirror stays");
    // Still gone: a push says so, once.
    let out = env.orch().args(["push", &id]).output().unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    server.restart();
    let out = env.orch().args(["push", &id]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        server.git("gone", &["show", &format!("orch/{id}:late.txt")]),
        "here"
    );
    assert_eq!(env.show(&id)["delivered"], true);
    env.ok(&["cleanup", "--all"]);
}

/// Hostile tasks against a URL project: hooks, `core.fsmonitor`, a
/// pager and an alias written into the task's repository never run on the
/// host (not when the work is saved, not when it is pushed); the server's
/// repository gains the task's branch and nothing else.
#[test]
fn a_hostile_task_changes_nothing_on_the_server_but_its_branch() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    let server = GitServer::start();
    let url = server.repo("target", &toml(SHELL_IMAGE, ""));
    let before = server.git("target", &["for-each-ref"]);
    let config_before = std::fs::read(server.path("target").join("config")).unwrap();
    let env = TestEnv::new();
    let marker = env.project.parent().unwrap().join("MARKER");
    let touch = format!("touch {}", marker.display());
    let out = env
        .orch()
        .arg("task")
        .arg(&url)
        .arg(format!(
            "printf '#!/bin/sh\\n{touch}\\n' > evil.sh; chmod +x evil.sh; \
             for h in pre-push post-commit reference-transaction pre-receive; do cp evil.sh .git/hooks/$h; done; \
             git config core.fsmonitor \"$PWD/evil.sh\"; git config core.pager \"$PWD/evil.sh\"; \
             git config remote.origin.pushurl /tmp/elsewhere; git config alias.push '!{touch}'; \
             git add -A; git commit -q -m from-the-task; echo more > more.txt"
        ))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let id = helper::task_id(&err);
    assert!(!marker.exists(), "something the task wrote ran on the host");
    let after = server.git("target", &["for-each-ref"]);
    let gained: Vec<&str> = after.lines().filter(|l| !before.contains(l)).collect();
    assert_eq!(gained.len(), 1, "{gained:?}");
    assert!(
        gained[0].ends_with(&format!("refs/heads/orch/{id}")),
        "{gained:?}"
    );
    assert_eq!(
        std::fs::read(server.path("target").join("config")).unwrap(),
        config_before
    );
    assert_eq!(
        server.git("target", &["show", &format!("orch/{id}:more.txt")]),
        "more"
    );
    server.git("target", &["fsck", "--strict"]);
}

/// URLs orch will not or cannot use: one line each, exit 125, and no
/// mirror left behind.
#[test]
fn bad_urls_are_one_line_and_leave_no_mirror() {
    require_docker!();
    let server = GitServer::start();
    let closed = format!("git://127.0.0.1:{}/x.git", helper::web::free_port());
    let missing = server.url("none");
    let env = TestEnv::new();
    for (url, says) in [
        (closed.as_str(), "clone"),
        (missing.as_str(), "clone"),
        ("https://user:s3cret@example.com/r.git", "password"),
        ("ext::sh -c id", "space"),
    ] {
        let out = env
            .orch()
            .arg("task")
            .arg(url)
            .arg("exit 0")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(code(&out), 125, "{url}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{url}: {err}");
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(mirrors(&env).is_empty(), "{url}: {:?}", mirrors(&env));
    }
}

/// A configured project from a git server (`repo = "<url>"`), its
/// settings layered over the server's `orch.toml`; the mirror counted by
/// `orch du` and, once unused for `ORCH_MIRROR_MAX_AGE`, removed by
/// retention.
#[test]
fn a_configured_url_project_and_its_mirror_over_time() {
    require_docker!();
    let server = GitServer::start();
    let url = server.repo("conf", &toml("no-such-image:1", ""));
    let env = TestEnv::new();
    std::fs::write(
        &env.config,
        format!("[projects.tools]\nrepo = \"{url}\"\nimage = \"{IMAGE}\"\n"),
    )
    .unwrap();
    let out = env
        .orch()
        .args(["task", "tools", "write t.txt ok"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "the global config's image wins: {err}");
    let id = helper::task_id(&err);
    assert_eq!(
        server.git("conf", &["show", &format!("orch/{id}:t.txt")]),
        "ok"
    );
    assert_eq!(env.show(&id)["project"], "tools");
    let du = env.ok(&["du"]);
    assert!(du.contains("mirror of") && du.contains(&url), "{du}");
    // Recent: kept.
    env.ok(&["cleanup", "--older-than", "1h"]);
    assert_eq!(mirrors(&env).len(), 1);
    // Unused for longer than the limit: removed.
    let out = env
        .orch()
        .env("ORCH_MIRROR_MAX_AGE", "0s")
        .args(["cleanup", "--older-than", "1h"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        helper::stdout(&out).contains("removed mirror"),
        "{}",
        helper::stdout(&out)
    );
    assert!(mirrors(&env).is_empty());
}
