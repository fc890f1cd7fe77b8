//! Shutdown, passed in from outside.
//!
//! The library never installs signal handlers: whoever owns the process (the
//! `orch` binary) turns signals into these two steps. `stop` asks every task
//! to stop gracefully (SIGTERM, SIGKILL after its grace); `force` asks for
//! immediate removal. Cleanup itself never waits on these tokens: it runs on
//! deadlines of its own.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Ctrl+Z of the process that owns a run: its tasks are frozen and their
/// timeouts stop counting until it continues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Suspension {
    /// The owner asked for its tasks to be frozen.
    pub requested: bool,
    /// The runs froze them.
    pub applied: bool,
}

/// The two-step shutdown trigger handed to the orchestrator, and the
/// suspension switch that goes with it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    graceful: CancellationToken,
    force: CancellationToken,
    /// Shared by a trigger and all its children.
    suspension: Arc<watch::Sender<Suspension>>,
    /// Why it fired, as the first caller said; a child falls back to its
    /// parent's, then its grandparent's, and so on.
    reason: Arc<OnceLock<String>>,
    ancestors: Vec<Arc<OnceLock<String>>>,
    /// What forced it, as the first caller said; a child falls back to
    /// its ancestors' (a second Ctrl+C forces every task), never to a
    /// sibling's.
    forced_by: Arc<OnceLock<String>>,
    forced_ancestors: Vec<Arc<OnceLock<String>>>,
    /// Why its owner lost its hold on the task (no lease renewal landed in
    /// time): the task is not cancelled, it is lost (and retried if it
    /// may be).
    lost: Arc<OnceLock<String>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            graceful: CancellationToken::new(),
            force: CancellationToken::new(),
            suspension: Arc::new(watch::Sender::new(Suspension::default())),
            reason: Arc::default(),
            ancestors: Vec::new(),
            forced_by: Arc::default(),
            forced_ancestors: Vec::new(),
            lost: Arc::default(),
        }
    }
}

impl Shutdown {
    /// A trigger that has not fired.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A trigger that fires when this one does, and can also fire alone (one
    /// task's own cancellation).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            graceful: self.graceful.child_token(),
            force: self.force.child_token(),
            suspension: Arc::clone(&self.suspension),
            reason: Arc::default(),
            ancestors: std::iter::once(Arc::clone(&self.reason))
                .chain(self.ancestors.iter().cloned())
                .collect(),
            forced_by: Arc::default(),
            forced_ancestors: std::iter::once(Arc::clone(&self.forced_by))
                .chain(self.forced_ancestors.iter().cloned())
                .collect(),
            lost: Arc::default(),
        }
    }

    /// Asks the runs to freeze their tasks and stop their timeouts (the
    /// owner is about to stop itself, Ctrl+Z).
    pub fn suspend(&self) {
        self.suspension.send_modify(|s| {
            s.requested = true;
            s.applied = false;
        });
    }

    /// Thaws the tasks and lets their timeouts count again.
    pub fn resume(&self) {
        self.suspension.send_modify(|s| {
            s.requested = false;
            s.applied = false;
        });
    }

    /// Waits until a run has frozen its task after [`Shutdown::suspend`].
    pub async fn suspended(&self) {
        let mut rx = self.suspension.subscribe();
        let _ = rx.wait_for(|s| s.applied || !s.requested).await;
    }

    pub(crate) fn suspension(&self) -> watch::Receiver<Suspension> {
        self.suspension.subscribe()
    }

    pub(crate) fn suspension_applied(&self) {
        self.suspension.send_modify(|s| {
            if s.requested {
                s.applied = true;
            }
        });
    }

    /// First step: stop gracefully.
    pub fn stop(&self) {
        self.graceful.cancel();
    }

    /// First step, saying why (`"SIGINT"`, `"orch cancel"`); the first
    /// reason given is kept.
    pub fn stop_because(&self, reason: &str) {
        let _ = self.reason.set(reason.to_owned());
        self.stop();
    }

    /// Why shutdown was requested, if a reason was given.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .get()
            .or_else(|| self.ancestors.iter().find_map(|a| a.get()))
            .cloned()
    }

    /// Second step: remove at once. Implies `stop`.
    pub fn force(&self) {
        self.graceful.cancel();
        self.force.cancel();
    }

    /// Second step, saying what forced it (`"SIGINT"`); the first reason
    /// given is kept, and records of the tasks it stops say so.
    pub fn force_because(&self, reason: &str) {
        let _ = self.forced_by.set(reason.to_owned());
        self.force();
    }

    /// What forced shutdown, if it was forced with a reason.
    pub fn forced_by(&self) -> Option<String> {
        self.forced_by
            .get()
            .or_else(|| self.forced_ancestors.iter().find_map(|a| a.get()))
            .cloned()
    }

    /// First step because the owner lost its hold on the task: the task is
    /// then recorded lost, not cancelled (and retried if it may be).
    pub(crate) fn lose_because(&self, reason: &str) {
        let _ = self.lost.set(reason.to_owned());
        self.stop_because(reason);
    }

    /// Why the owner lost its hold on the task, if it did.
    pub(crate) fn lost(&self) -> Option<String> {
        self.lost.get().cloned()
    }

    /// True once `stop` (or `force`) was called.
    pub fn is_stopping(&self) -> bool {
        self.graceful.is_cancelled() || self.force.is_cancelled()
    }

    /// True once `force` was called.
    pub fn is_forced(&self) -> bool {
        self.force.is_cancelled()
    }

    /// Resolves when `stop` or `force` is called.
    pub async fn stopping(&self) {
        tokio::select! {
            () = self.graceful.cancelled() => {}
            () = self.force.cancelled() => {}
        }
    }

    /// Resolves when `force` is called.
    pub async fn forced(&self) {
        self.force.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_and_children() {
        let root = Shutdown::new();
        let child = root.child();
        assert!(!child.is_stopping());
        child.stop();
        assert!(
            child.is_stopping() && !root.is_stopping(),
            "a child stops alone"
        );
        root.force();
        assert!(root.is_stopping() && root.is_forced());
        assert!(child.is_forced(), "the parent reaches its children");
        assert_eq!(child.reason(), None);
        let other = Shutdown::new();
        let (a, b) = (other.child(), other.child());
        a.stop_because("orch cancel");
        other.stop_because("SIGINT");
        assert_eq!(a.reason().as_deref(), Some("orch cancel"));
        assert_eq!(b.reason().as_deref(), Some("SIGINT"));
        let grandchild = other.child().child();
        assert_eq!(
            grandchild.reason().as_deref(),
            Some("SIGINT"),
            "from any ancestor"
        );
        // What forced one task is its own; what forced the parent, all of
        // theirs.
        let daemon = Shutdown::new();
        let (lost, sibling) = (daemon.child(), daemon.child());
        lost.lose_because("no lease renewal landed");
        lost.force_because("no lease renewal landed");
        assert_eq!(lost.lost().as_deref(), Some("no lease renewal landed"));
        assert_eq!(sibling.forced_by(), None, "never a sibling's");
        assert_eq!(sibling.lost(), None);
        daemon.force_because("SIGINT");
        assert_eq!(sibling.forced_by().as_deref(), Some("SIGINT"));
        assert_eq!(lost.forced_by().as_deref(), Some("no lease renewal landed"));
    }
}
