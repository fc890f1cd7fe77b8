//! Running one task in a throwaway container, from its id to its removal.
//!
//! The shape of a run: check the inputs (image, repository, ref), write the
//! record, take the workspace lock and create the worktree, arm the guard,
//! create, attach, start, then wait for whichever comes first of the
//! container's exit, the task's deadline and the shutdown trigger. Whatever
//! happened, the run ends in the same place: output drained into the log,
//! the record finished, the container removed on a deadline of its own, the
//! workspace kept or removed by policy. Only if that place is never reached
//! (the future was dropped, or a panic unwound through it) does the guard act
//! instead, and the record is left live for reconciliation to find.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::AttachContainerOptionsBuilder;
use orch_registry::{Finish, State, TaskRecord, WorkspaceState, now_ms};
use orch_workspace::{Repo, Workspace};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Project, WorkspaceMode};
use crate::container::{deadline, not_invoked_code, wait_exit};
use crate::events::{Event, EventSink, Observer, StopReason};
use crate::guard::ContainerGuard;
use crate::output::{finish_pump, spawn_pump};
use crate::remove::{Gone, remove_container};
use crate::watchdog::Registered;
use crate::workspace::{HeldWorkspace, WorkspaceFate, keeps_workspace};
use crate::{Error, Orchestrator, Shutdown, docker, failpoint, labels, lease};

/// How long output may keep arriving after the container ended.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the observer may take to show what is queued at the end.
const OBSERVER_DEADLINE: Duration = Duration::from_secs(10);

/// A task to run: a project and a description.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// The project, with its resolved settings.
    pub project: Project,
    /// The task description; replaces `{desc}` in the command.
    pub desc: String,
    /// Where the workspace branch starts (default: the project's HEAD).
    pub git_ref: Option<String>,
    /// Keep (`Some(true)`) or remove (`Some(false)`) the workspace whatever
    /// the outcome; `None` applies the policy.
    pub keep_workspace: Option<bool>,
    /// Runs under a background supervisor rather than a terminal.
    pub detached: bool,
    /// A predetermined id (a supervisor running what another process
    /// announced); `None` for a fresh one.
    pub task_id: Option<Uuid>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit code, or the command could not be invoked.
    Failed,
    /// Its timeout passed and it was stopped.
    TimedOut,
    /// Shutdown or a cancel request stopped it.
    Cancelled,
}

impl Status {
    fn state(self) -> State {
        match self {
            Status::Succeeded => State::Succeeded,
            Status::Failed => State::Failed,
            Status::TimedOut => State::TimedOut,
            Status::Cancelled => State::Cancelled,
        }
    }
}

/// The result of a run, once its container is gone.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The task id.
    pub task_id: Uuid,
    /// The container's name.
    pub container: String,
    /// How it ended.
    pub status: Status,
    /// The task's exit code, when it ended by itself (126/127 when the command
    /// could not be invoked).
    pub exit_code: Option<i64>,
    /// Why it was stopped, when it was: `"SIGINT"`, `"orch cancel"`, ...
    pub stopped_by: Option<String>,
    /// What became of its workspace, if it had one.
    pub workspace: Option<WorkspaceFate>,
}

/// The checked inputs of a run, ready to create things from.
#[derive(Debug)]
pub struct PreparedTask {
    request: TaskRequest,
    task_id: Uuid,
    repo: Option<Repo>,
}

impl PreparedTask {
    /// The id the task will have.
    pub fn task_id(&self) -> Uuid {
        self.task_id
    }
}

/// How supervision ended, before cleanup.
enum Ending {
    Exited(i64),
    TimedOut,
    Cancelled,
}

impl Orchestrator {
    /// Checks everything a run needs before anything is created: the image
    /// (pulled if missing), the repository and ref of a worktree workspace.
    /// Bad input fails here, leaving no trace.
    pub async fn prepare(&self, request: TaskRequest) -> Result<PreparedTask, Error> {
        self.prepare_with(request, &EventSink::discard()).await
    }

    async fn prepare_with(
        &self,
        request: TaskRequest,
        sink: &EventSink,
    ) -> Result<PreparedTask, Error> {
        self.ensure_image(&request.project.settings.image, sink)
            .await?;
        let repo = match request.project.settings.workspace {
            WorkspaceMode::Worktree => Some(
                self.find_repo(&request.project.path, request.git_ref.as_deref())
                    .await?,
            ),
            WorkspaceMode::None => None,
        };
        Ok(PreparedTask {
            task_id: request.task_id.unwrap_or_else(new_task_id),
            request,
            repo,
        })
    }

