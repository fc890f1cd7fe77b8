//! A task's workspace: a repository of its own, which the task may write
//! and which never lets it write the user's.
//!
//! At creation orch creates the branch `orch/<id>` at the base commit in
//! the user's repository (the only change orch ever makes there, besides
//! moving that branch at the end), then clones the repository into the
//! workspace with `--shared` and checks the branch out there. The
//! container gets the workspace read-write and the user's object
//! directories read-only, at the same absolute paths: git works fully
//! inside the task (status, diff, add, commit, log, branch, rebase), and
//! nothing it does reaches the user's config, hooks, refs or index.
//!
//! When the task is over, its work is brought home through a git directory
//! orch owns and the task never saw (a "shadow"): the task's repository is
//! read as data ([`crate::taskrepo`]), its objects are borrowed, its HEAD
//! plus whatever it left uncommitted (tracked and untracked, not ignored)
//! becomes the new tip, and the user's repository fetches that tip into
//! `orch/<id>`. Then the directory is removed (path-validated). Nothing is
//! lost: if saving fails, the workspace stays.

use std::path::PathBuf;
use std::time::Instant;

use crate::fsgit::remove_dir_if_present;
use crate::git::{Git, HEAVY_TIMEOUT, Repo};
use crate::lock::RepoLock;
use crate::outcome::{Mount, RemovedWorkspace, Saved, Unsaved};
use crate::{Error, Layout, Removal, TaskLock, du};

/// A task's workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The project's name.
    pub project: String,
    /// The task id.
    pub task_id: String,
    /// The workspace: `<home>/workspaces/<project>/tasks/<task_id>`.
    pub path: PathBuf,
    /// Where the task starts inside it (the project's place in the repo).
    pub workdir: PathBuf,
    /// The branch, `orch/<task_id>`, in both repositories.
    pub branch: String,
    /// The user's repository.
    pub repo: Repo,
    /// The commit the branch started from.
    pub base: String,
    /// The task's description, for the message of the commit that saves
    /// its work (if known).
    pub description: Option<String>,
}

impl Workspace {
    /// The workspace `task_id` has or would have; no I/O.
    pub fn planned(
        layout: &Layout,
        repo: &Repo,
        project: &str,
        task_id: &str,
        base: &str,
    ) -> Result<Workspace, Error> {
        let path = layout.task_dir(project, task_id)?;
        Ok(Workspace {
            project: project.to_owned(),
            task_id: task_id.to_owned(),
            workdir: path.join(&repo.prefix),
            path,
            branch: format!("orch/{task_id}"),
            repo: repo.clone(),
            base: base.to_owned(),
            description: None,
        })
    }

    pub(crate) fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// The reflog message of a move of the task's branch: `orch: task
    /// <id> <what>: <the description's first line>`.
    pub(crate) fn reflog_message(&self, what: &str) -> String {
        let mut message = format!("orch: task {} {what}", self.task_id);
        if let Some(line) = self.description.as_deref().and_then(|d| d.lines().next()) {
            // One line of printable text: git takes the message as it is.
            message.push_str(": ");
            message.push_str(&crate::review::plain_text(line).replace('\t', " "));
        }
        message
    }

    /// git on the user's repository.
    pub(crate) fn user_git(&self, layout: &Layout) -> Git {
        Git::at(layout, &self.repo.common_dir)
    }

    /// Creates the branch in the user's repository and the workspace. The
    /// caller holds the task's lock. If any step fails, what was made is
    /// unwound.
    pub fn create(&self, layout: &Layout, lock: &TaskLock) -> Result<(), Error> {
        self.begin(layout, lock)?;
        self.populate(layout, lock)
    }

