//! Running one task in a throwaway container, from its id to its teardown.
//!
//! The shape of a run: check the inputs (image reference and presence,
//! network, repository and ref), write the record, take the workspace lock
//! and create the workspace, arm the guard, create, attach, start, then
//! wait for whichever comes first of the container's exit, the task's
//! deadline and the shutdown trigger. However that ends, the run drains the
//! output into the log and hands the one teardown policy its ending; the
//! one executor ends the record, removes the container and keeps or removes
//! the workspace. Only if that is never reached (the future was dropped,
//! or a panic unwound through it) does the guard act instead, and the
//! record is left live for the watchdog or reconciliation to end.

use std::time::{Duration, Instant};

use orch_registry::{State, TaskOwner, TaskRecord, TaskWorkspace, WorkspaceState, now_ms};
use orch_workspace::{Repo, failpoint};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::{Project, WorkspaceMode};
use crate::context::Ctx;
use crate::events::{Event, EventSink, StopReason};
use crate::guard::ContainerGuard;
use crate::output::{finish_pump, spawn_pump};
use crate::runtime::{
    ContainerSpec, ContainerState, Gone, Machine, Mount, Ownership, RuntimeError,
};
use crate::teardown::{
    self, Cause, Ending, ExecOptions, Found, RepoFacts, Step, TaskFacts, WorkspaceFacts,
    WorkspacePolicy, WorkspaceTarget,
};
use crate::workspace::{self, HeldWorkspace, WorkspaceFate};
use crate::{ConfigError, Error, Shutdown, leases, session};

/// How long output may keep arriving after the container ended.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

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
#[derive(Debug, Clone)]
pub struct PreparedTask {
    pub(crate) request: TaskRequest,
    pub(crate) task_id: Uuid,
    pub(crate) repo: Option<(Repo, String)>,
    /// Its record exists already, queued and claimed by this process: the
    /// run fills it in rather than writing it.
    pub(crate) claimed: bool,
}

impl PreparedTask {
    /// The id the task will have.
    pub fn task_id(&self) -> Uuid {
        self.task_id
    }

    /// The request it was prepared from.
    pub fn request(&self) -> &TaskRequest {
        &self.request
    }
}

/// Checks everything a run needs before anything is created: the image
/// (its reference, then present or pulled), the network, the repository
/// and ref of a workspace. Bad input fails here, leaving no trace.
pub(crate) async fn prepare(
    ctx: &Ctx,
    request: TaskRequest,
    sink: &EventSink,
) -> Result<PreparedTask, Error> {
    let settings = &request.project.settings;
    // A malformed reference fails before any pull.
    crate::runtime::validate_reference(&settings.image).map_err(|message| ConfigError::Flag {
        flag: "image".into(),
        message,
    })?;
    let task_id = request.task_id.unwrap_or_else(session::new_task_id);
    let progress = {
        let sink = sink.clone();
        move |line: String| sink.send(Event::Notice(line))
    };
    ctx.runtime.ensure_image(&settings.image, &progress).await?;
    let repo = check(ctx, &request, task_id).await?;
    Ok(PreparedTask {
        request,
        task_id,
        repo,
        claimed: false,
    })
}

/// Everything about a request that can be checked without pulling an
/// image: the image reference, what the runtime can do, the network, the
/// repository and ref of a workspace (and the commit its branch starts
/// from). What a daemon checks before queueing a task.
pub(crate) async fn check(
    ctx: &Ctx,
    request: &TaskRequest,
    task_id: Uuid,
) -> Result<Option<(Repo, String)>, Error> {
    let settings = &request.project.settings;
    crate::runtime::validate_reference(&settings.image).map_err(|message| ConfigError::Flag {
        flag: "image".into(),
        message,
    })?;
    let wants_workspace = settings.workspace == WorkspaceMode::Worktree;
    if wants_workspace && !ctx.runtime.capabilities().host_mounts {
        return Err(ConfigError::Flag {
            flag: "workspace".into(),
            message: "this runtime cannot mount host directories: set workspace = \"none\"".into(),
        }
        .into());
    }
    let network = settings.network.as_str();
    if !settings.sandbox.egress.is_empty()
        && (matches!(network, "none" | "host") || network.starts_with("container:"))
    {
        return Err(ConfigError::Flag {
            flag: "egress".into(),
            message: format!(
                "needs a network to go out through, and network = {network:?}; use a bridge or a network name"
            ),
        }
        .into());
    }
    let machine = ctx.runtime.machine().await?;
    ctx.runtime
        .preflight(&spec(ctx, request, task_id, None, &machine))
        .await?;
    if !wants_workspace {
        return Ok(None);
    }
    workspace::find_repo(
        ctx.home.layout(),
        request.project.path.clone(),
        request.git_ref.clone(),
    )
    .await
    .map(Some)
}

