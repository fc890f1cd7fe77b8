//! The plan of a task's teardown, and the one policy that builds it.

use std::path::PathBuf;
use std::time::Duration;

use orch_registry::{Attempt, State, TaskRecord};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::runtime::{ContainerState, Gone};

/// The keep/remove rule of a task's workspace, as the task asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspacePolicy {
    /// `--keep-workspace` (`Some(true)`) or `--rm-workspace` (`Some(false)`):
    /// wins whatever happened.
    pub keep_workspace: Option<bool>,
    /// Keep the workspace of a failed, timed-out or lost task.
    pub keep_failed_workspace: bool,
}

impl WorkspacePolicy {
    /// Whether a task that ended in `state` keeps its workspace: succeeded
    /// and cancelled tasks lose it, the others keep it for debugging if
    /// `keep_failed_workspace`; the task's own choice wins.
    pub fn keeps(&self, state: State) -> bool {
        self.keep_workspace.unwrap_or(match state {
            State::Succeeded | State::Cancelled => false,
            State::Failed | State::TimedOut | State::Lost => self.keep_failed_workspace,
            // Not ended: nothing may go.
            State::Queued | State::Creating | State::Running => true,
        })
    }
}

/// Where a task's workspace came from, to bring its work home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoFacts {
    /// The top of the user's working tree.
    pub top: PathBuf,
    /// The user's common git directory.
    pub git_dir: PathBuf,
    /// The commit the task's branch started from.
    pub base: String,
    /// For a project from a git server: the URL the branch is pushed to
    /// (`top` is then the node's mirror of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The task's description, for the message of the commit that saves
    /// its work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The attempt whose work this is, when the task was taken over by
    /// another (its node was fenced and the task run again): that work is
    /// saved to a branch of its own, `orch/<id>-attempt-<n>`, and never to
    /// the task's branch, its server or its record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over: Option<i64>,
}

/// A task's workspace as its record describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceFacts {
    /// Its directory.
    pub path: PathBuf,
    /// Its repository, if known.
    pub repo: Option<RepoFacts>,
}

/// What is known about a task when it is torn down: its record, or, when
/// the registry cannot be read, what its owner registered with the
/// watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFacts {
    /// The task.
    pub id: Uuid,
    /// The attempt its owner holds (every write about it carries it).
    #[serde(default)]
    pub attempt: i64,
    /// Its project.
    pub project: String,
    /// Its recorded state; `None` if there is no record.
    pub state: Option<State>,
    /// Its container was started: a workspace in which no task ever ran
    /// holds nothing and is removed whatever the policy.
    pub started: bool,
    /// Its image (also used to remove files a root task left).
    pub image: String,
    /// SIGTERM-to-SIGKILL grace.
    pub stop_grace: Duration,
    /// Its workspace rule.
    pub policy: WorkspacePolicy,
    /// Its workspace, if it has one.
    pub workspace: Option<WorkspaceFacts>,
    /// Its workspace was already kept or removed.
    pub workspace_settled: bool,
    /// It was claimed from the queue: if its owner dies before its
    /// container starts, it goes back there (no task ran; the next claim
    /// is its next attempt).
    #[serde(default)]
    pub requeue: bool,
}

impl From<&TaskRecord> for TaskFacts {
    fn from(row: &TaskRecord) -> TaskFacts {
        let repo = match (
            &row.workspace.repo,
            &row.workspace.git_dir,
            &row.workspace.base,
        ) {
            (Some(top), Some(git_dir), Some(base)) => Some(RepoFacts {
                top: top.into(),
                git_dir: git_dir.into(),
                base: base.clone(),
                remote: row.workspace.remote.clone(),
                description: Some(row.description.clone()),
                taken_over: None,
            }),
            _ => None,
        };
        TaskFacts {
            id: row.id,
            attempt: row.owner.attempt,
            project: row.project.clone(),
            state: Some(row.state),
            started: row.started_at.is_some(),
            image: row.image.clone(),
            stop_grace: Duration::from_millis(u64::try_from(row.stop_grace_ms).unwrap_or(0)),
            policy: WorkspacePolicy {
                keep_workspace: row.workspace.keep_workspace,
                keep_failed_workspace: row.workspace.keep_failed_workspace,
            },
            workspace: row.workspace.path.as_ref().map(|path| WorkspaceFacts {
                path: path.into(),
                repo,
            }),
            workspace_settled: row.workspace_settled(),
            requeue: row.queue.spec.is_some(),
        }
    }
}

/// How a task ended, as whoever ends its record knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// It exited with this code.
    Exited(i64),
    /// Its timeout passed and it was stopped (killed, if it outlived its
    /// grace: then that grace).
    TimedOut(Duration, Option<Duration>),
    /// It was stopped on request; by what (`SIGINT`, `orch cancel`, ...).
    Cancelled(String),
    /// orch failed around it after it started.
    Failed(String),
    /// It never started: orch or the engine refused it first. Everything
    /// made for it is unwound.
    NotStarted(String),
    /// Its owner or container vanished.
    Lost(String),
}

