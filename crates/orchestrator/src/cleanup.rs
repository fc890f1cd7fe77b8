//! Cleanup by retention policy (SPEC 6), and reconciliation of the registry
//! with Docker and the disk.
//!
//! Cleanup works in two steps: a plan built from one snapshot of the
//! registry, this instance's containers and the task directories on disk,
//! then its execution. `--dry-run` stops after the plan. Each strategy only
//! ever selects what it may: a live task (live state, live owner) is never
//! touched but by `--all`, and a workspace is only removed if its task lock
//! can be taken at once, so one being created or used is never touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, StopContainerOptionsBuilder,
};
use orch_registry::{Finish, Listing, State, TaskRecord, WorkspaceState, now_ms};
use orch_workspace::{Repo, TaskLock, Workspace, du};
use uuid::Uuid;

use crate::config::CleanupThresholds;
use crate::labels::{self, OwnedContainer};
use crate::remove::{remove_container, remove_containers};
use crate::{ConfigError, Error, Orchestrator, Owner, parse_duration};

/// How long a dead owner's running container gets to stop gracefully.
const RECONCILE_STOP_MAX: Duration = Duration::from_secs(10);
/// How long `--all` waits for live tasks to end after cancelling them.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// Which retention strategy to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Orphans, then completed, stale and old.
    All,
    /// Three-way reconciliation of registry, Docker and disk.
    Orphans,
    /// Finished tasks past their age.
    Completed,
    /// Live records whose lease expired and whose owner is dead.
    Stale,
    /// Any task past the old age, except a live one.
    Old,
}

impl Strategy {
    /// The strategy's name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::All => "all",
            Strategy::Orphans => "orphans",
            Strategy::Completed => "completed",
            Strategy::Stale => "stale",
            Strategy::Old => "old",
        }
    }

    fn includes(self, other: Strategy) -> bool {
        self == Strategy::All || self == other
    }
}

/// Age thresholds of the strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Succeeded/cancelled tasks older than this are removed (default 1h).
    pub completed: Duration,
    /// Failed/timed-out/lost tasks older than this are removed (default 24h).
    pub failed: Duration,
    /// Live records whose lease expired this long ago, with a dead owner, are
    /// stale (default 10m).
    pub stale: Duration,
    /// Any task older than this is removed, but a live one (default 24h).
    pub old: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            completed: Duration::from_secs(3600),
            failed: Duration::from_secs(24 * 3600),
            stale: Duration::from_secs(600),
            old: Duration::from_secs(24 * 3600),
        }
    }
}

impl Thresholds {
    /// Defaults, then the config's `[cleanup]`, then `ORCH_CLEANUP_*_AGE`
    /// (humantime or seconds); the environment wins.
    pub fn resolve(config: &CleanupThresholds) -> Result<Thresholds, ConfigError> {
        let defaults = Thresholds::default();
        let pick =
            |var: &str, configured: Option<Duration>, default: Duration| match std::env::var(var) {
                Ok(text) => parse_duration(&text).map_err(|message| ConfigError::Flag {
                    flag: var.to_owned(),
                    message,
                }),
                Err(_) => Ok(configured.unwrap_or(default)),
            };
        Ok(Thresholds {
            completed: pick(
                "ORCH_CLEANUP_COMPLETED_AGE",
                config.completed_age,
                defaults.completed,
            )?,
            failed: pick(
                "ORCH_CLEANUP_FAILED_AGE",
                config.failed_age,
                defaults.failed,
            )?,
            stale: pick("ORCH_CLEANUP_STALE_AGE", config.stale_age, defaults.stale)?,
            old: pick("ORCH_CLEANUP_OLD_AGE", config.old_age, defaults.old)?,
        })
    }

    /// Every threshold set to `age` (`--older-than`).
    pub fn all(age: Duration) -> Thresholds {
        Thresholds {
            completed: age,
            failed: age,
            stale: age,
            old: age,
        }
    }
}

/// What `orch cleanup` should do.
#[derive(Debug, Clone)]
pub struct CleanupOptions {
    /// The strategy.
    pub strategy: Strategy,
    /// Its thresholds.
    pub thresholds: Thresholds,
    /// Only tasks in this state.
    pub status: Option<State>,
    /// Everything of this instance, live tasks included (cancelled first).
    pub all: bool,
    /// Only plan.
    pub dry_run: bool,
    /// Also delete `orch/*` branches with no commits beyond their base.
    pub branches: bool,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        CleanupOptions {
            strategy: Strategy::All,
            thresholds: Thresholds::default(),
            status: None,
            all: false,
            dry_run: false,
            branches: false,
        }
    }
}