/// The container's spec: image, command, user, limits (the machine's
/// defaults where the settings give none), confinement, mounts, ownership.
fn spec(
    ctx: &Ctx,
    request: &TaskRequest,
    task_id: Uuid,
    workspace: Option<&orch_workspace::Workspace>,
    machine: &Machine,
) -> ContainerSpec {
    let settings = &request.project.settings;
    let reserved = ["ORCH_TASK_ID", "ORCH_TASK_DESC", "ORCH_WORKSPACE"];
    let mut env: Vec<(String, String)> = settings
        .env
        .iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("ORCH_TASK_ID".into(), task_id.to_string()));
    env.push(("ORCH_TASK_DESC".into(), request.desc.clone()));
    env.push((
        "ORCH_WORKSPACE".into(),
        workspace
            .map(|w| w.path.display().to_string())
            .unwrap_or_default(),
    ));
    let mounts = workspace.map_or_else(Vec::new, |w| {
        w.mounts()
            .into_iter()
            .map(|m| Mount {
                source: m.source,
                target: m.target,
                read_only: m.read_only,
            })
            .collect()
    });
    ContainerSpec {
        image: settings.image.clone(),
        command: settings
            .command
            .iter()
            .map(|arg| arg.replace("{desc}", &request.desc))
            .collect(),
        entrypoint: settings.entrypoint.clone(),
        user: settings.user.docker_user(),
        env,
        workdir: workspace.map(|w| w.workdir.clone()),
        mounts,
        network: settings.network.clone(),
        memory: Some(settings.memory.unwrap_or_else(|| machine.default_memory())),
        cpus: Some(settings.cpus.unwrap_or_else(|| machine.default_cpus())),
        stop_grace: settings.stop_grace,
        capabilities: capabilities(settings),
        no_new_privileges: settings.sandbox.no_new_privileges,
        pids_limit: settings.sandbox.pids_limit,
        runtime: settings.sandbox.runtime.clone(),
        extra_hosts: Vec::new(),
        extra_networks: Vec::new(),
        ownership: Ownership {
            instance: ctx.home.instance_id().to_owned(),
            session: ctx.session.id,
            task: task_id,
            project: request.project.name.clone(),
            owner: ctx.session.owner.clone(),
        },
    }
}

/// The capabilities a task keeps: its user's defaults, plus `cap_add`,
/// minus `cap_drop`.
fn capabilities(settings: &crate::config::Settings) -> Vec<String> {
    let mut caps: Vec<String> = crate::config::default_capabilities(&settings.user)
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    for cap in &settings.sandbox.cap_add {
        if !caps.contains(cap) {
            caps.push(cap.clone());
        }
    }
    caps.retain(|c| !settings.sandbox.cap_drop.contains(c));
    caps
}

/// Runs a prepared task to its end and tears it down.
pub(crate) async fn run(
    ctx: &Ctx,
    prepared: PreparedTask,
    shutdown: Shutdown,
    sink: EventSink,
) -> Result<Outcome, Error> {
    let mut run = TaskRun {
        ctx,
        name: session::container_name(&prepared.task_id),
        prepared,
        // The task's own shutdown: stopped by the caller's, or alone by a
        // cancel request.
        shutdown: shutdown.child(),
        sink,
        guard: None,
        pump: None,
        over: watch::channel(false).0,
        ran: watch::channel(false).0,
        held: None,
        started: false,
        egress: None,
    };
    run.run().await
}

