//! The supervisor: the queue, the scheduler, the live tasks of one daemon,
//! and the cleanup schedule.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_registry::{Claimant, Finish, Listing, State, TaskQueue, TaskRecord, now_ms};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::GlobalConfig;
use crate::context::Ctx;
use crate::events::{Event, EventSink};
use crate::reconcile::{CleanupOptions, CleanupReport, Strategy, Thresholds};
use crate::run;
use crate::supervisor::{DaemonEvent, Metrics, SubmitSpec};
use crate::{ConfigError, DuReport, Error, Orchestrator, Shutdown, leases, session};

/// How often the scheduler looks at the registry even when nothing woke it
/// (another daemon's submissions, stuck tasks).
const TICK: Duration = Duration::from_secs(1);
/// How long a cleanup after a submission may take.
const PIGGYBACK_LIMIT: Duration = Duration::from_secs(30);
/// Submissions trigger a cleanup at most this often.
const PIGGYBACK_EVERY: Duration = Duration::from_secs(60);
/// How long a waited-for cancel waits beyond the task's grace.
const CANCEL_SLACK: Duration = Duration::from_secs(30);
/// Cleanups remembered for the dashboard.
const RECENT_CLEANUPS: usize = 20;
/// Events a slow listener may fall behind by before it misses some.
const EVENT_BUFFER: usize = 1024;

/// How a daemon runs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// At most this many tasks run at once.
    pub concurrency: usize,
    /// The `all` strategy runs this often.
    pub cleanup_interval: Duration,
    /// Its thresholds.
    pub thresholds: Thresholds,
    /// The global config, read at each submission and each start.
    pub config_path: Option<PathBuf>,
    /// A running task with no progress and no output for this long is
    /// stuck, unless its project says otherwise.
    pub stuck_after: Duration,
}

/// A task's last progress report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// 0 to 100.
    pub percent: Option<i64>,
    /// Its message.
    pub message: Option<String>,
    /// When it was reported (Unix milliseconds).
    pub updated_at: Option<i64>,
}

/// When a live task last showed a sign of life, if its silence counts.
type Sign = Arc<Mutex<Option<Instant>>>;

/// Sets a task's last sign of life (`None`: stop counting its silence).
fn mark(sign: &Sign, at: Option<Instant>) {
    *sign.lock().unwrap_or_else(|p| p.into_inner()) = at;
}

/// How long a task has been silent, if its silence counts.
fn silence(sign: &Sign) -> Option<Duration> {
    sign.lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|at| at.elapsed())
}

/// A task this daemon runs.
#[derive(Debug)]
struct Live {
    shutdown: Shutdown,
    project: String,
    stuck_after: Duration,
    /// Its last sign of life: claimed, started, progress or output; `None`
    /// once it is stopping or its run is over, when silence means nothing.
    last_sign: Sign,
    stuck: bool,
}

/// The daemon's core; see the module docs.
#[derive(Debug)]
pub struct Supervisor {
    orch: Orchestrator,
    config: SupervisorConfig,
    live: Mutex<HashMap<Uuid, Live>>,
    wake: Notify,
    events: broadcast::Sender<DaemonEvent>,
    /// The root of every task's own shutdown.
    tasks: Shutdown,
    accepting: AtomicBool,
    /// Held while a cleanup runs; when the last one ended.
    cleaning: tokio::sync::Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
    /// The last cleanups, newest last (bounded).
    recent_cleanups: Mutex<std::collections::VecDeque<serde_json::Value>>,
}

