//! What a run takes and gives: plain data.

use orch_workspace::Repo;
use uuid::Uuid;

use crate::config::Project;
use crate::fate::WorkspaceFate;

/// A task to run: a project and a description.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// The project, with its resolved settings.
    pub project: Project,
    /// The task description; replaces `{desc}` in the command.
    pub desc: String,
    /// A name for the task (`--name`), unique among live tasks.
    pub name: Option<String>,
    /// This process's standard input goes to the task (`orch task -i`).
    pub stdin: bool,
    /// The task gets a terminal (`orch task -t`); with `stdin` from a
    /// terminal, its size follows that one's.
    pub tty: bool,
    /// Where the workspace branch starts (default: the project's HEAD).
    pub git_ref: Option<String>,
    /// Keep (`Some(true)`) or remove (`Some(false)`) the workspace whatever
    /// the outcome; `None` applies the policy.
    pub keep_workspace: Option<bool>,
    /// Runs under a background supervisor rather than a terminal.
    pub detached: bool,
    /// A predetermined id (a supervisor running what another process
    /// announced); `None` for a fresh one.
    pub task_id: Option<Uuid>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit code, or the command could not be invoked.
    Failed,
    /// Its timeout passed and it was stopped.
    TimedOut,
    /// Shutdown or a cancel request stopped it.
    Cancelled,
}

/// The result of a run, once its container is gone.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The task id.
    pub task_id: Uuid,
    /// The container's name.
    pub container: String,
    /// How it ended.
    pub status: Status,
    /// The task's exit code, when it ended by itself (126/127 when the command
    /// could not be invoked).
    pub exit_code: Option<i64>,
    /// Why it was stopped, when it was: `"SIGINT"`, `"orch cancel"`, ...
    pub stopped_by: Option<String>,
    /// What became of its workspace, if it had one.
    pub workspace: Option<WorkspaceFate>,
}

/// The checked inputs of a run, ready to create things from.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    pub(crate) request: TaskRequest,
    pub(crate) task_id: Uuid,
    pub(crate) repo: Option<(Repo, String)>,
    /// Its record exists already, queued and claimed by this process: the
    /// run fills it in rather than writing it.
    pub(crate) claimed: bool,
    /// The attempt the run holds (a claim's; the first for `orch task`):
    /// every write about the task carries it.
    pub(crate) attempt: i64,
}

impl PreparedTask {
    /// The task and the attempt this run holds.
    pub(crate) fn holds(&self) -> orch_registry::Attempt {
        orch_registry::Attempt {
            id: self.task_id,
            number: self.attempt,
        }
    }
}

impl PreparedTask {
    /// The id the task will have.
    pub fn task_id(&self) -> Uuid {
        self.task_id
    }

    /// The request it was prepared from.
    pub fn request(&self) -> &TaskRequest {
        &self.request
    }
}
