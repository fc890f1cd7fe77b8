//! Per-task workspaces of orch.
//!
//! Every task may own a directory `$ORCH_HOME/workspaces/<project>/tasks/<id>`.
//! This crate knows where those directories are ([`Layout`]) and removes them
//! without ever reaching outside that root: the target is canonicalised, must
//! lie strictly inside its project's `tasks/` directory and must not itself be
//! a symlink, and symlinks inside it are never followed.

#![warn(missing_docs)]

mod error;
mod layout;
mod remove;

pub use error::Error;
pub use layout::{Layout, validate_project_name};
pub use remove::Removal;
