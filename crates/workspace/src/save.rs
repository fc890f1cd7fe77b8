//! Bringing a task's work home: its commits, and what it left uncommitted,
//! onto `orch/<id>` in the user's repository, without running or obeying
//! anything the task wrote.
//!
//! The save goes through a git directory orch makes for the occasion and
//! the task never saw (a "shadow"). In order:
//!
//! 1. the task's git directory is read as data ([`crate::taskrepo`]): which
//!    commit its HEAD names, and where its objects are; the shadow borrows
//!    those objects through links orch makes to the object directories
//!    themselves, so git never reads the task's alternates;
//! 2. the tree of a HEAD the task made is measured before anything expands
//!    it ([`crate::treecheck`]): one that would expand past millions of
//!    paths is not used;
//! 3. the work tree is walked by orch first ([`crate::worktree`]): a name
//!    git would open that is not a regular file (a FIFO `.gitignore`), or a
//!    nested repository no exclude pattern can name, means git is handed
//!    none of the work tree;
//! 4. the files are staged as `git add --all` inside the task would stage
//!    them, read only where the task's own index ([`crate::taskindex`])
//!    says they changed: an unchanged file, a submodule, a file outside a
//!    sparse checkout or marked assume-unchanged keeps the blob the tree
//!    holds; what is read counts against a budget of size and number;
//! 5. the result becomes a commit (none if nothing changed), packed and
//!    taken in by the user's repository with `index-pack --strict`, and the
//!    branch moves with a compare-and-swap.
//!
//! The whole save has one deadline ([`save_deadline`]); every host git in it
//! has an address-space limit. Whatever the save could not take, it says,
//! and the workspace holding it is kept.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::git::{Deadline, Git, HEAVY_TIMEOUT};
use crate::lock::RepoLock;
use crate::outcome::{MAX_SAVED_BYTES, MAX_SAVED_FILE, listed};
use crate::taskindex::{self, TaskIndex};
use crate::taskrepo::{self, TaskRepo};
use crate::treecheck::{self, TREE_LIMITS};
use crate::{Error, Layout, Saved, TaskLock, Workspace, worktree};

/// How long a whole save may take: `ORCH_SAVE_TIMEOUT` (seconds, or with
/// an `s`/`m` suffix), else this.
pub(crate) const SAVE_DEADLINE: Duration = Duration::from_secs(60);

/// The deadline of one save.
pub(crate) fn save_deadline() -> Duration {
    std::env::var("ORCH_SAVE_TIMEOUT")
        .ok()
        .and_then(|text| {
            let text = text.trim();
            let (digits, unit) = match text.strip_suffix('m') {
                Some(d) => (d, 60),
                None => (text.strip_suffix('s').unwrap_or(text), 1),
            };
            digits.parse::<u64>().ok().map(|n| n * unit)
        })
        .filter(|secs| *secs > 0)
        .map_or(SAVE_DEADLINE, Duration::from_secs)
}

/// How deep repositories inside repositories are followed.
const MAX_NESTING: usize = 8;

/// All files of a task's uncommitted work read, in number.
const MAX_SAVED_FILES: usize = 200_000;
/// How many left-out files are named.
const SHOWN_LEFT_OUT: usize = 3;

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

/// What saving a task's uncommitted work may still read; what it cannot is
/// left out. Only files the save reads count: a file the task's index
/// shows unchanged is never read, whatever its size, and whatever the tree
/// says of it.
#[derive(Debug, Default)]
struct Budget {
    files: usize,
    bytes: u64,
    /// Files too large to take.
    left_out: Named,
    /// Files that hold no data git can store (FIFOs, sockets, devices).
    special: Named,
}

impl Budget {
    /// Takes a file of `len` bytes (0 for a link: stored as the name it
    /// holds) if it fits; else leaves it out.
    fn take(&mut self, path: &Path, len: u64) -> bool {
        let fits = len <= MAX_SAVED_FILE
            && self.bytes + len <= MAX_SAVED_BYTES
            && self.files < MAX_SAVED_FILES;
        if fits {
            self.files += 1;
            self.bytes += len;
        } else {
            self.left_out.add(path);
        }
        fits
    }
}

