//! One run in progress: what it holds, the record it writes first, and
//! the facts its teardown is planned from.

use std::time::Duration;

use orch_registry::{State, TaskOwner, TaskRecord, TaskWorkspace};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::Ctx;
use crate::events::{Event, EventSink};
use crate::guard::ContainerGuard;
use crate::run::{Outcome, PreparedTask};
use crate::teardown::{RepoFacts, TaskFacts, WorkspaceFacts, WorkspacePolicy};
use crate::workspace::HeldWorkspace;
use crate::{Error, Shutdown, leases, session};

/// How long output may keep arriving after the container ended.
pub(super) const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// One run in progress, and everything its teardown needs.
pub(super) struct TaskRun<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) prepared: PreparedTask,
    pub(super) name: String,
    pub(super) shutdown: Shutdown,
    pub(super) sink: EventSink,
    pub(super) guard: Option<ContainerGuard>,
    pub(super) pump: Option<JoinHandle<()>>,
    /// Copy this process's input to the task's (`-i`) and make its
    /// terminal follow this one's size (`-t`); not tracked (a read of a
    /// quiet terminal never ends): stopped when the run ends.
    pub(super) input: Vec<JoinHandle<()>>,
    /// True once the run is over (the container exited, or was stopped):
    /// the pump's stream may end for good.
    pub(super) over: watch::Sender<bool>,
    /// True once the container was started.
    pub(super) ran: watch::Sender<bool>,
    pub(super) held: Option<HeldWorkspace>,
    pub(super) started: bool,
    /// The task's egress forwarder (and network), if it has one.
    pub(super) egress: Option<String>,
}

