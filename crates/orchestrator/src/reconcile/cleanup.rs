//! Carrying out a cleanup: take the snapshot, plan on the blocking pool
//! (planning measures workspaces), then hand each item's plan to the one
//! teardown executor, several at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use orch_protocol::BranchCleanup;
use orch_registry::{KnownBranch, State};
use orch_workspace::{Holds, TaskBranch};
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;
use crate::reconcile::snapshot::Snapshot;
use crate::reconcile::{
    CleanupOptions, CleanupReport, Item, RepoItem, Strategy, orphans, retention,
};
use crate::teardown::{self, ExecOptions};
use crate::{Error, workspace};

/// How long `--all` waits for live tasks to end after cancelling them,
/// beyond their grace; and for their owners to let go of workspaces.
const CANCEL_WAIT: Duration = Duration::from_secs(15);
/// How many plans run at once.
const PARALLEL: usize = 16;

/// Plans and (unless a dry run) carries out a cleanup.
pub(crate) async fn cleanup(
    ctx: &Arc<Ctx>,
    options: &CleanupOptions,
) -> Result<CleanupReport, Error> {
    let snapshot = if options.all {
        Snapshot::full(ctx).await?
    } else {
        Snapshot::retention(ctx, &options.thresholds).await?
    };
    let logs = ctx.home.path().join("logs");
    let session = ctx.session.id;
    let planned_options = options.clone();
    let (snapshot, items) = tokio::task::spawn_blocking(move || {
        let options = planned_options;
        if options.all {
            let items = retention::everything(&snapshot, &logs, &options);
            return (snapshot, items);
        }
        let mut items = Vec::new();
        if options
            .strategy
            .includes(crate::reconcile::Strategy::Orphans)
        {
            items.extend(orphans::plan(&snapshot, session, options.status));
        }
        // A task the orphans strategy took is not planned twice.
        let taken: std::collections::BTreeSet<uuid::Uuid> =
            items.iter().filter_map(Item::task_id).collect();
        for row in &snapshot.rows {
            if options.status.is_some_and(|s| s != row.state) || taken.contains(&row.id) {
                continue;
            }
            items.extend(retention::plan(row, &snapshot, &logs, &options));
        }
        (snapshot, items)
    })
    .await
    .map_err(|e| Error::io("plan", "the cleanup", std::io::Error::other(e)))?;
    let retains = options.all
        || options
            .strategy
            .includes(crate::reconcile::Strategy::Completed)
        || options.strategy.includes(crate::reconcile::Strategy::Old);
    let mut report = CleanupReport {
        dry_run: options.dry_run,
        items,
        repos: plan_repos(ctx, options.branches).await?,
        mirrors: if retains {
            stale_mirrors(ctx).await?
        } else {
            Vec::new()
        },
    };
    if options.dry_run {
        return Ok(report);
    }
    let layout = ctx.home.layout();
    let planned = std::mem::take(&mut report.mirrors);
    report.mirrors = crate::workspace::blocking(move || {
        Ok(planned
            .into_iter()
            .filter(|m| {
                let mirror = orch_workspace::Mirror {
                    url: m.url.clone(),
                    path: m.path.clone(),
                };
                // In use right now (a fetch, a push): left for next time.
                mirror.remove(&layout).unwrap_or(false)
            })
            .collect())
    })
    .await?;
    let lock_wait = if options.all {
        let stopped = cancel_live(ctx, &snapshot, options).await?;
        for item in &mut report.items {
            item.stopped_by_owner = item.plan.task.is_some_and(|t| stopped.contains(&t));
        }
        CANCEL_WAIT
    } else {
        Duration::ZERO
    };
    execute(ctx, &mut report.items, lock_wait, None).await;
    execute_repos(ctx, &mut report.repos).await;
    Ok(report)
}