impl Workspace {
    /// Brings the task's work home: its commits (if its git directory is
    /// usable) and whatever it left uncommitted become the tip of
    /// `orch/<id>` in the user's repository. The caller holds the task's
    /// lock, and the task is no longer running.
    pub fn save(&self, layout: &Layout, _lock: &TaskLock) -> Result<Saved, Error> {
        layout.prepare()?;
        let shadow = layout.shadow_dir(&self.project, &self.task_id)?;
        crate::fsgit::remove_dir_if_present(&shadow)?;
        let saved = Save {
            ws: self,
            layout,
            shadow: shadow.clone(),
            deadline: Deadline::after(save_deadline()),
            budget: Budget::default(),
            nested: Vec::new(),
            hazard: None,
            unreadable: Vec::new(),
        }
        .run();
        let cleaned = crate::fsgit::remove_dir_if_present(&shadow);
        let saved = saved?;
        cleaned?;
        Ok(saved)
    }

    /// The task's git directory: where orch moved it when it kept the
    /// workspace, else the workspace's `.git`.
    pub(crate) fn task_git_dir(&self, layout: &Layout) -> PathBuf {
        match layout.kept_git_dir(&self.project, &self.task_id) {
            Ok(kept) if kept.symlink_metadata().is_ok() => kept,
            _ => self.path.join(".git"),
        }
    }
}

/// Clears setuid bits and removes device nodes the task left; returns
/// what the user should know if some could not be.
fn disarm(path: &Path) -> Vec<String> {
    let disarmed = worktree::disarm(path);
    if disarmed.cleared + disarmed.removed > 0 {
        tracing::info!(
            workspace = %path.display(),
            setuid_cleared = disarmed.cleared,
            devices_removed = disarmed.removed,
            "disarmed what the task left"
        );
    }
    if disarmed.failed.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "setuid files or device nodes the task left could not be disarmed ({}); the workspace is private to orch's user",
        disarmed.failed.join(", ")
    )]
}

/// One save in progress.
struct Save<'a> {
    ws: &'a Workspace,
    layout: &'a Layout,
    shadow: PathBuf,
    deadline: Deadline,
    budget: Budget,
    /// Repositories found inside the workspace, saved as plain files.
    nested: Vec<PathBuf>,
    /// Why none of the work tree was handed to git, if it was not.
    hazard: Option<String>,
    /// Directories that could not be read, relative to the workspace.
    unreadable: Vec<PathBuf>,
}

/// The tree entries of the commit the work goes on: mode and id by path.
type Tracked = HashMap<Vec<u8>, (u32, String)>;

