//! One look at everything: the registry, this instance's containers, and
//! the task directories on disk.
//!
//! Read in this order (containers and directories first, records last), so
//! that whatever a task created before the snapshot has its record in it:
//! records are written first.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use orch_registry::{Listing, Store, TaskRecord, now_ms};
use orch_workspace::TaskDir;
use uuid::Uuid;

use crate::Error;
use crate::context::Ctx;
use crate::reconcile::Thresholds;
use crate::runtime::OwnedContainer;
use crate::teardown::{Found, TaskFacts, WorkspaceTarget};

/// The data a plan is made from.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The records of this node's tasks (all of them, on one host).
    pub(crate) rows: Vec<TaskRecord>,
    /// In a cluster, the tasks another node owns now: neither their
    /// records nor their resources are this node's to settle. A container
    /// of this instance for one is what an earlier attempt left here; a
    /// directory of one is left as it is (it may hold unsaved work).
    pub(crate) foreign: BTreeSet<Uuid>,
    pub(crate) containers: Vec<OwnedContainer>,
    pub(crate) dirs: Vec<TaskDir>,
    pub(crate) now: i64,
}

impl Snapshot {
    /// Everything: for `--all`, which takes every record.
    pub(crate) async fn full(ctx: &Ctx) -> Result<Snapshot, Error> {
        Snapshot::take(ctx, |r| r.list(Listing::All)).await
    }

    /// For retention: the records `thresholds` may select (finished or
    /// created long enough ago, and the live ones) and those of the
    /// containers and directories found, never the whole registry.
    /// Planning checks each against its strategy.
    pub(crate) async fn retention(ctx: &Ctx, thresholds: &Thresholds) -> Result<Snapshot, Error> {
        let now = now_ms();
        let before =
            |d: Duration| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let finished_before = before(thresholds.completed.min(thresholds.failed));
        let created_before = before(thresholds.old);
        Snapshot::take(ctx, move |r| {
            r.list_retention(finished_before, created_before)
        })
        .await
    }

    /// What reconciliation needs and no more: the live records, and the
    /// records of the containers and directories found. It stays small
    /// however many finished tasks the registry holds.
    pub(crate) async fn narrow(ctx: &Ctx) -> Result<Snapshot, Error> {
        Snapshot::take(ctx, |r| r.list(Listing::Live)).await
    }

    /// The containers, the directories, then the records `listed` gives
    /// and those of every container and directory found, oldest first.
    async fn take(
        ctx: &Ctx,
        listed: impl FnOnce(&dyn Store) -> Result<Vec<TaskRecord>, orch_registry::Error>
        + Send
        + 'static,
    ) -> Result<Snapshot, Error> {
        let containers = ctx.runtime.list(&ctx.selector(None)).await?;
        let dirs = task_dirs(ctx).await?;
        let wanted: BTreeSet<Uuid> = containers
            .iter()
            .filter_map(|c| c.task_id)
            .chain(dirs.iter().filter_map(|d| d.task_id.parse().ok()))
            .collect();
        let rows = ctx
            .store
            .call(move |r| {
                let mut rows = listed(r)?;
                let have: BTreeSet<Uuid> = rows.iter().map(|row| row.id).collect();
                for id in wanted.difference(&have) {
                    rows.extend(r.get(id)?);
                }
                rows.sort_by_key(|row| row.id);
                Ok(rows)
            })
            .await?;
        let node = ctx.node_id();
        let (foreign, rows): (Vec<TaskRecord>, Vec<TaskRecord>) = rows
            .into_iter()
            .partition(|row| crate::owner::is_foreign(row, node));
        Ok(Snapshot {
            rows,
            foreign: foreign.into_iter().map(|row| row.id).collect(),
            containers,
            dirs,
            now: now_ms(),
        })
    }
}

async fn task_dirs(ctx: &Ctx) -> Result<Vec<TaskDir>, Error> {
    let layout = ctx.home.layout();
    crate::workspace::blocking(move || layout.task_dirs()).await
}

/// What exists of one task: its containers, its directory (only under its
/// own project), and its log.
pub(crate) fn found_of(
    facts: &TaskFacts,
    containers: &[OwnedContainer],
    dirs: &[TaskDir],
    log: Option<(PathBuf, u64)>,
) -> Found {
    let id = facts.id.to_string();
    Found {
        containers: containers
            .iter()
            .filter(|c| c.task_id == Some(facts.id))
            .map(|c| (c.name.clone(), c.state))
            .collect(),
        workspace: dirs
            .iter()
            .find(|d| d.task_id == id && d.project == facts.project)
            .map(|dir| {
                WorkspaceTarget::of_dir(
                    dir,
                    Some(facts.image.clone()),
                    facts.workspace.as_ref().and_then(|w| w.repo.clone()),
                )
            })
            .or_else(|| {
                // No directory, but the record planned one: its branch may
                // exist already (it is made first), to unwind or settle.
                let planned = facts
                    .workspace
                    .as_ref()
                    .filter(|_| !facts.workspace_settled)?;
                Some(WorkspaceTarget {
                    project: facts.project.clone(),
                    dir_name: id.clone(),
                    path: planned.path.clone(),
                    bytes: 0,
                    image: Some(facts.image.clone()),
                    repo: Some(planned.repo.clone()?),
                })
            }),
        log,
    }
}