/// `orch rm`: everything of the ended tasks `ids` (record, log,
/// workspace, containers), as retention removes a task: its work saved to
/// its branch first. A live task, or one whose work has not reached its
/// git server, is refused before anything is removed.
pub(crate) async fn remove(
    ctx: &Arc<Ctx>,
    ids: &[uuid::Uuid],
    dry_run: bool,
) -> Result<CleanupReport, Error> {
    let snapshot = Snapshot::full(ctx).await?;
    let logs = ctx.home.path().join("logs");
    let mut rows = Vec::new();
    for id in ids {
        let row = snapshot
            .rows
            .iter()
            .find(|r| r.id == *id)
            .ok_or_else(|| Error::Registry(orch_registry::Error::NotFound(id.to_string())))?;
        let refuse = Error::Refused;
        if !row.state.is_terminal() || orphans::is_live(row) {
            return Err(refuse(format!(
                "{id} is {}: cancel it first (orch cancel {id})",
                row.state
            )));
        }
        if row.workspace.delivered == Some(false) {
            return Err(refuse(format!(
                "{id}'s work has not reached its git server yet: orch push {id} first"
            )));
        }
        rows.push(row.clone());
    }
    let items = tokio::task::spawn_blocking(move || {
        rows.iter()
            .map(|row| {
                let plan =
                    retention::whole(row, &snapshot, &logs, crate::teardown::Cause::Retention);
                Item::new(crate::reconcile::Strategy::Completed, "orch rm", plan)
            })
            .collect()
    })
    .await
    .map_err(|e| Error::io("plan", "the removal", std::io::Error::other(e)))?;
    let mut report = CleanupReport {
        dry_run,
        items,
        ..CleanupReport::default()
    };
    if !dry_run {
        execute(ctx, &mut report.items, Duration::ZERO, None).await;
    }
    Ok(report)
}

/// Mirrors no task fetched for `ORCH_MIRROR_MAX_AGE` (default 7 days) and
/// no task still needs (live, or with work not yet delivered).
async fn stale_mirrors(ctx: &Ctx) -> Result<Vec<orch_protocol::MirrorCleanup>, Error> {
    let max_age = match std::env::var("ORCH_MIRROR_MAX_AGE") {
        Ok(text) => crate::parse_duration(&text).map_err(|message| {
            Error::Config(crate::ConfigError::Flag {
                flag: "ORCH_MIRROR_MAX_AGE".into(),
                message,
            })
        })?,
        Err(_) => orch_workspace::mirror::MIRROR_MAX_AGE,
    };
    let in_use = ctx.store.call(|r| r.remotes_in_use()).await?;
    let layout = ctx.home.layout();
    crate::workspace::blocking(move || {
        let now = std::time::SystemTime::now();
        Ok(orch_workspace::mirror::mirrors(&layout)
            .into_iter()
            .filter(|m| !in_use.contains(&m.url))
            .filter(|m| {
                m.last_used()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_none_or(|age| age >= max_age)
            })
            .map(|m| orch_protocol::MirrorCleanup {
                bytes: orch_workspace::du::measure(&m.path).map_or(0, |s| s.bytes),
                url: m.url,
                path: m.path,
            })
            .collect())
    })
    .await
}

/// Reconciliation alone (the orphans strategy), as every `orch task`
/// start and every daemon start runs it: bounded, never touching this
/// session's tasks, and stopping between items once `stop` fires.
pub(crate) async fn reconcile(
    ctx: &Arc<Ctx>,
    limit: Duration,
    stop: &CancellationToken,
) -> Result<CleanupReport, Error> {
    let work = async {
        let snapshot = Snapshot::narrow(ctx).await?;
        let session = ctx.session.id;
        let items = tokio::task::spawn_blocking(move || orphans::plan(&snapshot, session, None))
            .await
            .map_err(|e| Error::io("plan", "reconciliation", std::io::Error::other(e)))?;
        let mut report = CleanupReport {
            dry_run: false,
            items,
            repos: plan_repos(ctx, false).await?,
            mirrors: Vec::new(),
        };
        execute(ctx, &mut report.items, Duration::ZERO, Some(stop)).await;
        if !stop.is_cancelled() {
            execute_repos(ctx, &mut report.repos).await;
        }
        Ok(report)
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(Error::Timeout {
            action: "reconcile",
            target: "the registry with the runtime".into(),
            after: limit,
        })
    })
}

