//! Typed errors of workspace operations; each names the path it concerns.

use std::path::PathBuf;

/// Why a workspace operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path is not strictly inside the project's task directory.
    #[error("refusing to remove {path}: it is not inside {root}")]
    OutsideRoot {
        /// The path that was asked for (not canonicalised).
        path: PathBuf,
        /// The root it had to be inside.
        root: PathBuf,
    },
    /// The target itself is a symbolic link.
    #[error("refusing to remove {path}: it is a symbolic link")]
    Symlink {
        /// The path of the link.
        path: PathBuf,
    },
    /// A project name that cannot be used in paths and labels.
    #[error(
        "invalid project name {name:?}: use letters, digits, '.', '_' and '-' (not starting with '.')"
    )]
    InvalidProjectName {
        /// The name as given.
        name: String,
    },
    /// A task id that is not a hex UUID and so cannot name a directory.
    #[error("invalid task id {id:?}")]
    InvalidTaskId {
        /// The id as given.
        id: String,
    },
    /// A git command failed.
    #[error("failed to {action} in {}: git {}: {stderr}", dir.display(), args.join(" "))]
    Git {
        /// What was being done, e.g. "create worktree".
        action: &'static str,
        /// Where git ran.
        dir: PathBuf,
        /// The git arguments.
        args: Vec<String>,
        /// What git said, on one line.
        stderr: String,
    },
    /// A git command did not finish in time and was killed.
    #[error("failed to {action} in {}: git {} did not finish within {after:?} and was killed", dir.display(), args.join(" "))]
    GitTimeout {
        /// What was being done.
        action: &'static str,
        /// Where git ran.
        dir: PathBuf,
        /// The git arguments.
        args: Vec<String>,
        /// Its deadline.
        after: std::time::Duration,
    },
    /// Bringing a task's work home did not finish within its deadline; the
    /// workspace is kept.
    #[error(
        "saving the task's work did not finish within {after:?} (it was at: {action}); the workspace is kept"
    )]
    SaveDeadline {
        /// The step it was at.
        action: &'static str,
        /// The deadline of the whole save.
        after: std::time::Duration,
    },
    /// The project is not a git repository, so it cannot have worktrees.
    #[error(
        "project directory {} is not in a git repository: run `git init` there, \
         or set workspace = \"none\" in its orch.toml (or pass --no-workspace)",
        path.display()
    )]
    NotARepository {
        /// The project directory.
        path: PathBuf,
    },
    /// Some of the task's files were too large to save to its branch; the
    /// rest was saved, and the workspace is kept so that nothing is lost.
    #[error(
        "{} too large to save to its branch (over {} MiB each or {} MiB in all; the rest was saved)",
        crate::outcome::listed(first, *left_out), crate::outcome::MAX_SAVED_FILE >> 20,
        crate::outcome::MAX_SAVED_BYTES >> 20
    )]
    TooLargeToSave {
        /// The workspace (named by whoever reports it kept).
        path: PathBuf,
        /// How many files were left out.
        left_out: usize,
        /// The first of them, relative to it.
        first: Vec<PathBuf>,
    },
    /// A project URL orch will not use.
    #[error("invalid repository URL {url}: {why}")]
    BadUrl {
        /// The URL (its password, if any, hidden).
        url: String,
        /// Why.
        why: String,
    },
    /// None of the task's uncommitted files could be handed to git (the
    /// reason names the file); its commits were saved, and the workspace is
    /// kept so that nothing is lost.
    #[error(
        "none of its uncommitted files were saved ({why}): they stay in the kept workspace; its commits were saved"
    )]
    NotSaved {
        /// The workspace (named by whoever reports it kept).
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Files in the workspace cannot be removed by this user (a task running
    /// as root left them); removal needs a privileged helper.
    #[error("failed to remove {}: some files belong to another user", path.display())]
    NeedsPrivilege {
        /// The workspace.
        path: PathBuf,
        /// What saving its work did first.
        saved: Box<crate::outcome::Saved>,
    },
    /// The workspace is locked by a live task (or one being created).
    #[error("workspace {} is in use by a live task", path.display())]
    InUse {
        /// The workspace.
        path: PathBuf,
    },
    /// A request orch will not carry out, and why (one line).
    #[error("{0}")]
    Refused(String),
    /// An I/O operation on a path failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done, e.g. "remove".
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// An error and its causes on one line.
pub(crate) fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}
