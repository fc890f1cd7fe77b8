//! A task's workspace: a locked git worktree on its own branch.
//!
//! Created with `git worktree add --lock` on a new branch `orch/<id>`, so git
//! inside the container cannot prune it. Before it is removed, whatever the
//! task left uncommitted (tracked and untracked, not ignored) is committed to
//! that branch: the branch stays, and with it every byte of the task's work.
//! Removal unlocks, lets git remove the worktree, falls back to a
//! path-validated `remove_dir_all`, and prunes git's metadata, so the main
//! repository never keeps a dangling worktree entry.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::git::{Repo, git};
use crate::{Error, Layout, Removal, TaskLock, du};

/// Git config key under the task branch's section recording the commit the
/// branch started from.
const BASE_KEY: &str = "orchbase";

/// A task's workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The project's name.
    pub project: String,
    /// The task id.
    pub task_id: String,
    /// The worktree: `<home>/workspaces/<project>/tasks/<task_id>`.
    pub path: PathBuf,
    /// Where the task starts inside it (the project's place in the repo).
    pub workdir: PathBuf,
    /// The branch, `orch/<task_id>`.
    pub branch: String,
    /// The repository it belongs to.
    pub repo: Repo,
}

/// What removing a workspace did.
#[derive(Debug, Clone)]
pub struct RemovedWorkspace {
    /// The workspace's path.
    pub path: PathBuf,
    /// The commit made of uncommitted work, if there was any.
    pub saved_commit: Option<String>,
    /// Size before removal.
    pub size: du::Size,
    /// Time the removal itself took.
    pub took: Duration,
}

impl Workspace {
    /// The workspace `task_id` has or would have; no I/O.
    pub fn planned(
        layout: &Layout,
        repo: &Repo,
        project: &str,
        task_id: &str,
    ) -> Result<Workspace, Error> {
        let path = layout.task_dir(project, task_id)?;
        Ok(Workspace {
            project: project.to_owned(),
            task_id: task_id.to_owned(),
            workdir: path.join(&repo.prefix),
            path,
            branch: format!("orch/{task_id}"),
            repo: repo.clone(),
        })
    }

    /// The workspace at `<tasks root>/<task_id>` as found on disk, its
    /// repository read from the worktree's `.git` file; `None` if that file
    /// is missing or names no repository (then it is a plain directory).
    pub fn existing(
        layout: &Layout,
        project: &str,
        task_id: &str,
    ) -> Result<Option<Workspace>, Error> {
        let path = layout.task_dir(project, task_id)?;
        let Ok(pointer) = std::fs::read_to_string(path.join(".git")) else {
            return Ok(None);
        };
        // "gitdir: <common>/worktrees/<name>"
        let Some(gitdir) = pointer.trim().strip_prefix("gitdir: ") else {
            return Ok(None);
        };
        let Some(common) = Path::new(gitdir).parent().and_then(Path::parent) else {
            return Ok(None);
        };
        let top = if common.file_name().is_some_and(|n| n == ".git") {
            common.parent().unwrap_or(common)
        } else {
            common
        };
        if !top.exists() {
            return Ok(None);
        }
        let repo = Repo {
            top: top.to_path_buf(),
            common_dir: common.to_path_buf(),
            prefix: PathBuf::new(),
        };
        Workspace::planned(layout, &repo, project, task_id).map(Some)
    }