impl Ending {
    /// The terminal state this ending records.
    pub fn state(&self) -> State {
        match self {
            Ending::Exited(0) => State::Succeeded,
            Ending::Exited(_) | Ending::Failed(_) | Ending::NotStarted(_) => State::Failed,
            Ending::TimedOut(..) => State::TimedOut,
            Ending::Cancelled(_) => State::Cancelled,
            Ending::Lost(_) => State::Lost,
        }
    }

    /// The exit code recorded, if the task exited.
    pub fn exit_code(&self) -> Option<i64> {
        match self {
            Ending::Exited(code) => Some(*code),
            _ => None,
        }
    }

    /// The reason recorded, in words.
    pub fn reason(&self) -> String {
        match self {
            Ending::Exited(code) => format!("exited with code {code}"),
            Ending::TimedOut(after, killed) => format!(
                "timed out after {}{}",
                humantime::format_duration(*after),
                killed.map(killed_after).unwrap_or_default()
            ),
            Ending::Cancelled(by) => format!("cancelled ({by})"),
            Ending::Failed(error) => format!("orch failed: {error}"),
            Ending::NotStarted(error) => format!("not started: {error}"),
            Ending::Lost(why) => why.clone(),
        }
    }
}

/// What a reason adds when the task did not stop on SIGTERM within its
/// grace and was killed.
pub(crate) fn killed_after(grace: Duration) -> String {
    format!(
        "; killed: still running {} after SIGTERM",
        humantime::format_duration(grace)
    )
}

/// Why a task is being torn down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Its own run ended it this way (and stopped its container).
    Ended(Ending),
    /// `orch cancel` does the work of an owner that is gone: running
    /// containers get their grace, the record ends cancelled.
    Cancel(String),
    /// Its owner is gone (the watchdog, reconciliation, the stale
    /// strategy): live records end as lost, or with the exit code a
    /// container that exited meanwhile left.
    OwnerGone(String),
    /// A retention strategy removes it whole: containers, workspace (work
    /// saved first), record and log.
    Retention,
    /// `cleanup --all`: like retention, but unsaved work is discarded if it
    /// cannot be saved.
    Everything,
}

/// How a plan ends the task's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordEnd {
    /// As it is (already ended, or no record).
    Leave,
    /// With this ending.
    Finish(Ending),
    /// With the exit code its exited container holds; this reason if none.
    FromExit(String),
    /// Back in the queue, for its next attempt: claimed, never started,
    /// and its owner gone.
    Requeue(String),
    /// Back in the queue if it has retries left (`retries = N`), else
    /// lost, for this reason: it ran, and its owner (or the owner's hold
    /// on the registry) was lost under it.
    Retry(String),
}

/// A container to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStep {
    /// Its name.
    pub name: String,
    /// Stop it gracefully first, with this grace: it still runs a task.
    pub stop_grace: Option<Duration>,
}

/// A workspace on disk to settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceTarget {
    /// Its project.
    pub project: String,
    /// Its directory name (the task id).
    pub dir_name: String,
    /// Its path.
    pub path: PathBuf,
    /// Bytes it holds, when measured for a plan.
    pub bytes: u64,
    /// The image to remove root-owned files with, if known.
    pub image: Option<String>,
    /// Where its work goes, if known.
    pub repo: Option<RepoFacts>,
}

impl WorkspaceTarget {
    /// The workspace in a task directory found on disk (not measured).
    pub fn of_dir(
        dir: &orch_workspace::TaskDir,
        image: Option<String>,
        repo: Option<RepoFacts>,
    ) -> WorkspaceTarget {
        WorkspaceTarget {
            project: dir.project.clone(),
            dir_name: dir.task_id.clone(),
            path: dir.path.clone(),
            bytes: 0,
            image,
            repo,
        }
    }

    /// With its size filled in, for plans that report what they free.
    /// Walks the tree: call it on the blocking pool.
    pub fn measured(mut self) -> WorkspaceTarget {
        self.bytes = orch_workspace::workspace_size(&self.path).map_or(0, |s| s.bytes);
        self
    }
}

/// What becomes of a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// By the task's policy and how it ended (decided once the record's end
    /// is known).
    ByPolicy,
    /// Removed, its work saved to its branch first; kept if that fails.
    Remove,
    /// Removed, its work saved if possible and discarded if not.
    Discard,
}

