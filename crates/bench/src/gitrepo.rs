//! A real repository with history (`ORCH_BENCH_REPO`, e.g. git's own: 82k
//! commits, 4.8k files): a task that commits inside it, with orch and by
//! hand; and the time from starting a task to its first output for a
//! project from a git server (its mirror warm, then cold) against the same
//! repository as a local project.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Bench, Config, Report, ms, quiet, ratio, sh, stats};

/// The image with git, for the committing task.
const GIT_IMAGE: &str = "orch-agent-git:dev";

impl Bench {
    pub(crate) fn gitrepo(&self, config: &Config, report: &mut Report) {
        let Ok(source) = std::env::var("ORCH_BENCH_REPO") else {
            report.line(
                "(gitrepo: set ORCH_BENCH_REPO to a repository with history, e.g. a clone of git's own; skipped)"
                    .into(),
            );
            return;
        };
        let (home, project) = self.home("gitrepo", true);
        let toml = std::fs::read_to_string(project.join("orch.toml")).expect("orch.toml");
        std::fs::remove_dir_all(&project).expect("clear the project");
        // A clone of its own (objects copied, no alternates to mount).
        sh(
            "git",
            &[
                "clone",
                "--quiet",
                "--no-local",
                &source,
                project.to_str().expect("utf-8"),
            ],
        );
        let git = |args: &[&str]| {
            let mut full = vec!["-C", project.to_str().expect("utf-8")];
            full.extend_from_slice(&[
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@example.com",
            ]);
            full.extend_from_slice(args);
            sh("git", &full)
        };
        let toml = toml.replace("orch-agent:dev", GIT_IMAGE)
            + "env = { GIT_AUTHOR_NAME = \"b\", GIT_AUTHOR_EMAIL = \"b@x\", GIT_COMMITTER_NAME = \"b\", GIT_COMMITTER_EMAIL = \"b@x\" }\n";
        std::fs::write(project.join("orch.toml"), &toml).expect("orch.toml");
        git(&["add", "orch.toml"]);
        git(&["commit", "--quiet", "-m", "orch.toml"]);
        let commits = git(&["rev-list", "--count", "HEAD"]);
        let files = git(&["ls-files"]).lines().count();

        // A task that commits inside.
        let task = "write bench.txt x; run git add bench.txt; run git commit -q -m bench";
        let common = project.join(".git");
        let plain = project.parent().expect("a parent").join("plain");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..config.rounds.min(10) + 1 {
            let start = Instant::now();
            let status = self
                .orch(&home)
                .arg("task")
                .arg(&project)
                .arg(task)
                .status();
            assert!(status.is_ok_and(|s| s.success()), "orch task");
            let o = start.elapsed();
            let start = Instant::now();
            let wt = plain.join(format!("t{round}"));
            let wt_s = wt.to_str().expect("utf-8").to_owned();
            git(&[
                "worktree",
                "add",
                "--quiet",
                "-b",
                &format!("plain/{round}"),
                &wt_s,
            ]);
            let status = quiet(
                Command::new("docker")
                    .args(["run", "--rm", "--init"])
                    .args(["-v", &format!("{wt_s}:{wt_s}")])
                    .args(["-v", &format!("{0}:{0}", common.display())])
                    .args(["-w", &wt_s])
                    .args(["-e", "GIT_AUTHOR_NAME=b", "-e", "GIT_AUTHOR_EMAIL=b@x"])
                    .args([
                        "-e",
                        "GIT_COMMITTER_NAME=b",
                        "-e",
                        "GIT_COMMITTER_EMAIL=b@x",
                    ])
                    .args([GIT_IMAGE, "/orch-agent", task]),
            )
            .status();
            assert!(status.is_ok_and(|s| s.success()), "docker run");
            git(&["worktree", "remove", "--force", &wt_s]);
            let t = start.elapsed();
            if round > 0 {
                ours.push(o);
                theirs.push(t);
            }
        }
        let (o, t) = (stats(&ours), stats(&theirs));

        // First output: local, URL with a warm mirror, URL with a cold one.
        let url = format!("file://{}", project.display());
        let mirrors = home.join("mirrors");
        let mut local = Vec::new();
        let mut warm = Vec::new();
        let mut cold = Vec::new();
        for round in 0..config.rounds.min(10) + 1 {
            let l = self.first_output(&home, project.to_str().expect("utf-8"));
            let _ = self.first_output(&home, &url);
            let w = self.first_output(&home, &url);
            let _ = std::fs::remove_dir_all(&mirrors);
            let c = self.first_output(&home, &url);
            if round > 0 {
                local.push(l);
                warm.push(w);
                cold.push(c);
            }
        }
        let (l, w, c) = (stats(&local), stats(&warm), stats(&cold));
        report.table(
            &format!(
                "11. A real repository ({commits} commits, {files} files): a task that commits, and the first output of a project from a git server"
            ),
            &["", "median", "p95"],
            vec![
                vec!["`orch task`, the task commits inside".into(), ms(o.median), ms(o.p95)],
                vec![
                    "by hand: `git worktree add` + `docker run` (commits inside) + `git worktree remove`".into(),
                    ms(t.median),
                    ms(t.p95),
                ],
                vec!["ratio orch/by hand".into(), ratio(o.median, t.median), ratio(o.p95, t.p95)],
                vec!["first output, local project".into(), ms(l.median), ms(l.p95)],
                vec!["first output, `file://` URL, warm mirror".into(), ms(w.median), ms(w.p95)],
                vec!["ratio warm URL/local".into(), ratio(w.median, l.median), ratio(w.p95, l.p95)],
                vec!["first output, `file://` URL, cold mirror (first clone)".into(), ms(c.median), ms(c.p95)],
            ],
        );
    }

    /// From starting `orch task <project> "echo first; ..."` to the line
    /// `first` on its output.
    fn first_output(&self, home: &Path, project: &str) -> Duration {
        let start = Instant::now();
        let mut child = self
            .orch(home)
            .arg("task")
            .arg(project)
            .arg("echo first")
            .stdout(Stdio::piped())
            .spawn()
            .expect("orch task");
        let stdout = child.stdout.take().expect("stdout");
        let mut took = None;
        for line in std::io::BufReader::new(stdout).lines() {
            if line.is_ok_and(|l| l.contains("first")) && took.is_none() {
                took = Some(start.elapsed());
            }
        }
        let status = child.wait();
        assert!(status.is_ok_and(|s| s.success()), "orch task {project}");
        took.expect("its output")
    }
}