    /// Creates the worktree on a new branch from `git_ref` (default HEAD).
    /// The caller holds the task's lock.
    pub fn create(&self, _lock: &TaskLock, git_ref: Option<&str>) -> Result<(), Error> {
        let root = self.path.parent().ok_or_else(|| {
            Error::io(
                "create",
                &self.path,
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        std::fs::create_dir_all(root).map_err(|e| Error::io("create", root, e))?;
        let base = self.repo.resolve(git_ref.unwrap_or("HEAD"))?;
        let path = self.path.to_string_lossy();
        let reason = format!("orch task {}", self.task_id);
        git(
            "create the worktree",
            &self.repo.top,
            &[
                "worktree",
                "add",
                "--quiet",
                "--lock",
                "--reason",
                &reason,
                "-b",
                &self.branch,
                &path,
                &base,
            ],
        )?;
        git(
            "record the workspace's base",
            &self.repo.top,
            &[
                "config",
                &format!("branch.{}.{BASE_KEY}", self.branch),
                &base,
            ],
        )?;
        Ok(())
    }

    /// True if the worktree directory exists.
    pub fn exists(&self) -> bool {
        self.path.symlink_metadata().is_ok()
    }

    /// Commits everything the task left uncommitted (tracked and untracked,
    /// not ignored) to its branch. Returns the new commit, if one was needed.
    pub fn save_pending(&self) -> Result<Option<String>, Error> {
        let dir = &self.path;
        // Only in the worktree itself: if the task removed its `.git`, git
        // would walk up and commit into whatever repository holds the home.
        let top = git("find the worktree", dir, &["rev-parse", "--show-toplevel"])?;
        let same = Path::new(&top).canonicalize().ok() == dir.canonicalize().ok();
        if !same {
            return Err(Error::Git {
                action: "check the worktree",
                dir: dir.clone(),
                args: vec!["rev-parse".into(), "--show-toplevel".into()],
                stderr: format!(
                    "{} is no longer a worktree of its repository",
                    dir.display()
                ),
            });
        }
        let status = git(
            "check for uncommitted work",
            dir,
            &["status", "--porcelain", "--untracked-files=all"],
        )?;
        if status.is_empty() {
            return Ok(None);
        }
        git("stage uncommitted work", dir, &["add", "--all"])?;
        let message = format!(
            "orch: uncommitted work of task {}\n\nSaved by orch before removing the task's workspace.",
            self.task_id
        );
        let mut args = Vec::new();
        // Commit as the user if git knows who that is, else as orch.
        if git("read the user's identity", dir, &["config", "user.email"]).is_err() {
            args.extend(["-c", "user.name=orch", "-c", "user.email=orch@localhost"]);
        }
        args.extend([
            "-c",
            "commit.gpgsign=false",
            "commit",
            "--quiet",
            "--no-verify",
            "--allow-empty",
            "-m",
            &message,
        ]);
        git("commit uncommitted work", dir, &args)?;
        git("read the saved commit", dir, &["rev-parse", "HEAD"]).map(Some)
    }

    /// Saves pending work, then removes the worktree: unlock, `git worktree
    /// remove --force --force`, fall back to a path-validated
    /// `remove_dir_all`, then `git worktree prune`.
    ///
    /// If saving fails the workspace is kept and the error returned, unless
    /// `discard` (for `cleanup --all`, or a worktree whose repository is
    /// gone). If files belong to another user, returns
    /// [`Error::NeedsPrivilege`] with the work saved; remove them by other
    /// means, then call [`Workspace::finish_removal`].
    pub fn remove(
        &self,
        layout: &Layout,
        _lock: &TaskLock,
        discard: bool,
    ) -> Result<RemovedWorkspace, Error> {
        let saved_commit = if self.exists() {
            match self.save_pending() {
                Ok(commit) => commit,
                Err(e) if discard => {
                    tracing::warn!(workspace = %self.path.display(), error = %e, "discarding unsaved work");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let size = du::measure(&self.path).unwrap_or_default();
        let started = Instant::now();
        let path = self.path.to_string_lossy();
        let top = &self.repo.top;
        // Each git step may fail (the repository moved, the entry is already
        // gone): the fallback below and the prune make the end state right.
        let _ = git("unlock the worktree", top, &["worktree", "unlock", &path]);
        let by_git = git(
            "remove the worktree",
            top,
            &["worktree", "remove", "--force", "--force", &path],
        );
        if let Err(e) = by_git {
            tracing::debug!(error = %e, "git could not remove the worktree; removing the directory");
        }
        match layout.remove_task_dir(&self.project, &self.path) {
            Ok(Removal::Removed(_) | Removal::Missing(_)) => {}
            Err(Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                return Err(Error::NeedsPrivilege {
                    path: self.path.clone(),
                });
            }
            Err(e) => return Err(e),
        }
        self.finish_removal(layout)?;
        Ok(RemovedWorkspace {
            path: self.path.clone(),
            saved_commit,
            size,
            took: started.elapsed(),
        })
    }

    /// Removes what is left of the directory (empty after a privileged
    /// helper ran) and prunes git's record of the worktree.
    pub fn finish_removal(&self, layout: &Layout) -> Result<(), Error> {
        layout.remove_task_dir(&self.project, &self.path)?;
        if self.repo.top.exists() {
            git(
                "prune worktree entries",
                &self.repo.top,
                &["worktree", "prune"],
            )?;
        }
        Ok(())
    }
}

/// A branch `orch/*` with nothing beyond its base, which `cleanup
/// --branches` may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyBranch {
    /// Branch name.
    pub name: String,
}

/// Lists the `orch/*` branches of `repo` that have no commits beyond the
/// commit they started from and are not checked out in any worktree.
pub fn empty_branches(repo: &Repo) -> Result<Vec<EmptyBranch>, Error> {
    let top = &repo.top;
    let refs = git(
        "list task branches",
        top,
        &[
            "for-each-ref",
            "--format=%(refname:short) %(objectname)",
            "refs/heads/orch/",
        ],
    )?;
    let checked_out = git("list worktrees", top, &["worktree", "list", "--porcelain"])?;
    let in_use: Vec<&str> = checked_out
        .lines()
        .filter_map(|l| l.strip_prefix("branch refs/heads/"))
        .collect();
    let mut empty = Vec::new();
    for line in refs.lines() {
        let Some((name, tip)) = line.split_once(' ') else {
            continue;
        };
        if in_use.contains(&name) {
            continue;
        }
        let Ok(base) = git(
            "read a branch's base",
            top,
            &["config", &format!("branch.{name}.{BASE_KEY}")],
        ) else {
            continue; // not made by orch, or its record is gone: keep it
        };
        if base == tip {
            empty.push(EmptyBranch {
                name: name.to_owned(),
            });
        }
    }
    Ok(empty)
}

/// Deletes one branch found by [`empty_branches`].
pub fn delete_branch(repo: &Repo, branch: &EmptyBranch) -> Result<(), Error> {
    git(
        "delete a task branch",
        &repo.top,
        &["branch", "-D", "--quiet", &branch.name],
    )
    .map(drop)
}

/// Prunes the entries of orch's worktrees whose directories are gone
/// (unlocking them first: git never prunes a locked worktree); returns how
/// many there were. Only entries under the layout's workspaces, and only
/// those whose task lock is free: a worktree being created has an entry
/// (locked "initializing") before its directory exists. Worktrees elsewhere
/// are not orch's and are left alone.
pub fn prune_worktrees(repo: &Repo, layout: &Layout) -> Result<usize, Error> {
    let root = layout.workspaces_root();
    let list = git(
        "list worktrees",
        &repo.top,
        &["worktree", "list", "--porcelain"],
    )?;
    let mut pruned = 0;
    for path in list.lines().filter_map(|l| l.strip_prefix("worktree ")) {
        let path = Path::new(path);
        if !path.starts_with(&root) || path.exists() {
            continue;
        }
        // <root>/<project>/tasks/<id>
        let (Some(id), Some(project)) = (
            path.file_name().and_then(|n| n.to_str()),
            path.parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .and_then(|n| n.to_str()),
        ) else {
            continue;
        };
        let Ok(Some(lock)) = TaskLock::try_acquire(layout, project, id) else {
            continue; // being created, or not a name orch makes
        };
        let shown = path.to_string_lossy();
        let _ = git(
            "unlock a vanished worktree",
            &repo.top,
            &["worktree", "unlock", &shown],
        );
        git("prune worktree entries", &repo.top, &["worktree", "prune"])?;
        lock.release_and_delete();
        pruned += 1;
    }
    Ok(pruned)
}

/// True if `path` is registered as a worktree of `repo`.
#[cfg(test)]
pub(crate) fn is_registered(repo: &Repo, path: &Path) -> Result<bool, Error> {
    let list = git(
        "list worktrees",
        &repo.top,
        &["worktree", "list", "--porcelain"],
    )?;
    Ok(list
        .lines()
        .filter_map(|l| l.strip_prefix("worktree "))
        .any(|p| Path::new(p) == path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with one commit and an ignored pattern, and a home.
    fn setup() -> (tempfile::TempDir, Repo, Layout) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let project = base.join("project");
        std::fs::create_dir_all(&project).unwrap();
        let run = |args: &[&str]| git("test setup", &project, args).unwrap();
        run(&["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(project.join(".gitignore"), "*.log\n").unwrap();
        std::fs::write(project.join("README"), "hello\n").unwrap();
        run(&["add", "."]);
        run(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "--quiet",
            "-m",
            "init",
        ]);
        let repo = Repo::discover(&project).unwrap();
        let layout = Layout::new(base.join("home"));
        (tmp, repo, layout)
    }

    #[test]
    fn create_save_remove_keeps_the_work_on_the_branch() {
        let (_tmp, repo, layout) = setup();
        let ws = Workspace::planned(&layout, &repo, "p", "0123abcd").unwrap();
        let lock = TaskLock::acquire(&layout, "p", "0123abcd").unwrap();
        ws.create(&lock, None).unwrap();
        assert!(is_registered(&repo, &ws.path).unwrap());
        std::fs::write(ws.path.join("new.txt"), "work\n").unwrap();
        std::fs::write(ws.path.join("README"), "changed\n").unwrap();
        std::fs::write(ws.path.join("noise.log"), "ignored\n").unwrap();

        let removed = ws.remove(&layout, &lock, false).unwrap();
        assert!(removed.saved_commit.is_some());
        assert!(removed.size.files >= 3);
        assert!(!ws.path.exists());
        assert!(!is_registered(&repo, &ws.path).unwrap());
        let files = git("t", &repo.top, &["ls-tree", "--name-only", "orch/0123abcd"]).unwrap();
        assert!(
            files.contains("new.txt") && !files.contains("noise.log"),
            "{files}"
        );
        let readme = git("t", &repo.top, &["show", "orch/0123abcd:README"]).unwrap();
        assert_eq!(readme, "changed");
        assert!(
            empty_branches(&repo).unwrap().is_empty(),
            "the branch has work"
        );
    }

    #[test]
    fn untouched_branches_are_empty_and_deletable() {
        let (_tmp, repo, layout) = setup();
        let ws = Workspace::planned(&layout, &repo, "p", "0456").unwrap();
        let lock = TaskLock::acquire(&layout, "p", "0456").unwrap();
        ws.create(&lock, Some("main")).unwrap();
        assert!(
            empty_branches(&repo).unwrap().is_empty(),
            "checked out: not deletable"
        );
        let removed = ws.remove(&layout, &lock, false).unwrap();
        assert_eq!(removed.saved_commit, None);
        let empty = empty_branches(&repo).unwrap();
        assert_eq!(
            empty,
            vec![EmptyBranch {
                name: "orch/0456".into()
            }]
        );
        delete_branch(&repo, &empty[0]).unwrap();
        let branches = git("t", &repo.top, &["branch", "--list", "orch/*"]).unwrap();
        assert!(branches.is_empty(), "{branches}");
    }

    #[test]
    fn a_bad_ref_and_a_non_repository_are_clear_errors() {
        let (tmp, repo, layout) = setup();
        let ws = Workspace::planned(&layout, &repo, "p", "0789").unwrap();
        let lock = TaskLock::acquire(&layout, "p", "0789").unwrap();
        let err = ws.create(&lock, Some("no-such-ref")).unwrap_err();
        assert!(
            err.to_string().contains("\"no-such-ref\" is not a commit"),
            "{err}"
        );
        assert!(!ws.path.exists());
        let plain = tmp.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        assert!(matches!(
            Repo::discover(&plain),
            Err(Error::NotARepository { .. })
        ));
    }

    #[test]
    fn an_existing_workspace_finds_its_repository() {
        let (_tmp, repo, layout) = setup();
        let ws = Workspace::planned(&layout, &repo, "p", "0bbb").unwrap();
        let lock = TaskLock::acquire(&layout, "p", "0bbb").unwrap();
        ws.create(&lock, None).unwrap();
        let found = Workspace::existing(&layout, "p", "0bbb").unwrap().unwrap();
        assert_eq!(found.repo.top, repo.top);
        assert_eq!(found.repo.common_dir, repo.common_dir);
        assert!(Workspace::existing(&layout, "p", "0ccc").unwrap().is_none());
        std::fs::remove_dir_all(&ws.path).unwrap();
        drop(lock);
        assert_eq!(prune_worktrees(&repo, &layout).unwrap(), 1);
        assert!(!is_registered(&repo, &ws.path).unwrap());
        assert_eq!(prune_worktrees(&repo, &layout).unwrap(), 0);
    }

    #[test]
    fn a_worktree_whose_task_holds_its_lock_is_not_pruned() {
        let (_tmp, repo, layout) = setup();
        let ws = Workspace::planned(&layout, &repo, "p", "0eee").unwrap();
        let lock = TaskLock::acquire(&layout, "p", "0eee").unwrap();
        ws.create(&lock, None).unwrap();
        std::fs::remove_dir_all(&ws.path).unwrap();
        assert_eq!(
            prune_worktrees(&repo, &layout).unwrap(),
            0,
            "its task still holds it"
        );
        assert!(is_registered(&repo, &ws.path).unwrap());
        drop(lock);
        assert_eq!(prune_worktrees(&repo, &layout).unwrap(), 1);
    }

    #[test]
    fn a_worktree_without_its_git_file_is_kept_not_committed_elsewhere() {
        let (tmp, repo, layout) = setup();
        // The home inside another repository, as a dotfiles repo in ~ would be.
        git("t", tmp.path(), &["init", "--quiet"]).unwrap();
        let ws = Workspace::planned(&layout, &repo, "p", "0ddd").unwrap();
        let lock = TaskLock::acquire(&layout, "p", "0ddd").unwrap();
        ws.create(&lock, None).unwrap();
        std::fs::remove_file(ws.path.join(".git")).unwrap();
        std::fs::write(ws.path.join("work.txt"), "x").unwrap();
        assert!(
            ws.remove(&layout, &lock, false).is_err(),
            "refused: nothing is lost"
        );
        assert!(ws.path.join("work.txt").exists());
        let outer = git("t", tmp.path(), &["log", "--oneline"]);
        assert!(
            outer.is_err() || outer.unwrap().is_empty(),
            "nothing committed to the outer repository"
        );
        ws.remove(&layout, &lock, true).unwrap();
        assert!(!ws.path.exists(), "--all discards it");
    }

    #[test]
    fn removal_survives_a_directory_deleted_behind_gits_back() {
        let (_tmp, repo, layout) = setup();
        let ws = Workspace::planned(&layout, &repo, "p", "0aaa").unwrap();
        let lock = TaskLock::acquire(&layout, "p", "0aaa").unwrap();
        ws.create(&lock, None).unwrap();
        std::fs::remove_dir_all(&ws.path).unwrap();
        ws.remove(&layout, &lock, false).unwrap();
        assert!(!is_registered(&repo, &ws.path).unwrap(), "pruned");
    }
}
