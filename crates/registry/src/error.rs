//! Typed errors of the registry; each names the database file.

use std::path::PathBuf;

use uuid::Uuid;

use crate::State;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file exists but is not a usable SQLite database. orch never
    /// replaces it.
    #[error(
        "the registry {shown} is unreadable ({reason}); orch leaves it untouched: \
         move it aside (mv {shown} {shown}.bad) to start a new one, or restore a backup",
        shown = path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was written by a newer orch.
    #[error(
        "the registry {place} has schema version {found}, newer than this orch knows ({known}); upgrade orch"
    )]
    TooNew {
        /// The database (a file, or a URL without its password).
        place: String,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A transition the lifecycle does not allow.
    #[error("task {id} cannot go from {from} to {to}")]
    IllegalTransition {
        /// The task.
        id: Uuid,
        /// Its current state.
        from: State,
        /// The refused state.
        to: State,
    },
    /// No task has this id.
    #[error("no task {0}")]
    NotFound(String),
    /// A write made under an attempt that no longer holds the task: a
    /// rescuer queued it again and another claim holds it, so the writer's
    /// view is stale and nothing was written.
    #[error("task {id} is no longer on attempt {attempt} (now {current}): the write was refused")]
    Fenced {
        /// The task.
        id: Uuid,
        /// The attempt the write was made under.
        attempt: i64,
        /// The task's attempt now.
        current: i64,
    },
    /// A PostgreSQL registry could not be used.
    #[error("failed to {action} in the registry {place}")]
    Postgres {
        /// What was being done.
        action: &'static str,
        /// The database, as a URL without its password.
        place: String,
        /// The cause.
        #[source]
        source: postgres::Error,
    },
    /// A registry setting that cannot be used.
    #[error("{0}")]
    Setting(String),
    /// A prefix matches several tasks.
    #[error("task id prefix {prefix:?} is ambiguous: {}", candidates.join(", "))]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// The ids it matches (at most ten).
        candidates: Vec<String>,
    },
    /// A live task already has this name.
    #[error("a live task is already named {0:?}: names are unique among queued and running tasks")]
    NameTaken(String),
    /// An id or prefix that cannot be one.
    #[error("invalid task id {0:?}: give at least 4 hex digits of it")]
    InvalidId(String),
    /// An SQLite error.
    #[error("failed to {action} in the registry {}", path.display())]
    Sqlite {
        /// What was being done.
        action: &'static str,
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The disk holding the registry is full.
    #[error(
        "failed to {action} in the registry {}: no space left on the device holding it (free some space there)",
        path.display()
    )]
    DiskFull {
        /// What was being done.
        action: &'static str,
        /// The database file.
        path: PathBuf,
    },
    /// An I/O error on the database file.
    #[error("failed to {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