impl Save<'_> {
    fn run(mut self) -> Result<Saved, Error> {
        let ws = self.ws;
        crate::fsgit::make_bare_repo(&self.shadow, crate::fsgit::object_format(&ws.base))?;
        // Before anything reads the workspace: nothing setuid, no device.
        let mut notes = disarm(&ws.path);
        let (head, hints) = self.link_task_objects(&mut notes)?;
        crate::failpoint::hit("in-save");
        let git = Git::at(self.layout, &self.shadow)
            .isolated()
            .dies_with_orch()
            .deadline(self.deadline);
        let head = self.usable_head(&git, head, &mut notes)?;
        let mut imported = head.is_some();
        let mut outcome = self.commit(&git, head, hints.as_ref());
        if imported {
            if let Err(e) = &outcome {
                if matches!(e, Error::SaveDeadline { .. }) {
                    return outcome.map(|_| Saved::default());
                }
                // Whatever failed, a second try may not start past the
                // deadline.
                if self.deadline.passed() {
                    return Err(Error::SaveDeadline {
                        action: "bring in the task's commits",
                        after: self.deadline.length,
                    });
                }
                // Its HEAD names objects that are nowhere to be found (in
                // another repository the task could name but not reach,
                // say): its commits stay out, its files come home.
                notes.push(format!(
                    "the task's commits could not be brought in ({}): its files were saved on its branch",
                    crate::error::one_line(e)
                ));
                self.budget = Budget::default();
                self.nested.clear();
                self.hazard = None;
                self.unreadable.clear();
                imported = false;
                outcome = self.commit(&git, None, hints.as_ref());
            }
        }
        let (parent, tip) = outcome?;
        let left_out_first = self.relative(&self.budget.left_out.first);
        notes.extend(self.left_behind(&left_out_first));
        Ok(Saved {
            pending_commit: (tip != parent).then(|| tip.clone()),
            tip: Some(tip),
            imported,
            warning: (!notes.is_empty()).then(|| notes.join("; ")),
            left_out: self.budget.left_out.count,
            left_out_first,
            not_staged: self.hazard.clone(),
            unreadable: self.unreadable.clone(),
        })
    }

    /// Makes the task's objects visible to the shadow through links orch
    /// makes (the task's alternates are never read), beside the user's
    /// repository's. Returns the commit the task's HEAD names and what its
    /// index says, if its git directory can be used.
    fn link_task_objects(
        &self,
        notes: &mut Vec<String>,
    ) -> Result<(Option<String>, Option<TaskIndex>), Error> {
        let ws = self.ws;
        let mut alternates = ws.repo.object_dirs();
        let task_git = ws.task_git_dir(self.layout);
        let mut found = (None, None);
        match taskrepo::inspect(&task_git) {
            TaskRepo::Usable {
                objects,
                parts,
                head,
            } => {
                let view = self.shadow.join("task-objects");
                taskrepo::link_objects(&objects, &parts, &view)?;
                alternates.push(view);
                found = (head, taskindex::read(&task_git.join("index"), ws.base.len() / 2));
            }
            TaskRepo::Unusable(why) => notes.push(format!(
                "the task's git directory was not used ({why}): its commits were not brought in; its files were saved"
            )),
        }
        let list: String = alternates
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        let alternates_file = self.shadow.join("objects/info/alternates");
        std::fs::write(&alternates_file, list)
            .map_err(|e| Error::io("write", &alternates_file, e))?;
        Ok(found)
    }

    /// The commit the work goes on top of, with its tree: the task's HEAD
    /// if it names a commit there is, whose tree can be checked out
    /// (measured before anything expands it). None: the branch as the
    /// user's repository has it.
    fn usable_head(
        &self,
        git: &Git,
        head: Option<String>,
        notes: &mut Vec<String>,
    ) -> Result<Option<(String, String)>, Error> {
        let past_deadline = |action| match self.deadline.passed() {
            true => Err(Error::SaveDeadline {
                action,
                after: self.deadline.length,
            }),
            false => Ok(()),
        };
        let Some(commit) = head else {
            return Ok(None);
        };
        let Ok(tree) = git.run(
            "check the task's HEAD",
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{commit}^{{tree}}"),
            ],
        ) else {
            past_deadline("check the task's HEAD")?;
            notes.push(
                "the task's HEAD names no commit there is: its commits were not brought in; its files were saved on its branch"
                    .to_owned(),
            );
            return Ok(None);
        };
        if commit != self.ws.base {
            let measured = treecheck::check(git, &tree, TREE_LIMITS)
                .and_then(|()| treecheck::check_files(git, &commit, &self.ws.base, &self.shadow));
            if let Err(why) = measured {
                past_deadline("measure the task's tree")?;
                notes.push(format!(
                    "the task's HEAD was not used ({why}): its commits were not brought in; its files were saved on its branch"
                ));
                return Ok(None);
            }
        }
        Ok(Some((commit, tree)))
    }

    /// Paths relative to the workspace.
    fn relative(&self, paths: &[PathBuf]) -> Vec<PathBuf> {
        paths
            .iter()
            .map(|p| p.strip_prefix(&self.ws.path).unwrap_or(p).to_path_buf())
            .collect()
    }

    /// What the save left out of the branch, or saved otherwise than as it
    /// was, for the user to know.
    fn left_behind(&self, left_out_first: &[PathBuf]) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(why) = &self.hazard {
            notes.push(format!(
                "its uncommitted files were not saved ({why}); they stay in the workspace"
            ));
        }
        if self.budget.left_out.count > 0 {
            notes.push(format!(
                "{} too large to save were left out of its branch",
                listed(left_out_first, self.budget.left_out.count)
            ));
        }
        if self.budget.special.count > 0 {
            notes.push(format!(
                "{} that git cannot store (FIFOs, sockets or devices) are absent from its branch",
                listed(
                    &self.relative(&self.budget.special.first),
                    self.budget.special.count
                )
            ));
        }
        if !self.unreadable.is_empty() {
            let shown: Vec<String> = self
                .unreadable
                .iter()
                .map(|p| format!("{}/", p.display()))
                .collect();
            notes.push(format!(
                "directories orch cannot read ({}) were not saved; they stay in the workspace",
                shown.join(", ")
            ));
        }
        if !self.nested.is_empty() {
            let shown: Vec<String> = self
                .nested
                .iter()
                .map(|p| format!("{}/", p.display()))
                .collect();
            notes.push(format!(
                "repositories inside the workspace ({}) were saved as plain files",
                shown.join(", ")
            ));
        }
        notes
    }

    /// Stages the work tree on `head` (the task's commit and its tree), or
    /// on the branch as the user's repository has it; commits it if it
    /// changed anything, and brings the result into the user's repository.
    /// Returns the commit the work went on and the new tip.
    fn commit(
        &mut self,
        git: &Git,
        head: Option<(String, String)>,
        hints: Option<&TaskIndex>,
    ) -> Result<(String, String), Error> {
        let ws = self.ws;
        let (parent, parent_tree) = match head {
            Some(found) => found,
            None => {
                let tip = ws
                    .user_git(self.layout)
                    .run(
                        "read the task's branch",
                        &[
                            "rev-parse",
                            "--verify",
                            "--quiet",
                            &format!("{}^{{commit}}", ws.branch_ref()),
                        ],
                    )
                    .unwrap_or_else(|_| ws.base.clone());
                let tree = git.run(
                    "read the tree of the task's branch",
                    &["rev-parse", &format!("{tip}^{{tree}}")],
                )?;
                (tip, tree)
            }
        };
        let tree = self
            .stage(git, &ws.path, Some(&parent), hints, 0)?
            .unwrap_or_else(|| parent_tree.clone());
        let tip = if tree == parent_tree {
            parent.clone()
        } else {
            let (name, email) = ws.repo.identity(self.layout);
            let message = save_message(&ws.task_id, ws.description.as_deref());
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
        self.import(git, &tip)?;
        Ok((parent, tip))
    }

    /// Brings the commits up to `tip` from the shadow into the user's
    /// repository and moves the task's branch there. No transport and no
    /// config of either side is involved: the shadow packs what the branch
    /// lacks, the user's repository takes the pack with `index-pack
    /// --strict` (every object re-hashed and checked, so nothing lands under
    /// a false name), and the branch moves with `update-ref` from the value
    /// it had, so a branch someone else moved meanwhile is not overwritten.
    fn import(&self, shadow_git: &Git, tip: &str) -> Result<(), Error> {
        let ws = self.ws;
        let layout = self.layout;
        let before = ws
            .user_git(layout)
            .run(
                "read the task's branch",
                &["rev-parse", "--verify", "--quiet", &ws.branch_ref()],
            )
            .ok();
        if before.as_deref() == Some(tip) {
            return Ok(());
        }
        let transfer = self.shadow.join("transfer");
        std::fs::create_dir_all(&transfer).map_err(|e| Error::io("create", &transfer, e))?;
        let mut revs = format!("{tip}\n^{}\n", ws.base);
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
                    OsStr::new("pack-objects"),
                    OsStr::new("--revs"),
                    OsStr::new("--quiet"),
                    OsStr::new("--delta-base-offset"),
                    prefix.as_os_str(),
                ],
            )?;
        if !hash.is_empty() {
            let pack = transfer.join(format!("pack-{hash}.pack"));
            ws.user_git(layout)
                .stdin_file(&pack)
                .timeout(HEAVY_TIMEOUT)
                .deadline(self.deadline)
                .run(
                    "bring the task's work into the repository",
                    &["index-pack", "--stdin", "--strict"],
                )?;
        }
        let repo = RepoLock::acquire(layout, &ws.repo.common_dir)?;
        let message = ws.reflog_message("saved");
        ws.user_git(layout)
            .holding(&repo)
            .run(
                "move the task's branch",
                &[
                    "update-ref",
                    "-m",
                    &message,
                    &ws.branch_ref(),
                    tip,
                    before.as_deref().unwrap_or(""),
                ],
            )
            .map(drop)
    }

    /// Stages everything under `work_tree` (tracked and untracked, not
    /// ignored) on top of `parent` (or nothing), as `git add --all` inside
    /// the task would, through orch's own git directory, and returns the
    /// tree; `None` if git must not be handed this work tree (the reason is
    /// in `self.hazard`). Repositories the task made inside it would stop
    /// git at their border and lose their files: each is staged the same
    /// way on its own, without its `.git`, and grafted in as plain files.
    fn stage(
        &mut self,
        git: &Git,
        work_tree: &Path,
        parent: Option<&str>,
        hints: Option<&TaskIndex>,
        depth: usize,
    ) -> Result<Option<String>, Error> {
        let index = self
            .shadow
            .join(format!("index-{depth}-{}", self.nested.len()));
        let indexed = git
            .clone()
            .index(&index)
            .work_tree(work_tree)
            .in_dir(work_tree);
        let tracked = match parent {
            Some(parent) => {
                indexed.run("read the task's tree", &["read-tree", parent])?;
                tracked_entries(&indexed)?
            }
            None => {
                indexed.run("start an empty tree", &["read-tree", "--empty"])?;
                Tracked::new()
            }
        };
        // Submodules stay as the tree records them: git never enters them,
        // and neither does the save. Unless the task put something else
        // there: a file or a link is staged as one, as `git add -A` would;
        // a repository of its own making is staged as plain files, as any
        // repository nested in the work is.
        let mut gitlinks: HashSet<Vec<u8>> = HashSet::new();
        let mut replaced: Vec<Vec<u8>> = Vec::new();
        for (path, (mode, _)) in &tracked {
            if *mode != 0o160000 {
                continue;
            }
            let on_disk = work_tree.join(OsStr::from_bytes(path));
            match on_disk.symlink_metadata() {
                Ok(meta) if !meta.is_dir() => replaced.push(path.clone()),
                Ok(_)
                    if on_disk
                        .join(".git")
                        .symlink_metadata()
                        .is_ok_and(|m| m.is_dir()) => {}
                _ => {
                    gitlinks.insert(path.clone());
                }
            }
        }
        let scan = worktree::scan(work_tree, &gitlinks);
        if let Some(why) = scan.hazard {
            self.hazard = Some(why);
            return Ok(None);
        }
        self.unreadable.extend(scan.unreadable.iter().map(|rel| {
            work_tree
                .join(rel)
                .strip_prefix(&self.ws.path)
                .unwrap_or(rel)
                .to_path_buf()
        }));
        let untracked = self.untracked(&indexed, &scan.nested)?;
        let mut level = Level {
            work_tree,
            hints,
            plan: Plan::default(),
            directories: HashMap::new(),
            missing: HashMap::new(),
        };
        self.plan_tracked(&mut level, &tracked);
        for path in &replaced {
            let on_disk = work_tree.join(OsStr::from_bytes(path));
            if let Ok(meta) = on_disk.symlink_metadata() {
                if self.budget.take(&on_disk, staged_len(&meta)) {
                    level.plan.take(path);
                }
            }
        }
        self.plan_untracked(&mut level, &untracked);
        level.plan.apply(&indexed, &self.shadow.join("staged"))?;
        for path in &scan.nested {
            if !self.graft(git, &indexed, work_tree, path, depth)? {
                return Ok(None);
            }
        }
        let tree = indexed.run("write the task's tree", &["write-tree"])?;
        let _ = std::fs::remove_file(&index);
        Ok(Some(tree))
    }

    /// The new files of a work tree, as git would list them (not ignored;
    /// the nested repositories, staged on their own, and the git
    /// directories orch disabled left out).
    fn untracked(&self, indexed: &Git, nested: &[PathBuf]) -> Result<Vec<u8>, Error> {
        let exclude = self.shadow.join("info/exclude");
        if let Some(dir) = exclude.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        // The git directories of nested repositories orch disabled in a kept
        // workspace are theirs, not files of the work.
        let mut patterns = format!("{}/\n", crate::worktree::DISABLED).into_bytes();
        for nested in nested {
            patterns.extend(worktree::pattern(nested.as_os_str().as_bytes()).unwrap_or_default());
        }
        std::fs::write(&exclude, patterns).map_err(|e| Error::io("write", &exclude, e))?;
        let untracked = indexed.clone().timeout(HEAVY_TIMEOUT).run_bytes(
            "list the task's new files",
            &["ls-files", "-z", "--others", "--exclude-standard"],
        );
        let _ = std::fs::remove_file(&exclude);
        untracked
    }

    /// Plans the tracked files of the tree the work goes on: read again
    /// where the task's index says they changed, removed where gone (not
    /// where a sparse checkout left them out), dropped where they cannot be.
    fn plan_tracked(&mut self, level: &mut Level<'_>, tracked: &Tracked) {
        let (work_tree, hints) = (level.work_tree, level.hints);
        for (rel, (mode, id)) in tracked {
            if *mode == 0o160000 {
                continue;
            }
            let path = work_tree.join(OsStr::from_bytes(rel));
            if !real_dir(work_tree, parent_of(rel), &mut level.directories) {
                // Under what is now a link or a file: never looked through.
                level.plan.drop(rel);
                continue;
            }
            let hint = hints
                .and_then(|h| h.entries.get(rel))
                .filter(|e| e.id == *id);
            let Ok(meta) = path.symlink_metadata() else {
                // Gone: deleted, unless a sparse checkout left it out.
                let sparse = hint.is_some_and(|e| e.skip_worktree)
                    || hints.is_some_and(|h| h.in_sparse_dir(rel));
                if !sparse {
                    if let Some(entry) = hint {
                        level.missing.insert(
                            (u64::from(entry.stat.ino), u64::from(entry.stat.size)),
                            rel.clone(),
                        );
                    }
                    level.plan.take(rel);
                }
                continue;
            };
            if self.unstageable(&path, &meta, rel, work_tree, &mut level.directories) {
                level.plan.drop(rel);
                continue;
            }
            let unchanged = hint.is_some_and(|e| {
                e.assume_valid
                    || e.skip_worktree
                    || (e.mode == *mode
                        && disk_mode(&meta) == *mode
                        && hints.is_some_and(|h| h.unchanged(e, &meta)))
            });
            if !unchanged && self.budget.take(&path, staged_len(&meta)) {
                level.plan.take(rel);
            }
        }
    }

    /// Plans the new files (NUL-separated in `untracked`): read, unless one
    /// is a tracked file the task moved there.
    fn plan_untracked(&mut self, level: &mut Level<'_>, untracked: &[u8]) {
        let (work_tree, hints) = (level.work_tree, level.hints);
        for rel in untracked.split(|b| *b == 0) {
            // Empty, or a directory git would not enter.
            if rel.is_empty() || rel.ends_with(b"/") {
                continue;
            }
            let path = work_tree.join(OsStr::from_bytes(rel));
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if self.unstageable(&path, &meta, rel, work_tree, &mut level.directories) {
                continue;
            }
            // A tracked file the task moved here: the same inode, length
            // and time as the index recorded for a path that is gone. Its
            // blob is the tree's already; it is not read.
            let moved = level
                .missing
                .get(&(meta.ino() & 0xffff_ffff, meta.size() & 0xffff_ffff))
                .and_then(|from| {
                    let entry = hints?.entries.get(from)?;
                    let mtime = (meta.mtime() as u32, meta.mtime_nsec() as u32);
                    let same_time = entry.stat.mtime.0 == mtime.0
                        && (entry.stat.mtime.1 == 0 || entry.stat.mtime.1 == mtime.1);
                    (same_time && entry.mode == disk_mode(&meta) && meta.is_file())
                        .then(|| (entry.mode, entry.id.clone()))
                });
            if let Some((mode, id)) = moved {
                level.plan.moved(mode, &id, rel);
            } else if self.budget.take(&path, staged_len(&meta)) {
                level.plan.take(rel);
            }
        }
    }

    /// Stages the repository the task made at `path` (under `work_tree`) on
    /// its own, without its `.git`, and grafts its files into `indexed`.
    /// False if git must not be handed its work tree.
    fn graft(
        &mut self,
        git: &Git,
        indexed: &Git,
        work_tree: &Path,
        path: &Path,
        depth: usize,
    ) -> Result<bool, Error> {
        let shown = path.as_os_str();
        let sub = if depth < MAX_NESTING {
            self.stage(git, &work_tree.join(path), None, None, depth + 1)?
        } else {
            None
        };
        if self.hazard.is_some() {
            return Ok(false);
        }
        let mut literal = OsStr::new(":(literal)").to_os_string();
        literal.push(shown);
        indexed.run(
            "make room for a repository's files",
            &[
                OsStr::new("rm"),
                OsStr::new("--cached"),
                OsStr::new("-r"),
                OsStr::new("-q"),
                // A submodule the task replaced: its gitlink goes as well.
                OsStr::new("-f"),
                OsStr::new("--ignore-unmatch"),
                OsStr::new("--"),
                &literal,
            ],
        )?;
        if let Some(sub) = sub {
            let mut prefix = OsStr::new("--prefix=").to_os_string();
            prefix.push(shown);
            prefix.push("/");
            indexed.run(
                "graft a repository's files",
                &[OsStr::new("read-tree"), &prefix, OsStr::new(&sub)],
            )?;
        }
        self.nested.push(
            work_tree
                .join(path)
                .strip_prefix(&self.ws.path)
                .unwrap_or(path)
                .to_path_buf(),
        );
        Ok(true)
    }

    /// True if the file at `path` cannot be staged where it is: a FIFO,
    /// socket or device (nothing git can store; named), a directory now
    /// (its files come as new ones), or under what is now a link or a file.
    fn unstageable(
        &mut self,
        path: &Path,
        meta: &std::fs::Metadata,
        rel: &[u8],
        work_tree: &Path,
        directories: &mut HashMap<Vec<u8>, bool>,
    ) -> bool {
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_dir() && !kind.is_symlink() {
            self.budget.special.add(path);
            return true;
        }
        kind.is_dir() || !real_dir(work_tree, parent_of(rel), directories)
    }
}

