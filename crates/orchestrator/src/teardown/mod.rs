//! Tearing a task down: one plan, one policy that builds it, one executor
//! that carries it out.
//!
//! Every path by which a task's resources go (the run's own end, `orch
//! cancel` with its owner alive or dead, the watchdog after a kill,
//! reconciliation, each retention strategy, `cleanup --all`) describes what
//! it knows about the task ([`TaskFacts`]) and why it is tearing it down
//! ([`Cause`]); [`plan`] turns that into a [`Teardown`], and [`execute`]
//! carries it out, idempotently, reporting each [`Step`] once it is done.

mod execute;
mod plan;

pub(crate) use execute::{ExecOptions, execute};
pub use plan::{
    Cause, ContainerStep, Ending, Fate, RecordEnd, RepoFacts, Step, TaskFacts, Teardown,
    WorkspaceFacts, WorkspacePolicy, WorkspaceStep, WorkspaceTarget,
};
pub(crate) use plan::{Executed, Found, killed_after, plan};