    /// Prepares and runs one task to its end, and removes its container,
    /// whichever way it ends. `shutdown` stops it from outside; `observer`
    /// is shown its id, output, progress and cleanup as they happen.
    pub async fn run_task(
        &self,
        request: TaskRequest,
        shutdown: Shutdown,
        observer: Box<dyn Observer>,
    ) -> Result<Outcome, Error> {
        let (sink, observer_thread) = EventSink::spawn(observer);
        // A pull can take long: Ctrl+C stops it, before anything exists.
        let prepared = tokio::select! {
            prepared = self.prepare_with(request, &sink) => prepared,
            () = shutdown.stopping() => Err(interrupted(&shutdown)),
        };
        let result = match prepared {
            Ok(prepared) => self.run_with_sink(prepared, shutdown, sink).await,
            Err(e) => {
                // The observer thread ends once every sink is gone.
                drop(sink);
                Err(e)
            }
        };
        if !observer_thread.join(OBSERVER_DEADLINE).await {
            tracing::warn!("the observer did not finish showing the task's output in time");
        }
        result
    }

    async fn run_with_sink(
        &self,
        prepared: PreparedTask,
        shutdown: Shutdown,
        sink: EventSink,
    ) -> Result<Outcome, Error> {
        let mut run = TaskRun {
            orch: self,
            name: labels::container_name(&prepared.task_id),
            prepared,
            // The task's own shutdown: stopped by the caller's, or alone by a
            // cancel request.
            shutdown: shutdown.child(),
            sink,
            guard: None,
            pump: None,
            held: None,
        };
        run.run().await
    }
}

/// One run in progress, and everything it must clean up.
struct TaskRun<'a> {
    orch: &'a Orchestrator,
    prepared: PreparedTask,
    name: String,
    shutdown: Shutdown,
    sink: EventSink,
    guard: Option<ContainerGuard>,
    pump: Option<JoinHandle<()>>,
    held: Option<HeldWorkspace>,
}