/// Carries out the items' plans, several at once, in order of the report.
async fn execute(
    ctx: &Ctx,
    items: &mut Vec<Item>,
    lock_wait: Duration,
    stop: Option<&CancellationToken>,
) {
    let planned = std::mem::take(items);
    *items = futures_util::stream::iter(planned)
        .map(|mut item| async move {
            if stop.is_some_and(CancellationToken::is_cancelled) {
                return item;
            }
            let options = ExecOptions {
                held_lock: None,
                lock_wait,
            };
            let executed = teardown::execute(ctx, &item.plan, options, &mut |_| {}).await;
            for error in &executed.errors {
                tracing::warn!(task = ?item.plan.task, reason = %item.reason, error = %error, "cleanup step failed");
            }
            item.record(executed);
            tracing::info!(task = ?item.plan.task, reason = %item.reason, steps = item.steps.len(), "cleaned");
            item
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    if !stop.is_some_and(CancellationToken::is_cancelled) {
        if let Err(e) = crate::egress::sweep_networks(ctx, &ctx.selector(None), true).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot sweep networks left by dead owners");
        }
    }
    let by_reconcile = reaped(items.iter().filter(|i| i.strategy == Strategy::Orphans));
    let by_cleanup = reaped(items.iter().filter(|i| i.strategy == Strategy::Stale));
    count_reaped(ctx, "reconcile", by_reconcile).await;
    count_reaped(ctx, "cleanup", by_cleanup).await;
}

/// How many of `items` ended a live record as lost: tasks of a dead owner
/// reaped.
pub(crate) fn reaped<'a>(items: impl Iterator<Item = &'a Item>) -> u64 {
    items
        .filter(|i| {
            i.steps.iter().any(|s| {
                matches!(
                    s,
                    crate::teardown::Step::RecordEnded {
                        state: State::Lost,
                        ..
                    }
                )
            })
        })
        .count() as u64
}

/// Adds to the home's `reaped.<by>` counter (metrics); a failure to count
/// is only logged.
pub(crate) async fn count_reaped(ctx: &Ctx, by: &'static str, n: u64) {
    if n == 0 {
        return;
    }
    if let Err(e) = ctx
        .store
        .call(move |r| r.bump(&format!("reaped.{by}"), n))
        .await
    {
        tracing::warn!(error = %e, by, n, "failed to count reaped tasks");
    }
}

