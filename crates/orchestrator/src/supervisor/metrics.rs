//! The daemon's metrics (SPEC 11), in the Prometheus exposition format.
//!
//! Counters and histograms are fed by the supervisor as things happen;
//! the gauges (tasks per state, stuck tasks, workspace bytes) and the reaped
//! counters are read when scraped: the registry and the live set are their
//! truth. No task id is ever a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::reconcile::{CleanupReport, Strategy};

/// The content type of the OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text (what `promtool check
/// metrics` reads, and what a scraper that does not ask for OpenMetrics
/// gets).
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StrategyLabel {
    strategy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabel {
    by: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

/// Every metric of a daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    submitted: Counter,
    finished: Family<StateLabel, Counter>,
    tasks: Family<StateLabel, Gauge>,
    duration: Histogram,
    queue_wait: Histogram,
    cleanup_runs: Family<StrategyLabel, Counter>,
    removed: Family<ResourceLabel, Counter>,
    freed: Counter,
    reaped: Family<ByLabel, Counter>,
    stuck: Gauge,
    workspace_bytes: Gauge,
    webhook_failures: Family<EventLabel, Counter>,
    nodes: Family<StateLabel, Gauge>,
}

/// Buckets from 100 ms to about 1.5 days.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.1, 4.0, 10)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let submitted = Counter::default();
        registry.register(
            "orch_tasks_submitted",
            "Tasks submitted to this daemon",
            submitted.clone(),
        );
        let finished = Family::<StateLabel, Counter>::default();
        registry.register(
            "orch_tasks_finished",
            "Tasks this daemon ran that ended, by their final state",
            finished.clone(),
        );
        let tasks = Family::<StateLabel, Gauge>::default();
        registry.register(
            "orch_tasks",
            "Live tasks of this home (queued, creating, running; saving: ended, its work being brought home)",
            tasks.clone(),
        );
        let duration = Histogram::new(seconds_buckets());
        registry.register_with_unit(
            "orch_task_duration",
            "From a task's start to its end",
            Unit::Seconds,
            duration.clone(),
        );
        let queue_wait = Histogram::new(seconds_buckets());
        registry.register_with_unit(
            "orch_queue_wait",
            "From a task's submission to its claim",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let cleanup_runs = Family::<StrategyLabel, Counter>::default();
        registry.register(
            "orch_cleanup_runs",
            "Cleanup runs of this daemon, by strategy",
            cleanup_runs.clone(),
        );
        let removed = Family::<ResourceLabel, Counter>::default();
        registry.register(
            "orch_cleanup_removed",
            "What this daemon's cleanups removed, by resource",
            removed.clone(),
        );
        let freed = Counter::default();
        registry.register_with_unit(
            "orch_cleanup_freed",
            "Disk space this daemon's cleanups freed (workspaces and logs)",
            Unit::Bytes,
            freed.clone(),
        );
        let reaped = Family::<ByLabel, Counter>::default();
        registry.register(
            "orch_reaped",
            "Tasks of this home whose owner died, ended by the watchdog, reconciliation, the stale cleanup or (in a cluster) a rescue",
            reaped.clone(),
        );
        let stuck = Gauge::default();
        registry.register(
            "orch_stuck_tasks",
            "Running tasks with no progress and no output for their stuck_after",
            stuck.clone(),
        );
        let workspace_bytes = Gauge::default();
        registry.register_with_unit(
            "orch_workspace",
            "Disk used by this home's workspaces, as measured at the last cleanup",
            Unit::Bytes,
            workspace_bytes.clone(),
        );
        let webhook_failures = Family::<EventLabel, Counter>::default();
        registry.register(
            "orch_webhook_failures",
            "Webhook deliveries given up after their retries, or dropped, by event",
            webhook_failures.clone(),
        );
        let nodes = Family::<StateLabel, Gauge>::default();
        registry.register(
            "orch_nodes",
            "Nodes of the cluster sharing this daemon's registry, by state (live, dead, left); none on one host",
            nodes.clone(),
        );
        for state in ["queued", "creating", "running"] {
            drop(tasks.get_or_create(&label(state)));
        }
        for state in ["succeeded", "failed", "timed_out", "cancelled", "lost"] {
            drop(finished.get_or_create(&label(state)));
        }
        for strategy in ["orphans", "completed", "stale", "old", "all"] {
            drop(cleanup_runs.get_or_create(&StrategyLabel {
                strategy: strategy.into(),
            }));
        }
        for resource in ["containers", "workspaces", "records", "logs"] {
            drop(removed.get_or_create(&ResourceLabel {
                resource: resource.into(),
            }));
        }
        for event in crate::config::WEBHOOK_EVENTS {
            drop(webhook_failures.get_or_create(&EventLabel {
                event: event.into(),
            }));
        }
        for by in ["watchdog", "reconcile", "cleanup", "rescue"] {
            drop(reaped.get_or_create(&ByLabel { by: by.into() }));
        }
        Metrics {
            registry,
            submitted,
            finished,
            tasks,
            duration,
            queue_wait,
            cleanup_runs,
            removed,
            freed,
            reaped,
            stuck,
            workspace_bytes,
            webhook_failures,
            nodes,
        }
    }

    pub(crate) fn submitted(&self) {
        self.submitted.inc();
    }

    pub(crate) fn claimed(&self, waited: std::time::Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    pub(crate) fn finished(&self, state: orch_registry::State, ran: Option<std::time::Duration>) {
        self.finished.get_or_create(&label(state.as_str())).inc();
        if let Some(ran) = ran {
            self.duration.observe(ran.as_secs_f64());
        }
    }

    pub(crate) fn cleaned(&self, strategy: Strategy, report: &CleanupReport) {
        if report.dry_run {
            return;
        }
        self.cleanup_runs
            .get_or_create(&StrategyLabel {
                strategy: strategy.name().into(),
            })
            .inc();
        let (_, total) = report.counts();
        for (resource, n) in [
            ("containers", total.containers),
            ("workspaces", total.workspaces),
            ("records", total.records),
            ("logs", total.logs),
        ] {
            self.removed
                .get_or_create(&ResourceLabel {
                    resource: resource.into(),
                })
                .inc_by(n);
        }
        self.freed.inc_by(total.bytes);
    }

    pub(crate) fn set_workspace_bytes(&self, bytes: u64) {
        self.workspace_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A webhook delivery given up.
    pub fn webhook_failed(&self, event: &str) {
        self.webhook_failures
            .get_or_create(&EventLabel {
                event: event.into(),
            })
            .inc();
    }

    /// The text exposition, with the scraped values set first: live tasks
    /// per state, stuck tasks, and the home's reaped counts (kept in the
    /// registry by whoever reaped: a watchdog, reconciliation, a cleanup).
    pub(crate) fn encode(
        &self,
        live: &[(String, u64)],
        stuck: usize,
        reaped: &[(String, u64)],
        nodes: &[(String, u64)],
    ) -> String {
        for state in ["live", "dead", "left"] {
            if let Some((_, n)) = nodes.iter().find(|(s, _)| s == state) {
                self.nodes
                    .get_or_create(&label(state))
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            } else if !nodes.is_empty() {
                self.nodes.get_or_create(&label(state)).set(0);
            }
        }
        for state in ["queued", "creating", "running", "saving"] {
            let n = live.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            self.tasks
                .get_or_create(&label(state))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.stuck.set(i64::try_from(stuck).unwrap_or(i64::MAX));
        for (by, n) in reaped {
            let counter = self.reaped.get_or_create(&ByLabel { by: by.clone() });
            // The registry's count is the truth; the counter catches up.
            let have = counter.get();
            if *n > have {
                counter.inc_by(n - have);
            }
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "failed to encode the metrics");
        }
        text
    }
}

fn label(state: &str) -> StateLabel {
    StateLabel {
        state: state.into(),
    }
}

/// OpenMetrics text as the classic Prometheus format has it: a counter's
/// family is named with its `_total`, and there are no `# UNIT` or `# EOF`
/// lines.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counters_with_their_total_and_drops_openmetrics_lines() {
        let metrics = Metrics::new();
        metrics.submitted();
        metrics.finished(
            orch_registry::State::Failed,
            Some(std::time::Duration::from_secs(2)),
        );
        let open = metrics.encode(&[("queued".to_owned(), 3)], 1, &[], &[]);
        assert!(open.contains("# TYPE orch_tasks_submitted counter"));
        assert!(open.ends_with("# EOF\n"));
        let text = classic(&open);
        assert!(text.contains("# HELP orch_tasks_submitted_total Tasks submitted"));
        assert!(text.contains("# TYPE orch_tasks_submitted_total counter"));
        assert!(text.contains("orch_tasks_submitted_total 1"));
        assert!(text.contains("orch_tasks_finished_total{state=\"failed\"} 1"));
        assert!(text.contains("orch_tasks{state=\"queued\"} 3"));
        assert!(text.contains("orch_stuck_tasks 1"));
        assert!(text.contains("# TYPE orch_task_duration_seconds histogram"));
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
    }
}