    /// The first half of [`Workspace::create`]: the (empty) directory and
    /// the task's branch. A container may be created on it from here on
    /// while [`Workspace::populate`] fills it.
    pub fn begin(&self, layout: &Layout, _lock: &TaskLock) -> Result<(), Error> {
        layout.prepare()?;
        let root = self.path.parent().ok_or_else(|| {
            Error::io(
                "create",
                &self.path,
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        std::fs::create_dir_all(root).map_err(|e| Error::io("create", root, e))?;
        // The directory first (git clones into an empty one): whoever finds
        // it after a crash unwinds the task, its branch included, so no
        // instant leaves a branch without a directory to find it by.
        std::fs::create_dir(&self.path).map_err(|e| Error::io("create", &self.path, e))?;
        let branched = RepoLock::acquire(layout, &self.repo.common_dir).and_then(|repo| {
            let git = self.user_git(layout).holding(&repo);
            // A branch of this name is an earlier attempt's (a task run
            // again after its node died): one at the base is taken as it
            // is; one with work is moved aside under a name of its own, so
            // nothing of it is lost and this attempt starts from the base.
            let earlier = git
                .run(
                    "read the task's branch",
                    &["for-each-ref", "--format=%(objectname)", &self.branch_ref()],
                )?
                .trim()
                .to_owned();
            if earlier == self.base {
                return Ok(String::new());
            }
            if !earlier.is_empty() {
                let aside = format!("{}-earlier-{}", self.branch_ref(), &earlier[..12.min(earlier.len())]);
                git.run(
                    "keep an earlier attempt's branch",
                    &["update-ref", &aside, &earlier, ""],
                )?;
                git.run(
                    "move an earlier attempt's branch aside",
                    &["update-ref", "-d", &self.branch_ref(), &earlier],
                )?;
                tracing::warn!(branch = %self.branch, aside = %aside, "an earlier attempt's work was moved aside");
            }
            // Its reflog says whose branch it is (`git reflog orch/<id>`),
            // whatever the task commits, even where reflogs are off.
            git.run(
                "create the task's branch",
                &[
                    "update-ref",
                    "--create-reflog",
                    "-m",
                    &self.reflog_message("started"),
                    &self.branch_ref(),
                    &self.base,
                    "",
                ],
            )
        });
        if let Err(e) = branched {
            let _ = std::fs::remove_dir(&self.path);
            return Err(e);
        }
        Ok(())
    }

    /// The second half of [`Workspace::create`]: the task's own repository,
    /// cloned and checked out into the directory. If that fails, everything
    /// made for the workspace is unwound.
    pub fn populate(&self, layout: &Layout, lock: &TaskLock) -> Result<(), Error> {
        let made = self.clone_and_check_out(layout);
        if let Err(e) = made {
            if let Err(unwound) = self.unwind(layout, lock) {
                tracing::warn!(workspace = %self.path.display(), error = %unwound, "failed to unwind a half-made workspace");
            }
            return Err(e);
        }
        Ok(())
    }

    fn clone_and_check_out(&self, layout: &Layout) -> Result<(), Error> {
        let template = format!("--template={}", layout.empty_dir().display());
        let source = self.repo.common_dir.to_string_lossy();
        let target = self.path.to_string_lossy();
        Git::bare(layout)
            .isolated()
            .dies_with_orch()
            .timeout(HEAVY_TIMEOUT)
            .run(
                "give the task a repository of its own",
                &[
                    "clone",
                    "--quiet",
                    "--shared",
                    "--no-checkout",
                    &template,
                    "--",
                    &source,
                    &target,
                ],
            )?;
        Git::at(layout, &self.path.join(".git"))
            .work_tree(&self.path)
            .isolated()
            .dies_with_orch()
            .timeout(HEAVY_TIMEOUT)
            .run(
                "check out the task's branch",
                &["checkout", "--quiet", "-b", &self.branch, &self.base],
            )?;
        Ok(())
    }

    /// The commit the task's branch names in the user's repository now (its
    /// base if it cannot be read).
    pub fn branch_tip(&self, layout: &Layout) -> String {
        self.user_git(layout)
            .run(
                "read the task's branch",
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{}^{{commit}}", self.branch_ref()),
                ],
            )
            .unwrap_or_else(|_| self.base.clone())
    }

    /// The host directories its container sees: the workspace read-write,
    /// the user's object directories read-only.
    pub fn mounts(&self) -> Vec<Mount> {
        let mut mounts = vec![Mount {
            source: self.path.clone(),
            target: self.path.clone(),
            read_only: false,
        }];
        for objects in self.repo.object_dirs() {
            mounts.push(Mount {
                source: objects.clone(),
                target: objects,
                read_only: true,
            });
        }
        mounts
    }

    /// True if the workspace directory exists.
    pub fn exists(&self) -> bool {
        self.path.symlink_metadata().is_ok()
    }

    /// Brings the work home (what becomes of work it cannot save:
    /// `unsaved`), then removes the workspace: path-validated, symbolic links
    /// inside never followed.
    ///
    /// If saving fails the workspace is kept and the error returned. If
    /// files belong to another user (a root task's), returns
    /// [`Error::NeedsPrivilege`] with the work saved; remove them by other
    /// means, then call [`Workspace::finish_removal`]. `saved`: what
    /// [`Workspace::save_for_removal`] already brought home, if called first.
    pub fn remove(
        &self,
        layout: &Layout,
        lock: &TaskLock,
        unsaved: Unsaved,
        saved: Option<Saved>,
    ) -> Result<RemovedWorkspace, Error> {
        let saved = match saved {
            Some(saved) => saved,
            None => self.save_for_removal(layout, lock, unsaved)?,
        };
        if unsaved != Unsaved::Discard && !saved.unreadable.is_empty() {
            let shown: Vec<String> = saved
                .unreadable
                .iter()
                .map(|p| format!("{:?}", p.display().to_string()))
                .collect();
            return Err(Error::NotSaved {
                path: self.path.clone(),
                why: format!("directories orch cannot read: {}", shown.join(", ")),
            });
        }
        if unsaved == Unsaved::Keep {
            if let Some(why) = &saved.not_staged {
                return Err(Error::NotSaved {
                    path: self.path.clone(),
                    why: why.clone(),
                });
            }
            if saved.left_out > 0 {
                return Err(Error::TooLargeToSave {
                    path: self.path.clone(),
                    left_out: saved.left_out,
                    first: saved.left_out_first,
                });
            }
        }
        let size = du::measure(&self.path).unwrap_or_default();
        let started = Instant::now();
        match layout.remove_task_dir(&self.project, &self.path) {
            Ok(Removal::Removed(_) | Removal::Missing(_)) => {}
            Err(Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                return Err(Error::NeedsPrivilege {
                    path: self.path.clone(),
                    saved: Box::new(saved),
                });
            }
            Err(e) => return Err(e),
        }
        self.finish_removal(layout)?;
        Ok(RemovedWorkspace {
            path: self.path.clone(),
            saved,
            size,
            took: started.elapsed(),
        })
    }

    /// The first half of [`Workspace::remove`]: brings the task's work home
    /// (if the directory is there); with [`Unsaved::Discard`], work that cannot be
    /// saved is given up with a warning instead of failing. It only reads
    /// the workspace, so it may run while the task's exited container is
    /// still being removed.
    pub fn save_for_removal(
        &self,
        layout: &Layout,
        lock: &TaskLock,
        unsaved: Unsaved,
    ) -> Result<Saved, Error> {
        if !self.exists() {
            return Ok(Saved::default());
        }
        match self.save(layout, lock) {
            Ok(saved) => Ok(saved),
            Err(e) if unsaved == Unsaved::Discard => {
                tracing::warn!(workspace = %self.path.display(), error = %e, "discarding unsaved work");
                Ok(Saved {
                    warning: Some(format!(
                        "its work could not be saved and was discarded: {e}"
                    )),
                    ..Saved::default()
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Removes what is left of the directory (empty after a privileged
    /// helper ran), orch's own git directories for it, and the user's
    /// repository's entry for it if an older orch made it a worktree.
    pub fn finish_removal(&self, layout: &Layout) -> Result<(), Error> {
        layout.remove_task_dir(&self.project, &self.path)?;
        remove_dir_if_present(&layout.shadow_dir(&self.project, &self.task_id)?)?;
        remove_dir_if_present(&layout.kept_git_dir(&self.project, &self.task_id)?)?;
        if self.repo.common_dir.join("worktrees").is_dir() {
            let repo = RepoLock::acquire(layout, &self.repo.common_dir)?;
            self.user_git(layout)
                .holding(&repo)
                .run("prune worktree entries", &["worktree", "prune"])?;
        }
        Ok(())
    }

    /// Removes a workspace in which no task ever ran, and its branch if it
    /// is still where orch made it: nothing of the task is left.
    pub fn unwind(&self, layout: &Layout, _lock: &TaskLock) -> Result<(), Error> {
        // The branch before the directory, as they were made the other way
        // round: at no instant is there a branch without a directory to
        // find it by.
        let repo = RepoLock::acquire(layout, &self.repo.common_dir)?;
        let deleted = self.user_git(layout).holding(&repo).run(
            "delete the unused branch",
            &["update-ref", "-d", &self.branch_ref(), &self.base],
        );
        drop(repo);
        if let Err(e) = deleted {
            // Gone already, or moved by someone: not ours to delete.
            tracing::debug!(branch = %self.branch, error = %e, "branch left as it is");
        }
        crate::failpoint::hit("unwind-after-branch");
        remove_dir_if_present(&layout.shadow_dir(&self.project, &self.task_id)?)?;
        remove_dir_if_present(&layout.kept_git_dir(&self.project, &self.task_id)?)?;
        layout.remove_task_dir(&self.project, &self.path)?;
        Ok(())
    }
}
