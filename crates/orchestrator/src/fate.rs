//! What became of a task's workspace: plain data, told by the teardown and
//! shown by every front.

use std::path::PathBuf;
use std::time::Duration;

/// What became of a task's workspace.
#[derive(Debug, Clone)]
pub enum WorkspaceFate {
    /// Removed, its work brought to its branch first.
    Removed {
        /// The workspace's path.
        path: PathBuf,
        /// The branch that keeps the task's work, if it has a repository.
        branch: Option<String>,
        /// The commit made of uncommitted work, if any.
        saved_commit: Option<String>,
        /// Something the user should know about the saving, if anything.
        warning: Option<String>,
        /// Bytes and files removed.
        size: orch_workspace::du::Size,
        /// Time the removal took.
        took: Duration,
    },
    /// Kept for debugging (or on request): its work brought to its branch
    /// first, and its git directory replaced by one of orch's making, so
    /// that plain git there runs nothing the task wrote.
    Kept {
        /// The workspace's path.
        path: PathBuf,
        /// The branch.
        branch: Option<String>,
        /// The commit made of uncommitted work, if any.
        saved_commit: Option<String>,
        /// Something the user should know about the saving, if anything.
        warning: Option<String>,
    },
    /// No task ever ran in it: removed with its untouched branch.
    Unwound {
        /// The workspace's path.
        path: PathBuf,
    },
}

impl WorkspaceFate {
    /// What the user should know about how the work was saved, if anything.
    pub fn warning(&self) -> Option<&str> {
        match self {
            WorkspaceFate::Removed { warning, .. } | WorkspaceFate::Kept { warning, .. } => {
                warning.as_deref()
            }
            WorkspaceFate::Unwound { .. } => None,
        }
    }
}
