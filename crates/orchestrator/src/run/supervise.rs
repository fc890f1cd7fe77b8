//! The task runs: started (recorded running first), then watched until it
//! exits, its deadline passes, or shutdown comes; Ctrl+Z freezes it and its
//! clock.

use std::time::Duration;

use orch_registry::now_ms;
use orch_workspace::failpoint;

use crate::Error;
use crate::events::{Event, StopReason};
use crate::run::task::{TaskRun, stopped_by};
use crate::runtime::{RuntimeError, Stopped};
use crate::teardown::Ending;

impl TaskRun<'_> {
    /// Starts the container and waits for its end.
    pub(super) async fn supervise(&mut self) -> Result<Ending, Error> {
        if self.shutdown.is_stopping() {
            return Ok(Ending::Cancelled(stopped_by(&self.shutdown)));
        }
        if let Some(not_invoked) = self.start_container().await? {
            return Ok(not_invoked);
        }
        self.watch().await
    }

    /// Records the task running, then starts its container; `Some` ending
    /// if its command could not be invoked (126/127, as `docker run`).
    async fn start_container(&mut self) -> Result<Option<Ending>, Error> {
        let ctx = self.ctx;
        let holds = self.prepared.holds();
        let lease = ctx.leases.lease();
        // Recorded running before the start call: if orch dies around it,
        // whoever finds the task assumes it may have run (and keeps what
        // the policy keeps) rather than that it never did.
        ctx.store
            .call(move |r| r.mark_running(&holds, now_ms(), lease))
            .await?;
        match ctx.runtime.start(&self.name).await {
            Ok(()) => {}
            Err(RuntimeError::NotInvoked { code, message }) => {
                self.sink.send(Event::Notice(message));
                return Ok(Some(Ending::Exited(code)));
            }
            Err(e) => return Err(e.into()),
        }
        self.started = true;
        self.ran.send_replace(true);
        failpoint::hit("after-start");
        self.sink.send(Event::Started);
        Ok(None)
    }

    /// Waits for whichever comes first: the container's exit, the task's
    /// deadline (which counts only while the task may run: Ctrl+Z freezes
    /// the task and its clock), a graceful stop, or a forced one.
    async fn watch(&self) -> Result<Ending, Error> {
        let ctx = self.ctx;
        let settings = &self.prepared.request.project.settings;
        let (name, shutdown) = (&self.name, &self.shutdown);
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
                    self.sink.send(Event::Forcing);
                    if let Some(why) = shutdown.lost() {
                        return Ok(Ending::Lost(why));
                    }
                    return Ok(Ending::Cancelled(stopped_by(shutdown)));
                }
                () = shutdown.stopping() => {
                    if frozen {
                        let _ = ctx.runtime.unpause(name).await;
                    }
                    let killed = self.stop(StopReason::Requested(stopped_by(shutdown))).await;
                    if let Some(why) = shutdown.lost() {
                        return Ok(Ending::Lost(why));
                    }
                    let by = stopped_by(shutdown);
                    return Ok(Ending::Cancelled(match killed {
                        Some(grace) => format!("{by}{}", crate::teardown::killed_after(grace)),
                        None => by,
                    }));
                }
                () = deadline => {
                    let killed = self.stop(StopReason::Timeout).await;
                    return Ok(Ending::TimedOut(settings.timeout.unwrap_or_default(), killed));
                }
                changed = suspension.changed() => {
                    if !frozen {
                        left = left.map(|l| l.saturating_sub(counting_since.elapsed()));
                    }
                    if changed.is_ok() {
                        let requested = suspension.borrow_and_update().requested;
                        frozen = self.freeze(requested, frozen).await;
                    }
                }
                code = &mut wait => return Ok(Ending::Exited(code?)),
            }
        }
    }

    /// A graceful stop: SIGTERM now, SIGKILL after the task's grace (or at
    /// once, if forced meanwhile). The grace, if the task outlived it and
    /// was killed.
    async fn stop(&self, reason: StopReason) -> Option<Duration> {
        let grace = self.prepared.request.project.settings.stop_grace;
        self.sink.send(Event::Stopping { reason, grace });
        tokio::select! {
            stopped = self.ctx.runtime.stop(&self.name, grace) => match stopped {
                Ok(Stopped::Killed) => Some(grace),
                Ok(Stopped::OnTerm) => None,
                Err(e) => {
                    tracing::warn!(container = %self.name, error = %e, "graceful stop failed; removing it");
                    None
                }
            },
            () = self.shutdown.forced() => {
                self.sink.send(Event::Forcing);
                None
            }
        }
    }

    /// Records the task frozen or thawed (a failure is only logged: the
    /// freeze itself is what matters).
    async fn record_paused(&self, paused: bool) {
        let task = self.prepared.holds();
        let recorded = self
            .ctx
            .store
            .call(move |r| r.set_paused(&task, paused))
            .await;
        if let Err(e) = recorded {
            tracing::warn!(task = %task.id, error = %format!("{e:#}"), "cannot record the task frozen or thawed");
        }
    }

    /// Freezes or thaws the task as its owner's suspension asks; whether
    /// it is frozen now.
    async fn freeze(&self, requested: bool, frozen: bool) -> bool {
        let name = &self.name;
        if requested && !frozen {
            if let Err(e) = self.ctx.runtime.pause(name).await {
                tracing::warn!(container = %name, error = %e, "failed to freeze the task");
            }
            // Recorded before this process stops itself: `ps` says so.
            self.record_paused(true).await;
            self.shutdown.suspension_applied();
            true
        } else if !requested && frozen {
            if let Err(e) = self.ctx.runtime.unpause(name).await {
                tracing::warn!(container = %name, error = %e, "failed to thaw the task");
            }
            self.record_paused(false).await;
            false
        } else {
            frozen
        }
    }
}
