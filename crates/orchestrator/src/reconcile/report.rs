//! What `orch cleanup` is asked to do, and what it reports.

use orch_protocol::{
    BranchCleanup, CleanupAnswer, CleanupItem, ItemLog, ItemWorkspace, RepoCleanup,
};
use std::path::PathBuf;
use std::time::Duration;

use orch_registry::State;

use crate::config::CleanupThresholds;
use crate::teardown::{Executed, Step, Teardown};
use crate::{ConfigError, parse_duration};

/// Which retention strategy to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strategy {
    /// Three-way reconciliation of registry, runtime and disk.
    Orphans,
    /// Finished tasks past their age.
    Completed,
    /// Live records whose lease expired and whose owner is dead.
    Stale,
    /// Any task past the old age, except a live one.
    Old,
    /// Orphans, then completed, stale and old.
    All,
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

    /// The strategy of a name.
    pub fn parse(name: &str) -> Option<Strategy> {
        [
            Strategy::All,
            Strategy::Orphans,
            Strategy::Completed,
            Strategy::Stale,
            Strategy::Old,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    pub(crate) fn includes(self, other: Strategy) -> bool {
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

/// One task (or ownerless object) a cleanup selected: why, its teardown
/// plan, and what carrying it out did.
#[derive(Debug, Clone)]
pub struct Item {
    /// The strategy that selected it.
    pub strategy: Strategy,
    /// Why.
    pub reason: String,
    /// Its teardown.
    pub plan: Teardown,
    /// The steps done, once executed.
    pub steps: Vec<Step>,
    /// What failed, each with its cause.
    pub errors: Vec<String>,
    /// It was live, and this cleanup had its owner stop it first (`--all`):
    /// what its owner removed counts as this cleanup's.
    pub stopped_by_owner: bool,
}

impl Item {
    /// An item not executed yet.
    pub fn new(strategy: Strategy, reason: impl Into<String>, plan: Teardown) -> Item {
        Item {
            strategy,
            reason: reason.into(),
            plan,
            steps: Vec::new(),
            errors: Vec::new(),
            stopped_by_owner: false,
        }
    }

    pub(crate) fn record(&mut self, executed: Executed) {
        self.steps.extend(executed.steps);
        self.errors.extend(executed.errors);
    }

    /// The task, if there is one.
    pub fn task_id(&self) -> Option<uuid::Uuid> {
        self.plan.task
    }
}

/// Repository-level work: vanished worktree entries of older orch
/// versions, and task branches that lose nothing.
#[derive(Debug, Clone)]
pub struct RepoItem {
    /// The repository.
    pub repo: PathBuf,
    /// Worktree entries pruned (known only after execution).
    pub pruned: usize,
    /// `orch/*` branches that lose nothing, deleted (or to delete).
    pub branches: Vec<BranchCleanup>,
    /// `orch/*` branches of records gone, with commits of their own: kept.
    pub kept: Vec<BranchCleanup>,
    /// What went wrong.
    pub errors: Vec<String>,
}

/// A cleanup's plan and, unless a dry run, what executing it did.
#[derive(Debug, Default, Clone)]
pub struct CleanupReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Per task (or ownerless object).
    pub items: Vec<Item>,
    /// Per repository.
    pub repos: Vec<RepoItem>,
    /// Mirrors of projects from a git server, unused too long: removed.
    pub mirrors: Vec<orch_protocol::MirrorCleanup>,
}

impl CleanupReport {
    /// Items that failed in part, with each failure.
    pub fn failures(&self) -> impl Iterator<Item = (&Item, &str)> {
        self.items
            .iter()
            .flat_map(|i| i.errors.iter().map(move |e| (i, e.as_str())))
    }
}

pub use orch_protocol::Counts;

impl Item {
    /// What this item did, once executed; what it would do, in a dry run.
    pub fn counts(&self, dry_run: bool) -> Counts {
        use crate::teardown::{RecordEnd, Step};
        // A task selected only to say why it is left as it is (work not
        // yet delivered) is not counted as cleaned.
        let nothing = matches!(self.plan.record, RecordEnd::Leave)
            && self.plan.containers.is_empty()
            && self.plan.workspace.is_none()
            && !self.plan.delete_record
            && self.plan.log.is_none();
        let mut counts = Counts {
            tasks: u64::from(self.plan.task.is_some() && !nothing),
            ..Counts::default()
        };
        if dry_run {
            counts.marked_lost = u64::from(matches!(
                &self.plan.record,
                RecordEnd::Finish(crate::teardown::Ending::Lost(_))
            ));
            counts.containers = self.plan.containers.len() as u64;
            counts.workspaces = u64::from(self.plan.removed_workspace().is_some());
            counts.records = u64::from(self.plan.delete_record);
            counts.logs = u64::from(self.plan.log.is_some());
            counts.bytes = self.plan.bytes();
            return counts;
        }
        for step in &self.steps {
            match step {
                Step::RecordEnded { state, .. } => {
                    counts.marked_lost += u64::from(*state == State::Lost);
                }
                Step::ContainerRemoved { gone, .. } => {
                    counts.containers +=
                        u64::from(*gone == crate::runtime::Gone::Removed || self.stopped_by_owner);
                }
                Step::Workspace(crate::WorkspaceFate::Removed { size, .. }) => {
                    counts.workspaces += 1;
                    counts.bytes += size
                        .bytes
                        .max(self.plan.workspace.as_ref().map_or(0, |w| w.target.bytes));
                }
                Step::Workspace(crate::WorkspaceFate::Unwound { .. }) => {
                    counts.workspaces += 1;
                    counts.bytes += self.plan.workspace.as_ref().map_or(0, |w| w.target.bytes);
                }
                Step::Workspace(crate::WorkspaceFate::Kept { .. }) => {}
                Step::RecordDeleted => counts.records += 1,
                Step::LogDeleted { bytes } => {
                    counts.logs += 1;
                    counts.bytes += bytes;
                }
            }
        }
        if !self.errors.is_empty() && self.steps.is_empty() {
            counts.tasks = 0;
        }
        counts
    }
}

impl CleanupReport {
    /// Counts per strategy (in the order orphans, completed, stale, old,
    /// all) and in total. A task counts once, under the first strategy
    /// that took it.
    pub fn counts(&self) -> (Vec<(Strategy, Counts)>, Counts) {
        let mut per: std::collections::BTreeMap<Strategy, Counts> = Default::default();
        let mut total = Counts::default();
        let mut seen = std::collections::BTreeSet::new();
        for item in &self.items {
            let mut counts = item.counts(self.dry_run);
            if let Some(task) = item.plan.task {
                if !seen.insert(task) {
                    counts.tasks = 0;
                }
            }
            per.entry(item.strategy).or_default().add(&counts);
            total.add(&counts);
        }
        (per.into_iter().collect(), total)
    }

    /// `Cleaned up 8 task(s): 5 completed, 2 stale, 1 old; 3 containers, 2
    /// workspaces, 1.2 GiB freed`.
    pub fn summary(&self) -> String {
        let (per, total) = self.counts();
        let breakdown: Vec<String> = per
            .iter()
            .filter(|(_, c)| c.tasks > 0)
            .map(|(s, c)| format!("{} {}", c.tasks, s.name()))
            .collect();
        let branches: usize = self.repos.iter().map(|r| r.branches.len()).sum();
        let head = if self.dry_run {
            "Would clean up"
        } else {
            "Cleaned up"
        };
        let mut line = format!("{head} {} task(s)", total.tasks);
        if !breakdown.is_empty() {
            line.push_str(&format!(": {}", breakdown.join(", ")));
        }
        line.push_str(&format!(
            "; {} containers, {} workspaces, {} {}",
            total.containers,
            total.workspaces,
            human_bytes(total.bytes),
            if self.dry_run { "to free" } else { "freed" }
        ));
        if branches > 0 {
            let noun = if branches == 1 { "branch" } else { "branches" };
            line.push_str(&format!("; {branches} {noun}"));
        }
        line
    }

    /// The report as `orch cleanup --json` prints it and the daemon's
    /// `POST /v1/cleanup` answers it.
    pub fn answer(&self) -> CleanupAnswer {
        let (per, total) = self.counts();
        let items = self
            .items
            .iter()
            .map(|item| {
                let plan = &item.plan;
                CleanupItem {
                    strategy: item.strategy.name().to_owned(),
                    task_id: plan.task,
                    reason: item.reason.clone(),
                    mark: match &plan.record {
                        crate::teardown::RecordEnd::Finish(e) => Some(e.state().as_str().into()),
                        crate::teardown::RecordEnd::FromExit(_) => Some("exited".into()),
                        crate::teardown::RecordEnd::Requeue(_) => Some("queued".into()),
                        crate::teardown::RecordEnd::Retry(_) => Some("retried or lost".into()),
                        crate::teardown::RecordEnd::Leave => None,
                    },
                    containers: plan.containers.iter().map(|c| c.name.clone()).collect(),
                    workspace: plan.workspace.as_ref().map(|w| ItemWorkspace {
                        path: w.target.path.clone(),
                        bytes: w.target.bytes,
                        kept: plan.keeps_workspace(),
                    }),
                    record: plan.delete_record,
                    log: plan.log.as_ref().map(|(path, bytes)| ItemLog {
                        path: path.clone(),
                        bytes: *bytes,
                    }),
                    bytes: plan.bytes(),
                    done: item.done(),
                    errors: item.errors.clone(),
                }
            })
            .collect();
        let repos = self
            .repos
            .iter()
            .map(|r| RepoCleanup {
                repo: r.repo.clone(),
                pruned: r.pruned,
                branches: r.branches.clone(),
                kept: r.kept.clone(),
                errors: r.errors.clone(),
            })
            .collect();
        CleanupAnswer {
            dry_run: self.dry_run,
            summary: self.summary(),
            strategies: per.iter().map(|(s, c)| (s.name().to_owned(), *c)).collect(),
            total,
            items,
            repos,
            mirrors: self.mirrors.clone(),
        }
    }
}

impl Item {
    /// What it did, in a few words per step.
    pub fn done(&self) -> Vec<String> {
        let mut done: Vec<String> = self.steps.iter().map(describe).collect();
        if self.stopped_by_owner {
            done.insert(0, "stopped by its owner".into());
        }
        done
    }
}

/// One step done, in a few words.
pub fn describe(step: &crate::teardown::Step) -> String {
    use crate::teardown::Step;
    match step {
        Step::RecordEnded { state, reason } => format!("ended {state} ({reason})"),
        Step::ContainerRemoved { name, gone } => match gone {
            crate::runtime::Gone::Removed => format!("removed container {name}"),
            crate::runtime::Gone::AlreadyGone => format!("container {name} already gone"),
        },
        Step::Workspace(crate::WorkspaceFate::Removed {
            path,
            size,
            warning,
            ..
        }) => {
            let removed = format!(
                "removed workspace {} ({})",
                path.display(),
                human_bytes(size.bytes)
            );
            match warning {
                // What its branch lacks, e.g. files too large to save.
                Some(warning) => format!("{removed}; {warning}"),
                None => removed,
            }
        }
        Step::Workspace(crate::WorkspaceFate::Unwound { path }) => {
            format!("removed unused workspace {}", path.display())
        }
        Step::Workspace(crate::WorkspaceFate::Kept { path, .. }) => {
            format!("kept workspace {}", path.display())
        }
        Step::RecordDeleted => "deleted record".into(),
        Step::LogDeleted { bytes } => format!("deleted log ({})", human_bytes(*bytes)),
    }
}

/// Bytes in binary units, one decimal: `1.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
