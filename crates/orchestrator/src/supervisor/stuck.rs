//! The stuck watch: on each tick of the queue loop, a running task with no
//! progress and no output for its `stuck_after` raises `task.stuck` once;
//! new output or progress clears it.

use crate::supervisor::core::silence;
use crate::supervisor::{DaemonEvent, Supervisor};

impl Supervisor {
    /// Raises `task.stuck` once per task silent for too long, and clears it
    /// when the task shows a sign of life.
    pub(super) fn watch_stuck(&self) {
        let mut raised = Vec::new();
        let mut cleared = Vec::new();
        for (id, live) in self.live().iter_mut() {
            let Some(silent) = silence(&live.last_sign) else {
                continue;
            };
            if !live.stuck && silent >= live.stuck_after {
                live.stuck = true;
                raised.push((*id, live.project.clone(), silent));
            } else if live.stuck && silent < live.stuck_after {
                live.stuck = false;
                cleared.push(*id);
            }
        }
        for (id, project, silent) in raised {
            tracing::warn!(task = %id, project = %project, silent_secs = silent.as_secs(), "task is stuck: no progress and no output");
            self.emit(DaemonEvent::TaskStuck {
                id,
                project,
                silent_secs: silent.as_secs(),
            });
        }
        for id in cleared {
            tracing::info!(task = %id, "task is no longer stuck");
            self.emit(DaemonEvent::TaskUnstuck { id });
        }
    }
}
