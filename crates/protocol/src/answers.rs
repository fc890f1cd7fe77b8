//! What the daemon answers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use orch_registry::State;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `201` to `POST /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The new task.
    pub id: Uuid,
    /// `queued`.
    pub state: State,
    /// What the submitter should know: it is queued, but (for now) cannot
    /// run, e.g. no live node has the labels its constraints ask for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A task's last progress (`GET /v1/tasks/{id}/progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 0 to 100.
    pub percent: Option<i64>,
    /// Its message.
    pub message: Option<String>,
    /// When it was reported (Unix milliseconds).
    pub updated_at: Option<i64>,
}

/// Counts of what a cleanup did (or would do), for one strategy or all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Tasks touched.
    pub tasks: u64,
    /// Live records ended as lost.
    pub marked_lost: u64,
    /// Containers removed.
    pub containers: u64,
    /// Workspaces removed.
    pub workspaces: u64,
    /// Records deleted.
    pub records: u64,
    /// Logs deleted.
    pub logs: u64,
    /// Bytes freed (workspaces and logs).
    pub bytes: u64,
}

impl Counts {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &Counts) {
        self.tasks += other.tasks;
        self.marked_lost += other.marked_lost;
        self.containers += other.containers;
        self.workspaces += other.workspaces;
        self.records += other.records;
        self.logs += other.logs;
        self.bytes += other.bytes;
    }
}

/// A cleanup's report: what `orch cleanup --json` prints and `POST
/// /v1/cleanup` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupAnswer {
    /// Planned only.
    pub dry_run: bool,
    /// One line, as `orch cleanup` ends with.
    pub summary: String,
    /// Counts per strategy.
    pub strategies: BTreeMap<String, Counts>,
    /// Counts in all.
    pub total: Counts,
    /// Every task planned, and what was done to it.
    pub items: Vec<CleanupItem>,
    /// Repositories whose branches or worktree entries were seen to.
    pub repos: Vec<RepoCleanup>,
    /// Mirrors of projects from a git server no task used for
    /// `ORCH_MIRROR_MAX_AGE`, removed (or, in a dry run, to be).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorCleanup>,
}

/// A mirror a cleanup removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorCleanup {
    /// Its repository URL.
    pub url: String,
    /// Its directory.
    pub path: std::path::PathBuf,
    /// What it took on disk.
    pub bytes: u64,
}

/// One task a cleanup planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupItem {
    /// The strategy that planned it.
    pub strategy: String,
    /// The task, if it has a record.
    pub task_id: Option<Uuid>,
    /// Why.
    pub reason: String,
    /// How its record ends (`lost`, `exited`, ...), if it does.
    pub mark: Option<String>,
    /// Containers it removes.
    pub containers: Vec<String>,
    /// Its workspace, if it has one.
    pub workspace: Option<ItemWorkspace>,
    /// Its record is deleted.
    pub record: bool,
    /// Its log, if deleted.
    pub log: Option<ItemLog>,
    /// Bytes it frees.
    pub bytes: u64,
    /// What was done, in a few words per step.
    pub done: Vec<String>,
    /// What failed.
    pub errors: Vec<String>,
}

/// A workspace a cleanup planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemWorkspace {
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Kept rather than removed.
    pub kept: bool,
}

/// A log a cleanup deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemLog {
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// What a cleanup did in one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoCleanup {
    /// The repository.
    pub repo: PathBuf,
    /// Worktree entries pruned.
    pub pruned: usize,
    /// Task branches that lose nothing, deleted (or to delete).
    pub branches: Vec<BranchCleanup>,
    /// Task branches whose records are gone and that hold commits of their
    /// own: kept, and named so that a person can tell what each was.
    #[serde(default)]
    pub kept: Vec<BranchCleanup>,
    /// What failed.
    pub errors: Vec<String>,
}

/// A task branch `cleanup --branches` deletes or keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchCleanup {
    /// The branch, `orch/<id>`.
    pub name: String,
    /// Its tip when found.
    pub tip: String,
    /// Its commits are in the branch checked out in the repository.
    pub merged: bool,
    /// Commits of its own that the checked-out branch lacks.
    #[serde(default)]
    pub commits: u64,
    /// Its task's description, as the registry remembers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One of the daemon's last cleanups (`GET /v1/cleanups`): its report
/// without its items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentCleanup {
    /// Planned only.
    pub dry_run: bool,
    /// One line.
    pub summary: String,
    /// Counts per strategy.
    pub strategies: BTreeMap<String, Counts>,
    /// Counts in all.
    pub total: Counts,
    /// What started it: `start`, `schedule`, `submission`, `request`.
    pub trigger: String,
    /// Its strategy.
    pub strategy: String,
    /// When (Unix milliseconds).
    pub at: i64,
}

/// Disk use of workspaces (`GET /v1/du`, `orch du --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuAnswer {
    /// Each workspace.
    pub workspaces: Vec<DuWorkspace>,
    /// Per project.
    pub projects: Vec<DuProject>,
    /// In all (workspaces).
    pub total: DuTotal,
    /// Mirrors of projects from a git server, each with its size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorCleanup>,
}

/// One workspace's disk use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuWorkspace {
    /// Its project.
    pub project: String,
    /// Its task.
    pub task_id: String,
    /// Its path.
    pub path: PathBuf,
    /// Bytes allocated.
    pub bytes: u64,
    /// Entries that are not directories.
    pub files: u64,
}

/// One project's disk use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuProject {
    /// The project.
    pub project: String,
    /// How many workspaces.
    pub workspaces: usize,
    /// Bytes allocated.
    pub bytes: u64,
    /// Entries that are not directories.
    pub files: u64,
}

/// Disk use in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuTotal {
    /// How many workspaces.
    pub workspaces: usize,
    /// Bytes allocated.
    pub bytes: u64,
    /// Entries that are not directories.
    pub files: u64,
}

/// A stuck task now (`GET /v1/alerts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `task.stuck`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The task.
    pub id: Uuid,
    /// Its project.
    pub project: String,
    /// Seconds it has been silent.
    pub silent_secs: u64,
}

/// Every error the API answers: `{"error": "<one line>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, on one line.
    pub error: String,
}
