//! The RAII backstop of one task's container.
//!
//! The real cleanup is the explicit teardown at the end of every run; this
//! guard only acts if that never happened, because the run's future was
//! dropped or a panic unwound through it. It never panics and never blocks
//! the thread it drops on (that may be a runtime worker): it hands the
//! removal to the process's tracked tasks, which the process awaits with a
//! bound before it exits, and the session sweep after a panic covers it
//! too.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::active::ActiveSet;
use crate::runtime::{Gone, Runtime};

/// Armed from before a container's create call until its removal succeeded.
pub(crate) struct ContainerGuard {
    name: String,
    active: ActiveSet,
    runtime: Arc<dyn Runtime>,
    tracker: TaskTracker,
    armed: bool,
}

impl ContainerGuard {
    /// Registers `name` in the active set and arms the guard.
    pub(crate) fn arm(
        active: &ActiveSet,
        runtime: &Arc<dyn Runtime>,
        tracker: &TaskTracker,
        name: &str,
        task_id: uuid::Uuid,
    ) -> ContainerGuard {
        active.insert(name, task_id);
        ContainerGuard {
            name: name.to_owned(),
            active: active.clone(),
            runtime: Arc::clone(runtime),
            tracker: tracker.clone(),
            armed: true,
        }
    }

    /// The container's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
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
        let (name, active, runtime) = (
            self.name.clone(),
            self.active.clone(),
            Arc::clone(&self.runtime),
        );
        let removal = async move {
            match runtime.remove(&name).await {
                Ok(gone) => {
                    if gone == Gone::Removed {
                        tracing::warn!(container = %name, "removed container");
                    }
                    active.remove(&name);
                }
                Err(e) => tracing::error!(container = %name, error = %e, "backstop removal failed"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                self.tracker.spawn_on(removal, &handle);
            }
            Err(_) => {
                // No runtime here: a thread of its own, with its own.
                let spawned = std::thread::Builder::new()
                    .name("orch-remove".into())
                    .spawn(move || {
                        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            rt.block_on(removal);
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "failed to start a thread for the backstop removal");
                }
            }
        }
    }
}