/// One run in progress, and everything its teardown needs.
struct TaskRun<'a> {
    ctx: &'a Ctx,
    prepared: PreparedTask,
    name: String,
    shutdown: Shutdown,
    sink: EventSink,
    guard: Option<ContainerGuard>,
    pump: Option<JoinHandle<()>>,
    /// True once the run is over (the container exited, or was stopped):
    /// the pump's stream may end for good.
    over: watch::Sender<bool>,
    /// True once the container was started.
    ran: watch::Sender<bool>,
    held: Option<HeldWorkspace>,
    started: bool,
    /// The task's egress forwarder (and network), if it has one.
    egress: Option<String>,
}

impl TaskRun<'_> {
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
        ctx.leases.add(task_id, self.shutdown.clone(), progress_rx);
        let ending = self.supervise(progress_tx).await;
        let result = self.finish(ending).await;
        ctx.leases.remove(&task_id).await;
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
        record.stop_grace_ms = i64::try_from(settings.stop_grace.as_millis()).unwrap_or(i64::MAX);
        record.owner = TaskOwner {
            session: session.id.to_string(),
            pid: i64::from(session.owner.pid),
            start: i64::try_from(session.owner.start).unwrap_or(i64::MAX),
            boot: session.owner.boot.clone(),
            lease_until: Some(leases::lease_until()),
            detached: request.detached,
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
        };
        record.queue.max_parallel = settings.max_parallel.map(i64::from);
        record
    }

    fn planned_workspace(&self) -> Option<orch_workspace::Workspace> {
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
    fn facts(&self) -> TaskFacts {
        let request = &self.prepared.request;
        let settings = &request.project.settings;
        let workspace = self.planned_workspace().map(|w| WorkspaceFacts {
            path: w.path.clone(),
            repo: self.prepared.repo.as_ref().map(|(repo, base)| RepoFacts {
                top: repo.top.clone(),
                git_dir: repo.common_dir.clone(),
                base: base.clone(),
            }),
        });
        TaskFacts {
            id: self.prepared.task_id,
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
        }
    }

    /// Creates the task's container under its guard, taking the long name
    /// if another task took the short one in the same millisecond.
    async fn create_container(&mut self, spec: &ContainerSpec) -> Result<(), Error> {
        let ctx = self.ctx;
        let task_id = self.prepared.task_id;
        self.guard = Some(ContainerGuard::arm(
            &ctx.active,
            &ctx.runtime,
            &ctx.tracker,
            &self.name,
            task_id,
        ));
        match ctx.runtime.create(&self.name, spec).await {
            Err(e) if e.is_conflict() => {
                // Another task started in the same millisecond (on this
                // engine, maybe in another instance) took the short name.
                self.name = format!("orch-{}", task_id.simple());
                if let Some(guard) = &mut self.guard {
                    guard.rename(&self.name);
                }
                ctx.runtime.create(&self.name, spec).await?;
                let name = self.name.clone();
                ctx.store
                    .call(move |r| r.set_container(&task_id, &name))
                    .await?;
            }
            other => other?,
        }
        Ok(())
    }

    /// Creates the workspace and the container, starts it, and waits for its
    /// end.
    async fn supervise(
        &mut self,
        progress: watch::Sender<leases::Progress>,
    ) -> Result<Ending, Error> {
        let ctx = self.ctx;
        let task_id = self.prepared.task_id;
        let settings = self.prepared.request.project.settings.clone();
        if self.shutdown.is_stopping() {
            return Ok(Ending::Cancelled(stopped_by(&self.shutdown)));
        }
        if let Some((repo, base)) = &self.prepared.repo {
            let held = workspace::begin(
                ctx,
                repo,
                &self.prepared.request.project.name,
                &task_id,
                base,
            )
            .await?;
            self.held = Some(held);
        }
        failpoint::hit("after-workspace");

        // From here on a container may exist: the guard is armed before the
        // create call is sent, and the watchdog hears of the task first.
        let machine = ctx.runtime.machine().await?;
        let mut spec = spec(
            ctx,
            &self.prepared.request,
            task_id,
            self.held.as_ref().map(|h| &h.workspace),
            &machine,
        );
        crate::watchdog::register(ctx, &self.facts(), &self.name);
        if !settings.sandbox.egress.is_empty() {
            // Known before it exists: whatever goes wrong from here, the
            // teardown removes it (and its network).
            self.egress = Some(crate::egress::name_for(&self.name));
            let (network, hosts) =
                crate::egress::open(ctx, task_id, &self.name, &spec, &settings.sandbox.egress)
                    .await?;
            spec.network = network;
            spec.extra_hosts = hosts;
        }
        // The engine creates the container (it needs only the workspace's
        // directory to exist) while git fills the workspace; both are done
        // before the container starts.
        let begun = self.held.take();
        let filling = async {
            match begun {
                Some(held) => workspace::populate(ctx, held).await,
                None => (Ok(()), None),
            }
        };
        let ((filled, held), created) = tokio::join!(filling, self.create_container(&spec));
        self.held = held;
        if let Err(e) = filled {
            // Unwound already: nothing of the workspace is left to settle.
            self.held = None;
            return Err(e);
        }
        if self.held.is_some() {
            ctx.store
                .call(move |r| r.set_workspace_state(&task_id, WorkspaceState::Present))
                .await?;
        }
        created?;
        failpoint::hit("after-create");

        let attached = ctx.runtime.attach(&self.name).await?;
        let log_path = ctx.home.log_path(&task_id);
        let log = match crate::home::open_private_append(&log_path).await {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(path = %log_path.display(), error = %e, "cannot write the task's log");
                self.sink.send(Event::Notice(format!(
                    "cannot write the task's log {}: {e}",
                    log_path.display()
                )));
                None
            }
        };
        self.pump = Some(spawn_pump(
            &ctx.tracker,
            attached,
            crate::output::Source {
                runtime: ctx.runtime.clone(),
                container: self.name.clone(),
                over: self.over.subscribe(),
                started: self.ran.subscribe(),
            },
            self.sink.clone(),
            log,
            progress,
        ));

        if self.shutdown.is_stopping() {
            return Ok(Ending::Cancelled(stopped_by(&self.shutdown)));
        }
        // Recorded running before the start call: if orch dies around it,
        // whoever finds the task assumes it may have run (and keeps what
        // the policy keeps) rather than that it never did.
        ctx.store
            .call(move |r| r.mark_running(&task_id, now_ms(), leases::lease_until()))
            .await?;
        match ctx.runtime.start(&self.name).await {
            Ok(()) => {}
            Err(RuntimeError::NotInvoked { code, message }) => {
                self.sink.send(Event::Notice(message));
                return Ok(Ending::Exited(code));
            }
            Err(e) => return Err(e.into()),
        }
        self.started = true;
        self.ran.send_replace(true);
        failpoint::hit("after-start");
        self.sink.send(Event::Started);

        let (name, shutdown, sink) = (&self.name, &self.shutdown, &self.sink);
        let stop = |reason: StopReason| async move {
            sink.send(Event::Stopping {
                reason,
                grace: settings.stop_grace,
            });
            tokio::select! {
                stopped = ctx.runtime.stop(name, settings.stop_grace) => {
                    if let Err(e) = stopped {
                        tracing::warn!(container = %name, error = %e, "graceful stop failed; removing it");
                    }
                }
                () = shutdown.forced() => sink.send(Event::Forcing),
            }
        };
        // The timeout counts only while the task may run: a suspended
        // owner (Ctrl+Z) freezes the task, and its clock with it.
        let mut left = settings.timeout;
        let mut suspension = shutdown.suspension();
        let mut frozen = false;
        let wait = ctx.runtime.wait(name);
        tokio::pin!(wait);
        loop {
            let counting_since = tokio::time::Instant::now();
            let deadline = async {
                match left {
                    Some(left) if !frozen => tokio::time::sleep(left).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.forced() => {
                    sink.send(Event::Forcing);
                    return Ok(Ending::Cancelled(stopped_by(shutdown)));
                }
                () = shutdown.stopping() => {
                    if frozen {
                        let _ = ctx.runtime.unpause(name).await;
                    }
                    stop(StopReason::Requested(stopped_by(shutdown))).await;
                    return Ok(Ending::Cancelled(stopped_by(shutdown)));
                }
                () = deadline => {
                    stop(StopReason::Timeout).await;
                    return Ok(Ending::TimedOut(settings.timeout.unwrap_or_default()));
                }
                changed = suspension.changed() => {
                    if !frozen {
                        left = left.map(|l| l.saturating_sub(counting_since.elapsed()));
                    }
                    if changed.is_err() {
                        continue;
                    }
                    let requested = suspension.borrow_and_update().requested;
                    if requested && !frozen {
                        if let Err(e) = ctx.runtime.pause(name).await {
                            tracing::warn!(container = %name, error = %e, "failed to freeze the task");
                        }
                        frozen = true;
                        shutdown.suspension_applied();
                    } else if !requested && frozen {
                        if let Err(e) = ctx.runtime.unpause(name).await {
                            tracing::warn!(container = %name, error = %e, "failed to thaw the task");
                        }
                        frozen = false;
                    }
                }
                code = &mut wait => return Ok(Ending::Exited(code?)),
            }
        }
    }

    /// The one end of every run: drain the output, then the teardown plan
    /// of how it ended, carried out by the one executor.
    async fn finish(&mut self, ending: Result<Ending, Error>) -> Result<Outcome, Error> {
        let ctx = self.ctx;
        let task_id = self.prepared.task_id;
        let ended = Instant::now();
        self.over.send_replace(true);
        self.sink.send(Event::Ended);

        // Output first (unless forced), so the log is whole.
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

        let (ending, error) = match ending {
            Ok(ending) => (ending, None),
            Err(e) => {
                let text = crate::runtime::display_chain(&e);
                let ending = if self.started {
                    Ending::Failed(text)
                } else {
                    Ending::NotStarted(text)
                };
                (ending, Some(e))
            }
        };
        let found = Found {
            containers: self
                .guard
                .as_ref()
                .map(|g| (g.name().to_owned(), ContainerState::Other))
                .into_iter()
                .chain(
                    self.egress
                        .clone()
                        .map(|name| (name, ContainerState::Other)),
                )
                .collect(),
            workspace: self.held.as_ref().map(|h| WorkspaceTarget {
                project: h.workspace.project.clone(),
                dir_name: h.workspace.task_id.clone(),
                path: h.workspace.path.clone(),
                bytes: 0,
                image: Some(self.prepared.request.project.settings.image.clone()),
                repo: self.prepared.repo.as_ref().map(|(repo, base)| RepoFacts {
                    top: repo.top.clone(),
                    git_dir: repo.common_dir.clone(),
                    base: base.clone(),
                }),
            }),
            log: None,
        };
        let plan = teardown::plan(&self.facts(), Cause::Ended(ending.clone()), found);
        let options = ExecOptions {
            held_lock: self.held.take().map(|h| h.lock),
            lock_wait: Duration::ZERO,
        };
        let sink = self.sink.clone();
        let mut fate = None;
        let mut removed = false;
        let executed = teardown::execute(ctx, &plan, options, &mut |step| match step {
            Step::ContainerRemoved { name, gone } => {
                removed = true;
                sink.send(Event::Cleaned {
                    container: (*gone == Gone::Removed).then(|| name.clone()),
                    elapsed: ended.elapsed(),
                });
            }
            Step::Workspace(settled) => {
                fate = Some(settled.clone());
                sink.send(Event::Workspace(settled.clone()));
            }
            _ => {}
        })
        .await;
        for failure in &executed.errors {
            self.sink.send(Event::Notice(failure.clone()));
        }
        if removed {
            if let Some(guard) = self.guard.take() {
                guard.disarm();
            }
        }
        if let Some(pump) = self.pump.take() {
            finish_pump(pump).await;
        }
        crate::watchdog::done(ctx, &task_id);
        if let Some(error) = error {
            return Err(error);
        }
        let (status, exit_code) = match &ending {
            Ending::Exited(0) => (Status::Succeeded, Some(0)),
            Ending::Exited(code) => (Status::Failed, Some(*code)),
            Ending::TimedOut(_) => (Status::TimedOut, None),
            Ending::Cancelled(_) | Ending::NotStarted(_) => (Status::Cancelled, None),
            Ending::Failed(_) | Ending::Lost(_) => (Status::Failed, None),
        };
        Ok(Outcome {
            task_id,
            container: self.name.clone(),
            status,
            exit_code,
            stopped_by: (status == Status::Cancelled).then(|| stopped_by(&self.shutdown)),
            workspace: fate,
        })
    }
}

/// Why the task was stopped, and what forced the stop if it was forced:
/// `"SIGHUP"`, `"SIGINT, forced by SIGTERM"`.
fn stopped_by(shutdown: &Shutdown) -> String {
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
