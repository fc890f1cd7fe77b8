//! Signals and panics become shutdown steps; nowhere else in orch installs
//! a handler.
//!
//! The first SIGINT, SIGTERM, SIGHUP or SIGQUIT stops gracefully; a second
//! one forces. A panic anywhere forces too, so the task's container is removed
//! before the process dies.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use orch_orchestrator::Shutdown;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook_tokio::Signals;

/// The shutdown a panic forces.
static PANIC_SHUTDOWN: OnceLock<Shutdown> = OnceLock::new();

/// Makes a panic, on any thread, force `shutdown` after the default hook has
/// printed it.
pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("orch: internal error; removing this session's containers");
        if let Some(shutdown) = PANIC_SHUTDOWN.get() {
            shutdown.force();
        }
    }));
}

/// Watches the shutdown signals for one foreground command.
pub(crate) struct SignalWatch {
    first: Arc<AtomicI32>,
    handle: signal_hook_tokio::Handle,
}

impl SignalWatch {
    /// Starts turning signals into steps of `shutdown`.
    pub(crate) fn start(shutdown: &Shutdown) -> std::io::Result<SignalWatch> {
        let _ = PANIC_SHUTDOWN.set(shutdown.clone());
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
        let handle = signals.handle();
        let first = Arc::new(AtomicI32::new(0));
        let seen = Arc::clone(&first);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while let Some(signal) = signals.next().await {
                let name = signal_name(signal);
                if seen
                    .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    eprintln!(
                        "orch: {name} received: stopping gracefully; press Ctrl+C again to force"
                    );
                    shutdown.stop_because(name);
                } else {
                    eprintln!("orch: {name} received again: forcing removal now");
                    shutdown.force();
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

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}