/// A container to remove, and how.
#[derive(Debug, Clone)]
pub struct ContainerTarget {
    /// Its name.
    pub name: String,
    /// Stop it gracefully first, with this grace: it still runs a task.
    pub stop_grace: Option<Duration>,
}

/// A workspace to remove.
#[derive(Debug, Clone)]
pub struct WorkspaceTarget {
    /// Its project.
    pub project: String,
    /// Its directory name (the task id).
    pub dir_name: String,
    /// Its path.
    pub path: PathBuf,
    /// Bytes it holds.
    pub bytes: u64,
    /// The image to remove root-owned files with, if known.
    pub image: Option<String>,
}

impl WorkspaceTarget {
    /// The workspace in `dir`, not measured yet.
    pub(crate) fn of(dir: &orch_workspace::TaskDir, image: Option<&str>) -> WorkspaceTarget {
        WorkspaceTarget {
            project: dir.project.clone(),
            dir_name: dir.task_id.clone(),
            path: dir.path.clone(),
            bytes: 0,
            image: image.map(str::to_owned),
        }
    }

    /// With its size filled in, for plans that report what they free.
    fn measured(mut self) -> WorkspaceTarget {
        self.bytes = du::measure(&self.path).map_or(0, |s| s.bytes);
        self
    }
}

/// How a live record is to be ended.
#[derive(Debug, Clone)]
pub enum Mark {
    /// Its owner and/or container vanished.
    Lost(String),
    /// Its container exited while the owner was gone: its real exit code,
    /// read from Docker.
    Exited,
}

/// Everything cleanup does about one task (or one ownerless object).
#[derive(Debug, Clone)]
pub struct Item {
    /// The strategy that selected it.
    pub strategy: Strategy,
    /// Why.
    pub reason: String,
    /// The task, if there is a record (or a label) for it.
    pub task_id: Option<Uuid>,
    /// End its live record first.
    pub mark: Option<Mark>,
    /// Containers to remove.
    pub containers: Vec<ContainerTarget>,
    /// Its workspace, to remove.
    pub workspace: Option<WorkspaceTarget>,
    /// Keep the workspace (a lost or failed task's, by policy) and record it
    /// as kept, rather than removing it.
    pub keep_workspace: bool,
    /// Delete its record.
    pub record: bool,
    /// Its log, to delete, with its size.
    pub log: Option<(PathBuf, u64)>,
    /// What went wrong executing it, if anything.
    pub errors: Vec<String>,
}

impl Item {
    pub(crate) fn new(
        strategy: Strategy,
        task_id: Option<Uuid>,
        reason: impl Into<String>,
    ) -> Item {
        Item {
            strategy,
            reason: reason.into(),
            task_id,
            mark: None,
            containers: Vec::new(),
            workspace: None,
            keep_workspace: false,
            record: false,
            log: None,
            errors: Vec::new(),
        }
    }

    /// Bytes this item frees: its workspace (unless kept) and its log.
    pub fn bytes(&self) -> u64 {
        let workspace = self
            .workspace
            .as_ref()
            .filter(|_| !self.keep_workspace)
            .map_or(0, |w| w.bytes);
        workspace + self.log.as_ref().map_or(0, |l| l.1)
    }

    /// Deletes the item's log, if it has one; a missing log is fine.
    fn remove_log(&mut self) {
        if let Some((log, _)) = &self.log {
            match std::fs::remove_file(log) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self
                    .errors
                    .push(format!("failed to remove {}: {e}", log.display())),
            }
        }
    }

    /// The workspace this item removes, if any.
    pub fn removed_workspace(&self) -> Option<&WorkspaceTarget> {
        self.workspace.as_ref().filter(|_| !self.keep_workspace)
    }
}

/// Repository-level work: vanished worktree entries and empty branches.
#[derive(Debug, Clone)]
pub struct RepoItem {
    /// The repository.
    pub repo: PathBuf,
    /// Worktree entries pruned (known only after execution).
    pub pruned: usize,
    /// Empty `orch/*` branches deleted (or to delete).
    pub branches: Vec<String>,
    /// What went wrong.
    pub errors: Vec<String>,
}

