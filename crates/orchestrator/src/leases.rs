//! The owner's side of its live tasks' records: one loop per process, for
//! all of them. It renews their leases, stores their progress, and notices
//! cancel requests made from other processes.
//!
//! The loop ticks four times a second and does one round of registry work
//! per tick on the blocking pool, however many tasks the process runs. It
//! never ends a task itself: a cancel request becomes a graceful stop of
//! that task's own shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_registry::now_ms;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::Shutdown;
use crate::store::Records;

/// How long a lease lasts.
pub(crate) const LEASE: Duration = Duration::from_secs(15);
/// How often leases are renewed.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often progress and cancel requests are looked at.
const TICK: Duration = Duration::from_millis(250);

/// The latest progress report of a task.
pub(crate) type Progress = Option<(u8, String)>;

/// The end of a lease taken now.
pub(crate) fn lease_until() -> i64 {
    now_ms() + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

struct Entry {
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
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").finish_non_exhaustive()
    }
}

impl Leases {
    pub(crate) fn new(store: Records, tracker: TaskTracker, stop: CancellationToken) -> Leases {
        Leases {
            inner: Arc::default(),
            store,
            tracker,
            stop,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts looking after a live task; the loop starts with the first.
    pub(crate) fn add(&self, id: Uuid, shutdown: Shutdown, progress: watch::Receiver<Progress>) {
        let start = {
            let mut inner = self.lock();
            inner.tasks.insert(
                id,
                Entry {
                    shutdown,
                    progress,
                    stored: None,
                },
            );
            !std::mem::replace(&mut inner.running, true)
        };
        if start {
            let leases = self.clone();
            self.tracker.spawn(async move { leases.run().await });
        }
    }

    /// Stops looking after a task, storing its last progress first.
    pub(crate) async fn remove(&self, id: &Uuid) {
        let last = {
            let mut inner = self.lock();
            inner.tasks.remove(id).and_then(|entry| {
                let current = entry.progress.borrow().clone();
                (current != entry.stored).then_some(current).flatten()
            })
        };
        if let Some((percent, message)) = last {
            let id = *id;
            let stored = self
                .store
                .call(move |r| r.set_progress(&id, percent, &message, now_ms()))
                .await;
            if let Err(e) = stored {
                tracing::warn!(task = %id, error = %e, "failed to store the last progress");
            }
        }
    }

    async fn run(self) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.stop.cancelled() => return,
            }
            let (ids, reports) = {
                let mut inner = self.lock();
                let mut reports = Vec::new();
                for (id, entry) in &mut inner.tasks {
                    let current = entry.progress.borrow().clone();
                    if current != entry.stored {
                        if let Some(report) = current.clone() {
                            reports.push((*id, report));
                        }
                        entry.stored = current;
                    }
                }
                (inner.tasks.keys().copied().collect::<Vec<_>>(), reports)
            };
            if ids.is_empty() {
                continue;
            }
            let renew = last_renewal.elapsed() >= RENEW_EVERY;
            if renew {
                last_renewal = tokio::time::Instant::now();
            }
            let checked = self
                .store
                .call(move |r| {
                    for (id, (percent, message)) in &reports {
                        r.set_progress(id, *percent, message, now_ms())?;
                    }
                    if renew {
                        r.renew_leases(&ids, lease_until())
                    } else {
                        r.cancel_requests(&ids)
                    }
                })
                .await;
            match checked {
                Ok(cancelled) => {
                    let inner = self.lock();
                    for id in cancelled {
                        if let Some(entry) = inner.tasks.get(&id) {
                            if !entry.shutdown.is_stopping() {
                                tracing::info!(task = %id, "cancel requested");
                                entry.shutdown.stop_because("orch cancel");
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "registry update failed"),
            }
        }
    }
}
