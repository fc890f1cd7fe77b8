//! orch's HTTP API (SPEC 9) as types.
//!
//! Every request the daemon takes and every answer it gives is one of
//! these, serialised with serde: the server answers with them, the client
//! reads them back, the dashboard and `--json` outputs are their JSON. No
//! `serde_json::Value` crosses this boundary.
//!
//! | method and path | request | answer |
//! | --- | --- | --- |
//! | `POST /v1/tasks` | [`SubmitSpec`] | [`Submitted`] (201) |
//! | `GET /v1/tasks` | [`TaskQuery`] | `Vec<`[`TaskRecord`]`>` |
//! | `GET /v1/tasks/{id}` | | [`TaskRecord`] |
//! | `GET /v1/tasks/{id}/progress` | | [`Progress`] |
//! | `GET /v1/tasks/{id}/logs` | `?follow=1` | text |
//! | `DELETE /v1/tasks/{id}` | `?wait=1` | [`TaskRecord`] (202) |
//! | `POST /v1/cleanup` | [`CleanupRequest`] | [`CleanupAnswer`] |
//! | `GET /v1/du` | | [`DuAnswer`] |
//! | `GET /v1/events` | | [`DaemonEvent`]s, as server-sent events |
//! | `GET /v1/alerts` | | `Vec<`[`Alert`]`>` |
//! | `GET /v1/cleanups` | | `Vec<`[`RecentCleanup`]`>` |
//! | any error | | [`ErrorBody`] |

#![warn(missing_docs)]

mod answers;
mod events;
mod requests;

pub use answers::{
    Alert, BranchCleanup, CleanupAnswer, CleanupItem, Counts, DuAnswer, DuProject, DuTotal,
    DuWorkspace, ErrorBody, ItemLog, ItemWorkspace, MirrorCleanup, Progress, RecentCleanup,
    RepoCleanup, Submitted,
};
pub use events::DaemonEvent;
pub use orch_registry::{State, TaskRecord};
pub use requests::{CleanupRequest, DurationText, LogFrom, SubmitSpec, TaskQuery};