/// A cleanup's plan and, unless a dry run, what executing it did.
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Per task (or ownerless object).
    pub items: Vec<Item>,
    /// Per repository.
    pub repos: Vec<RepoItem>,
}

impl CleanupReport {
    /// Items that failed in part.
    pub fn failures(&self) -> impl Iterator<Item = (&Item, &str)> {
        self.items
            .iter()
            .flat_map(|i| i.errors.iter().map(move |e| (i, e.as_str())))
    }

    /// Containers removed (or to remove).
    pub fn containers(&self) -> usize {
        self.items.iter().map(|i| i.containers.len()).sum()
    }
}

/// The data a plan is made from.
struct Snapshot {
    rows: Vec<TaskRecord>,
    containers: Vec<OwnedContainer>,
    dirs: Vec<orch_workspace::TaskDir>,
    /// Task id to its directory's index in `dirs`.
    dir_of: HashMap<String, usize>,
    now: i64,
}

impl Snapshot {
    fn new(
        rows: Vec<TaskRecord>,
        containers: Vec<OwnedContainer>,
        dirs: Vec<orch_workspace::TaskDir>,
    ) -> Snapshot {
        let dir_of = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.task_id.clone(), i))
            .collect();
        Snapshot {
            rows,
            containers,
            dirs,
            dir_of,
            now: now_ms(),
        }
    }
}

