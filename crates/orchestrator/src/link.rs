//! orch's end of the pipe to its watchdog, and what it says on it: the
//! session it guards, each task before its container can exist (the facts
//! the teardown policy needs), each task torn down, how long its leases
//! hold (in a cluster), and a clean exit.
//! The watchdog's side (`crate::watchdog`) reads the same lines.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

use crate::teardown::TaskFacts;

/// orch's end of the pipe to its watchdog.
#[derive(Debug)]
pub struct WatchdogLink {
    pipe: Mutex<std::fs::File>,
}

impl WatchdogLink {
    /// Wraps the write end of the pipe (it must be close-on-exec, so no
    /// child of orch keeps the watchdog waiting).
    pub fn new(write_end: OwnedFd) -> WatchdogLink {
        WatchdogLink {
            pipe: Mutex::new(std::fs::File::from(write_end)),
        }
    }

    fn send(&self, line: &str) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(pipe, "{line}") {
            tracing::warn!(error = %e, "the watchdog is gone; only reconciliation is left if orch dies");
        }
    }

    /// Tells the watchdog which session it guards.
    pub(crate) fn session(&self, session: &Uuid) {
        self.send(&format!("session {session}"));
    }

    /// In a cluster: if the watchdog hears nothing newer within `within`
    /// (orch is frozen, or cut off from the registry), it removes the
    /// session's containers before the lease runs out; `None`: nothing
    /// needs fencing now.
    pub(crate) fn fence(&self, within: Option<Duration>) {
        match within {
            Some(within) => self.send(&format!("fence {}", within.as_millis())),
            None => self.send("fence off"),
        }
    }

    /// orch is exiting cleanly: the watchdog exits at once, touching
    /// nothing.
    pub fn clean_exit(&self) {
        self.send("exit");
    }
}

/// Registers a task with the process's watchdog (if it has one) before
/// its container can exist.
pub(crate) fn register(link: Option<&WatchdogLink>, facts: &TaskFacts, container: &str) {
    if let Some(link) = link {
        let registered = Registered {
            facts: facts.clone(),
            container: container.to_owned(),
        };
        match serde_json::to_string(&registered) {
            Ok(json) => link.send(&format!("task {json}")),
            Err(e) => tracing::warn!(error = %e, "failed to register a task with the watchdog"),
        }
    }
}

/// Tells the process's watchdog (if it has one) that a task is torn down.
pub(crate) fn done(link: Option<&WatchdogLink>, task_id: &Uuid) {
    if let Some(link) = link {
        link.send(&format!("done {task_id}"));
    }
}

/// A task as orch registered it with its watchdog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registered {
    /// What the teardown policy needs.
    pub facts: TaskFacts,
    /// Its planned container name.
    pub container: String,
}