impl Fate {
    /// What becomes of work that cannot be saved: the task's own end keeps
    /// its workspace for it; retention keeps it only if saving failed (not
    /// for files too large to save, which the task's end already kept it
    /// for once); `--all` removes it anyway.
    pub fn unsaved(self) -> orch_workspace::Unsaved {
        match self {
            Fate::ByPolicy => orch_workspace::Unsaved::Keep,
            Fate::Remove => orch_workspace::Unsaved::KeepOnFailure,
            Fate::Discard => orch_workspace::Unsaved::Discard,
        }
    }
}

/// The workspace part of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceStep {
    /// The workspace.
    pub target: WorkspaceTarget,
    /// Its fate.
    pub fate: Fate,
    /// The task's rule, for [`Fate::ByPolicy`].
    pub policy: WorkspacePolicy,
    /// A task ran in it (else it is unwound: removed, its untouched branch
    /// deleted).
    pub started: bool,
}

/// Everything that happens to one task (or one ownerless object) when it
/// is torn down, in order: its record ends, its containers go, its
/// workspace is kept or removed (work saved first), then its record and
/// log go if the plan says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// The task, if there is a record (or a label) for it.
    pub task: Option<Uuid>,
    /// The attempt the plan's writes about the task are made under.
    pub attempt: i64,
    /// How its record ends.
    pub record: RecordEnd,
    /// Its containers.
    pub containers: Vec<ContainerStep>,
    /// Its workspace.
    pub workspace: Option<WorkspaceStep>,
    /// Delete its record at the end.
    pub delete_record: bool,
    /// Its log, to delete at the end, with its size.
    pub log: Option<(PathBuf, u64)>,
    /// Its record names a workspace not yet settled that is gone from the
    /// disk (its owner died between removing it and saying so): the
    /// record is told it was removed.
    pub gone_workspace: bool,
}

impl Teardown {
    /// A plan that removes only what was found: containers and a
    /// directory nobody's record owns.
    pub fn ownerless(
        task: Option<Uuid>,
        containers: Vec<String>,
        workspace: Option<WorkspaceTarget>,
    ) -> Teardown {
        Teardown {
            task,
            attempt: 0,
            record: RecordEnd::Leave,
            containers: containers
                .into_iter()
                .map(|name| ContainerStep {
                    name,
                    stop_grace: None,
                })
                .collect(),
            workspace: workspace.map(|target| WorkspaceStep {
                target,
                fate: Fate::Discard,
                policy: WorkspacePolicy {
                    keep_workspace: None,
                    keep_failed_workspace: false,
                },
                started: true,
            }),
            delete_record: false,
            log: None,
            gone_workspace: false,
        }
    }

    /// The workspace it removes, if it is sure to (not one left to the
    /// policy that keeps it).
    pub fn removed_workspace(&self) -> Option<&WorkspaceTarget> {
        let step = self.workspace.as_ref()?;
        match step.fate {
            Fate::Remove | Fate::Discard => Some(&step.target),
            Fate::ByPolicy => (!self.keeps_workspace()).then_some(&step.target),
        }
    }

    /// The workspace whose work may be saved while the containers are still
    /// being removed: one that will be removed, of a task whose container
    /// exited on its own. Nothing of the task runs any more (its init is
    /// gone, and every process of its container with it), and saving only
    /// reads the workspace; the directory itself still goes only after the
    /// containers.
    pub fn saves_ahead(&self) -> Option<&WorkspaceStep> {
        let step = self.workspace.as_ref()?;
        let exited = matches!(self.record, RecordEnd::Finish(Ending::Exited(_)));
        let overlaps =
            !self.containers.is_empty() && self.containers.iter().all(|c| c.stop_grace.is_none());
        (exited
            && overlaps
            && step.started
            && step.target.repo.is_some()
            && self.removed_workspace().is_some())
        .then_some(step)
    }

    /// True if the workspace is expected to be kept: by policy, given the
    /// ending the plan records (or the record's present state).
    pub fn keeps_workspace(&self) -> bool {
        let Some(step) = &self.workspace else {
            return false;
        };
        if step.fate != Fate::ByPolicy || !step.started {
            return false;
        }
        match &self.record {
            RecordEnd::Finish(ending) => step.policy.keeps(ending.state()),
            // Decided by the exit code; a failure keeps it.
            RecordEnd::FromExit(_) => step.policy.keeps(State::Failed),
            RecordEnd::Leave => step.policy.keeps(State::Failed),
            // Nothing ran in it.
            RecordEnd::Requeue(_) => false,
            // Its work is saved; a retry starts again from the base.
            RecordEnd::Retry(_) => false,
        }
    }

    /// The task and attempt the plan writes about, if it has a task.
    pub fn writes_as(&self) -> Option<Attempt> {
        self.task.map(|id| Attempt {
            id,
            number: self.attempt,
        })
    }

