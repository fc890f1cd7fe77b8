//! The orphans strategy: reconciliation of the registry, the runtime and
//! the disk (SPEC 6).
//!
//! | registry says | reality | plan |
//! | --- | --- | --- |
//! | live, owner alive | anything | leave it |
//! | live, owner dead | container running | stop it with its grace, remove it, mark `lost` |
//! | running, owner dead | container exited | record its exit code, remove it |
//! | live, owner dead | no container | mark `lost` (never started: unwind its workspace) |
//! | ended, workspace unsettled | owner dead | settle the workspace by its policy |
//! | no row, or ended | container of this instance | remove it |
//! | no row | directory under `workspaces/*/tasks/` | remove it (path-validated) |

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use orch_registry::{State, TaskRecord};
use uuid::Uuid;

use crate::owner::Owner;
use crate::reconcile::snapshot::{Snapshot, found_of};
use crate::reconcile::{Item, Strategy};
use crate::runtime::ContainerState;
use crate::teardown::{self, Cause, TaskFacts, Teardown, WorkspaceTarget};

/// How long a dead owner's running container gets to stop gracefully.
const STOP_MAX: Duration = Duration::from_secs(10);

/// Queued (waiting for a daemon, owning nothing yet), or live with a live
/// owner: untouchable but by `--all` and `orch cancel`.
pub(crate) fn is_live(row: &TaskRecord) -> bool {
    row.state == State::Queued || (row.state.is_live() && Owner::from(row).is_alive())
}

/// The reconciliation table, for every task not of `own_session`.
pub(crate) fn plan(snapshot: &Snapshot, own_session: Uuid, status: Option<State>) -> Vec<Item> {
    let rows: HashMap<Uuid, &TaskRecord> = snapshot.rows.iter().map(|r| (r.id, r)).collect();
    let own = own_session.to_string();
    let mut items = Vec::new();
    let mut planned: BTreeSet<Uuid> = BTreeSet::new();

    for row in &snapshot.rows {
        if row.owner.session == own
            || row.state == State::Queued
            || status.is_some_and(|s| s != row.state)
        {
            continue;
        }
        let owner_dead = !Owner::from(row).is_alive();
        // A planned workspace neither kept nor removed: its owner died
        // before settling it (or before making it: its branch may exist).
        let unsettled = !row.workspace_settled();
        if !owner_dead || !(row.state.is_live() || unsettled) {
            continue; // registry says running, owner alive: leave it
        }
        let mut facts = TaskFacts::from(row);
        facts.stop_grace = facts.stop_grace.min(STOP_MAX);
        let found = found_of(&facts, &snapshot.containers, &snapshot.dirs, None);
        let running = found
            .containers
            .iter()
            .any(|(_, s)| *s == ContainerState::Running);
        let exited = found
            .containers
            .iter()
            .any(|(_, s)| *s == ContainerState::Exited);
        let reason = if !row.state.is_live() {
            "its owner died before settling its workspace"
        } else if running {
            "its owner is gone; the container was still running"
        } else if exited && row.state == State::Running {
            "its container exited while its owner was gone"
        } else if found.containers.is_empty() && row.started_at.is_none() {
            "its owner died before its container started"
        } else if found.containers.is_empty() {
            "its owner and its container are gone"
        } else {
            "its owner is gone; the container never ran"
        };
        let plan = teardown::plan(&facts, Cause::OwnerGone(reason.into()), found);
        if plan.containers.is_empty() && plan.workspace.is_none() && !row.state.is_live() {
            continue;
        }
        planned.insert(row.id);
        items.push(Item::new(Strategy::Orphans, reason, plan));
    }

    // Containers no live record owns.
    for container in &snapshot.containers {
        if container.session == Some(own_session)
            || container.task_id.is_some_and(|t| planned.contains(&t))
        {
            continue;
        }
        let row = container.task_id.and_then(|t| rows.get(&t));
        if row.is_some_and(|r| r.state.is_live()) || container.owner_alive() {
            continue;
        }
        if status.is_some() && row.is_none_or(|r| status != Some(r.state)) {
            continue;
        }
        let reason = if row.is_some() {
            "its task has ended"
        } else {
            "no task record owns it"
        };
        items.push(Item::new(
            Strategy::Orphans,
            reason,
            Teardown::ownerless(container.task_id, vec![container.name.clone()], None),
        ));
    }

    // Task directories with no record.
    if status.is_none() {
        for dir in &snapshot.dirs {
            let id: Option<Uuid> = dir.task_id.parse().ok();
            if id.is_some_and(|id| rows.contains_key(&id) || snapshot.foreign.contains(&id)) {
                continue;
            }
            let target = WorkspaceTarget::of_dir(dir, None, None).measured();
            items.push(Item::new(
                Strategy::Orphans,
                "no task record owns this workspace",
                Teardown::ownerless(id, Vec::new(), Some(target)),
            ));
        }
    }
    items
}