/// One work tree being staged (the workspace, or a repository inside it).
struct Level<'a> {
    work_tree: &'a Path,
    /// What the task's index says of its files (the workspace alone).
    hints: Option<&'a TaskIndex>,
    plan: Plan,
    /// Which parent directories are real directories, by path.
    directories: HashMap<Vec<u8>, bool>,
    /// Tracked files that are gone, by the inode and length the task's
    /// index recorded: where a new file may have come from.
    missing: HashMap<(u64, u64), Vec<u8>>,
}

/// What one level of staging changes in its index.
#[derive(Debug, Default)]
struct Plan {
    /// Paths to read from the work tree (or remove, if gone): NUL-separated.
    taken: Vec<u8>,
    /// Paths that cannot be where they were: NUL-separated.
    dropped: Vec<u8>,
    /// Index lines for moved files: `<mode> <id>\t<path>`, NUL-separated.
    moved: Vec<u8>,
}

impl Plan {
    fn take(&mut self, rel: &[u8]) {
        self.taken.extend_from_slice(rel);
        self.taken.push(0);
    }

    fn drop(&mut self, rel: &[u8]) {
        self.dropped.extend_from_slice(rel);
        self.dropped.push(0);
    }

    fn moved(&mut self, mode: u32, id: &str, rel: &[u8]) {
        self.moved
            .extend_from_slice(format!("{mode:o} {id}\t").as_bytes());
        self.moved.extend_from_slice(rel);
        self.moved.push(0);
    }

