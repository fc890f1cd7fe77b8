//! Reconciliation and retention: finding what orch left behind and
//! planning its teardown.
//!
//! One [`snapshot`] of the registry, the runtime's containers of this
//! instance and the task directories on disk; the [`orphans`] strategy
//! reconciles them (SPEC 6), the [`retention`] strategies pick what is old
//! enough to go; each selected task becomes an [`Item`] whose plan the one
//! teardown executor carries out ([`cleanup`]).

mod cleanup;
mod orphans;
mod report;
mod retention;
mod snapshot;

pub(crate) use cleanup::{cleanup, count_reaped, reaped, reconcile, remove};
pub use report::{
    CleanupOptions, CleanupReport, Counts, Item, RepoItem, Strategy, Thresholds, describe,
    human_bytes,
};
pub(crate) use snapshot::found_of;
