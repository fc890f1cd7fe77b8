//! `orch cancel` from any terminal.
//!
//! A live task is stopped by its owner: the request goes into the registry,
//! where the owner's lease loop finds it within a quarter of a second and
//! stops the task gracefully, then finishes it as usual. If the owner is
//! gone, the canceller does the owner's work itself.

use std::time::Duration;

use orch_registry::{Finish, State, WorkspaceState, now_ms};
use uuid::Uuid;

use crate::cleanup::WorkspaceTarget;
use crate::{Error, Orchestrator};

/// How long to wait for an owner beyond the task's stop grace.
const OWNER_SLACK: Duration = Duration::from_secs(30);

/// What `cancel` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The task had already ended, in this state.
    AlreadyEnded(State),
    /// The task ended, in this state (normally `cancelled`; it may have
    /// ended by itself meanwhile).
    Ended(State),
}

impl Orchestrator {
    async fn has_containers(&self, id: &Uuid) -> Result<bool, Error> {
        Ok(self
            .list_containers(None)
            .await?
            .iter()
            .any(|c| c.task_id == Some(*id)))
    }

    /// Stops a live task gracefully and waits until it has ended.
    pub async fn cancel(&self, id: &Uuid) -> Result<Cancelled, Error> {
        let id = *id;
        let Some(row) = self.task(&id).await? else {
            return Err(orch_registry::Error::NotFound(id.to_string()).into());
        };
        if row.state.is_terminal() {
            return Ok(Cancelled::AlreadyEnded(row.state));
        }
        self.db(move |r| r.request_cancel(&id)).await?;
        let grace = Duration::from_millis(u64::try_from(row.stop_grace_ms).unwrap_or(0));
        let owner = crate::Owner::from(&row);
        let deadline = tokio::time::Instant::now() + grace + OWNER_SLACK;
        while owner.is_alive() && tokio::time::Instant::now() < deadline {
            if let Some(now) = self.task(&id).await? {
                // Ended, and its resources dealt with: container gone,
                // workspace settled.
                let settled = now.workspace_state != Some(WorkspaceState::Present);
                if now.state.is_terminal() && settled && !self.has_containers(&id).await? {
                    return Ok(Cancelled::Ended(now.state));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The owner may have finished the task (and kept its workspace)
        // and exited since the last look: then there is nothing left to do.
        if let Some(now) = self.task(&id).await? {
            if now.state.is_terminal() {
                return Ok(Cancelled::Ended(now.state));
            }
        }
        if owner.is_alive() {
            return Err(Error::DockerTimeout {
                action: "wait for the owner to cancel",
                target: format!("task {id}"),
                after: grace + OWNER_SLACK,
            });
        }

        // The owner is gone: stop and remove the container, finish the
        // record, and treat the workspace as a cancelled task's.
        for container in self.list_containers(None).await? {
            if container.task_id == Some(id) {
                self.stop_and_remove(&container.name, grace).await?;
            }
        }
        let finish = Finish {
            state: State::Cancelled,
            exit_code: None,
            reason: "cancelled (orch cancel; its owner was gone)".into(),
            at: now_ms(),
        };
        let state = match self.db(move |r| r.finish(&id, &finish)).await {
            Ok(_) => State::Cancelled,
            Err(Error::Registry(orch_registry::Error::IllegalTransition { from, .. })) => from,
            Err(e) => return Err(e),
        };
        let dirs = self.task_dirs().await?;
        if let Some(dir) = dirs.iter().find(|d| d.task_id == id.to_string()) {
            let target = WorkspaceTarget::of(dir, Some(&row.image));
            self.remove_workspace_target(&target, false).await?;
            self.db(move |r| r.set_workspace_state(&id, WorkspaceState::Removed))
                .await?;
        }
        Ok(Cancelled::Ended(state))
    }
}