    /// Dropped paths leave the index, moved ones enter it as the blobs
    /// they were, taken ones are read from the work tree.
    fn apply(&self, indexed: &Git, list: &Path) -> Result<(), Error> {
        let steps: [(&[u8], &'static str, &[&str]); 3] = [
            (
                &self.dropped,
                "unstage files that cannot be where they were",
                &["update-index", "--force-remove", "-z", "--stdin"],
            ),
            (
                &self.moved,
                "stage the files the task moved",
                &["update-index", "-z", "--index-info"],
            ),
            (
                &self.taken,
                "stage the task's uncommitted work",
                &[
                    "update-index",
                    "--add",
                    "--remove",
                    "--replace",
                    "-z",
                    "--stdin",
                ],
            ),
        ];
        for (input, action, args) in steps {
            if input.is_empty() {
                continue;
            }
            std::fs::write(list, input).map_err(|e| Error::io("write", list, e))?;
            indexed
                .clone()
                .stdin_file(list)
                .timeout(HEAVY_TIMEOUT)
                .run(action, args)?;
        }
        let _ = std::fs::remove_file(list);
        Ok(())
    }
}

/// The entries of the index (as `read-tree` left it): mode and id by path.
fn tracked_entries(indexed: &Git) -> Result<Tracked, Error> {
    let listed = indexed
        .clone()
        .timeout(HEAVY_TIMEOUT)
        .run_bytes("list the tree's files", &["ls-files", "-z", "--stage"])?;
    // "<mode> <id> <stage>\t<path>"
    let mut tracked = Tracked::new();
    for record in listed.split(|b| *b == 0) {
        let Some(tab) = record.iter().position(|b| *b == b'\t') else {
            continue;
        };
        let Ok(head) = std::str::from_utf8(&record[..tab]) else {
            continue;
        };
        let mut fields = head.split(' ');
        let (Some(mode), Some(id)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(mode) = u32::from_str_radix(mode, 8) else {
            continue;
        };
        tracked.insert(record[tab + 1..].to_vec(), (mode, id.to_owned()));
    }
    Ok(tracked)
}

/// The mode git would record for this file: a link, or a regular file
/// executable or not.
fn disk_mode(meta: &std::fs::Metadata) -> u32 {
    if meta.file_type().is_symlink() {
        0o120000
    } else if meta.mode() & 0o100 != 0 {
        0o100755
    } else {
        0o100644
    }
}

/// What staging this file reads: its length; a link's is its target's
/// name, never what it points at.
fn staged_len(meta: &std::fs::Metadata) -> u64 {
    if meta.is_file() { meta.len() } else { 0 }
}

/// The directory `rel` is in (empty at the top).
fn parent_of(rel: &[u8]) -> &[u8] {
    rel.iter()
        .rposition(|b| *b == b'/')
        .map_or(&rel[..0], |i| &rel[..i])
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
    let answer = real_dir(work_tree, parent_of(dir), known)
        && work_tree
            .join(OsStr::from_bytes(dir))
            .symlink_metadata()
            .is_ok_and(|m| m.is_dir());
    known.insert(dir.to_vec(), answer);
    answer
}

/// The message of the commit that saves a task's uncommitted work: its
/// description's first line as the subject (cut to 72 characters), the
/// whole description and the task id in the body.
fn save_message(task_id: &str, description: Option<&str>) -> String {
    let description = description.map(crate::review::plain_text);
    let description = description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let Some(description) = description else {
        return format!(
            "orch: uncommitted work of task {task_id}\n\nSaved by orch before removing the task's workspace.\n\nOrch-Task: {task_id}\n"
        );
    };
    let first = description.lines().next().unwrap_or_default();
    let subject: String = if first.chars().count() > 72 {
        first.chars().take(71).chain(['~']).collect()
    } else {
        first.to_owned()
    };
    format!(
        "{subject}\n\nUncommitted work of task {task_id}, saved by orch before removing\nits workspace. The task was asked:\n\n{description}\n\nOrch-Task: {task_id}\n"
    )
}
