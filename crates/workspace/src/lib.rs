//! Per-task workspaces of orch.
//!
//! Every task of a git project gets a repository of its own at
//! `$ORCH_HOME/workspaces/<project>/tasks/<id>`, on the branch `orch/<id>`,
//! borrowing the user's objects read-only; the user's repository only ever
//! gains (and at the end moves) that branch. This crate knows where
//! workspaces live ([`Layout`]), creates them and brings their work home
//! ([`Workspace`]) under one lock per task ([`TaskLock`]), reads a task's
//! repository only as data, runs every host-side git call through one
//! hardened builder, measures workspaces ([`du`]), and removes directories
//! without ever reaching outside their root: the target is canonicalised,
//! must lie strictly inside its project's `tasks/` directory and must not
//! itself be a symlink, and symlinks inside it are never followed.
//! [`failpoint`] holds the failure injection of debug builds, for this
//! crate's steps and the orchestrator's.

#![warn(missing_docs)]

mod branches;
pub mod du;
mod error;
pub mod failpoint;
mod fsgit;
mod git;
mod kept;
mod layout;
mod lock;
pub mod mirror;
mod outcome;
mod remove;
pub mod review;
mod save;
mod taskindex;
mod taskrepo;
mod treecheck;
mod workspace;
mod worktree;

pub use branches::{Holds, TaskBranch, delete_branch, prune_worktrees, task_branches};
pub use error::Error;
pub use git::{Repo, git_identity};
pub use layout::{Layout, TaskDir, open_to_others, validate_project_name, workspace_size};
pub use lock::TaskLock;
pub use mirror::Mirror;
pub use outcome::{Mount, RemovedWorkspace, Saved, Unsaved};
pub use remove::Removal;
pub use workspace::Workspace;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_save;
