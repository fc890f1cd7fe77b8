//! The owner's side of its live tasks' records: one loop per process, for
//! all of them. It renews their leases, stores their progress, and notices
//! cancel requests made from other processes.
//!
//! The loop ticks four times a second and does one round of registry work
//! per tick on the blocking pool, however many tasks the process runs. It
//! never ends a task itself: a cancel request becomes a graceful stop of
//! that task's own shutdown.
//!
//! In a cluster others rely on the leases: a task whose lease runs out is
//! rescued by another node. So the loop also fences its own process: when
//! no renewal has landed for half the lease (the registry is out of reach,
//! or the process was frozen) it stops its tasks gracefully, at three
//! quarters it forces them, and a task the registry says this attempt no
//! longer holds is forced at once. Each renewal also tells the watchdog how
//! long it holds: if the process itself is frozen, the watchdog removes the
//! session's containers before the lease runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_registry::{Attempt, Renewal, now_ms};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::Shutdown;
use crate::cluster::LeasePolicy;
use crate::link::WatchdogLink;
use crate::store::Records;

/// How long a lease lasts on one host.
pub(crate) const LEASE: Duration = Duration::from_secs(15);
/// How often progress and cancel requests are looked at.
const TICK: Duration = Duration::from_millis(250);

/// The latest progress report of a task.
pub(crate) type Progress = Option<(u8, String)>;

/// A progress report to store, and the attempt it is made under.
type Report = (Attempt, (u8, String));

/// The end of a lease of `lease` taken now.
pub(crate) fn lease_until(lease: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

struct Entry {
    attempt: i64,
    /// When its record was written or claimed with a fresh lease: it is
    /// fenced by the silence since then, not by an older one (a task
    /// claimed once the registry is back must not pay for the outage).
    since: Instant,
    /// Its run is ending it: the registry saying it is no longer live is
    /// that run's own doing.
    ending: bool,
    shutdown: Shutdown,
    progress: watch::Receiver<Progress>,
    stored: Progress,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<Uuid, Entry>,
    running: bool,
}

/// This process's live tasks, as the lease loop sees them.
#[derive(Clone)]
pub(crate) struct Leases {
    inner: Arc<Mutex<Inner>>,
    store: Records,
    tracker: TaskTracker,
    stop: CancellationToken,
    policy: LeasePolicy,
    watchdog: Arc<Mutex<Option<Arc<WatchdogLink>>>>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").finish_non_exhaustive()
    }
}

impl Leases {
    pub(crate) fn new(
        store: Records,
        tracker: TaskTracker,
        stop: CancellationToken,
        policy: LeasePolicy,
    ) -> Leases {
        Leases {
            inner: Arc::default(),
            store,
            tracker,
            stop,
            policy,
            watchdog: Arc::default(),
        }
    }

    /// How long each renewal holds.
    pub(crate) fn lease(&self) -> Duration {
        self.policy.lease
    }

