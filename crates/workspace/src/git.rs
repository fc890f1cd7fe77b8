//! Running git. orch drives the user's own git, as the user would, so the
//! repository never holds anything git itself would not write.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// Runs `git -C dir args...`; returns its stdout, trimmed, or an error
/// carrying git's stderr on one line.
pub(crate) fn git(action: &'static str, dir: &Path, args: &[&str]) -> Result<String, Error> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        // Never prompt, never page, never pick up a caller's GIT_DIR.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run git in", dir, e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Err(Error::Git {
            action,
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            stderr: stderr.join("; "),
        })
    }
}

/// A git repository a project lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// The top of the working tree.
    pub top: PathBuf,
    /// The common git directory (`.git` of the main worktree), which every
    /// worktree's metadata lives under.
    pub common_dir: PathBuf,
    /// Where the project sits inside the repository (empty at the top).
    pub prefix: PathBuf,
}

impl Repo {
    /// The repository containing `dir`, or an error saying it is none.
    pub fn discover(dir: &Path) -> Result<Repo, Error> {
        let out = git(
            "inspect the repository",
            dir,
            &[
                "rev-parse",
                "--show-toplevel",
                "--git-common-dir",
                "--show-prefix",
            ],
        )
        .map_err(|_| Error::NotARepository {
            path: dir.to_path_buf(),
        })?;
        let mut lines = out.lines();
        let (Some(top), Some(common)) = (lines.next(), lines.next()) else {
            return Err(Error::NotARepository {
                path: dir.to_path_buf(),
            });
        };
        let prefix = lines.next().unwrap_or("").trim_end_matches('/');
        let top = PathBuf::from(top);
        let common = Path::new(common);
        let common_dir = if common.is_absolute() {
            common.to_path_buf()
        } else {
            dir.join(common)
        };
        let common_dir = common_dir
            .canonicalize()
            .map_err(|e| Error::io("resolve", &common_dir, e))?;
        Ok(Repo {
            top,
            common_dir,
            prefix: PathBuf::from(prefix),
        })
    }
}

impl Repo {
    /// The commit `git_ref` names, or an error saying it names none (an
    /// empty repository has no HEAD commit yet).
    pub fn resolve(&self, git_ref: &str) -> Result<String, Error> {
        git(
            "resolve the start of the workspace",
            &self.top,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{git_ref}^{{commit}}"),
            ],
        )
        .map_err(|_| Error::Git {
            action: "resolve the start of the workspace",
            dir: self.top.clone(),
            args: vec!["rev-parse".into(), git_ref.into()],
            stderr: format!("{git_ref:?} is not a commit (a repository needs one commit first)"),
        })
    }
}
