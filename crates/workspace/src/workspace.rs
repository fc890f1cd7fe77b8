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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::git::{Git, HEAVY_TIMEOUT, Repo};
use crate::lock::RepoLock;
use crate::taskrepo::{self, TaskRepo};
use crate::{Error, Layout, Removal, TaskLock, du};

/// A host directory a task's container sees, at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host directory.
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: PathBuf,
    /// The container may not write it.
    pub read_only: bool,
}

/// What bringing a task's work home did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    /// The branch's tip afterwards.
    pub tip: Option<String>,
    /// The commit orch made of uncommitted work, if there was any.
    pub pending_commit: Option<String>,
    /// The task's own commits were brought in (its git directory was
    /// usable).
    pub imported: bool,
    /// Something the user should know, e.g. why the task's commits could
    /// not be brought in.
    pub warning: Option<String>,
}

/// What removing a workspace did.
#[derive(Debug, Clone)]
pub struct RemovedWorkspace {
    /// The workspace's path.
    pub path: PathBuf,
    /// What saving its work did.
    pub saved: Saved,
    /// Size before removal.
    pub size: du::Size,
    /// Time the removal itself took.
    pub took: Duration,
}

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
        })
    }

    fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// git on the user's repository.
    fn user_git(&self, layout: &Layout) -> Git {
        Git::at(layout, &self.repo.common_dir)
    }

    /// Creates the branch in the user's repository and the workspace. The
    /// caller holds the task's lock. If any step fails, what was made is
    /// unwound.
    pub fn create(&self, layout: &Layout, lock: &TaskLock) -> Result<(), Error> {
        layout.prepare()?;
        let root = self.path.parent().ok_or_else(|| {
            Error::io(
                "create",
                &self.path,
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        std::fs::create_dir_all(root).map_err(|e| Error::io("create", root, e))?;
        {
            let repo = RepoLock::acquire(layout, &self.repo.common_dir)?;
            self.user_git(layout).holding(&repo).run(
                "create the task's branch",
                &["update-ref", &self.branch_ref(), &self.base, ""],
            )?;
        }
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
        Git::bare(layout).isolated().timeout(HEAVY_TIMEOUT).run(
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

    /// Brings the task's work home: its commits (if its git directory is
    /// usable) and whatever it left uncommitted become the tip of
    /// `orch/<id>` in the user's repository. The caller holds the task's
    /// lock, and the task is no longer running.
    pub fn save(&self, layout: &Layout, _lock: &TaskLock) -> Result<Saved, Error> {
        layout.prepare()?;
        let shadow = layout.shadow_dir(&self.project, &self.task_id)?;
        remove_dir_if_present(&shadow)?;
        let saved = self.save_through(layout, &shadow);
        let cleaned = remove_dir_if_present(&shadow);
        let saved = saved?;
        cleaned?;
        Ok(saved)
    }

    fn save_through(&self, layout: &Layout, shadow: &Path) -> Result<Saved, Error> {
        make_bare_repo(shadow)?;
        let allowed = self.repo.object_dirs();
        let mut warning = None;
        let mut borrowed = allowed.clone();
        let mut head = None;
        match taskrepo::inspect(&self.path, &allowed) {
            TaskRepo::Usable { objects, head: h } => {
                borrowed.push(objects);
                head = h;
            }
            TaskRepo::Unusable(why) => {
                warning = Some(format!(
                    "the task's git directory was not used ({why}): its commits were not brought in; its files were saved"
                ));
            }
        }
        let info = shadow.join("objects/info");
        std::fs::create_dir_all(&info).map_err(|e| Error::io("create", &info, e))?;
        let alternates: String = borrowed
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        std::fs::write(info.join("alternates"), alternates)
            .map_err(|e| Error::io("write", info.join("alternates"), e))?;

        let git = Git::at(layout, shadow).isolated().dies_with_orch();
        // The commit the work goes on top of: the task's HEAD if it names a
        // commit there is, else the branch as the user's repository has it.
        // A HEAD naming no commit the shadow can see is no HEAD at all.
        let head = head.and_then(|h| {
            let tree = git
                .run(
                    "check the task's HEAD",
                    &["rev-parse", "--verify", "--quiet", &format!("{h}^{{tree}}")],
                )
                .ok()?;
            Some((h, tree))
        });
        let imported = head.is_some();
        let (parent, parent_tree) = match head {
            Some(found) => found,
            None => {
                if warning.is_none() && self.path.join(".git").exists() {
                    tracing::debug!(workspace = %self.path.display(), "the task's HEAD names no commit; saving on the branch");
                }
                let tip = self
                    .user_git(layout)
                    .run(
                        "read the task's branch",
                        &[
                            "rev-parse",
                            "--verify",
                            "--quiet",
                            &format!("{}^{{commit}}", self.branch_ref()),
                        ],
                    )
                    .unwrap_or_else(|_| self.base.clone());
                let tree = git.run(
                    "read the tree of the task's branch",
                    &["rev-parse", &format!("{tip}^{{tree}}")],
                )?;
                (tip, tree)
            }
        };
        let mut nested = Vec::new();
        let tree = stage(&git, shadow, &self.path, Some(&parent), &mut nested, 0)?;
        if !nested.is_empty() {
            let shown: Vec<String> = nested.iter().map(|p| format!("{}/", p.display())).collect();
            let note = format!(
                "repositories inside the workspace ({}) were saved as plain files",
                shown.join(", ")
            );
            warning = Some(match warning {
                Some(w) => format!("{w}; {note}"),
                None => note,
            });
        }
        let (name, email) = self.repo.identity(layout);
        let tip = if tree == parent_tree {
            parent.clone()
        } else {
            let message = format!(
                "orch: uncommitted work of task {}\n\nSaved by orch before removing the task's workspace.",
                self.task_id
            );
            git.clone()
                .env("GIT_AUTHOR_NAME", &name)
                .env("GIT_AUTHOR_EMAIL", &email)
                .env("GIT_COMMITTER_NAME", &name)
                .env("GIT_COMMITTER_EMAIL", &email)
                .run(
                    "commit the task's uncommitted work",
                    &["commit-tree", &tree, "-p", &parent, "-m", &message],
                )?
        };
        self.import(layout, &git, shadow, &tip)?;
        Ok(Saved {
            pending_commit: (tip != parent).then(|| tip.clone()),
            tip: Some(tip),
            imported,
            warning,
        })
    }

    /// Brings the commits up to `tip` from the shadow into the user's
    /// repository and moves the task's branch there. No transport and no
    /// config of either side is involved: the shadow packs what the branch
    /// lacks, the user's repository takes the pack with `index-pack
    /// --strict` (every object re-hashed and checked, so nothing lands under
    /// a false name), and the branch moves with `update-ref` from the value
    /// it had, so a branch someone else moved meanwhile is not overwritten.
    fn import(
        &self,
        layout: &Layout,
        shadow_git: &Git,
        shadow: &Path,
        tip: &str,
    ) -> Result<(), Error> {
        let before = self
            .user_git(layout)
            .run(
                "read the task's branch",
                &["rev-parse", "--verify", "--quiet", &self.branch_ref()],
            )
            .ok();
        if before.as_deref() == Some(tip) {
            return Ok(());
        }
        let transfer = shadow.join("transfer");
        std::fs::create_dir_all(&transfer).map_err(|e| Error::io("create", &transfer, e))?;
        let mut revs = format!("{tip}\n^{}\n", self.base);
        if let Some(before) = &before {
            revs.push_str(&format!("^{before}\n"));
        }
        let revs_file = transfer.join("revs");
        std::fs::write(&revs_file, revs).map_err(|e| Error::io("write", &revs_file, e))?;
        let prefix = transfer.join("pack");
        let hash = shadow_git
            .clone()
            .stdin_file(&revs_file)
            .timeout(HEAVY_TIMEOUT)
            .run(
                "pack the task's work",
                &[
                    "pack-objects",
                    "--revs",
                    "--quiet",
                    "--delta-base-offset",
                    &prefix.to_string_lossy(),
                ],
            )?;
        if !hash.is_empty() {
            let pack = transfer.join(format!("pack-{hash}.pack"));
            self.user_git(layout)
                .stdin_file(&pack)
                .timeout(HEAVY_TIMEOUT)
                .run(
                    "bring the task's work into the repository",
                    &["index-pack", "--stdin", "--strict"],
                )?;
        }
        let repo = RepoLock::acquire(layout, &self.repo.common_dir)?;
        let message = format!("orch: work of task {}", self.task_id);
        self.user_git(layout)
            .holding(&repo)
            .run(
                "move the task's branch",
                &[
                    "update-ref",
                    "-m",
                    &message,
                    &self.branch_ref(),
                    tip,
                    before.as_deref().unwrap_or(""),
                ],
            )
            .map(drop)
    }

    /// Brings the work home (unless that fails and `discard`: for `cleanup
    /// --all`), then removes the workspace: path-validated, symbolic links
    /// inside never followed.
    ///
    /// If saving fails the workspace is kept and the error returned. If
    /// files belong to another user (a root task's), returns
    /// [`Error::NeedsPrivilege`] with the work saved; remove them by other
    /// means, then call [`Workspace::finish_removal`].
    pub fn remove(
        &self,
        layout: &Layout,
        lock: &TaskLock,
        discard: bool,
    ) -> Result<RemovedWorkspace, Error> {
        let saved = if self.exists() {
            match self.save(layout, lock) {
                Ok(saved) => saved,
                Err(e) if discard => {
                    tracing::warn!(workspace = %self.path.display(), error = %e, "discarding unsaved work");
                    Saved {
                        warning: Some(format!(
                            "its work could not be saved and was discarded: {e}"
                        )),
                        ..Saved::default()
                    }
                }
                Err(e) => return Err(e),
            }
        } else {
            Saved::default()
        };
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

    /// Removes what is left of the directory (empty after a privileged
    /// helper ran), orch's own git directory for it, and the user's
    /// repository's entry for it if an older orch made it a worktree.
    pub fn finish_removal(&self, layout: &Layout) -> Result<(), Error> {
        layout.remove_task_dir(&self.project, &self.path)?;
        remove_dir_if_present(&layout.shadow_dir(&self.project, &self.task_id)?)?;
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
        layout.remove_task_dir(&self.project, &self.path)?;
        remove_dir_if_present(&layout.shadow_dir(&self.project, &self.task_id)?)?;
        let repo = RepoLock::acquire(layout, &self.repo.common_dir)?;
        let deleted = self.user_git(layout).holding(&repo).run(
            "delete the unused branch",
            &["update-ref", "-d", &self.branch_ref(), &self.base],
        );
        if let Err(e) = deleted {
            // Gone already, or moved by someone: not ours to delete.
            tracing::debug!(branch = %self.branch, error = %e, "branch left as it is");
        }
        Ok(())
    }
}

/// Makes an empty bare repository at `dir` without running git: nothing of
/// a template, and one process fewer per saved task.
fn make_bare_repo(dir: &Path) -> Result<(), Error> {
    for sub in ["objects/info", "refs/heads", "refs/tags"] {
        crate::layout::private_dir(&dir.join(sub))?;
    }
    for (file, text) in [
        ("HEAD", "ref: refs/heads/result\n"),
        (
            "config",
            "[core]\n\trepositoryformatversion = 0\n\tbare = true\n",
        ),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}

/// How deep repositories inside repositories are followed.
const MAX_NESTING: usize = 8;

/// Stages everything under `work_tree` (tracked and untracked, not
/// ignored) on top of `parent` (or nothing) through orch's own git
/// directory, and returns the tree. Repositories the task made inside it
/// (a directory holding a `.git`) would stop git at their border and lose
/// their files: each is staged the same way on its own, without its
/// `.git`, and grafted in as plain files. `nested` collects their paths.
fn stage(
    git: &Git,
    shadow: &Path,
    work_tree: &Path,
    parent: Option<&str>,
    nested: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<String, Error> {
    let inner = nested_repos(work_tree);
    let index = shadow.join(format!("index-{depth}-{}", nested.len()));
    let exclude = shadow.join("info/exclude");
    if let Some(dir) = exclude.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    let patterns: String = inner
        .iter()
        .map(|p| format!("/{}/\n", escape_pattern(&p.to_string_lossy())))
        .collect();
    std::fs::write(&exclude, patterns).map_err(|e| Error::io("write", &exclude, e))?;
    let indexed = git
        .clone()
        .index(&index)
        .work_tree(work_tree)
        .in_dir(work_tree);
    match parent {
        Some(parent) => indexed.run("read the task's tree", &["read-tree", parent])?,
        None => indexed.run("start an empty tree", &["read-tree", "--empty"])?,
    };
    indexed
        .clone()
        .timeout(HEAVY_TIMEOUT)
        .run("stage the task's uncommitted work", &["add", "--all"])?;
    let _ = std::fs::remove_file(&exclude);
    for path in &inner {
        let shown = path.to_string_lossy().into_owned();
        let sub = if depth < MAX_NESTING {
            Some(stage(
                git,
                shadow,
                &work_tree.join(path),
                None,
                nested,
                depth + 1,
            )?)
        } else {
            None
        };
        indexed.run(
            "make room for a repository's files",
            &[
                "rm",
                "--cached",
                "-r",
                "-q",
                "--ignore-unmatch",
                "--",
                &format!(":(literal){shown}"),
            ],
        )?;
        if let Some(sub) = sub {
            indexed.run(
                "graft a repository's files",
                &["read-tree", &format!("--prefix={shown}/"), &sub],
            )?;
        }
        nested.push(path.clone());
    }
    let tree = indexed.run("write the task's tree", &["write-tree"])?;
    let _ = std::fs::remove_file(&index);
    Ok(tree)
}

/// Directories under `root` (relative, outermost only) that hold a `.git`
/// of their own; symbolic links are never followed, the top `.git` never
/// entered.
fn nested_repos(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() || entry.file_name() == ".git" {
                continue;
            }
            let path = rel.join(entry.file_name());
            if root.join(&path).join(".git").symlink_metadata().is_ok() {
                found.push(path);
            } else {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// `text` as a gitignore pattern that matches only itself.
fn escape_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '!' | '#' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Removes a directory orch made for itself (a shadow git directory), if
/// it is there.
fn remove_dir_if_present(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", dir, e)),
    }
}
