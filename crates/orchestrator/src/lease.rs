//! The owner's side of a live task's record: renews its lease, stores its
//! progress, and notices a cancel request from another process.
//!
//! One loop per live task, ticking four times a second: cheap reads and an
//! occasional write on the registry. It never ends the task itself; a cancel
//! request becomes a graceful stop of the task's own shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_registry::{Registry, now_ms};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Shutdown;
use crate::output::Progress;

/// How long a lease lasts.
pub(crate) const LEASE: Duration = Duration::from_secs(15);
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often progress and cancel requests are looked at.
const TICK: Duration = Duration::from_millis(250);

/// The end of the lease from now.
pub(crate) fn lease_until() -> i64 {
    now_ms() + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

/// Starts the loop; it ends when `done` is cancelled, after storing the last
/// progress.
pub(crate) fn spawn(
    registry: Arc<Mutex<Registry>>,
    task_id: Uuid,
    shutdown: Shutdown,
    progress: watch::Receiver<Progress>,
    done: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewal = tokio::time::Instant::now();
        let mut stored: Progress = None;
        loop {
            let finished = tokio::select! {
                _ = ticker.tick() => false,
                () = done.cancelled() => true,
            };
            // Read even after the pump (the sender) is gone: the last report
            // must be stored.
            let current = progress.borrow().clone();
            let report = (current != stored).then(|| current.clone()).flatten();
            stored = current;
            let renew = last_renewal.elapsed() >= RENEW_EVERY;
            if renew {
                last_renewal = tokio::time::Instant::now();
            }
            let registry = Arc::clone(&registry);
            let checked = tokio::task::spawn_blocking(move || {
                let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((percent, message)) = report {
                    registry.set_progress(&task_id, percent, &message, now_ms())?;
                }
                if renew {
                    registry.renew_lease(&task_id, lease_until())
                } else {
                    registry.cancel_requested(&task_id)
                }
            })
            .await;
            match checked {
                Ok(Ok(true)) if !shutdown.is_stopping() => {
                    tracing::info!(task = %task_id, "cancel requested");
                    shutdown.stop_because("orch cancel");
                }
                Ok(Err(e)) => tracing::warn!(task = %task_id, error = %e, "registry update failed"),
                _ => {}
            }
            if finished {
                return;
            }
        }
    })
}
