//! The RAII backstop of one task's container.
//!
//! The real cleanup is an explicit async call at the end of every run; this
//! guard only acts if that call never happened, because the run's future was
//! dropped or a panic unwound through it. It never panics: it logs.

use crate::ActiveSet;
use crate::remove::{Gone, remove_container_blocking};

/// Armed from before a container's create call until its removal succeeded.
pub(crate) struct ContainerGuard {
    name: String,
    active: ActiveSet,
    armed: bool,
}

impl ContainerGuard {
    /// Registers `name` in the active set and arms the guard.
    pub(crate) fn arm(active: &ActiveSet, name: &str, task_id: uuid::Uuid) -> ContainerGuard {
        active.insert(name, task_id);
        ContainerGuard {
            name: name.to_owned(),
            active: active.clone(),
            armed: true,
        }
    }

    /// The container is created under another name instead.
    pub(crate) fn rename(&mut self, name: &str) {
        if let Some(task_id) = self.active.remove(&self.name) {
            self.active.insert(name, task_id);
        }
        name.clone_into(&mut self.name);
    }

    /// The container is gone: nothing left to do.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
        self.active.remove(&self.name);
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::warn!(container = %self.name, "task ended without cleanup; removing its container");
        match remove_container_blocking(&self.name) {
            Ok(gone) => {
                if gone == Gone::Removed {
                    tracing::warn!(container = %self.name, "removed container");
                }
                self.active.remove(&self.name);
            }
            Err(e) => {
                tracing::error!(container = %self.name, error = %e, "backstop removal failed")
            }
        }
    }
}
