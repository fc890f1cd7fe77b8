//! What the API asks of a daemon beyond submitting: one task or many, a
//! task's progress, disk use, where a log is, cancelling.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use orch_registry::{Listing, State, TaskRecord, now_ms};
use uuid::Uuid;

use crate::supervisor::{DaemonEvent, Supervisor};
use crate::{DuReport, Error};
use orch_protocol::Progress;

/// How long a waited-for cancel waits beyond the task's grace.
const CANCEL_SLACK: Duration = Duration::from_secs(30);

impl Supervisor {
    /// The task an id or a unique prefix of one names.
    pub async fn resolve(&self, prefix: &str) -> Result<Uuid, Error> {
        let prefix = prefix.to_owned();
        self.ctx().store.call(move |r| r.resolve(&prefix)).await
    }

    /// One task's record.
    pub async fn task(&self, prefix: &str) -> Result<TaskRecord, Error> {
        let id = self.resolve(prefix).await?;
        self.ctx()
            .store
            .call(move |r| r.get(&id))
            .await?
            .ok_or_else(|| orch_registry::Error::NotFound(prefix.to_owned()).into())
    }

    /// Records, as `orch ps --json` lists them.
    pub async fn tasks(
        &self,
        all: bool,
        state: Option<State>,
        project: Option<String>,
    ) -> Result<Vec<TaskRecord>, Error> {
        let listing = if all || state.is_some_and(State::is_terminal) {
            Listing::All
        } else {
            Listing::Live
        };
        self.ctx()
            .store
            .call(move |r| r.list_where(listing, state, project.as_deref()))
            .await
    }

    /// A task's last progress.
    pub async fn progress(&self, prefix: &str) -> Result<Progress, Error> {
        let task = self.task(prefix).await?;
        Ok(Progress {
            percent: task.progress.percent,
            message: task.progress.message,
            updated_at: task.progress.at,
        })
    }

    /// Disk use of every workspace.
    pub async fn du(&self) -> Result<DuReport, Error> {
        let layout = self.ctx().home.layout();
        tokio::task::spawn_blocking(move || DuReport::measure(&layout))
            .await
            .map_err(|e| Error::io("measure", "workspaces", std::io::Error::other(e)))?
    }

    /// Where a task's output is kept.
    pub fn log_path(&self, id: &Uuid) -> PathBuf {
        self.ctx().home.log_path(id)
    }

    /// Where `task`'s output is to be read from: this home, the registry
    /// (ended on another node), or the node that runs it.
    pub async fn log_source(&self, task: &TaskRecord) -> Result<crate::cluster::LogSource, Error> {
        let home = self.ctx().home.path().to_path_buf();
        let node = self.ctx().node_id().map(str::to_owned);
        let task = task.clone();
        self.ctx()
            .store
            .call(move |r| crate::cluster::log_source(r, &home, node.as_deref(), &task))
            .await
    }

    /// Cancels a task: a queued one where it waits, one this daemon runs
    /// through its own shutdown, one another process owns through the
    /// registry (or, its owner dead, by doing the owner's work). With
    /// `wait`, returns once the task has ended.
    pub async fn cancel(self: &Arc<Self>, prefix: &str, wait: bool) -> Result<TaskRecord, Error> {
        let id = self.resolve(prefix).await?;
        let dequeued = self
            .ctx()
            .store
            .call(move |r| r.cancel_queued(&id, "cancelled (orch cancel)", now_ms()))
            .await?;
        if dequeued {
            let record = self.task(&id.to_string()).await?;
            self.emit(DaemonEvent::TaskState {
                id,
                project: record.project.clone(),
                state: State::Cancelled,
            });
            self.ended(record.clone());
            return Ok(record);
        }
        let record = self.task(&id.to_string()).await?;
        if record.state.is_terminal() {
            return Ok(record);
        }
        let ours = self.live().get(&id).map(|live| live.shutdown.clone());
        let grace = Duration::from_millis(u64::try_from(record.stop_grace_ms).unwrap_or(0));
        match ours {
            Some(shutdown) => shutdown.stop_because("orch cancel"),
            None if wait => {
                self.orch.cancel(&id).await?;
            }
            None => {
                let me = self.clone();
                self.ctx().tracker.spawn(async move {
                    if let Err(e) = me.orch.cancel(&id).await {
                        tracing::warn!(task = %id, error = %format!("{e:#}"), "cancel failed");
                    }
                });
            }
        }
        if wait {
            let end = tokio::time::Instant::now() + grace + CANCEL_SLACK;
            let mut events = self.subscribe();
            loop {
                let now = self.task(&id.to_string()).await?;
                if now.state.is_terminal() && !self.live().contains_key(&id) {
                    return Ok(now);
                }
                if tokio::time::Instant::now() >= end {
                    return Err(Error::Timeout {
                        action: "wait for the task to end",
                        target: format!("task {id}"),
                        after: grace + CANCEL_SLACK,
                    });
                }
                tokio::select! {
                    _ = events.recv() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
        self.task(&id.to_string()).await
    }
}