impl Supervisor {
    /// A supervisor over `orch`'s process (its runtime, registry and
    /// watchdog).
    pub fn new(orch: &Orchestrator, config: SupervisorConfig) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            orch: orch.clone(),
            config,
            live: Mutex::default(),
            wake: Notify::new(),
            events: broadcast::channel(EVENT_BUFFER).0,
            tasks: Shutdown::new(),
            accepting: AtomicBool::new(true),
            cleaning: tokio::sync::Mutex::new(None),
            metrics: Arc::new(Metrics::new()),
            recent_cleanups: Mutex::default(),
        })
    }

    fn ctx(&self) -> &Ctx {
        self.orch.ctx()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: DaemonEvent) {
        let _ = self.events.send(event);
    }

    /// A task of this daemon reached its end: counted and told.
    fn ended(&self, record: TaskRecord) {
        let ran = record
            .started_at
            .zip(record.outcome.finished_at)
            .map(|(start, end)| Duration::from_millis(u64::try_from(end - start).unwrap_or(0)));
        self.metrics.finished(record.state, ran);
        self.emit(DaemonEvent::TaskFinished {
            task: Box::new(record),
        });
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The metrics in the Prometheus text format, with live tasks per
    /// state and the home's reaped counts read now.
    pub async fn metrics_text(&self) -> Result<String, Error> {
        let (live, reaped) = self
            .ctx()
            .store
            .call(|r| Ok::<_, orch_registry::Error>((r.count_by_state()?, r.counters("reaped.")?)))
            .await?;
        let live: Vec<(String, u64)> = live
            .into_iter()
            .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
            .collect();
        Ok(self.metrics.encode(&live, self.stuck(), &reaped))
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DaemonEvent> {
        self.events.subscribe()
    }

    /// True while it takes new tasks.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Why it would refuse a task now, if it would: shutting down, or its
    /// container engine out of reach (asked within `within`).
    pub async fn refusing(&self, within: Duration) -> Option<String> {
        if !self.accepting() {
            return Some("shutting down".into());
        }
        match tokio::time::timeout(within, self.ctx().runtime.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(crate::runtime::display_chain(&e)),
            Err(_) => Some(format!(
                "the container engine did not answer within {within:?}"
            )),
        }
    }

    /// The orchestrator it runs on.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orch
    }

    /// Forces every running task: removed at once (a second stop signal).
    pub fn force(&self) {
        self.tasks.force();
    }

    /// The thresholds of its scheduled cleanups.
    pub fn thresholds(&self) -> Thresholds {
        self.config.thresholds
    }

    /// How many tasks it runs now.
    pub fn running(&self) -> usize {
        self.live().len()
    }

    /// Its last cleanups (at most 20), oldest first: each the report of
    /// `orch cleanup --json` without its items, with its `trigger`,
    /// `strategy` and `at` (Unix milliseconds).
    pub fn recent_cleanups(&self) -> Vec<serde_json::Value> {
        self.recent_cleanups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Its stuck tasks now: id, project and seconds of silence.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.live()
            .iter()
            .filter(|(_, l)| l.stuck)
            .map(|(id, l)| {
                let silent = silence(&l.last_sign).unwrap_or_default();
                serde_json::json!({
                    "type": "task.stuck",
                    "id": id,
                    "project": l.project,
                    "silent_secs": silent.as_secs(),
                })
            })
            .collect()
    }

    /// How many of its running tasks are stuck.
    pub fn stuck(&self) -> usize {
        self.live().values().filter(|l| l.stuck).count()
    }

    fn global_config(&self) -> Result<GlobalConfig, ConfigError> {
        GlobalConfig::load(self.config.config_path.as_deref())
    }

    /// Runs the daemon until `stop` fires: reconciliation at once, then
    /// the scheduler and the cleanup schedule. When `stop` fires it takes
    /// no more tasks, stops the running ones gracefully (recorded
    /// `cancelled (daemon shutdown)`, torn down by their policy) and
    /// returns once they are; queued tasks stay queued.
    pub async fn run(self: &Arc<Self>, stop: CancellationToken) {
        let started = self.clone();
        self.ctx().tracker.spawn(async move {
            started.reconcile_at_start().await;
        });
        let schedule = self.clone();
        let schedule_stop = stop.clone();
        self.ctx().tracker.spawn(async move {
            schedule.cleanup_schedule(schedule_stop).await;
        });
        loop {
            self.fill().await;
            self.watch_stuck();
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
        self.accepting.store(false, Ordering::SeqCst);
        self.tasks.stop_because("daemon shutdown");
        while self.running() > 0 {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Claims queued tasks while fewer than the concurrency run.
    async fn fill(self: &Arc<Self>) {
        while self.accepting() && self.running() < self.config.concurrency {
            let session = &self.ctx().session;
            let claimant = Claimant {
                session: session.id.to_string(),
                pid: i64::from(session.owner.pid),
                start: i64::try_from(session.owner.start).unwrap_or(i64::MAX),
                boot: session.owner.boot.clone(),
            };
            let claimed = self
                .ctx()
                .store
                .call(move |r| r.claim(&claimant, leases::lease_until()))
                .await;
            match claimed {
                Ok(Some(record)) => self.start(record),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "failed to claim a queued task");
                    return;
                }
            }
        }
    }

    /// Runs a claimed task in the background.
    fn start(self: &Arc<Self>, record: TaskRecord) {
        let id = record.id;
        self.metrics.claimed(Duration::from_millis(
            u64::try_from(now_ms() - record.created_at).unwrap_or(0),
        ));
        let shutdown = self.tasks.child();
        let last_sign: Sign = Arc::new(Mutex::new(Some(Instant::now())));
        self.live().insert(
            id,
            Live {
                shutdown: shutdown.clone(),
                project: record.project.clone(),
                stuck_after: self.config.stuck_after,
                last_sign: last_sign.clone(),
                stuck: false,
            },
        );
        self.emit(DaemonEvent::TaskState {
            id,
            project: record.project.clone(),
            state: State::Creating,
        });
        let me = self.clone();
        self.ctx().tracker.spawn(async move {
            if let Err(e) = me.run_claimed(record, shutdown, last_sign).await {
                tracing::warn!(task = %id, error = %format!("{e:#}"), "task failed to run");
            }
            me.finished(id).await;
        });
    }

    /// Prepares and runs one claimed task through the one run and teardown.
    async fn run_claimed(
        self: &Arc<Self>,
        record: TaskRecord,
        shutdown: Shutdown,
        last_sign: Sign,
    ) -> Result<(), Error> {
        let id = record.id;
        let project = record.project.clone();
        let spec: Result<SubmitSpec, String> = record
            .queue
            .spec
            .as_deref()
            .ok_or_else(|| "it holds no submitted task".to_owned())
            .and_then(|s| serde_json::from_str(s).map_err(|e| e.to_string()));
        let request = match spec {
            Ok(spec) => self
                .global_config()
                .and_then(|config| spec.request(&config, Some(id)))
                .map_err(Error::from),
            Err(why) => Err(Error::Io {
                action: "read the queued task",
                path: self.ctx().home.registry_path(),
                source: std::io::Error::other(why),
            }),
        };
        let events = self.events.clone();
        let sink = EventSink::direct(Arc::new(move |event: Event| match event {
            Event::Started => {
                mark(&last_sign, Some(Instant::now()));
                let _ = events.send(DaemonEvent::TaskState {
                    id,
                    project: project.clone(),
                    state: State::Running,
                });
            }
            Event::Progress { percent, message } => {
                mark(&last_sign, Some(Instant::now()));
                let _ = events.send(DaemonEvent::TaskProgress {
                    id,
                    percent,
                    message,
                });
            }
            Event::Output { .. } => mark(&last_sign, Some(Instant::now())),
            Event::Stopping { .. } | Event::Forcing | Event::Ended => mark(&last_sign, None),
            // No terminal here: what a foreground run would print goes to
            // the daemon's log (and what lasts, to the record's notes).
            Event::Notice(message) => tracing::warn!(task = %id, "{message}"),
            Event::Workspace(crate::WorkspaceFate::Removed {
                warning: Some(warning),
                ..
            })
            | Event::Workspace(crate::WorkspaceFate::Kept {
                warning: Some(warning),
                ..
            }) => tracing::warn!(task = %id, "workspace: {warning}"),
            _ => {}
        }));
        let prepared = match request {
            Ok(request) => {
                if let Some(stuck) = request.project.settings.stuck_after {
                    if let Some(live) = self.live().get_mut(&id) {
                        live.stuck_after = stuck;
                    }
                }
                tokio::select! {
                    prepared = run::prepare(self.ctx(), request, &sink) => prepared,
                    () = shutdown.stopping() => Err(run::interrupted(&shutdown)),
                }
            }
            Err(e) => Err(e),
        };
        let mut prepared = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                // Nothing was made: the record alone ends.
                let finish = Finish {
                    state: if matches!(e, Error::Interrupted { .. }) {
                        State::Cancelled
                    } else {
                        State::Failed
                    },
                    exit_code: None,
                    reason: format!("not started: {}", crate::runtime::display_chain(&e)),
                    at: now_ms(),
                };
                self.ctx()
                    .store
                    .call(move |r| r.finish(&id, &finish))
                    .await?;
                return Err(e);
            }
        };
        prepared.claimed = true;
        run::run(self.ctx(), prepared, shutdown, sink)
            .await
            .map(drop)
    }

    /// A task of this daemon is over: it leaves the live set.
    async fn finished(&self, id: Uuid) {
        let live = self.live().remove(&id);
        let record = self.ctx().store.call(move |r| r.get(&id)).await;
        if let Ok(Some(record)) = record {
            self.emit(DaemonEvent::TaskState {
                id,
                project: record.project.clone(),
                state: record.state,
            });
            if record.state.is_terminal() {
                self.ended(record);
            }
        } else if let Some(live) = live {
            tracing::warn!(task = %id, project = %live.project, "a finished task's record is gone");
        }
        self.wake.notify_one();
    }

    /// Raises `task.stuck` once per task silent for too long, and clears it
    /// when the task shows a sign of life.
    fn watch_stuck(&self) {
        let mut raised = Vec::new();
        let mut cleared = Vec::new();
        for (id, live) in self.live().iter_mut() {
            let Some(silent) = silence(&live.last_sign) else {
                continue;
            };
            if !live.stuck && silent >= live.stuck_after {
                live.stuck = true;
                raised.push((*id, live.project.clone(), silent));
            } else if live.stuck && silent < live.stuck_after {
                live.stuck = false;
                cleared.push(*id);
            }
        }
        for (id, project, silent) in raised {
            tracing::warn!(task = %id, project = %project, silent_secs = silent.as_secs(), "task is stuck: no progress and no output");
            self.emit(DaemonEvent::TaskStuck {
                id,
                project,
                silent_secs: silent.as_secs(),
            });
        }
        for id in cleared {
            tracing::info!(task = %id, "task is no longer stuck");
            self.emit(DaemonEvent::TaskUnstuck { id });
        }
    }

    /// Checks a submission as `orch task` would and records it `queued`.
    pub async fn submit(self: &Arc<Self>, spec: SubmitSpec) -> Result<TaskRecord, Error> {
        if !self.accepting() {
            return Err(Error::Interrupted {
                reason: "the daemon is shutting down".into(),
            });
        }
        let config = self.global_config()?;
        let request = spec.request(&config, None)?;
        let id = session::new_task_id();
        // As `orch task` would: no engine, no task.
        self.ctx().runtime.ping().await?;
        run::check(self.ctx(), &request, id).await?;
        let settings = &request.project.settings;
        let mut record = TaskRecord::new(
            id,
            &request.project.name,
            &request.desc,
            State::Queued,
            &session::container_name(&id),
            &settings.image,
        );
        record.stop_grace_ms = i64::try_from(settings.stop_grace.as_millis()).unwrap_or(i64::MAX);
        record.owner.detached = true;
        record.workspace.keep_failed_workspace = settings.keep_failed_workspace;
        record.workspace.keep_workspace = request.keep_workspace;
        record.queue = TaskQueue {
            spec: Some(serde_json::to_string(&spec).map_err(|e| Error::Io {
                action: "record the submitted task in",
                path: self.ctx().home.registry_path(),
                source: std::io::Error::other(e),
            })?),
            priority: spec.priority,
            max_parallel: settings.max_parallel.map(i64::from),
        };
        let inserted = record.clone();
        self.ctx().store.call(move |r| r.insert(&inserted)).await?;
        self.metrics.submitted();
        self.emit(DaemonEvent::TaskState {
            id,
            project: record.project.clone(),
            state: State::Queued,
        });
        self.wake.notify_one();
        self.piggyback_cleanup();
        Ok(record)
    }

    /// After a submission, a cleanup in the background if none ran for a
    /// while: bounded, never delaying the answer.
    fn piggyback_cleanup(self: &Arc<Self>) {
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

    fn scheduled_options(&self) -> CleanupOptions {
        CleanupOptions {
            strategy: Strategy::All,
            thresholds: self.config.thresholds,
            ..CleanupOptions::default()
        }
    }

    async fn reconcile_at_start(self: &Arc<Self>) {
        let mut last = self.cleaning.lock().await;
        match self.orch.reconcile(Duration::from_secs(60)).await {
            Ok(report) => self.cleaned("start", Strategy::Orphans, &report),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "reconciliation at start failed"),
        }
        *last = Some(Instant::now());
    }

    async fn cleanup_schedule(self: &Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
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

    fn cleaned(self: &Arc<Self>, trigger: &str, strategy: Strategy, report: &CleanupReport) {
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
            let mut entry = report.to_json();
            if let Some(entry) = entry.as_object_mut() {
                entry.remove("items");
                entry.remove("repos");
            }
            entry["trigger"] = trigger.into();
            entry["strategy"] = strategy.name().into();
            entry["at"] = now_ms().into();
            recent.push_back(entry);
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
            report: report.to_json(),
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
