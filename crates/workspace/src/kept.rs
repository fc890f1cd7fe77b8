//! A kept workspace, made safe to hand back to the user.
//!
//! A failed task's workspace is kept for debugging, and the first thing a
//! person does there is `git status`. Run in the task's own repository,
//! that would obey whatever the task wrote into it: `core.fsmonitor`,
//! hooks, aliases, a pager, an `include.path`. So before orch names a kept
//! workspace, it moves the task's git directory out of it (to
//! `workspaces/<project>/kept/<id>.git`, where saves still read it as
//! data), renames the `.git` of every repository nested inside to
//! `.git.orch-disabled`, and puts in its place a git directory of its own
//! making: no hooks, a config of four lines, the user's objects borrowed,
//! HEAD on `orch/<id>` at what the save brought home, and an index of that
//! commit. Plain git there (status, diff, log, add, commit) runs nothing
//! the task wrote.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fsgit::{make_bare_repo, object_format};
use crate::git::Git;
use crate::worktree::DISABLED;
use crate::{Error, Layout, TaskLock, Workspace};

impl Workspace {
    /// Makes a kept workspace safe to use with plain git (see the module
    /// docs), its HEAD at `tip` (what its branch holds now). Idempotent:
    /// done once, it does nothing more. The caller holds the task's lock.
    pub fn hand_back(&self, layout: &Layout, _lock: &TaskLock, tip: &str) -> Result<(), Error> {
        let moved = layout.kept_git_dir(&self.project, &self.task_id)?;
        if moved.symlink_metadata().is_ok() || !self.exists() {
            return Ok(());
        }
        let dotgit = self.path.join(".git");
        if dotgit.symlink_metadata().is_ok() {
            if let Some(parent) = moved.parent() {
                crate::layout::private_dir(parent)?;
            }
            std::fs::rename(&dotgit, &moved).map_err(|e| Error::io("move", &dotgit, e))?;
        }
        let (nested, bare) = nested_git_dirs(&self.path);
        for nested in nested {
            let disabled = nested.with_file_name(DISABLED);
            if disabled.symlink_metadata().is_err() {
                match std::fs::rename(&nested, &disabled) {
                    // Entered, it would be a git directory still.
                    Ok(()) => disarm_git_dir(&disabled),
                    Err(e) => {
                        tracing::warn!(path = %nested.display(), error = %e, "cannot disable a nested repository");
                    }
                }
            }
        }
        for dir in bare {
            disarm_git_dir(&dir);
        }
        for special in special_ignore_files(&self.path) {
            // A FIFO there would hang every git command run in the
            // workspace; it holds no data.
            let mut disabled = special.clone().into_os_string();
            disabled.push(".orch-disabled");
            if let Err(e) = std::fs::rename(&special, &disabled) {
                tracing::warn!(path = %special.display(), error = %e, "cannot disable a special file git would open");
            }
        }
        // A repository of orch's making, non-bare, on the task's branch.
        make_bare_repo(&dotgit, object_format(&self.base))?;
        let config = dotgit.join("config");
        let text = std::fs::read_to_string(&config).map_err(|e| Error::io("read", &config, e))?;
        std::fs::write(&config, text.replace("bare = true", "bare = false"))
            .map_err(|e| Error::io("write", &config, e))?;
        let alternates: String = self
            .repo
            .object_dirs()
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        let exclude = dotgit.join("info/exclude");
        crate::layout::private_dir(&dotgit.join("info"))?;
        std::fs::write(&exclude, format!("{DISABLED}/\n"))
            .map_err(|e| Error::io("write", &exclude, e))?;
        let info = dotgit.join("objects/info/alternates");
        std::fs::write(&info, alternates).map_err(|e| Error::io("write", &info, e))?;
        let head = dotgit.join("HEAD");
        std::fs::write(&head, format!("ref: {}\n", self.branch_ref()))
            .map_err(|e| Error::io("write", &head, e))?;
        let branch = dotgit.join(self.branch_ref());
        if let Some(dir) = branch.parent() {
            crate::layout::private_dir(dir)?;
        }
        std::fs::write(&branch, format!("{tip}\n")).map_err(|e| Error::io("write", &branch, e))?;
        Git::at(layout, &dotgit)
            .isolated()
            .dies_with_orch()
            .index(&dotgit.join("index"))
            .run("give the kept workspace an index", &["read-tree", tip])?;
        Ok(())
    }
}

/// The `.git` of every repository nested in the work tree at `root` (not
/// its own), and every other directory git would take for a git directory
/// if someone ran it there (a `HEAD`, an `objects` and a `refs`: a "bare"
/// repository the task made anywhere), found without following links.
fn nested_git_dirs(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut found = Vec::new();
    let mut bare = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        if dir != root && looks_like_git_dir(&dir) {
            bare.push(dir.clone());
        }
        for entry in entries.flatten() {
            seen += 1;
            if seen > 2_000_000 {
                return (found, bare);
            }
            let name = entry.file_name();
            if name.as_bytes() == b".git" {
                if dir != root {
                    found.push(entry.path());
                }
                continue;
            }
            if entry.file_type().is_ok_and(|k| k.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    (found, bare)
}

/// What git checks to take a directory for a git directory.
fn looks_like_git_dir(dir: &Path) -> bool {
    let is_dir = |name: &str| dir.join(name).symlink_metadata().is_ok_and(|m| m.is_dir());
    dir.join("HEAD").symlink_metadata().is_ok() && is_dir("objects") && is_dir("refs")
}

/// Makes a git directory one git no longer recognises: its `HEAD` renamed.
fn disarm_git_dir(dir: &Path) {
    let head = dir.join("HEAD");
    if head.symlink_metadata().is_ok() {
        if let Err(e) = std::fs::rename(&head, dir.join("HEAD.orch-disabled")) {
            tracing::warn!(path = %dir.display(), error = %e, "cannot disable a git directory");
        }
    }
}

/// Every `.gitignore` or `.gitattributes` in the work tree at `root` that is
/// neither a regular file nor a link nor a directory (a FIFO, socket or
/// device), found without following links.
fn special_ignore_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > 2_000_000 {
                return found;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            if kind.is_dir() {
                if name.as_bytes() != b".git" {
                    stack.push(entry.path());
                }
            } else if !kind.is_file()
                && !kind.is_symlink()
                && [&b".gitignore"[..], b".gitattributes"].contains(&name.as_bytes())
            {
                found.push(entry.path());
            }
        }
    }
    found
}
