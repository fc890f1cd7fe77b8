//! What saving and removing a workspace give back, as plain data, and the
//! limits a save is held to: what every other part of the crate (errors
//! included) speaks of.

use std::path::PathBuf;
use std::time::Duration;

/// The size of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// Bytes allocated on disk.
    pub bytes: u64,
    /// Entries that are not directories.
    pub files: u64,
}

impl std::ops::AddAssign for Size {
    fn add_assign(&mut self, other: Size) {
        self.bytes += other.bytes;
        self.files += other.files;
    }
}

/// The largest file of a task's uncommitted work that is saved to its
/// branch (by its length: a sparse file costs the task nothing to make,
/// and git reads every byte of it).
pub(crate) const MAX_SAVED_FILE: u64 = 100 << 20;
/// All files of a task's uncommitted work read, in bytes.
pub(crate) const MAX_SAVED_BYTES: u64 = 1 << 30;
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
    /// Why none of its uncommitted files could be saved, if so (a name git
    /// would open is a FIFO, say); the workspace that holds them is not
    /// removed.
    pub not_staged: Option<String>,
    /// Directories of the task's work orch could not read (a task running
    /// as another user made them unreadable): their files are not on the
    /// branch, and the workspace that holds them is not removed. Relative.
    pub unreadable: Vec<PathBuf>,
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
    pub size: Size,
    /// Time the removal itself took.
    pub took: Duration,
}

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