impl TaskRun<'_> {
    /// Runs a prepared task to its end and tears it down.
    pub(super) async fn start(
        ctx: &Ctx,
        prepared: PreparedTask,
        shutdown: Shutdown,
        sink: EventSink,
    ) -> Result<Outcome, Error> {
        let mut run = TaskRun {
            ctx,
            // A later attempt's container has a name of its own: one
            // engine may still hold the earlier attempt's, and a fenced
            // node acting on that one never touches this one.
            name: match prepared.attempt {
                ..=1 => session::container_name(&prepared.task_id),
                n => format!("{}-{n}", session::container_name(&prepared.task_id)),
            },
            prepared,
            // The task's own shutdown: stopped by the caller's, or alone by
            // a cancel request.
            shutdown: shutdown.child(),
            sink,
            guard: None,
            pump: None,
            input: Vec::new(),
            over: watch::channel(false).0,
            ran: watch::channel(false).0,
            held: None,
            started: false,
            egress: None,
        };
        run.run().await
    }

    async fn run(&mut self) -> Result<Outcome, Error> {
        let ctx = self.ctx;
        let task_id = self.prepared.task_id;
        // Nothing exists yet, unless a daemon claimed the record: then the
        // teardown below ends it.
        if self.shutdown.is_stopping() && !self.prepared.claimed {
            return Err(interrupted(&self.shutdown));
        }
        // Record first: the row exists before any resource does; the id is
        // shown only once it does.
        let record = self.record();
        if self.prepared.claimed {
            ctx.store.call(move |r| r.update_planned(&record)).await?;
        } else {
            ctx.store.call(move |r| r.insert(&record)).await?;
        }
        self.sink.send(Event::Planned {
            task_id,
            container: self.name.clone(),
        });

        let (progress_tx, progress_rx) = watch::channel(None);
        ctx.leases
            .add(self.prepared.holds(), self.shutdown.clone(), progress_rx);
        let ending = match self.create(progress_tx).await {
            Ok(None) => self.supervise().await,
            Ok(Some(ending)) => Ok(ending),
            Err(e) => Err(e),
        };
        let result = self.finish(ending).await;
        ctx.leases.remove(&self.prepared.holds()).await;
        result
    }

    /// The record written before anything is created.
    fn record(&self) -> TaskRecord {
        let request = &self.prepared.request;
        let settings = &request.project.settings;
        let session = &self.ctx.session;
        let planned = self.planned_workspace();
        let repo = self.prepared.repo.as_ref();
        let mut record = TaskRecord::new(
            self.prepared.task_id,
            &request.project.name,
            &request.desc,
            State::Creating,
            &self.name,
            &settings.image,
        );
        record.name = request.name.clone();
        record.stop_grace_ms = i64::try_from(settings.stop_grace.as_millis()).unwrap_or(i64::MAX);
        record.owner = TaskOwner {
            session: session.id.to_string(),
            pid: i64::from(session.owner.pid),
            start: i64::try_from(session.owner.start).unwrap_or(i64::MAX),
            boot: session.owner.boot.clone(),
            lease_until: Some(leases::lease_until(self.ctx.leases.lease())),
            detached: request.detached,
            attempt: self.prepared.attempt,
            node_id: self.ctx.node.as_ref().map(|n| n.id.clone()),
            node: self.ctx.node.as_ref().map(|n| n.name.clone()),
        };
        record.workspace = TaskWorkspace {
            path: planned.as_ref().map(|w| w.path.display().to_string()),
            branch: planned.as_ref().map(|w| w.branch.clone()),
            repo: repo.map(|(r, _)| r.top.display().to_string()),
            state: None,
            keep_failed_workspace: settings.keep_failed_workspace,
            keep_workspace: request.keep_workspace,
            base: repo.map(|(_, base)| base.clone()),
            git_dir: repo.map(|(r, _)| r.common_dir.display().to_string()),
            remote: repo.and_then(|_| self.remote()),
            delivered: None,
        };
        record.queue.max_parallel = settings.max_parallel.map(i64::from);
        record
    }

    /// The URL the task's branch is pushed to, for a project from a git
    /// server.
    pub(super) fn remote(&self) -> Option<String> {
        self.prepared
            .request
            .project
            .remote
            .as_ref()
            .map(|r| r.url.clone())
    }

    pub(super) fn planned_workspace(&self) -> Option<orch_workspace::Workspace> {
        let (repo, base) = self.prepared.repo.as_ref()?;
        orch_workspace::Workspace::planned(
            &self.ctx.home.layout(),
            repo,
            &self.prepared.request.project.name,
            &self.prepared.task_id.to_string(),
            base,
        )
        .ok()
    }

    /// What the teardown policy needs to know of this task.
    pub(super) fn facts(&self) -> TaskFacts {
        let request = &self.prepared.request;
        let settings = &request.project.settings;
        let workspace = self.planned_workspace().map(|w| WorkspaceFacts {
            path: w.path.clone(),
            repo: self.prepared.repo.as_ref().map(|(repo, base)| RepoFacts {
                top: repo.top.clone(),
                git_dir: repo.common_dir.clone(),
                base: base.clone(),
                remote: self.remote(),
                description: Some(self.prepared.request.desc.clone()),
                taken_over: None,
            }),
        });
        TaskFacts {
            id: self.prepared.task_id,
            attempt: self.prepared.attempt,
            project: request.project.name.clone(),
            state: Some(if self.started {
                State::Running
            } else {
                State::Creating
            }),
            started: self.started,
            image: settings.image.clone(),
            stop_grace: settings.stop_grace,
            policy: WorkspacePolicy {
                keep_workspace: request.keep_workspace,
                keep_failed_workspace: settings.keep_failed_workspace,
            },
            workspace,
            workspace_settled: false,
            requeue: self.prepared.claimed,
        }
    }
}

/// Why the task was stopped, and what forced the stop if it was forced:
/// `"SIGHUP"`, `"SIGINT, forced by SIGTERM"`.
pub(super) fn stopped_by(shutdown: &Shutdown) -> String {
    let reason = shutdown.reason().unwrap_or_else(|| "shutdown".into());
    match shutdown.forced_by() {
        Some(forced) if shutdown.is_forced() => format!("{reason}, forced by {forced}"),
        _ => reason,
    }
}

pub(crate) fn interrupted(shutdown: &Shutdown) -> Error {
    Error::Interrupted {
        reason: stopped_by(shutdown),
    }
}