    /// Tells `link` how long each renewal holds, when others rely on it.
    pub(crate) fn set_watchdog(&self, link: Arc<WatchdogLink>) {
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    /// Tells the watchdog to remove the session's containers if it hears
    /// nothing newer within `within` (or, `None`, never).
    fn fence(&self, within: Option<Duration>) {
        if !self.policy.fenced {
            return;
        }
        if let Some(link) = &*self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) {
            link.fence(within);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts looking after a live task; the loop starts with the first.
    pub(crate) fn add(
        &self,
        task: Attempt,
        shutdown: Shutdown,
        progress: watch::Receiver<Progress>,
    ) {
        let start = {
            let mut inner = self.lock();
            inner.tasks.insert(
                task.id,
                Entry {
                    attempt: task.number,
                    since: Instant::now(),
                    ending: false,
                    shutdown,
                    progress,
                    stored: None,
                },
            );
            !std::mem::replace(&mut inner.running, true)
        };
        // Its record was just written with a lease from now: the watchdog
        // holds off for that long (this process is plainly not frozen).
        self.fence(Some(self.policy.force_after()));
        if start {
            let leases = self.clone();
            self.tracker.spawn(async move { leases.run().await });
        }
    }

    /// The task's run is ending it (its own end is about to be recorded).
    pub(crate) fn ending(&self, task: &Attempt) {
        if let Some(entry) = self.lock().tasks.get_mut(&task.id) {
            if entry.attempt == task.number {
                entry.ending = true;
            }
        }
    }

    /// Stops looking after a task's attempt (a later attempt of it that
    /// this process runs now is left alone), storing its last progress
    /// first.
    pub(crate) async fn remove(&self, task: &Attempt) {
        let id = &task.id;
        let (last, empty) = {
            let mut inner = self.lock();
            let this_attempt = inner
                .tasks
                .get(id)
                .is_some_and(|entry| entry.attempt == task.number);
            let removed = if this_attempt {
                inner.tasks.remove(id)
            } else {
                None
            };
            let last = removed.and_then(|entry| {
                let current = entry.progress.borrow().clone();
                let task = Attempt {
                    id: *id,
                    number: entry.attempt,
                };
                (current != entry.stored)
                    .then_some(current)
                    .flatten()
                    .map(|report| (task, report))
            });
            (last, inner.tasks.is_empty())
        };
        if empty {
            self.fence(None);
        }
        if let Some((task, (percent, message))) = last {
            let id = task.id;
            let stored = self
                .store
                .call(move |r| r.set_progress(&task, percent, &message, now_ms()))
                .await;
            if let Err(e) = stored {
                tracing::warn!(task = %id, error = %e, "failed to store the last progress");
            }
        }
    }

    async fn run(self) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew_every = self.policy.renew_every();
        let mut last_try = Instant::now();
        // When the last renewal that landed was sent.
        let mut renewed = Instant::now();
        // A round of registry work still in flight (a database out of reach
        // holds one for a while): never two at once.
        let mut round: Option<tokio::task::JoinHandle<Result<Renewal, crate::Error>>> = None;
        let mut round_renews: Option<Instant> = None;
        // The attempts the round in flight is about.
        let mut round_tasks: Vec<Attempt> = Vec::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.stop.cancelled() => return,
            }
            if round
                .as_ref()
                .is_some_and(tokio::task::JoinHandle::is_finished)
            {
                let outcome = match round.take() {
                    Some(handle) => handle.await.unwrap_or_else(|e| {
                        Err(crate::Error::io(
                            "renew leases in",
                            std::path::Path::new("the registry"),
                            std::io::Error::other(e),
                        ))
                    }),
                    None => continue,
                };
                let sent = round_renews.take();
                match outcome {
                    Ok(renewal) => {
                        if let Some(sent) = sent {
                            renewed = sent;
                            let left = self.policy.force_after().saturating_sub(sent.elapsed());
                            // A renewal that landed too late to count (the
                            // registry was out of reach meanwhile) changes
                            // nothing: this process fences the tasks it
                            // covered itself, and the watchdog must not
                            // take tasks claimed since, with leases of
                            // their own, down with them.
                            if !left.is_zero() {
                                self.fence(Some(left));
                            }
                        }
                        self.act_on(&renewal, &round_tasks);
                    }
                    Err(e) => tracing::warn!(error = %e, "registry update failed"),
                }
            }
            if self.policy.fenced {
                self.fence_self(renewed);
            }
            if round.is_some() {
                continue;
            }
            let (tasks, reports) = self.pending_reports();
            if tasks.is_empty() {
                renewed = Instant::now();
                continue;
            }
            let renew = last_try.elapsed() >= renew_every;
            if renew {
                last_try = Instant::now();
                round_renews = Some(last_try);
            }
            let lease = self.policy.lease;
            let store = self.store.clone();
            round_tasks.clone_from(&tasks);
            round = Some(self.tracker.spawn(async move {
                store
                    .call(move |r| {
                        for (task, (percent, message)) in &reports {
                            // A report of an attempt that lost its task is
                            // refused: the renewal below says so.
                            if let Err(e) = r.set_progress(task, *percent, message, now_ms()) {
                                if !matches!(e, orch_registry::Error::Fenced { .. }) {
                                    return Err(e);
                                }
                            }
                        }
                        if renew {
                            r.renew_leases(&tasks, lease)
                        } else {
                            let ids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
                            Ok(Renewal {
                                cancel: r.cancel_requests(&ids)?,
                                lost: Vec::new(),
                            })
                        }
                    })
                    .await
            }));
        }
    }

    /// The live tasks, and the progress reports not yet stored (marked
    /// stored).
    fn pending_reports(&self) -> (Vec<Attempt>, Vec<Report>) {
        let mut inner = self.lock();
        let mut reports = Vec::new();
        let mut tasks = Vec::new();
        for (id, entry) in &mut inner.tasks {
            let task = Attempt {
                id: *id,
                number: entry.attempt,
            };
            tasks.push(task);
            let current = entry.progress.borrow().clone();
            if current != entry.stored {
                if let Some(report) = current.clone() {
                    reports.push((task, report));
                }
                entry.stored = current;
            }
        }
        (tasks, reports)
    }

    /// Stops the tasks a cancel was requested for, and forces those the
    /// registry says this process no longer holds.
    fn act_on(&self, renewal: &Renewal, sent: &[Attempt]) {
        let inner = self.lock();
        for id in &renewal.cancel {
            if let Some(entry) = inner.tasks.get(id) {
                if !entry.shutdown.is_stopping() {
                    tracing::info!(task = %id, "cancel requested");
                    entry.shutdown.stop_because("orch cancel");
                }
            }
        }
        for id in &renewal.lost {
            if !self.policy.fenced {
                break;
            }
            // The attempt the registry answered about: a later one of the
            // same task this process took on meanwhile is not the lost one.
            let Some(lost) = sent.iter().find(|t| t.id == *id) else {
                continue;
            };
            if let Some(entry) = inner
                .tasks
                .get(id)
                .filter(|e| !e.ending && e.attempt == lost.number)
            {
                if !entry.shutdown.is_forced() {
                    tracing::warn!(task = %id, "the registry says another node holds this task now; stopping it");
                    entry
                        .shutdown
                        .force_because("its lease was lost: the task was taken over");
                }
            }
        }
    }

    /// Stops every task gracefully once nothing was renewed for half the
    /// lease, and forces them at three quarters: before a rescuer may act,
    /// nothing of this process runs.
    fn fence_self(&self, renewed: Instant) {
        let inner = self.lock();
        for (id, entry) in &inner.tasks {
            // Silent since the last renewal that landed, or since its own
            // fresh lease, whichever is later.
            let silent = renewed.max(entry.since).elapsed();
            if silent < self.policy.stop_after() {
                continue;
            }
            let force = silent >= self.policy.force_after();
            let why = format!(
                "no lease renewal landed for {}s (the registry out of reach, or this process stopped): this node stopped its own task before its lease ran out",
                silent.as_secs()
            );
            if !entry.shutdown.is_stopping() {
                tracing::warn!(task = %id, "{why}");
                entry.shutdown.lose_because(&why);
            }
            if force && !entry.shutdown.is_forced() {
                tracing::warn!(task = %id, "{why}; forcing");
                entry.shutdown.lose_because(&why);
                entry.shutdown.force_because(&why);
            }
        }
    }
}
