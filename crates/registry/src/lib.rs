//! orch's durable task registry.
//!
//! One SQLite database per orch home (`$ORCH_HOME/orch.db`), in WAL mode
//! with a busy timeout, so several orch processes use it at once. The schema
//! is versioned and migrated from the first release on. Every state change
//! is one transaction and goes through the lifecycle of [`State`]; illegal
//! transitions are refused. A database that is damaged or not orch's is
//! never replaced: opening it fails with an error naming the file.

#![warn(missing_docs)]

mod db;
mod error;
mod node;
mod pg;
mod record;
mod state;
mod store;

pub use db::Registry;
pub use error::Error;
pub use node::{Node, NodeRecord};
pub use pg::{POOL_SIZE, Postgres};
pub use record::{
    Attempt, Claimant, Finish, KnownBranch, Listing, Renewal, Rescued, SHORT_ID_LEN, TaskBrief,
    TaskOutcome, TaskOwner, TaskProgress, TaskQueue, TaskRecord, TaskWorkspace, WorkspaceState,
    check_name, rfc3339, short_id,
};
pub use state::{ALL_STATES, State, UnknownState};
pub use store::{KEPT_LOG, OnWake, Store, Wake};

/// Now, in Unix milliseconds: the registry's unit of time.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;
