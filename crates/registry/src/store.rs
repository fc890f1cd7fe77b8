//! The seam between orch and whatever holds its records.
//!
//! Every operation the orchestrator, the daemon and cleanup use of a
//! registry, and nothing else: record, claim, lease, finish, list,
//! retention queries, notes, counters. The embedded SQLite [`Registry`]
//! implements it; another backend (a database shared by several hosts)
//! implements exactly this and runs the very same tests
//! (`crate::conformance`). Calls are synchronous: callers on an async
//! runtime run them on its blocking pool.
//!
//! [`Registry`]: crate::Registry

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

use crate::{
    Attempt, Claimant, Error, Finish, KnownBranch, Listing, Node, NodeRecord, Renewal, Rescued,
    State, TaskBrief, TaskRecord, WorkspaceState,
};

/// What another process told the registry's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A task was queued (or queued again).
    Queued,
    /// A cancellation was requested.
    Cancel,
}

/// The most of a task's output a cluster keeps in its registry: the end of
/// a longer one, with a line saying so.
pub const KEPT_LOG: usize = 8 << 20;

/// Called on a listener's thread for each wake-up.
pub type OnWake = Box<dyn Fn(Wake) + Send + Sync>;

/// A registry of tasks, as orch uses one.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records a new task. Record first: this happens before any of its
    /// resources exist.
    fn insert(&self, task: &TaskRecord) -> Result<(), Error>;

    /// `creating -> running`: the container started; its lease runs for
    /// `lease` from now (by the registry's clock).
    fn mark_running(&self, task: &Attempt, at: i64, lease: Duration) -> Result<(), Error>;

    /// Moves a live task to a terminal state.
    fn finish(&self, task: &Attempt, finish: &Finish) -> Result<State, Error>;

    /// Whether `orch cancel` asked for this task to stop.
    fn cancel_requested(&self, id: &Uuid) -> Result<bool, Error>;

    /// Asks the owner of a live task to stop it. Returns false if the task
    /// is already terminal.
    fn request_cancel(&self, id: &Uuid) -> Result<bool, Error>;

    /// Records that the task is frozen (`docker pause`, Ctrl+Z) or thawed.
    fn set_paused(&self, task: &Attempt, paused: bool) -> Result<(), Error>;

    /// Stores a progress report.
    fn set_progress(
        &self,
        task: &Attempt,
        percent: u8,
        message: &str,
        at: i64,
    ) -> Result<(), Error>;

    /// Records what became of a task's workspace.
    fn set_workspace_state(&self, task: &Attempt, state: WorkspaceState) -> Result<(), Error>;

    /// Adds a note to a task's record (a line of its own).
    fn add_note(&self, task: &Attempt, note: &str) -> Result<(), Error>;

    /// Records the name the task's container got (when the planned one was
    /// taken), while it is `creating`.
    fn set_container(&self, task: &Attempt, name: &str) -> Result<(), Error>;

    /// Deletes a task's record.
    fn delete(&self, id: &Uuid) -> Result<bool, Error>;

    /// One task by full id.
    fn get(&self, id: &Uuid) -> Result<Option<TaskRecord>, Error>;

    /// Tasks, oldest first.
    fn list(&self, listing: Listing) -> Result<Vec<TaskRecord>, Error>;

    /// The records a retention cleanup may select, oldest first: the live
    /// ones, those that finished before `finished_before` and those created
    /// before `created_before` (Unix milliseconds). A cleanup reads these,
    /// never the whole registry: however many finished tasks it holds, a
    /// cleanup's memory follows what it may remove.
    fn list_retention(
        &self,
        finished_before: i64,
        created_before: i64,
    ) -> Result<Vec<TaskRecord>, Error>;

    /// The tasks of one session (one orch process), oldest first.
    fn list_session(&self, session: &str) -> Result<Vec<TaskRecord>, Error>;

    /// Calls `each` with the brief of every task listed, oldest first,
    /// without collecting them: `orch ps` stays quick and small at any size.
    fn for_each_brief(
        &self,
        listing: Listing,
        each: &mut dyn FnMut(TaskBrief),
    ) -> Result<(), Error>;

    /// Every repository a task ever had a workspace in.
    fn repos(&self) -> Result<Vec<PathBuf>, Error>;

    /// Every branch orch made in `repo` that it still knows of, by branch
    /// name; not those of tasks still using theirs (a live task, or one
    /// whose workspace is kept or not yet settled: its work may still come
    /// home to it).
    fn branches(&self, repo: &Path) -> Result<BTreeMap<String, KnownBranch>, Error>;

    /// Forgets a branch that is gone from `repo`.
    fn forget_branch(&self, repo: &Path, name: &str) -> Result<(), Error>;

    /// Records whether a task's branch reached its project's URL.
    fn set_delivered(&self, id: &Uuid, delivered: bool) -> Result<(), Error>;

    /// The URLs of projects from a git server that tasks still need: live
    /// ones, and those whose work was not delivered yet.
    fn remotes_in_use(&self) -> Result<Vec<String>, Error>;

    /// Renews the leases of live tasks for `lease` from now (by the
    /// registry's clock), in one transaction: those of them whose
    /// cancellation was requested, and those the attempt no longer holds.
    fn renew_leases(&self, tasks: &[Attempt], lease: Duration) -> Result<Renewal, Error>;

    /// Those of `ids` whose cancellation was requested.
    fn cancel_requests(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, Error>;

    /// Claims the next queued task for `claimant`, in one transaction: the
    /// highest priority, then the oldest, whose project has fewer live tasks
    /// than its `max_parallel` (counted over every claimant) and whose
    /// constraints are all among the claimant's labels. It becomes
    /// `creating`, owned by the claimant, on its next attempt, its lease
    /// running for `lease`. Two claimants never get the same task.
    fn claim(&self, claimant: &Claimant, lease: Duration) -> Result<Option<TaskRecord>, Error>;

    /// Puts a claimed task whose container never started back in the
    /// queue (its owner is gone): false unless it is still `creating` on
    /// this attempt. The next claim is its next attempt.
    fn requeue(&self, task: &Attempt, reason: &str) -> Result<bool, Error>;

    /// Puts a submitted task that ran on this attempt and lost its owner
    /// back in the queue, if it has retries left (its attempt is at most
    /// its `retries`) and no cancel was asked for: false otherwise (then
    /// it is the caller's to end).
    fn retry(&self, task: &Attempt, reason: &str) -> Result<bool, Error>;

    /// Ends a task that is still queued as cancelled; false if it is not
    /// queued (any more).
    fn cancel_queued(&self, id: &Uuid, reason: &str, at: i64) -> Result<bool, Error>;

    /// Fills in what a claimed task's run planned (container, image,
    /// workspace, repository, policy), while it is `creating` on the
    /// record's attempt.
    fn update_planned(&self, task: &TaskRecord) -> Result<(), Error>;

    /// Tasks (`Listing`), narrowed to a state and a project if given,
    /// oldest first.
    fn list_where(
        &self,
        listing: Listing,
        state: Option<State>,
        project: Option<&str>,
    ) -> Result<Vec<TaskRecord>, Error>;

    /// Adds `n` to the home's counter `name` (it starts at 0).
    fn bump(&self, name: &str, n: u64) -> Result<(), Error>;

    /// The home's counters whose names start with `prefix`, without it.
    fn counters(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error>;

    /// How many tasks are in each state, and (as `"saving"`) how many
    /// ended ones have their work being saved.
    fn count_by_state(&self) -> Result<Vec<(String, i64)>, Error>;

    /// The one task whose id starts with `prefix` (at least 4 hex digits,
    /// hyphens optional).
    fn resolve(&self, prefix: &str) -> Result<Uuid, Error>;

    /// True if several hosts share this registry (a cluster): leases decide
    /// who is alive, and dead owners' tasks are rescued.
    fn shared(&self) -> bool {
        false
    }

    /// Where the registry is, for messages (a path or a URL without its
    /// password).
    fn place(&self) -> String;

    /// A node joins (or joins again): its row written, its lease running
    /// for `lease` from now.
    fn join(&self, node: &Node, lease: Duration) -> Result<(), Error>;

    /// Renews a node's lease for `lease` from now. A node the registry
    /// does not know (its row deleted) joins again with `node`.
    fn renew_node(&self, node: &Node, lease: Duration) -> Result<(), Error>;

    /// A node leaves cleanly.
    fn leave(&self, id: &str) -> Result<(), Error>;

    /// Every node known, by name.
    fn nodes(&self) -> Result<Vec<NodeRecord>, Error>;

    /// Takes back every task whose owner's lease has run out (by the
    /// registry's clock), each in a write that holds only if the task is
    /// still on the attempt and in the state it was found in: one that was
    /// `creating` (claimed, not started) is queued again; one that was
    /// `running` is queued again if it has retries left, else ends `lost`,
    /// its reason naming the node.
    fn rescue(&self) -> Result<Vec<Rescued>, Error>;

    /// Keeps a finished task's output in the registry, for other nodes
    /// (the caller bounds it: see [`KEPT_LOG`]).
    fn keep_log(&self, id: &Uuid, log: &[u8]) -> Result<(), Error>;

    /// A finished task's output kept by [`Store::keep_log`].
    fn kept_log(&self, id: &Uuid) -> Result<Option<Vec<u8>>, Error>;

    /// Calls `on` for each wake-up another process sends (submissions,
    /// cancellations), from a thread of the registry's, until the process
    /// ends. A registry without wake-ups never calls it: polling finds the
    /// same work, later.
    fn listen(&self, on: OnWake) -> Result<(), Error> {
        drop(on);
        Ok(())
    }
}