    /// Bytes this plan frees: the workspace it removes and the log.
    pub fn bytes(&self) -> u64 {
        self.removed_workspace().map_or(0, |w| w.bytes) + self.log.as_ref().map_or(0, |l| l.1)
    }
}

/// What was found of a task when its plan is made.
#[derive(Debug, Clone, Default)]
pub(crate) struct Found {
    /// Its containers and their states.
    pub(crate) containers: Vec<(String, ContainerState)>,
    /// Its workspace directory, if it exists.
    pub(crate) workspace: Option<WorkspaceTarget>,
    /// Its log and its size.
    pub(crate) log: Option<(PathBuf, u64)>,
}

/// The one policy: what tearing down a task means, given what is known
/// about it, why it goes, and what was found of it.
pub(crate) fn plan(facts: &TaskFacts, cause: Cause, found: Found) -> Teardown {
    let live = facts.state.is_some_and(State::is_live);
    let record = match &cause {
        Cause::Ended(Ending::Lost(reason)) if live && facts.requeue => {
            RecordEnd::Retry(reason.clone())
        }
        Cause::Ended(ending) if live || facts.state.is_none() => RecordEnd::Finish(ending.clone()),
        Cause::Cancel(by) if live => RecordEnd::Finish(Ending::Cancelled(by.clone())),
        Cause::OwnerGone(reason) if live => {
            let exited = found
                .containers
                .iter()
                .any(|(_, state)| *state == ContainerState::Exited);
            let ran = found.containers.iter().any(|(_, state)| {
                matches!(state, ContainerState::Running | ContainerState::Exited)
            });
            if exited && facts.state == Some(State::Running) {
                RecordEnd::FromExit(reason.clone())
            } else if facts.requeue && facts.state == Some(State::Creating) && !ran {
                RecordEnd::Requeue(format!("{reason}; queued again before it started"))
            } else if facts.requeue {
                RecordEnd::Retry(reason.clone())
            } else {
                RecordEnd::Finish(Ending::Lost(reason.clone()))
            }
        }
        Cause::OwnerGone(reason) if facts.state.is_none() => {
            RecordEnd::Finish(Ending::Lost(reason.clone()))
        }
        // Retention never ends a live record (it never selects one), and
        // `--all` has live tasks cancelled by their owners first.
        _ => RecordEnd::Leave,
    };
    // A run has stopped its own container already (or is forcing): removal
    // kills whatever still runs. A container found running by anyone else
    // still runs a task, and gets its grace.
    let graceful = matches!(cause, Cause::OwnerGone(_) | Cause::Cancel(_));
    let containers = found
        .containers
        .iter()
        .map(|(name, state)| ContainerStep {
            name: name.clone(),
            stop_grace: (graceful && *state == ContainerState::Running).then_some(facts.stop_grace),
        })
        .collect();
    let started = facts.started
        || found
            .containers
            .iter()
            .any(|(_, state)| matches!(state, ContainerState::Running | ContainerState::Exited));
    let fate = match cause {
        Cause::Retention => Fate::Remove,
        Cause::Everything => Fate::Discard,
        Cause::Ended(_) | Cause::Cancel(_) | Cause::OwnerGone(_) => Fate::ByPolicy,
    };
    let workspace = if facts.workspace_settled && fate == Fate::ByPolicy {
        None
    } else {
        found.workspace.map(|target| WorkspaceStep {
            target,
            fate,
            policy: facts.policy,
            started,
        })
    };
    let whole = matches!(cause, Cause::Retention | Cause::Everything);
    let gone_workspace =
        !whole && !facts.workspace_settled && facts.workspace.is_some() && workspace.is_none();
    Teardown {
        task: Some(facts.id),
        attempt: facts.attempt,
        record,
        containers,
        workspace,
        delete_record: whole,
        log: if whole { found.log } else { None },
        gone_workspace,
    }
}

/// One step of a teardown, reported once it is done.
#[derive(Debug, Clone)]
pub enum Step {
    /// The record ended in this state.
    RecordEnded {
        /// The state it ended in (or was found in, if it had ended).
        state: State,
        /// Why.
        reason: String,
    },
    /// A container is gone.
    ContainerRemoved {
        /// Its name.
        name: String,
        /// Whether it was there to remove.
        gone: Gone,
    },
    /// The workspace was kept or removed.
    Workspace(crate::fate::WorkspaceFate),
    /// The record was deleted.
    RecordDeleted,
    /// The log was deleted.
    LogDeleted {
        /// Its size.
        bytes: u64,
    },
}

/// What carrying out a plan did.
#[derive(Debug, Default, Clone)]
pub(crate) struct Executed {
    /// The steps done, in order.
    pub(crate) steps: Vec<Step>,
    /// What failed, each with its cause, on one line.
    pub(crate) errors: Vec<String>,
    /// The state the record ended in (or had), if known.
    pub(crate) state: Option<State>,
}
