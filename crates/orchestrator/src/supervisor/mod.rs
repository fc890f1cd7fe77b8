//! The daemon's core: one process that runs many tasks from a durable
//! queue.
//!
//! A [`Supervisor`] owns the live tasks of its process (and nothing else:
//! finished tasks live in the registry). Tasks are submitted as
//! [`SubmitSpec`]s, checked as `orch task` would check them, and recorded
//! `queued`; the scheduler claims them from the registry in one transaction
//! each (so two daemons on one home never run one task), while fewer than
//! its concurrency run and within each project's `max_parallel`, and runs
//! each through the same run and teardown as `orch task`. Cleanup runs at
//! start, on a schedule, and after submissions. Every state change,
//! progress report and cleanup is a [`DaemonEvent`].

mod api;
mod core;
mod metrics;
mod node;
mod queue;
mod schedule;
mod spec;
mod stuck;

pub use metrics::{Metrics, classic as classic_metrics};
pub use orch_protocol::DaemonEvent;
/// Content types of the metrics texts.
pub mod metrics_format {
    pub use super::metrics::{CLASSIC, OPENMETRICS};
}
pub use core::{Supervisor, SupervisorConfig};
pub use orch_protocol::Progress;
pub use spec::{DurationText, SubmitSpec, request_of};
