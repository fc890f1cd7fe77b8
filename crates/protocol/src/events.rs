//! What a daemon tells whoever listens (`GET /v1/events`, webhooks).

use orch_registry::{State, TaskRecord};
use serde::{Deserialize, Serialize};

use crate::CleanupAnswer;
use uuid::Uuid;

/// One thing that happened under a daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum DaemonEvent {
    /// A task changed state.
    #[serde(rename = "task.state")]
    TaskState {
        /// The task.
        id: Uuid,
        /// Its project.
        project: String,
        /// Its new state.
        state: State,
    },
    /// A task reported progress.
    #[serde(rename = "task.progress")]
    TaskProgress {
        /// The task.
        id: Uuid,
        /// 0 to 100.
        percent: u8,
        /// Its message.
        message: String,
    },
    /// A task ended; its record as it ended.
    #[serde(rename = "task.finished")]
    TaskFinished {
        /// The record.
        task: Box<TaskRecord>,
    },
    /// A task has shown no progress and no output for too long.
    #[serde(rename = "task.stuck")]
    TaskStuck {
        /// The task.
        id: Uuid,
        /// Its project.
        project: String,
        /// Seconds since it last showed a sign of life.
        silent_secs: u64,
    },
    /// A stuck task showed a sign of life again.
    #[serde(rename = "task.unstuck")]
    TaskUnstuck {
        /// The task.
        id: Uuid,
    },
    /// A cleanup ran; its report as `orch cleanup --json` prints it.
    #[serde(rename = "cleanup.done")]
    CleanupDone {
        /// What started it: `start`, `schedule`, `submission`, `request`.
        trigger: String,
        /// The report.
        report: CleanupAnswer,
    },
}

impl DaemonEvent {
    /// Its type, as in its JSON and in webhook configurations.
    pub fn kind(&self) -> &'static str {
        match self {
            DaemonEvent::TaskState { .. } => "task.state",
            DaemonEvent::TaskProgress { .. } => "task.progress",
            DaemonEvent::TaskFinished { .. } => "task.finished",
            DaemonEvent::TaskStuck { .. } => "task.stuck",
            DaemonEvent::TaskUnstuck { .. } => "task.unstuck",
            DaemonEvent::CleanupDone { .. } => "cleanup.done",
        }
    }
}
