//! Per-task workspaces of orch.
//!
//! Every task may own a directory `$ORCH_HOME/workspaces/<project>/tasks/<id>`:
//! a locked git worktree on the branch `orch/<id>`. This crate knows where
//! those directories are ([`Layout`]), creates and removes them
//! ([`Workspace`]) under one lock per task ([`TaskLock`]), measures them
//! ([`du`]), and removes directories without ever reaching outside their
//! root: the target is canonicalised, must lie strictly inside its project's
//! `tasks/` directory and must not itself be a symlink, and symlinks inside
//! it are never followed.

#![warn(missing_docs)]

pub mod du;
mod error;
mod git;
mod layout;
mod lock;
mod remove;
mod worktree;

pub use error::Error;
pub use git::Repo;
pub use layout::{Layout, TaskDir, validate_project_name};
pub use lock::TaskLock;
pub use remove::Removal;
pub use worktree::{
    EmptyBranch, RemovedWorkspace, Workspace, delete_branch, empty_branches, prune_worktrees,
};
