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

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
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
    /// Files of the task's uncommitted work too large to save: how many;
    /// the workspace that holds them is not removed.
    pub left_out: usize,
    /// The first of them, relative to the workspace.
    pub left_out_first: Vec<PathBuf>,
}

/// What removing a workspace does with work it could not save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsaved {
    /// Keeps the workspace, and fails: at the end of the task's own run.
    Keep,
    /// Keeps it if saving failed, but removes it if only files too large to
    /// save were left out (the task's end kept it once and said so): for
    /// retention.
    KeepOnFailure,
    /// Removes it anyway, with a warning: for `cleanup --all`.
    Discard,
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
            self.user_git(layout).holding(&repo).run(
                "create the task's branch",
                &["update-ref", &self.branch_ref(), &self.base, ""],
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
        make_bare_repo(shadow, self.object_format())?;
        let allowed = self.repo.object_dirs();
        // What the save could not do as asked, for one warning.
        let mut notes: Vec<String> = Vec::new();
        let mut borrowed = allowed.clone();
        let mut head = None;
        match taskrepo::inspect(&self.path, &allowed) {
            TaskRepo::Usable { objects, head: h } => {
                borrowed.push(objects);
                head = h;
            }
            TaskRepo::Unusable(why) => {
                notes.push(format!(
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
        let named = head.is_some();
        let head = head.and_then(|h| {
            let tree = git
                .run(
                    "check the task's HEAD",
                    &["rev-parse", "--verify", "--quiet", &format!("{h}^{{tree}}")],
                )
                .ok()?;
            Some((h, tree))
        });
        if named && head.is_none() {
            notes.push(
                "the task's HEAD names no commit there is: its commits were not brought in; its files were saved on its branch"
                    .to_owned(),
            );
        }
        let imported = head.is_some();
        let (parent, parent_tree) = match head {
            Some(found) => found,
            None => {
                if notes.is_empty() && self.path.join(".git").exists() {
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
        let mut budget = Budget::default();
        let tree = stage(
            &git,
            shadow,
            &self.path,
            Some(&parent),
            &mut nested,
            &mut budget,
            0,
        )?;
        let relative = |paths: &[PathBuf]| -> Vec<PathBuf> {
            paths
                .iter()
                .map(|p| p.strip_prefix(&self.path).unwrap_or(p).to_path_buf())
                .collect()
        };
        let left_out_first = relative(&budget.left_out.first);
        if budget.left_out.count > 0 {
            notes.push(format!(
                "{} too large to save were left out of its branch",
                listed(&left_out_first, budget.left_out.count)
            ));
        }
        if budget.special.count > 0 {
            notes.push(format!(
                "{} that git cannot store (FIFOs, sockets or devices) are absent from its branch",
                listed(&relative(&budget.special.first), budget.special.count)
            ));
        }
        if !nested.is_empty() {
            let shown: Vec<String> = nested.iter().map(|p| format!("{}/", p.display())).collect();
            notes.push(format!(
                "repositories inside the workspace ({}) were saved as plain files",
                shown.join(", ")
            ));
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
            warning: (!notes.is_empty()).then(|| notes.join("; ")),
            left_out: budget.left_out.count,
            left_out_first,
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
        if saved.left_out > 0 && unsaved == Unsaved::Keep {
            return Err(Error::TooLargeToSave {
                path: self.path.clone(),
                left_out: saved.left_out,
                first: saved.left_out_first,
            });
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

    /// The object format of the user's repository, as the length of the
    /// base commit's id (which git gave orch) says.
    fn object_format(&self) -> &'static str {
        if self.base.len() == 64 {
            "sha256"
        } else {
            "sha1"
        }
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
        layout.remove_task_dir(&self.project, &self.path)?;
        Ok(())
    }
}

/// Makes an empty bare repository at `dir` without running git: nothing of
/// a template, and one process fewer per saved task.
/// `object_format` is the user's repository's (`sha1` or `sha256`), whose
/// objects it borrows and takes back.
fn make_bare_repo(dir: &Path, object_format: &str) -> Result<(), Error> {
    for sub in ["objects/info", "refs/heads", "refs/tags"] {
        crate::layout::private_dir(&dir.join(sub))?;
    }
    let config = match object_format {
        "sha1" => "[core]\n\trepositoryformatversion = 0\n\tbare = true\n".to_owned(),
        other => format!(
            "[core]\n\trepositoryformatversion = 1\n\tbare = true\n[extensions]\n\tobjectformat = {other}\n"
        ),
    };
    for (file, text) in [
        ("HEAD", "ref: refs/heads/result\n"),
        ("config", config.as_str()),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}

/// How deep repositories inside repositories are followed.
const MAX_NESTING: usize = 8;

/// The largest file of a task's uncommitted work that is saved to its
/// branch (by its length: a sparse file costs the task nothing to make,
/// and git reads every byte of it).
pub(crate) const MAX_SAVED_FILE: u64 = 100 << 20;
/// All files of a task's uncommitted work saved, in bytes.
pub(crate) const MAX_SAVED_BYTES: u64 = 1 << 30;
/// All files of a task's uncommitted work saved, in number.
const MAX_SAVED_FILES: usize = 200_000;

/// Files a save could not take: how many, the first of them named.
#[derive(Debug, Default)]
struct Named {
    /// The first of them (absolute paths).
    first: Vec<PathBuf>,
    /// How many.
    count: usize,
}

impl Named {
    fn add(&mut self, path: &Path) {
        if self.first.len() < SHOWN_LEFT_OUT {
            self.first.push(path.to_path_buf());
        }
        self.count += 1;
    }
}

/// What saving a task's uncommitted work may still take; what it could
/// not take is left out.
#[derive(Debug, Default)]
struct Budget {
    files: usize,
    bytes: u64,
    /// Files too large to take.
    left_out: Named,
    /// Files that hold no data git can store (FIFOs, sockets, devices);
    /// staged as deleted.
    special: Named,
}

impl Budget {
    /// Takes the file at `path` (`meta`: its metadata, not followed through
    /// links; `None` if it is gone) if it fits, or if `as_in_tree` says the
    /// parent's tree holds a blob of its length not yet claimed; else
    /// leaves it out.
    fn take(
        &mut self,
        path: &Path,
        meta: Option<&std::fs::Metadata>,
        as_in_tree: impl FnOnce(u64) -> bool,
    ) -> bool {
        let Some(meta) = meta else {
            // Deleted: nothing to read.
            return true;
        };
        // A link is stored as the name it holds.
        let len = if meta.is_file() { meta.len() } else { 0 };
        let fits = len <= MAX_SAVED_FILE
            && self.bytes + len <= MAX_SAVED_BYTES
            && self.files < MAX_SAVED_FILES;
        if fits {
            self.files += 1;
            self.bytes += len;
        } else if as_in_tree(len) {
            return true;
        } else {
            self.left_out.add(path);
        }
        fits
    }
}

/// How many left-out files are named.
const SHOWN_LEFT_OUT: usize = 3;

/// `count` files, the first of them named, for a message on one line.
pub(crate) fn listed(first: &[PathBuf], count: usize) -> String {
    let mut text: Vec<String> = first
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    if count > first.len() {
        text.push(format!("and {} more", count - first.len()));
    }
    let files = if count == 1 { "file" } else { "files" };
    format!("{count} {files} ({})", text.join(", "))
}

/// How many blobs of each size `tree`'s commit holds; empty if git cannot
/// say.
fn blob_sizes(git: &Git, tree: &str) -> HashMap<u64, usize> {
    let Ok(out) = git.clone().timeout(HEAVY_TIMEOUT).run_bytes(
        "read the sizes in the task's tree",
        &["ls-tree", "-r", "-z", "-l", "--end-of-options", tree],
    ) else {
        return HashMap::new();
    };
    // "<mode> <type> <object> <size, padded>\t<path>"
    let mut sizes = HashMap::new();
    for record in out.split(|b| *b == 0) {
        let Some(tab) = record.iter().position(|b| *b == b'\t') else {
            continue;
        };
        let Ok(head) = std::str::from_utf8(&record[..tab]) else {
            continue;
        };
        let fields: Vec<&str> = head.split_whitespace().collect();
        if let [_, "blob", _, size] = fields.as_slice() {
            if let Ok(size) = size.parse::<u64>() {
                *sizes.entry(size).or_insert(0) += 1;
            }
        }
    }
    sizes
}

/// True if `dir` (relative to `work_tree`, empty for the top) and every
/// directory above it are real directories, not links or files; answers
/// kept in `known`.
fn real_dir(work_tree: &Path, dir: &[u8], known: &mut HashMap<Vec<u8>, bool>) -> bool {
    if dir.is_empty() {
        return true;
    }
    if let Some(&answer) = known.get(dir) {
        return answer;
    }
    let parent = dir
        .iter()
        .rposition(|b| *b == b'/')
        .map_or(&dir[..0], |i| &dir[..i]);
    let answer = real_dir(work_tree, parent, known)
        && work_tree
            .join(std::ffi::OsStr::from_bytes(dir))
            .symlink_metadata()
            .is_ok_and(|m| m.is_dir());
    known.insert(dir.to_vec(), answer);
    answer
}

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
    budget: &mut Budget,
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
    // What `add --all` would take (tracked and untracked files, not
    // ignored), weighed first by length only; files over the budget are
    // left out, so a task cannot make orch read without end. A file as
    // long as its blob in the parent's tree is taken whatever its size:
    // it costs what the user's own tree costs. Staged one by one from a
    // list: linear, however many are left out.
    let listed = indexed.clone().timeout(HEAVY_TIMEOUT).run_bytes(
        "list the task's files",
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
    )?;
    let mut taken = Vec::with_capacity(listed.len());
    // Files of the tree that cannot be where they were: the path is a
    // directory now (its files come as new ones), or a directory above it
    // is a link or a file now. They leave the index first.
    let mut dropped = Vec::new();
    let mut directories = HashMap::new();
    // Blobs of the parent's tree by size: each lets one file of its length
    // in whatever its size (a file left as it was, or renamed, costs what
    // the user's own tree costs, and no more).
    let mut sizes: Option<HashMap<u64, usize>> = None;
    for rel in listed.split(|b| *b == 0) {
        // Empty, or a directory git would not enter (a nested repository).
        if rel.is_empty() || rel.ends_with(b"/") {
            continue;
        }
        let parent_dir = rel
            .iter()
            .rposition(|b| *b == b'/')
            .map_or(&rel[..0], |i| &rel[..i]);
        let path = work_tree.join(std::ffi::OsStr::from_bytes(rel));
        let meta = path.symlink_metadata().ok();
        let kind = meta.as_ref().map(std::fs::Metadata::file_type);
        let special = kind.is_some_and(|k| !k.is_file() && !k.is_dir() && !k.is_symlink());
        if special {
            // A FIFO, socket or device where a file was: nothing to store,
            // and `update-index` would refuse the whole list for it.
            budget.special.add(&path);
        }
        if special
            || !real_dir(work_tree, parent_dir, &mut directories)
            || kind.is_some_and(|k| k.is_dir())
        {
            dropped.extend_from_slice(rel);
            dropped.push(0);
            continue;
        }
        let as_in_tree = |len: u64| {
            let Some(parent) = parent else {
                return false;
            };
            let sizes = sizes.get_or_insert_with(|| blob_sizes(&indexed, parent));
            match sizes.get_mut(&len) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        };
        if budget.take(&path, meta.as_ref(), as_in_tree) {
            taken.extend_from_slice(rel);
            taken.push(0);
        }
    }
    let list = shadow.join("staged");
    if !dropped.is_empty() {
        std::fs::write(&list, &dropped).map_err(|e| Error::io("write", &list, e))?;
        indexed.clone().stdin_file(&list).run(
            "unstage files that cannot be where they were",
            &["update-index", "--force-remove", "-z", "--stdin"],
        )?;
    }
    std::fs::write(&list, &taken).map_err(|e| Error::io("write", &list, e))?;
    indexed
        .clone()
        .stdin_file(&list)
        .timeout(HEAVY_TIMEOUT)
        .run(
            "stage the task's uncommitted work",
            &[
                "update-index",
                "--add",
                "--remove",
                "--replace",
                "-z",
                "--stdin",
            ],
        )?;
    let _ = std::fs::remove_file(&list);
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
                budget,
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
