//! The orchestrator: runs tasks in throwaway containers and owns the one
//! path that tears them down.
//!
//! An [`Orchestrator`] is one orch process: a [`Runtime`] connection (the
//! Docker engine), the orch [`Home`] whose instance id marks everything it
//! creates, its registry, and the containers it has not removed yet. It
//! never installs signal handlers; shutdown comes in as a [`Shutdown`] from
//! whoever owns the process.
//!
//! - [`run`](crate::run): one task, from its checked inputs to its end;
//! - [`teardown`]: the one plan, policy and executor every exit path uses;
//! - [`reconcile`](crate::reconcile): snapshots, orphans and retention;
//! - [`watchdog`](crate::watchdog): the reaper of a killed orch's session;
//! - [`supervisor`]: the daemon's queue, scheduler and live tasks;
//! - [`runtime`]: the seam to the container engine.

#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "orch runs on Linux only: an owner's liveness is read from /proc (pid, start time, boot id), \
     and elsewhere every owner would look dead and live tasks would be reaped"
);

mod active;
mod cancel;
pub mod cluster;
mod config;
mod context;
mod disk;
pub mod egress;
mod error;
mod events;
mod fate;
mod guard;
mod home;
mod leases;
mod link;
mod orchestrator;
mod output;
mod owner;
mod reconcile;
mod run;
pub mod runtime;
mod session;
mod shutdown;
mod store;
pub mod supervisor;
pub mod teardown;
mod watchdog;
mod workspace;

pub use cancel::Cancelled;
pub use config::{
    CleanupThresholds, GlobalConfig, Overrides, Project, Settings, User, WEBHOOK_EVENTS, Webhook,
    WorkspaceMode, is_project_path, parse_duration, parse_env_pair, parse_memory, valid_env_key,
};
pub use disk::DuReport;
pub use error::{ConfigError, Error, ErrorKind};
pub use events::{Discard, Event, Observer, StopReason, Stream};
pub use fate::WorkspaceFate;
pub use home::Home;
pub use link::{Registered, WatchdogLink};
pub use orch_workspace::mirror::is_url;
pub use orchestrator::Orchestrator;
pub use output::{since_offset, times_path};
pub use owner::Owner;
pub use reconcile::{
    CleanupOptions, CleanupReport, Counts, Item, RepoItem, Strategy, Thresholds, describe,
    human_bytes,
};
pub use run::{Outcome, PreparedTask, Status, TaskRequest};
pub use runtime::display_chain;
pub use session::{Session, container_name};
pub use shutdown::{Shutdown, Suspension};
pub use watchdog::{Heard, Reaped, WatchdogLog, fence_session};
pub use workspace::{snapshot_worktree, uncommitted_warning};

#[cfg(test)]
mod tests;
