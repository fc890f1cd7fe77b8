//! The supervisor itself: its state (the live tasks, the event channel,
//! the metrics) and its main loop, which starts the other loops of the
//! daemon (`queue`, `schedule`, `stuck`) and winds them down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_registry::TaskRecord;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use crate::config::GlobalConfig;
use crate::context::Ctx;
use crate::reconcile::Thresholds;
use crate::supervisor::{DaemonEvent, Metrics};
use crate::{ConfigError, Error, Orchestrator, Shutdown};

/// How often the scheduler looks at the registry even when nothing woke it
/// (another daemon's submissions, stuck tasks).
const TICK: Duration = Duration::from_secs(1);
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
    /// This node's labels (`key=value`), in a cluster: it claims only
    /// tasks whose constraints are all among them.
    pub labels: Vec<String>,
    /// The URL other nodes reach this one at, in a cluster.
    pub advertise: Option<String>,
}

/// When a live task last showed a sign of life, if its silence counts.
pub(super) type Sign = Arc<Mutex<Option<Instant>>>;

/// Sets a task's last sign of life (`None`: stop counting its silence).
pub(super) fn mark(sign: &Sign, at: Option<Instant>) {
    *sign.lock().unwrap_or_else(|p| p.into_inner()) = at;
}

/// How long a task has been silent, if its silence counts.
pub(super) fn silence(sign: &Sign) -> Option<Duration> {
    sign.lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|at| at.elapsed())
}

/// A task this daemon runs.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) shutdown: Shutdown,
    pub(super) project: String,
    pub(super) stuck_after: Duration,
    /// Its last sign of life: claimed, started, progress or output; `None`
    /// once it is stopping or its run is over, when silence means nothing.
    pub(super) last_sign: Sign,
    pub(super) stuck: bool,
}

/// The daemon's core; see the module docs.
#[derive(Debug)]
pub struct Supervisor {
    pub(super) orch: Orchestrator,
    pub(super) config: SupervisorConfig,
    pub(super) live: Mutex<HashMap<Uuid, Live>>,
    pub(super) wake: Notify,
    pub(super) events: broadcast::Sender<DaemonEvent>,
    /// The root of every task's own shutdown.
    pub(super) tasks: Shutdown,
    pub(super) accepting: AtomicBool,
    /// Held while a cleanup runs; when the last one ended.
    pub(super) cleaning: tokio::sync::Mutex<Option<Instant>>,
    pub(super) metrics: Arc<Metrics>,
    /// The last cleanups, newest last (bounded).
    pub(super) recent_cleanups: Mutex<std::collections::VecDeque<orch_protocol::RecentCleanup>>,
    /// What submissions asked of the world a moment ago.
    pub(super) checked: super::queue::Recently,
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
            checked: super::queue::Recently::default(),
        })
    }

    pub(super) fn ctx(&self) -> &Ctx {
        self.orch.ctx()
    }

    pub(super) fn live(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn emit(&self, event: DaemonEvent) {
        let _ = self.events.send(event);
    }

    /// A task of this daemon reached its end: counted and told.
    pub(super) fn ended(&self, record: TaskRecord) {
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
        let (live, reaped, nodes) = self
            .ctx()
            .store
            .call(|r| {
                let nodes = if r.shared() { r.nodes()? } else { Vec::new() };
                Ok::<_, orch_registry::Error>((r.count_by_state()?, r.counters("reaped.")?, nodes))
            })
            .await?;
        let mut by_state: Vec<(String, u64)> = Vec::new();
        for node in &nodes {
            match by_state.iter_mut().find(|(s, _)| s == node.state()) {
                Some((_, n)) => *n += 1,
                None => by_state.push((node.state().to_owned(), 1)),
            }
        }
        let live: Vec<(String, u64)> = live
            .into_iter()
            .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
            .collect();
        Ok(self.metrics.encode(&live, self.stuck(), &reaped, &by_state))
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
    pub fn recent_cleanups(&self) -> Vec<orch_protocol::RecentCleanup> {
        self.recent_cleanups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Its stuck tasks now: id, project and seconds of silence.
    pub fn alerts(&self) -> Vec<orch_protocol::Alert> {
        self.live()
            .iter()
            .filter(|(_, l)| l.stuck)
            .map(|(id, l)| orch_protocol::Alert {
                kind: "task.stuck".into(),
                id: *id,
                project: l.project.clone(),
                silent_secs: silence(&l.last_sign).unwrap_or_default().as_secs(),
            })
            .collect()
    }

    /// How many of its running tasks are stuck.
    pub fn stuck(&self) -> usize {
        self.live().values().filter(|l| l.stuck).count()
    }

    pub(super) fn global_config(&self) -> Result<GlobalConfig, ConfigError> {
        GlobalConfig::load(self.config.config_path.as_deref())
    }

    /// Runs the daemon until `shutdown` stops it: reconciliation at once,
    /// then the queue and the cleanup schedule. When it stops, the daemon
    /// takes no more tasks, stops the running ones gracefully (recorded
    /// `cancelled (daemon shutdown)`, torn down by their policy) and returns
    /// once they are; queued tasks stay queued. Forced, it forces them.
    pub async fn run(self: &Arc<Self>, shutdown: Shutdown) {
        let started = self.clone();
        self.ctx().tracker.spawn(async move {
            started.reconcile_at_start().await;
        });
        let schedule = self.clone();
        let schedule_stop = shutdown.clone();
        self.ctx().tracker.spawn(async move {
            schedule.cleanup_schedule(schedule_stop).await;
        });
        if self.ctx().store.shared() {
            let node = self.clone();
            let node_stop = shutdown.clone();
            self.ctx().tracker.spawn(async move {
                node.node_loop(node_stop).await;
            });
        }
        loop {
            self.fill().await;
            self.watch_stuck();
            tokio::select! {
                () = shutdown.stopping() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
        self.accepting.store(false, Ordering::SeqCst);
        self.tasks.stop_because("daemon shutdown");
        let mut forced = false;
        while self.running() > 0 {
            tokio::select! {
                () = shutdown.forced(), if !forced => {
                    forced = true;
                    let by = shutdown.forced_by().unwrap_or_else(|| "a second signal".into());
                    self.tasks.force_because(&by);
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
        self.leave().await;
    }
}
