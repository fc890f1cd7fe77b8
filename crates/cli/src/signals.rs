//! Signals and panics become shutdown steps; nowhere else in orch installs
//! a handler.
//!
//! The first SIGINT, SIGTERM, SIGHUP or SIGQUIT stops gracefully; a second
//! SIGINT, SIGTERM or SIGQUIT forces. A hang-up never forces: a shell that
//! dies sends SIGHUP to its jobs again, and a terminal that closes is not
//! a person asking twice. Ctrl+Z (SIGTSTP) freezes a foreground task and
//! its timeout before orch stops itself; SIGCONT thaws them. `orch task`
//! and `orch serve` both turn signals into a [`Shutdown`] here. The signal task never writes to the terminal (it may have
//! hung up): what happens is shown by the run's observer. A panic anywhere forces too, so the task's container is removed
//! before the process dies.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use orch_orchestrator::Shutdown;
use signal_hook::consts::{SIGCONT, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTSTP};
use signal_hook_tokio::Signals;

/// The shutdown a panic forces.
static PANIC_SHUTDOWN: OnceLock<Shutdown> = OnceLock::new();

/// Makes a panic, on any thread, force `shutdown` after the default hook has
/// printed it.
pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        crate::output::say("orch: internal error; removing this session's containers");
        if let Some(shutdown) = PANIC_SHUTDOWN.get() {
            shutdown.force_because("a panic in orch");
        }
    }));
}

/// Makes a panic on any thread force `shutdown` (for `orch task`: its one
/// task's container goes before the process dies; a daemon's tasks are not
/// forced by a panic in one request).
pub(crate) fn force_on_panic(shutdown: &Shutdown) {
    let _ = PANIC_SHUTDOWN.set(shutdown.clone());
}

/// Watches the shutdown signals for one foreground command.
pub(crate) struct SignalWatch {
    first: Arc<AtomicI32>,
    handle: signal_hook_tokio::Handle,
}

/// What a hang-up (SIGHUP) does.
pub(crate) enum Hangup {
    /// Stops, as the first SIGINT does (and never forces).
    Stop,
    /// Calls this (a daemon reading its certificate again) and goes on.
    Reload(Box<dyn Fn() + Send + Sync>),
}

/// What Ctrl+Z does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtrlZ {
    /// Freezes the task and its timeout, then stops orch (`orch task`).
    Freeze,
    /// What it does to any program (`orch serve`).
    Default,
}

impl SignalWatch {
    /// Starts turning signals into steps of `shutdown`.
    pub(crate) fn start(
        shutdown: &Shutdown,
        ctrl_z: CtrlZ,
        hangup: Hangup,
    ) -> std::io::Result<SignalWatch> {
        let mut wanted = vec![SIGINT, SIGTERM, SIGHUP, SIGQUIT];
        if ctrl_z == CtrlZ::Freeze {
            wanted.extend([SIGTSTP, SIGCONT]);
        }
        let mut signals = Signals::new(wanted)?;
        let handle = signals.handle();
        let first = Arc::new(AtomicI32::new(0));
        let seen = Arc::clone(&first);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while let Some(signal) = signals.next().await {
                if signal == SIGTSTP {
                    suspend(&shutdown).await;
                    continue;
                }
                if signal == SIGCONT {
                    tracing::info!("continued: thawing the task");
                    crate::output::lend_again();
                    shutdown.resume();
                    continue;
                }
                if let (SIGHUP, Hangup::Reload(reload)) = (signal, &hangup) {
                    reload();
                    continue;
                }
                let name = signal_name(signal);
                // Nothing is printed here: the terminal may be the thing
                // that hung up. The run reports the stop through its
                // observer, whose writes never fail or block this task.
                match step(&seen, signal) {
                    Step::Stop => {
                        tracing::info!(signal = name, "stopping gracefully");
                        shutdown.stop_because(name);
                    }
                    Step::Force => {
                        tracing::info!(signal = name, "forcing");
                        shutdown.force_because(name);
                    }
                    Step::Ignore => {
                        tracing::info!(signal = name, "hang-up again: the graceful stop goes on");
                    }
                }
            }
        });
        Ok(SignalWatch { first, handle })
    }

    /// The first signal received, if any.
    pub(crate) fn first(&self) -> Option<i32> {
        Some(self.first.load(Ordering::SeqCst)).filter(|s| *s != 0)
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// What one signal does, given the first one seen (0: none yet; it is
/// recorded here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Stop,
    Force,
    Ignore,
}

fn step(first: &AtomicI32, signal: i32) -> Step {
    if first
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        Step::Stop
    } else if signal == SIGHUP {
        Step::Ignore
    } else {
        Step::Force
    }
}

/// Ctrl+Z: the task is frozen and its timeout stops counting (as nextest
/// pauses its timers), then orch stops itself as the terminal asked; `fg`
/// (SIGCONT) thaws both.
async fn suspend(shutdown: &Shutdown) {
    tracing::info!("suspended: freezing the task");
    shutdown.suspend();
    // A run that has no container yet does not answer: stop anyway.
    let _ = tokio::time::timeout(SUSPEND_WAIT, shutdown.suspended()).await;
    crate::output::give_back_while_stopped();
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
}

/// How long Ctrl+Z waits for the task to be frozen before orch stops.
const SUSPEND_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hang_ups_never_force_and_a_second_interrupt_does() {
        let first = AtomicI32::new(0);
        assert_eq!(step(&first, SIGHUP), Step::Stop);
        assert_eq!(step(&first, SIGHUP), Step::Ignore);
        assert_eq!(step(&first, SIGHUP), Step::Ignore);
        assert_eq!(step(&first, SIGINT), Step::Force);
        let first = AtomicI32::new(0);
        assert_eq!(step(&first, SIGINT), Step::Stop);
        assert_eq!(step(&first, SIGHUP), Step::Ignore);
        assert_eq!(step(&first, SIGTERM), Step::Force);
    }
}
