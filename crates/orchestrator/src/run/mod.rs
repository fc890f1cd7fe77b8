//! Running one task in a throwaway container, from its request to its
//! teardown: the one task runner `orch task` and the daemon both drive.
//!
//! The shape of a run, one file per phase:
//!
//! - [`drive`](drive::drive): the one entry, from a request or a record a
//!   daemon claimed, to the task's outcome;
//! - `prepare`: check the inputs (image reference and presence, network,
//!   repository and ref); bad input fails here, leaving no trace;
//! - `create`: write the record, take the workspace lock and create the
//!   workspace, arm the guard, open the task's way out if it has one,
//!   create and attach;
//! - `supervise`: start, then wait for whichever comes first of the
//!   container's exit, the task's deadline and the shutdown trigger;
//! - `finish`: drain the output into the log and hand the one teardown
//!   policy its ending; the one executor ends the record, removes the
//!   container and keeps or removes the workspace.
//!
//! Only if that is never reached (the future was dropped, or a panic
//! unwound through it) does the guard act instead, and the record is left
//! live for the watchdog or reconciliation to end.

mod create;
mod drive;
mod finish;
mod prepare;
mod request;
mod supervise;
mod task;

pub(crate) use drive::{Start, drive};
pub(crate) use prepare::{check, prepare};
pub use request::{Outcome, PreparedTask, Status, TaskRequest};
pub(crate) use task::interrupted;
