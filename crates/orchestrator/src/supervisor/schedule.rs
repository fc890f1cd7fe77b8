//! The cleanup schedule: reconciliation at start, the `all` strategy every
//! interval, one after submissions at most once a minute, and the ones
//! asked for through the API; each report kept for the dashboard and told.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_protocol::RecentCleanup;
use orch_registry::now_ms;

use crate::reconcile::{CleanupOptions, CleanupReport, Strategy};
use crate::supervisor::{DaemonEvent, Supervisor};
use crate::{Error, Shutdown};

/// How long a cleanup after a submission may take.
const PIGGYBACK_LIMIT: Duration = Duration::from_secs(30);
/// Submissions trigger a cleanup at most this often.
const PIGGYBACK_EVERY: Duration = Duration::from_secs(60);
/// Cleanups remembered for the dashboard.
const RECENT_CLEANUPS: usize = 20;

impl Supervisor {
    /// After a submission, a cleanup in the background if none ran for a
    /// while: bounded, never delaying the answer.
    pub(super) fn piggyback_cleanup(self: &Arc<Self>) {
        let me = self.clone();
        self.ctx().tracker.spawn(async move {
            let Ok(mut last) = me.cleaning.try_lock() else {
                return; // one is running
            };
            if last.is_some_and(|at| at.elapsed() < PIGGYBACK_EVERY) {
                return;
            }
            let options = me.scheduled_options();
            let report = tokio::time::timeout(PIGGYBACK_LIMIT, me.orch.cleanup(&options)).await;
            *last = Some(Instant::now());
            drop(last);
            match report {
                Ok(Ok(report)) => me.cleaned("submission", Strategy::All, &report),
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "cleanup after a submission failed")
                }
                Err(_) => tracing::warn!("cleanup after a submission did not finish in time"),
            }
        });
    }

    pub(super) fn scheduled_options(&self) -> CleanupOptions {
        CleanupOptions {
            strategy: Strategy::All,
            thresholds: self.config.thresholds,
            ..CleanupOptions::default()
        }
    }

    pub(super) async fn reconcile_at_start(self: &Arc<Self>) {
        let mut last = self.cleaning.lock().await;
        match self.orch.reconcile(Duration::from_secs(60)).await {
            Ok(report) => self.cleaned("start", Strategy::Orphans, &report),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "reconciliation at start failed"),
        }
        *last = Some(Instant::now());
    }

    pub(super) async fn cleanup_schedule(self: &Arc<Self>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = shutdown.stopping() => return,
                () = tokio::time::sleep(self.config.cleanup_interval) => {}
            }
            let mut last = self.cleaning.lock().await;
            match self.orch.cleanup(&self.scheduled_options()).await {
                Ok(report) => self.cleaned("schedule", Strategy::All, &report),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "scheduled cleanup failed"),
            }
            *last = Some(Instant::now());
        }
    }

    pub(super) fn cleaned(
        self: &Arc<Self>,
        trigger: &str,
        strategy: Strategy,
        report: &CleanupReport,
    ) {
        for (item, error) in report.failures() {
            tracing::warn!(task = ?item.task_id(), error, "cleanup step failed");
        }
        self.metrics.cleaned(strategy, report);
        {
            let mut recent = self
                .recent_cleanups
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT_CLEANUPS {
                recent.pop_front();
            }
            // The counts, not the items: a cleanup may take thousands.
            let answer = report.answer();
            recent.push_back(RecentCleanup {
                dry_run: answer.dry_run,
                summary: answer.summary,
                strategies: answer.strategies,
                total: answer.total,
                trigger: trigger.to_owned(),
                strategy: strategy.name().to_owned(),
                at: now_ms(),
            });
        }
        // What the workspaces hold now, for the gauge: measured in the
        // background (it walks trees).
        let me = self.clone();
        self.ctx().tracker.spawn(async move {
            match me.du().await {
                Ok(du) => me.metrics.set_workspace_bytes(du.total.bytes),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "failed to measure workspaces"),
            }
        });
        tracing::info!(trigger, summary = %report.summary(), "cleanup done");
        self.emit(DaemonEvent::CleanupDone {
            trigger: trigger.to_owned(),
            report: report.answer(),
        });
    }

    /// A cleanup asked for (`POST /v1/cleanup`); waits its turn behind one
    /// that runs.
    pub async fn cleanup(
        self: &Arc<Self>,
        options: &CleanupOptions,
    ) -> Result<CleanupReport, Error> {
        let mut last = self.cleaning.lock().await;
        let report = self.orch.cleanup(options).await?;
        if !options.dry_run {
            *last = Some(Instant::now());
            let strategy = if options.all {
                Strategy::All
            } else {
                options.strategy
            };
            self.cleaned("request", strategy, &report);
        }
        Ok(report)
    }
}
