//! The retention strategies: completed, stale and old (SPEC 6), and
//! `--all`. Each selects whole tasks; the one teardown policy says what
//! that means for each.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use orch_registry::TaskRecord;

use crate::reconcile::orphans::is_live;
use crate::reconcile::snapshot::{Snapshot, found_of};
use crate::reconcile::{CleanupOptions, Item, Strategy};
use crate::teardown::{self, Cause, TaskFacts, Teardown, WorkspaceTarget};

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The log of a task, with its size, if it exists.
fn log_of(logs: &Path, row: &TaskRecord) -> Option<(std::path::PathBuf, u64)> {
    let path = logs.join(format!("{}.log", row.id));
    path.metadata().ok().map(|m| (path, m.len()))
}

/// Everything of one task, planned by the policy for `cause`, its
/// workspace measured.
pub(crate) fn whole(row: &TaskRecord, snapshot: &Snapshot, logs: &Path, cause: Cause) -> Teardown {
    let facts = TaskFacts::from(row);
    let mut found = found_of(
        &facts,
        &snapshot.containers,
        &snapshot.dirs,
        log_of(logs, row),
    );
    if let Some(target) = &mut found.workspace {
        target.bytes = orch_workspace::workspace_size(&target.path).map_or(0, |s| s.bytes);
    }
    teardown::plan(&facts, cause, found)
}

/// Completed, stale and old, for one record.
pub(crate) fn plan(
    row: &TaskRecord,
    snapshot: &Snapshot,
    logs: &Path,
    options: &CleanupOptions,
) -> Option<Item> {
    let t = &options.thresholds;
    let strategy = options.strategy;
    let age = |since: Option<i64>| since.map(|s| snapshot.now - s);
    // Work not yet on its project's git server waits in this node's mirror
    // (and its workspace): retention never takes it (`orch push`, or
    // `cleanup --all`, does).
    if row.workspace.delivered == Some(false) {
        return None;
    }

    if strategy.includes(Strategy::Completed) && row.state.is_terminal() {
        let limit = if row.state.is_completed() {
            t.completed
        } else {
            t.failed
        };
        if age(row.outcome.finished_at).is_some_and(|a| a >= ms(limit)) {
            let reason = format!(
                "{} more than {} ago",
                row.state,
                humantime::format_duration(limit)
            );
            let plan = whole(row, snapshot, logs, Cause::Retention);
            return Some(Item::new(Strategy::Completed, reason, plan));
        }
    }
    if strategy.includes(Strategy::Stale) && !is_live(row) && row.state.is_live() {
        let expired = row
            .owner
            .lease_until
            .is_none_or(|l| snapshot.now - l >= ms(t.stale));
        if expired {
            let reason = format!(
                "lease expired more than {} ago and its owner is gone",
                humantime::format_duration(t.stale)
            );
            let mut facts = TaskFacts::from(row);
            let mut found = found_of(&facts, &snapshot.containers, &snapshot.dirs, None);
            found.workspace = found.workspace.map(WorkspaceTarget::measured);
            facts.stop_grace = facts.stop_grace.min(Duration::from_secs(10));
            let plan = teardown::plan(&facts, Cause::OwnerGone(reason.clone()), found);
            return Some(Item::new(Strategy::Stale, reason, plan));
        }
    }
    if strategy.includes(Strategy::Old)
        && !is_live(row)
        && age(Some(row.created_at)).is_some_and(|a| a >= ms(t.old))
    {
        let reason = format!(
            "created more than {} ago",
            humantime::format_duration(t.old)
        );
        let plan = whole(row, snapshot, logs, Cause::Retention);
        return Some(Item::new(Strategy::Old, reason, plan));
    }
    None
}

/// `--all`: every record (in `status`, if given), every container and every
/// task directory of this instance. Live tasks are cancelled by their
/// owners before these plans run.
pub(crate) fn everything(snapshot: &Snapshot, logs: &Path, options: &CleanupOptions) -> Vec<Item> {
    let mut items = Vec::new();
    let mut seen_dirs = BTreeSet::new();
    let mut claimed = BTreeSet::new();
    for row in &snapshot.rows {
        if options.status.is_some_and(|s| s != row.state) {
            continue;
        }
        // Work not yet on its project's git server exists only here: not
        // even `--all` takes it (nor, so, its workspace or the mirror
        // holding its branch). `orch push` delivers it first.
        if row.workspace.delivered == Some(false) && !is_live(row) {
            if let Some(path) = &row.workspace.path {
                seen_dirs.insert(std::path::PathBuf::from(path));
            }
            let reason = format!(
                "--all: kept, its work has not reached {} yet (orch push {} delivers it)",
                row.workspace.remote.as_deref().unwrap_or("its git server"),
                row.id
            );
            items.push(Item::new(
                Strategy::All,
                reason,
                Teardown::ownerless(Some(row.id), Vec::new(), None),
            ));
            continue;
        }
        let reason = if is_live(row) {
            "--all (live: cancelled first)"
        } else {
            "--all"
        };
        let plan = whole(row, snapshot, logs, Cause::Everything);
        if let Some(w) = &plan.workspace {
            seen_dirs.insert(w.target.path.clone());
        }
        claimed.extend(plan.containers.iter().map(|c| c.name.clone()));
        items.push(Item::new(Strategy::All, reason, plan));
    }
    if options.status.is_none() {
        for container in &snapshot.containers {
            if !claimed.contains(&container.name) {
                items.push(Item::new(
                    Strategy::All,
                    "--all",
                    Teardown::ownerless(container.task_id, vec![container.name.clone()], None),
                ));
            }
        }
        for dir in &snapshot.dirs {
            if !seen_dirs.contains(&dir.path) {
                let target = WorkspaceTarget::of_dir(dir, None, None).measured();
                items.push(Item::new(
                    Strategy::All,
                    "--all",
                    Teardown::ownerless(dir.task_id.parse().ok(), Vec::new(), Some(target)),
                ));
            }
        }
    }
    items
}
