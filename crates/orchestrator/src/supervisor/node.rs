//! The daemon as a node of a cluster (SPEC 12): its lease in the shared
//! registry, the rescue of tasks whose owner's lease ran out (on any node,
//! this one included), and wake-ups from other nodes. Runs only when the
//! registry is shared.

use std::sync::Arc;

use orch_registry::{Node, State};

use crate::Shutdown;
use crate::supervisor::{DaemonEvent, Supervisor};

impl Supervisor {
    /// This daemon as its registry's nodes table has it, if it is a node.
    pub(super) fn as_node(&self) -> Option<Node> {
        let identity = self.ctx().node.as_ref()?;
        Some(Node {
            id: identity.id.clone(),
            name: identity.name.clone(),
            labels: self.config.labels.clone(),
            concurrency: i64::try_from(self.config.concurrency).unwrap_or(i64::MAX),
            advertise: self.config.advertise.clone(),
            session: self.ctx().session.id.to_string(),
        })
    }

    /// Renews the node's lease and rescues expired tasks, every sixth of a
    /// lease, until the process winds down. Other nodes' submissions and
    /// rescues wake the queue at once (`LISTEN`); polling finds the rest.
    pub(super) async fn node_loop(self: &Arc<Self>, shutdown: Shutdown) {
        let Some(node) = self.as_node() else {
            return;
        };
        let lease = self.ctx().leases.lease();
        let every = crate::cluster::LeasePolicy {
            lease,
            fenced: true,
        }
        .renew_every();
        let joining = node.clone();
        if let Err(e) = self
            .ctx()
            .store
            .call(move |r| r.join(&joining, lease))
            .await
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot join the cluster yet; retrying");
        }
        let me = Arc::clone(self);
        let listened = self
            .ctx()
            .store
            .call(move |r| {
                r.listen(Box::new(move |_| {
                    me.wake.notify_one();
                }))
            })
            .await;
        if let Err(e) = listened {
            tracing::warn!(error = %format!("{e:#}"), "no wake-ups from other nodes: polling alone");
        }
        let closing = self.ctx().closing.clone();
        loop {
            let renewing = node.clone();
            if let Err(e) = self
                .ctx()
                .store
                .call(move |r| r.renew_node(&renewing, lease))
                .await
            {
                tracing::warn!(error = %format!("{e:#}"), "cannot renew this node's lease");
            }
            if !shutdown.is_stopping() {
                self.rescue().await;
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = closing.cancelled() => break,
            }
        }
    }

    /// Takes back the tasks whose owner's lease ran out, and tells of each.
    pub(super) async fn rescue(self: &Arc<Self>) {
        let rescued = match self.ctx().store.call(|r| r.rescue()).await {
            Ok(rescued) => rescued,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot rescue the tasks of dead nodes");
                return;
            }
        };
        if rescued.is_empty() {
            return;
        }
        let lost = rescued.iter().filter(|r| r.to == State::Lost).count() as u64;
        if lost > 0 {
            let _ = self
                .ctx()
                .store
                .call(move |r| r.bump("reaped.rescue", lost))
                .await;
        }
        for task in rescued {
            tracing::warn!(task = %task.id, from = %task.from, to = %task.to, "{}", task.reason);
            self.emit(DaemonEvent::TaskState {
                id: task.id,
                project: task.project.clone(),
                state: task.to,
            });
            if task.to == State::Lost {
                let id = task.id;
                if let Ok(Some(record)) = self.ctx().store.call(move |r| r.get(&id)).await {
                    self.emit(DaemonEvent::TaskFinished {
                        task: Box::new(record),
                    });
                }
            }
        }
        self.wake.notify_one();
    }

    /// The node leaves cleanly: other nodes see it `left`, not dead.
    pub(super) async fn leave(&self) {
        if let Some(node) = self.as_node() {
            let id = node.id;
            if let Err(e) = self.ctx().store.call(move |r| r.leave(&id)).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot record this node's leaving");
            }
        }
    }
}