/// Live state and a live owner: untouchable but by `--all`.
fn is_live(row: &TaskRecord) -> bool {
    row.state.is_live() && Owner::from(row).is_alive()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Orchestrator {
    /// Lists this instance's containers, or one session's.
    pub async fn list_containers(
        &self,
        session: Option<&Uuid>,
    ) -> Result<Vec<OwnedContainer>, Error> {
        let filters = labels::filters(self.home.instance_id(), session);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| {
                Error::docker("list containers of instance", self.home.instance_id(), e)
            })?;
        Ok(summaries
            .iter()
            .filter_map(OwnedContainer::from_summary)
            .collect())
    }

    /// Everything, read in this order: containers and directories first,
    /// records last, so that whatever a task created before the snapshot has
    /// its record in it (record first).
    async fn snapshot(&self) -> Result<Snapshot, Error> {
        let containers = self.list_containers(None).await?;
        let dirs = self.task_dirs().await?;
        let rows = self.db(|r| r.list(Listing::All)).await?;
        Ok(Snapshot::new(rows, containers, dirs))
    }

    pub(crate) async fn task_dirs(&self) -> Result<Vec<orch_workspace::TaskDir>, Error> {
        let layout = self.home.layout();
        tokio::task::spawn_blocking(move || layout.task_dirs())
            .await
            .map_err(|e| Error::io("list", "task directories", std::io::Error::other(e)))?
            .map_err(Error::from)
    }

    /// Plans and (unless a dry run) executes a cleanup.
    pub async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport, Error> {
        if options.all {
            return self.cleanup_everything(options).await;
        }
        let snapshot = self.snapshot().await?;
        let mut items = Vec::new();
        if options.strategy.includes(Strategy::Orphans) {
            items.extend(self.plan_orphans(&snapshot, options.status));
        }
        // A task the orphans strategy took is not planned twice.
        let taken: BTreeSet<Uuid> = items.iter().filter_map(|i| i.task_id).collect();
        let rows = snapshot
            .rows
            .iter()
            .filter(|r| options.status.is_none_or(|s| r.state == s))
            .filter(|r| !taken.contains(&r.id));
        for row in rows {
            if let Some(item) = self.plan_retention(row, &snapshot, options) {
                items.push(item);
            }
        }
        let mut report = CleanupReport {
            dry_run: options.dry_run,
            items,
            repos: Vec::new(),
        };
        self.plan_repos(&mut report, options.branches).await?;
        if !options.dry_run {
            self.execute(&mut report).await;
        }
        Ok(report)
    }

    /// What reconciliation needs, and no more: the live records, and the
    /// records of the containers and directories found. It stays small
    /// however many finished tasks the registry holds.
    async fn reconcile_snapshot(&self) -> Result<Snapshot, Error> {
        let containers = self.list_containers(None).await?;
        let dirs = self.task_dirs().await?;
        let wanted: BTreeSet<Uuid> = containers
            .iter()
            .filter_map(|c| c.task_id)
            .chain(dirs.iter().filter_map(|d| d.task_id.parse().ok()))
            .collect();
        let rows = self
            .db(move |r| {
                let mut rows = r.list(Listing::Live)?;
                for id in wanted {
                    if !rows.iter().any(|row| row.id == id) {
                        rows.extend(r.get(&id)?);
                    }
                }
                Ok(rows)
            })
            .await?;
        Ok(Snapshot::new(rows, containers, dirs))
    }

    /// Reconciliation alone (the orphans strategy), as every `orch task`
    /// start runs it: bounded, quiet, never touching this session's tasks.
    pub async fn reconcile(&self, limit: Duration) -> Result<CleanupReport, Error> {
        let work = async {
            let snapshot = self.reconcile_snapshot().await?;
            let mut report = CleanupReport {
                dry_run: false,
                items: self.plan_orphans(&snapshot, None),
                repos: Vec::new(),
            };
            // Vanished worktrees are part of reconciliation too.
            self.plan_repos(&mut report, false).await?;
            self.execute(&mut report).await;
            Ok(report)
        };
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(Error::DockerTimeout {
                action: "reconcile",
                target: "the registry with Docker".into(),
                after: limit,
            })
        })
    }

    /// The reconciliation table of SPEC 6.
    fn plan_orphans(&self, snapshot: &Snapshot, status: Option<State>) -> Vec<Item> {
        let mut by_task: HashMap<Uuid, Vec<&OwnedContainer>> = HashMap::new();
        for container in &snapshot.containers {
            if let Some(task) = container.task_id {
                by_task.entry(task).or_default().push(container);
            }
        }
        let rows: HashMap<Uuid, &TaskRecord> = snapshot.rows.iter().map(|r| (r.id, r)).collect();
        let mut items = Vec::new();

        // Live records whose owner is gone.
        for row in &snapshot.rows {
            if !row.state.is_live() || status.is_some_and(|s| s != row.state) {
                continue;
            }
            if row.session == self.session.id.to_string() || Owner::from(row).is_alive() {
                continue; // registry says running, owner alive: leave it
            }
            let containers = by_task.get(&row.id).cloned().unwrap_or_default();
            let running = containers.iter().any(|c| c.state == "running");
            let exited = containers.iter().any(|c| c.state == "exited");
            let mut item = Item::new(Strategy::Orphans, Some(row.id), "");
            if running {
                item.reason = "its owner is gone; the container was still running".into();
                item.mark = Some(Mark::Lost(item.reason.clone()));
            } else if exited && row.state == State::Running {
                item.reason = "its container exited while its owner was gone".into();
                item.mark = Some(Mark::Exited);
            } else if containers.is_empty() {
                item.reason = "its owner and its container are gone".into();
                item.mark = Some(Mark::Lost(item.reason.clone()));
            } else {
                item.reason = "its owner is gone; the container never ran".into();
                item.mark = Some(Mark::Lost(item.reason.clone()));
            }
            let grace = Duration::from_millis(u64::try_from(row.stop_grace_ms).unwrap_or(0))
                .min(RECONCILE_STOP_MAX);
            item.containers = containers
                .iter()
                .map(|c| ContainerTarget {
                    name: c.name.clone(),
                    stop_grace: (c.state == "running").then_some(grace),
                })
                .collect();
            // Workspace policy: lost or failed keeps it if the task asked to;
            // a task found to have succeeded loses it (decided at execution).
            item.workspace = self.workspace_target(row, snapshot);
            item.keep_workspace = item.workspace.is_some() && row.keep_failed_workspace;
            items.push(item);
        }

        // Finished records whose workspace was never settled (orch died
        // between the two): settle it by the policy of how the task ended.
        for row in &snapshot.rows {
            let unsettled = row.state.is_terminal()
                && row.workspace_state == Some(WorkspaceState::Present)
                && !Owner::from(row).is_alive()
                && status.is_none_or(|s| s == row.state);
            if !unsettled || items.iter().any(|i| i.task_id == Some(row.id)) {
                continue;
            }
            let mut item = Item::new(
                Strategy::Orphans,
                Some(row.id),
                "its owner died before settling its workspace",
            );
            item.workspace = self.workspace_target(row, snapshot);
            item.keep_workspace =
                item.workspace.is_some() && !row.state.is_completed() && row.keep_failed_workspace;
            if item.workspace.is_some() {
                items.push(item);
            }
        }

        // Containers no live record owns.
        for container in &snapshot.containers {
            let row = container.task_id.and_then(|t| rows.get(&t));
            let handled = items
                .iter()
                .any(|i| i.containers.iter().any(|c| c.name == container.name));
            if handled || container.session == Some(self.session.id) {
                continue;
            }
            let owned_by_live_row = row.is_some_and(|r| r.state.is_live());
            if owned_by_live_row || container.owner_alive() {
                continue;
            }
            let reason = if row.is_some() {
                "its task has ended"
            } else {
                "no task record owns it"
            };
            let mut item = Item::new(Strategy::Orphans, container.task_id, reason);
            item.containers.push(ContainerTarget {
                name: container.name.clone(),
                stop_grace: None,
            });
            items.push(item);
        }

        // Task directories with no record.
        for dir in &snapshot.dirs {
            let id: Option<Uuid> = dir.task_id.parse().ok();
            if id.is_some_and(|id| rows.contains_key(&id)) {
                continue;
            }
            let mut item = Item::new(Strategy::Orphans, id, "no task record owns this workspace");
            item.workspace = Some(WorkspaceTarget::of(dir, None).measured());
            items.push(item);
        }
        items
    }

    /// Completed, stale and old, for one record.
    fn plan_retention(
        &self,
        row: &TaskRecord,
        snapshot: &Snapshot,
        options: &CleanupOptions,
    ) -> Option<Item> {
        let t = &options.thresholds;
        let strategy = options.strategy;
        let now = snapshot.now;
        let age = |since: Option<i64>| since.map(|s| now - s);
        let full_removal =
            |strategy: Strategy, reason: String| self.full_removal(row, snapshot, strategy, reason);

        if strategy.includes(Strategy::Completed) && row.state.is_terminal() {
            let limit = if row.state.is_completed() {
                t.completed
            } else {
                t.failed
            };
            if age(row.finished_at).is_some_and(|a| a >= ms(limit)) {
                return Some(full_removal(
                    Strategy::Completed,
                    format!(
                        "{} more than {} ago",
                        row.state,
                        humantime::format_duration(limit)
                    ),
                ));
            }
        }
        if strategy.includes(Strategy::Stale) && row.state.is_live() && !Owner::from(row).is_alive()
        {
            let expired = row.lease_until.is_none_or(|l| now - l >= ms(t.stale));
            if expired {
                let mut item = Item::new(
                    Strategy::Stale,
                    Some(row.id),
                    format!(
                        "lease expired more than {} ago and its owner is gone",
                        humantime::format_duration(t.stale)
                    ),
                );
                item.mark = Some(Mark::Lost(item.reason.clone()));
                item.containers = self.containers_of(row, snapshot);
                item.workspace = self.workspace_target(row, snapshot);
                item.keep_workspace = item.workspace.is_some() && row.keep_failed_workspace;
                return Some(item);
            }
        }
        if strategy.includes(Strategy::Old)
            && !is_live(row)
            && age(Some(row.created_at)).is_some_and(|a| a >= ms(t.old))
        {
            return Some(full_removal(
                Strategy::Old,
                format!(
                    "created more than {} ago",
                    humantime::format_duration(t.old)
                ),
            ));
        }
        None
    }

    /// Everything of one task goes: containers, workspace, record, log.
    fn full_removal(
        &self,
        row: &TaskRecord,
        snapshot: &Snapshot,
        strategy: Strategy,
        reason: String,
    ) -> Item {
        let mut item = Item::new(strategy, Some(row.id), reason);
        item.record = true;
        item.containers = self.containers_of(row, snapshot);
        item.workspace = self.workspace_target(row, snapshot);
        let log = self.home.log_path(&row.id);
        if let Ok(meta) = log.metadata() {
            item.log = Some((log, meta.len()));
        }
        item
    }

    fn containers_of(&self, row: &TaskRecord, snapshot: &Snapshot) -> Vec<ContainerTarget> {
        snapshot
            .containers
            .iter()
            .filter(|c| c.task_id == Some(row.id))
            .map(|c| ContainerTarget {
                name: c.name.clone(),
                stop_grace: None,
            })
            .collect()
    }

    fn workspace_target(&self, row: &TaskRecord, snapshot: &Snapshot) -> Option<WorkspaceTarget> {
        let dir = &snapshot.dirs[*snapshot.dir_of.get(&row.id.to_string())?];
        if dir.project != row.project {
            return None;
        }
        Some(WorkspaceTarget::of(dir, Some(&row.image)).measured())
    }

    /// Vanished worktree entries (always), and empty branches (on request).
    async fn plan_repos(&self, report: &mut CleanupReport, branches: bool) -> Result<(), Error> {
        let repos = self.db(|r| r.repos()).await?;
        for top in repos {
            if !top.exists() {
                continue;
            }
            let mut item = RepoItem {
                repo: top.clone(),
                pruned: 0,
                branches: Vec::new(),
                errors: Vec::new(),
            };
            if branches {
                let found = tokio::task::spawn_blocking(move || {
                    Repo::discover(&top).and_then(|repo| orch_workspace::empty_branches(&repo))
                })
                .await
                .map_err(|e| Error::io("inspect", "a repository", std::io::Error::other(e)))?;
                match found {
                    Ok(empty) => item.branches = empty.into_iter().map(|b| b.name).collect(),
                    Err(e) => item.errors.push(e.to_string()),
                }
            }
            report.repos.push(item);
        }
        Ok(())
    }

    /// Carries out a plan. Each item's steps run in order (record, then
    /// containers, then workspace, then record and log deletion); a failed
    /// step is recorded in the item and the item stops there, so nothing is
    /// deleted whose resources are still around.
    async fn execute(&self, report: &mut CleanupReport) {
        for item in &mut report.items {
            self.execute_item(item).await;
        }
        self.execute_repos(&mut report.repos).await;
    }

    /// Prunes vanished worktree entries and deletes the planned branches.
    async fn execute_repos(&self, repos: &mut [RepoItem]) {
        for repo_item in repos {
            let top = repo_item.repo.clone();
            let layout = self.home.layout();
            let branches = repo_item.branches.clone();
            let done = tokio::task::spawn_blocking(move || {
                let repo = Repo::discover(&top)?;
                let pruned = orch_workspace::prune_worktrees(&repo, &layout)?;
                let mut errors = Vec::new();
                for name in branches {
                    let branch = orch_workspace::EmptyBranch { name };
                    if let Err(e) = orch_workspace::delete_branch(&repo, &branch) {
                        errors.push(e.to_string());
                    }
                }
                Ok::<_, orch_workspace::Error>((pruned, errors))
            })
            .await;
            match done {
                Ok(Ok((pruned, errors))) => {
                    repo_item.pruned = pruned;
                    repo_item.errors.extend(errors);
                }
                Ok(Err(e)) => repo_item.errors.push(e.to_string()),
                Err(e) => repo_item.errors.push(e.to_string()),
            }
        }
    }

    pub(crate) async fn execute_item(&self, item: &mut Item) {
        let task = item.task_id;
        // End the live record first.
        if let (Some(mark), Some(id)) = (&item.mark, task) {
            let finish = match mark {
                Mark::Lost(reason) => Finish {
                    state: State::Lost,
                    exit_code: None,
                    reason: reason.clone(),
                    at: now_ms(),
                },
                Mark::Exited => {
                    let code = self.exit_code_of(&item.containers).await;
                    Finish {
                        state: if code == Some(0) {
                            State::Succeeded
                        } else {
                            State::Failed
                        },
                        exit_code: code,
                        reason: match code {
                            Some(code) => {
                                format!("exited with code {code} while its owner was gone")
                            }
                            None => "exited while its owner was gone (code unknown)".into(),
                        },
                        at: now_ms(),
                    }
                }
            };
            if finish.state == State::Succeeded {
                // A succeeded task's workspace is not kept.
                item.keep_workspace = false;
            }
            match self.db(move |r| r.finish(&id, &finish)).await {
                Ok(_) | Err(Error::Registry(orch_registry::Error::IllegalTransition { .. })) => {}
                Err(e) => {
                    item.errors.push(format!("{e:#}"));
                    return;
                }
            }
            tracing::info!(task = %id, reason = %item.reason, "ended a live record");
        }
        // Containers: stopped gracefully if they still run a task, then
        // removed.
        for target in &item.containers {
            let stopped = match target.stop_grace {
                Some(grace) => self.stop_and_remove(&target.name, grace).await,
                None => remove_container(&self.docker, &target.name).await.map(drop),
            };
            match stopped {
                Ok(()) => {
                    tracing::info!(task = ?task, container = %target.name, reason = %item.reason, "removed container")
                }
                Err(e) => item.errors.push(format!("{e:#}")),
            }
        }
        if !item.errors.is_empty() {
            return;
        }
        // The workspace: only with its lock, its work saved first.
        if let (true, Some(id)) = (item.keep_workspace, task) {
            let _ = self
                .db(move |r| r.set_workspace_state(&id, WorkspaceState::Kept))
                .await;
        }
        if let Some(target) = item.removed_workspace() {
            match self.remove_workspace_target(target, false).await {
                Ok(()) => {
                    tracing::info!(task = ?task, path = %target.path.display(), reason = %item.reason, "removed workspace");
                    if let Some(id) = task.filter(|_| !item.record) {
                        let _ = self
                            .db(move |r| r.set_workspace_state(&id, WorkspaceState::Removed))
                            .await;
                    }
                }
                Err(e) => {
                    item.errors.push(format!("{e:#}"));
                    return;
                }
            }
        }
        if let (true, Some(id)) = (item.record, task) {
            if let Err(e) = self.db(move |r| r.delete(&id)).await {
                item.errors.push(format!("{e:#}"));
                return;
            }
            tracing::info!(task = %id, reason = %item.reason, "removed record");
        }
        item.remove_log();
    }

    /// Stops a container that still runs a task (SIGTERM, SIGKILL after
    /// `grace`), then removes it.
    pub(crate) async fn stop_and_remove(&self, name: &str, grace: Duration) -> Result<(), Error> {
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(crate::container::grace_secs(grace)).unwrap_or(10))
            .build();
        let _ = tokio::time::timeout(
            grace + Duration::from_secs(10),
            self.docker.stop_container(name, Some(options)),
        )
        .await;
        remove_container(&self.docker, name).await.map(drop)
    }

    /// The exit code Docker recorded for the first exited container.
    async fn exit_code_of(&self, containers: &[ContainerTarget]) -> Option<i64> {
        for target in containers {
            let inspected = self
                .docker
                .inspect_container(&target.name, None::<InspectContainerOptions>)
                .await
                .ok()?;
            if let Some(code) = inspected.state.and_then(|s| s.exit_code) {
                return Some(code);
            }
        }
        None
    }

    /// Removes one workspace directory if its lock is free: as a worktree
    /// (work saved to its branch first) if it still is one, else as a plain
    /// directory.
    pub(crate) async fn remove_workspace_target(
        &self,
        target: &WorkspaceTarget,
        discard: bool,
    ) -> Result<(), Error> {
        let layout = self.home.layout();
        let (project, dir_name) = (target.project.clone(), target.dir_name.clone());
        let found = tokio::task::spawn_blocking(move || {
            let Some(lock) = TaskLock::try_acquire(&layout, &project, &dir_name)? else {
                return Ok(None);
            };
            let workspace = Workspace::existing(&layout, &project, &dir_name)?;
            Ok::<_, orch_workspace::Error>(Some((lock, workspace)))
        })
        .await
        .map_err(|e| Error::io("inspect", &target.path, std::io::Error::other(e)))??;
        let Some((lock, workspace)) = found else {
            return Err(orch_workspace::Error::InUse {
                path: target.path.clone(),
            }
            .into());
        };
        match workspace {
            Some(workspace) => {
                let image = target
                    .image
                    .clone()
                    .unwrap_or_else(|| "orch-agent:dev".into());
                self.remove_workspace(workspace, lock, &image, discard)
                    .await
                    .map(drop)
            }
            None => {
                let layout = self.home.layout();
                let (project, path) = (target.project.clone(), target.path.clone());
                tokio::task::spawn_blocking(move || {
                    let removed = layout.remove_task_dir(&project, &path);
                    lock.release_and_delete();
                    removed
                })
                .await
                .map_err(|e| Error::io("remove", &target.path, std::io::Error::other(e)))??;
                Ok(())
            }
        }
    }

    /// `--all`: cancel live tasks, then remove every container, workspace,
    /// record and log of this instance. Branches stay: they hold work.
    async fn cleanup_everything(&self, options: &CleanupOptions) -> Result<CleanupReport, Error> {
        let snapshot = self.snapshot().await?;
        let mut items: Vec<Item> = Vec::new();
        let mut seen_dirs = BTreeSet::new();
        for row in &snapshot.rows {
            if options.status.is_some_and(|s| s != row.state) {
                continue;
            }
            let live = is_live(row);
            let reason = if live {
                "--all (live: cancelled first)"
            } else {
                "--all"
            };
            let item = self.full_removal(row, &snapshot, Strategy::All, reason.into());
            if let Some(w) = &item.workspace {
                seen_dirs.insert(w.path.clone());
            }
            items.push(item);
        }
        if options.status.is_none() {
            let claimed: BTreeSet<String> = items
                .iter()
                .flat_map(|i| i.containers.iter().map(|c| c.name.clone()))
                .collect();
            for container in &snapshot.containers {
                if !claimed.contains(&container.name) {
                    let mut item = Item::new(Strategy::All, container.task_id, "--all");
                    item.containers.push(ContainerTarget {
                        name: container.name.clone(),
                        stop_grace: None,
                    });
                    items.push(item);
                }
            }
            for dir in &snapshot.dirs {
                if !seen_dirs.contains(&dir.path) {
                    let mut item = Item::new(Strategy::All, dir.task_id.parse().ok(), "--all");
                    item.workspace = Some(WorkspaceTarget::of(dir, None).measured());
                    items.push(item);
                }
            }
        }
        let mut report = CleanupReport {
            dry_run: options.dry_run,
            items,
            repos: Vec::new(),
        };
        self.plan_repos(&mut report, options.branches).await?;
        if options.dry_run {
            return Ok(report);
        }

        // Live tasks first: their owners stop them gracefully and finish
        // their records; then everything goes.
        let live: Vec<&TaskRecord> = snapshot
            .rows
            .iter()
            .filter(|r| is_live(r) && options.status.is_none_or(|s| s == r.state))
            .collect();
        let longest_grace = live.iter().map(|r| r.stop_grace_ms).max().unwrap_or(0);
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::try_from(longest_grace).unwrap_or(0))
            + CANCEL_WAIT;
        for row in &live {
            let id = row.id;
            let _ = self.db(move |r| r.request_cancel(&id)).await;
        }
        for row in &live {
            let id = row.id;
            while tokio::time::Instant::now() < deadline {
                let state = self.db(move |r| r.get(&id)).await?.map(|r| r.state);
                if state.is_none_or(State::is_terminal) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let names: Vec<String> = report
            .items
            .iter()
            .flat_map(|i| i.containers.iter().map(|c| c.name.clone()))
            .collect();
        let results: BTreeMap<String, Result<_, Error>> = remove_containers(&self.docker, names)
            .await
            .into_iter()
            .collect();
        for item in &mut report.items {
            for target in &item.containers {
                if let Some(Err(e)) = results.get(&target.name) {
                    item.errors.push(format!("{e:#}"));
                }
            }
        }
        // Owners may still be settling workspaces: wait for their locks.
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        for item in &mut report.items {
            if !item.errors.is_empty() {
                continue;
            }
            if let Some(target) = &item.workspace {
                let mut result = self.remove_workspace_target(target, true).await;
                while matches!(
                    &result,
                    Err(Error::Workspace(orch_workspace::Error::InUse { .. }))
                ) && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    result = self.remove_workspace_target(target, true).await;
                }
                if let Err(e) = result {
                    item.errors.push(format!("{e:#}"));
                    continue;
                }
            }
            if let (true, Some(id)) = (item.record, item.task_id) {
                if let Err(e) = self.db(move |r| r.delete(&id)).await {
                    item.errors.push(format!("{e:#}"));
                    continue;
                }
            }
            item.remove_log();
        }
        self.execute_repos(&mut report.repos).await;
        Ok(report)
    }

    /// Removes every container of this session: those it knows it created
    /// and those whose create call it may not have seen answered. The path a
    /// dying process takes after a panic or a failed cleanup.
    pub async fn sweep_session(&self) -> Result<Vec<(String, Result<crate::Gone, Error>)>, Error> {
        let mut names: Vec<String> = self
            .list_containers(Some(&self.session.id))
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        for name in self.active.names() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let results = remove_containers(&self.docker, names).await;
        for (name, result) in &results {
            if result.is_ok() {
                self.active.remove(name);
            }
        }
        Ok(results)
    }
}