impl TaskRun<'_> {
    async fn run(&mut self) -> Result<Outcome, Error> {
        let task_id = self.prepared.task_id;
        if self.shutdown.is_stopping() {
            return Err(interrupted(&self.shutdown));
        }
        self.sink.send(Event::Planned {
            task_id,
            container: self.name.clone(),
        });
        // Record first: the row exists before any resource does.
        let record = self.record();
        self.orch.db(move |r| r.insert(&record)).await?;

        let (progress_tx, progress_rx) = watch::channel(None);
        let lease_done = CancellationToken::new();
        let lease = lease::spawn(
            self.orch.registry.clone(),
            task_id,
            self.shutdown.clone(),
            progress_rx,
            lease_done.clone(),
        );

        let ending = self.supervise(progress_tx).await;
        let result = self.finish(ending).await;
        lease_done.cancel();
        let _ = lease.await;
        result
    }

    /// The record written before anything is created.
    fn record(&self) -> TaskRecord {
        let request = &self.prepared.request;
        let settings = &request.project.settings;
        let session = &self.orch.session;
        let planned = self.prepared.repo.as_ref().and_then(|repo| {
            Workspace::planned(
                &self.orch.home.layout(),
                repo,
                &request.project.name,
                &self.prepared.task_id.to_string(),
            )
            .ok()
        });
        TaskRecord {
            id: self.prepared.task_id,
            project: request.project.name.clone(),
            description: request.desc.clone(),
            state: State::Creating,
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            container: self.name.clone(),
            image: settings.image.clone(),
            workspace: planned.as_ref().map(|w| w.path.display().to_string()),
            branch: planned.as_ref().map(|w| w.branch.clone()),
            repo: self
                .prepared
                .repo
                .as_ref()
                .map(|r| r.top.display().to_string()),
            workspace_state: None,
            keep_failed_workspace: settings.keep_failed_workspace,
            stop_grace_ms: i64::try_from(settings.stop_grace.as_millis()).unwrap_or(i64::MAX),
            session: session.id.to_string(),
            owner_pid: i64::from(session.owner.pid),
            owner_start: i64::try_from(session.owner.start).unwrap_or(i64::MAX),
            owner_boot: session.owner.boot.clone(),
            lease_until: Some(lease::lease_until()),
            progress: None,
            progress_message: None,
            progress_at: None,
            cancel_requested: false,
            detached: request.detached,
        }
    }

    /// Creates the workspace and the container, starts it, and waits for its
    /// end.
    async fn supervise(
        &mut self,
        progress: watch::Sender<crate::output::Progress>,
    ) -> Result<Ending, Error> {
        let orch = self.orch;
        let task_id = self.prepared.task_id;
        let request = &self.prepared.request;
        let settings = &request.project.settings;
        if self.shutdown.is_stopping() {
            return Ok(Ending::Cancelled);
        }
        if let Some(repo) = &self.prepared.repo {
            let held = orch
                .create_workspace(
                    repo,
                    &request.project.name,
                    &task_id,
                    request.git_ref.as_deref(),
                )
                .await?;
            self.held = Some(held);
            orch.db(move |r| r.set_workspace_state(&task_id, WorkspaceState::Present))
                .await?;
        }

        // From here on a container may exist: the guard is armed before the
        // create call is sent.
        let workspace = self.held.as_ref().map(|h| &h.workspace);
        let body = orch.container_body(request, task_id, workspace);
        // The watchdog hears of the task before its container can exist.
        orch.watchdog_task(
            &task_id,
            &Registered {
                keep_failed_workspace: settings.keep_failed_workspace,
                stop_grace: settings.stop_grace,
                container: self.name.clone(),
                workspace: workspace.map(|w| w.path.clone()),
            },
        );
        self.guard = Some(ContainerGuard::arm(&orch.active, &self.name, task_id));
        match orch.create_container(&self.name, body.clone()).await {
            Err(Error::Docker { source, .. }) if docker::status(&source) == Some(409) => {
                // Another task started in the same millisecond (on this
                // engine, maybe in another instance) took the short name.
                self.name = format!("orch-{}", task_id.simple());
                if let Some(guard) = &mut self.guard {
                    guard.rename(&self.name);
                }
                orch.create_container(&self.name, body).await?;
                let name = self.name.clone();
                orch.db(move |r| r.set_container(&task_id, &name)).await?;
            }
            other => other?,
        }
        failpoint::hit("after-create");

        let attach = AttachContainerOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = deadline(
            "attach to container",
            &self.name,
            orch.docker.attach_container(&self.name, Some(attach)),
        )
        .await?;
        let log_path = orch.home.log_path(&task_id);
        // Appended to: a detached supervisor's own messages go there too.
        let opened = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .await;
        let log = match opened {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(path = %log_path.display(), error = %e, "cannot write the task's log");
                None
            }
        };
        self.pump = Some(spawn_pump(
            attached.output,
            self.sink.clone(),
            log,
            progress,
        ));

        if self.shutdown.is_stopping() {
            return Ok(Ending::Cancelled);
        }
        if let Err(e) = deadline(
            "start container",
            &self.name,
            orch.docker.start_container(&self.name, None),
        )
        .await
        {
            if let Error::Docker { source, .. } = &e {
                if let Some(code) = not_invoked_code(source) {
                    self.sink.send(Event::Notice(docker::one_line(source)));
                    return Ok(Ending::Exited(code));
                }
            }
            return Err(e);
        }
        orch.db(move |r| r.mark_running(&task_id, now_ms(), lease::lease_until()))
            .await?;
        failpoint::hit("after-start");
        self.sink.send(Event::Started);

        let timeout = async {
            match settings.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let (name, shutdown, sink) = (&self.name, &self.shutdown, &self.sink);
        tokio::select! {
            biased;
            () = shutdown.forced() => {
                sink.send(Event::Forcing);
                Ok(Ending::Cancelled)
            }
            () = shutdown.stopping() => {
                orch.stop_container(name, settings.stop_grace, StopReason::Shutdown, shutdown, sink).await;
                Ok(Ending::Cancelled)
            }
            () = timeout => {
                orch.stop_container(name, settings.stop_grace, StopReason::Timeout, shutdown, sink).await;
                Ok(Ending::TimedOut)
            }
            code = wait_exit(&orch.docker, name) => code.map(Ending::Exited),
        }
    }

    /// The one end of every run: drain output, finish the record, remove the
    /// container, settle the workspace.
    async fn finish(&mut self, ending: Result<Ending, Error>) -> Result<Outcome, Error> {
        let orch = self.orch;
        let task_id = self.prepared.task_id;
        let settings = &self.prepared.request.project.settings;

        // Output first (unless forced), so the log is whole.
        let ended = Instant::now();
        if let Some(running) = &mut self.pump {
            if !self.shutdown.is_forced() {
                tokio::select! {
                    drained = tokio::time::timeout(DRAIN_DEADLINE, running) => {
                        if drained.is_ok() {
                            self.pump = None;
                        }
                    }
                    () = self.shutdown.forced() => self.sink.send(Event::Forcing),
                }
            }
        }

        let stopped_by = self.shutdown.reason();
        let ended_as = ending.map(|ending| match ending {
            Ending::Exited(0) => (Status::Succeeded, Some(0)),
            Ending::Exited(code) => (Status::Failed, Some(code)),
            Ending::TimedOut => (Status::TimedOut, None),
            Ending::Cancelled => (Status::Cancelled, None),
        });
        let finish = match &ended_as {
            Ok((status, code)) => Finish {
                state: status.state(),
                exit_code: *code,
                reason: match (status, code) {
                    (Status::TimedOut, _) => format!(
                        "timed out after {}",
                        humantime::format_duration(settings.timeout.unwrap_or_default())
                    ),
                    (Status::Cancelled, _) => format!(
                        "cancelled ({})",
                        stopped_by.as_deref().unwrap_or("shutdown")
                    ),
                    (_, Some(code)) => format!("exited with code {code}"),
                    (_, None) => String::new(),
                },
                at: now_ms(),
            },
            Err(e) => Finish {
                state: State::Failed,
                exit_code: None,
                reason: format!("orch failed: {e}"),
                at: now_ms(),
            },
        };
        if let Err(e) = orch
            .db(move |r| r.finish(&task_id, &finish).map(drop))
            .await
        {
            self.sink.send(Event::Notice(format!("{e:#}")));
        }

        if let Some(guard) = self.guard.take() {
            let removal = remove_container(&orch.docker, &self.name).await;
            match removal {
                Ok(gone) => {
                    guard.disarm();
                    self.sink.send(Event::Cleaned {
                        container: (gone == Gone::Removed).then(|| self.name.clone()),
                        elapsed: ended.elapsed(),
                    });
                }
                // The guard tries once more as it drops, with a fresh
                // connection.
                Err(e) => self.sink.send(Event::Notice(format!("{e:#}"))),
            }
        }
        if let Some(pump) = self.pump.take() {
            finish_pump(pump).await;
        }

        let mut fate = None;
        if let Some(held) = self.held.take() {
            let status = ended_as.as_ref().ok().map(|(status, _)| *status);
            let keep = keeps_workspace(
                status,
                settings.keep_failed_workspace,
                self.prepared.request.keep_workspace,
            );
            match orch.settle_workspace(held, keep, &settings.image).await {
                Ok(settled) => {
                    let state = match settled {
                        WorkspaceFate::Kept { .. } => WorkspaceState::Kept,
                        WorkspaceFate::Removed { .. } => WorkspaceState::Removed,
                    };
                    if let Err(e) = orch
                        .db(move |r| r.set_workspace_state(&task_id, state))
                        .await
                    {
                        self.sink.send(Event::Notice(format!("{e:#}")));
                    }
                    self.sink.send(Event::Workspace(settled.clone()));
                    fate = Some(settled);
                }
                Err(e) => {
                    self.sink
                        .send(Event::Notice(format!("workspace kept: {e:#}")));
                    let kept = WorkspaceState::Kept;
                    let _ = orch
                        .db(move |r| r.set_workspace_state(&task_id, kept))
                        .await;
                }
            }
        }

        orch.watchdog_done(&task_id);
        let (status, exit_code) = ended_as?;
        Ok(Outcome {
            task_id,
            container: self.name.clone(),
            status,
            exit_code,
            stopped_by: (status == Status::Cancelled)
                .then_some(stopped_by)
                .flatten(),
            workspace: fate,
        })
    }
}

fn interrupted(shutdown: &Shutdown) -> Error {
    Error::Interrupted {
        reason: shutdown.reason().unwrap_or_else(|| "shutdown".into()),
    }
}

/// A fresh UUID v7. Ids made by one process never share a millisecond, so
/// their container names (the first 12 hex digits, the timestamp) differ.
pub(crate) fn new_task_id() -> Uuid {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut last = LAST_MS.load(Ordering::Relaxed);
    let ms = loop {
        let next = now_ms.max(last + 1);
        match LAST_MS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    let ts = uuid::Timestamp::from_unix_time(ms / 1000, ((ms % 1000) * 1_000_000) as u32, 0, 0);
    Uuid::new_v7(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_of_one_process_have_distinct_names() {
        let names: std::collections::HashSet<String> = (0..1000)
            .map(|_| labels::container_name(&new_task_id()))
            .collect();
        assert_eq!(names.len(), 1000);
        assert_eq!(new_task_id().get_version_num(), 7);
    }
}