/// `--all`: live tasks are stopped by their owners first (gracefully, their
/// records ended as cancelled), within their grace and a bound.
async fn cancel_live(
    ctx: &Ctx,
    snapshot: &Snapshot,
    options: &CleanupOptions,
) -> Result<Vec<uuid::Uuid>, Error> {
    // Queued tasks own nothing yet: they are cancelled where they wait.
    let queued: Vec<uuid::Uuid> = snapshot
        .rows
        .iter()
        .filter(|r| r.state == State::Queued && options.status.is_none_or(|s| s == r.state))
        .map(|r| r.id)
        .collect();
    ctx.store
        .call(move |r| {
            for id in &queued {
                r.cancel_queued(id, "cancelled (cleanup --all)", orch_registry::now_ms())?;
            }
            Ok(())
        })
        .await?;
    let live: Vec<uuid::Uuid> = snapshot
        .rows
        .iter()
        .filter(|r| {
            r.state != State::Queued
                && orphans::is_live(r)
                && options.status.is_none_or(|s| s == r.state)
        })
        .map(|r| r.id)
        .collect();
    if live.is_empty() {
        return Ok(live);
    }
    let longest = snapshot
        .rows
        .iter()
        .filter(|r| live.contains(&r.id))
        .map(|r| r.stop_grace_ms)
        .max()
        .unwrap_or(0);
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(u64::try_from(longest).unwrap_or(0))
        + CANCEL_WAIT;
    let ids = live.clone();
    ctx.store
        .call(move |r| {
            for id in &ids {
                r.request_cancel(id)?;
            }
            Ok(())
        })
        .await?;
    for id in &live {
        let id = *id;
        while tokio::time::Instant::now() < deadline {
            let state = ctx.store.call(move |r| r.get(&id)).await?.map(|r| r.state);
            if state.is_none_or(State::is_terminal) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(live)
}

/// The repositories orch made branches in; with `branches`, in each the
/// task branches that lose nothing (to delete), and those of records gone
/// that hold commits of their own (kept, named with what their task was).
async fn plan_repos(ctx: &Ctx, branches: bool) -> Result<Vec<RepoItem>, Error> {
    let tops = ctx.store.call(|r| r.repos()).await?;
    let mut items = Vec::new();
    for top in tops {
        if !top.exists() {
            continue;
        }
        let mut item = RepoItem {
            repo: top.clone(),
            pruned: 0,
            branches: Vec::new(),
            kept: Vec::new(),
            errors: Vec::new(),
        };
        if branches {
            match judge_branches(ctx, &top).await {
                Ok(judged) => {
                    for (branch, known) in judged {
                        let deletable = branch.deletable();
                        let entry = BranchCleanup {
                            merged: branch.holds == Holds::Merged,
                            commits: match branch.holds {
                                Holds::Commits(n) => n,
                                _ => 0,
                            },
                            name: branch.name,
                            tip: branch.tip,
                            description: known.description,
                        };
                        if deletable {
                            item.branches.push(entry);
                        } else if !known.recorded {
                            item.kept.push(entry);
                        }
                    }
                }
                Err(e) => item.errors.push(format!("{e:#}")),
            }
        }
        items.push(item);
    }
    Ok(items)
}

/// The task branches of the repository at `top` that orch knows, each as
/// found now, with what the registry remembers of it.
async fn judge_branches(
    ctx: &Ctx,
    top: &std::path::Path,
) -> Result<Vec<(TaskBranch, KnownBranch)>, Error> {
    let key = top.to_path_buf();
    let mut known = ctx.store.call(move |r| r.branches(&key)).await?;
    let bases = known
        .iter()
        .map(|(name, b)| (name.clone(), b.base.clone()))
        .collect();
    let layout = ctx.home.layout();
    let top = top.to_path_buf();
    let found = workspace::blocking(move || {
        let repo = repo_at(&top, &layout)?;
        orch_workspace::task_branches(&repo, &layout, &bases)
    })
    .await?;
    Ok(found
        .into_iter()
        .filter_map(|b| known.remove(&b.name).map(|k| (b, k)))
        .collect())
}

/// The repository a record names: a mirror of this home as orch made it,
/// else the user's, discovered.
fn repo_at(
    top: &std::path::Path,
    layout: &orch_workspace::Layout,
) -> Result<orch_workspace::Repo, orch_workspace::Error> {
    if top.starts_with(layout.mirrors_dir()) {
        return Ok(orch_workspace::Repo::stored(top, top));
    }
    orch_workspace::Repo::discover(top, layout)
}

/// Prunes vanished worktree entries and deletes the planned branches,
/// each only if it still loses nothing as found now.
async fn execute_repos(ctx: &Ctx, repos: &mut [RepoItem]) {
    for item in repos {
        let layout = ctx.home.layout();
        let top = item.repo.clone();
        let pruned = workspace::blocking(move || {
            let repo = repo_at(&top, &layout)?;
            orch_workspace::prune_worktrees(&repo, &layout)
        })
        .await;
        match pruned {
            Ok(n) => item.pruned = n,
            Err(e) => item.errors.push(format!("{e:#}")),
        }
        if item.branches.is_empty() {
            continue;
        }
        // Found again now: a branch that moved or got work since the plan
        // is not deleted.
        let now = match judge_branches(ctx, &item.repo).await {
            Ok(now) => now,
            Err(e) => {
                item.errors.push(format!("{e:#}"));
                item.branches.clear();
                continue;
            }
        };
        let layout = ctx.home.layout();
        let top = item.repo.clone();
        let planned = std::mem::take(&mut item.branches);
        let done = workspace::blocking(move || {
            let repo = repo_at(&top, &layout)?;
            let mut deleted = Vec::new();
            let mut errors = Vec::new();
            for mut branch in planned {
                let Some((found, _)) = now
                    .iter()
                    .find(|(b, _)| b.name == branch.name && b.deletable())
                else {
                    continue;
                };
                match orch_workspace::delete_branch(&repo, &layout, &found.name, &found.tip) {
                    Ok(()) => {
                        branch.tip.clone_from(&found.tip);
                        deleted.push(branch);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            Ok((deleted, errors))
        })
        .await;
        match done {
            Ok((deleted, errors)) => {
                item.errors.extend(errors);
                let repo = item.repo.clone();
                let forget: Vec<String> = deleted.iter().map(|b| b.name.clone()).collect();
                let _ = ctx
                    .store
                    .call(move |r| {
                        for name in &forget {
                            r.forget_branch(&repo, name)?;
                        }
                        Ok(())
                    })
                    .await;
                item.branches = deleted;
            }
            Err(e) => item.errors.push(format!("{e:#}")),
        }
    }
}
