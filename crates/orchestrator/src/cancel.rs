//! `orch cancel` from any terminal.
//!
//! A live task is stopped by its owner: the request goes into the registry,
//! where the owner's lease loop finds it within a quarter of a second and
//! stops the task gracefully, then tears it down as usual. If the owner is
//! gone, the canceller builds the same teardown plan the owner would have
//! (the task's own keep/remove choice included) and carries it out.

use std::time::Duration;

use orch_registry::State;
use uuid::Uuid;

use crate::Error;
use crate::context::Ctx;
use crate::reconcile::found_of;
use crate::teardown::{self, Cause, ExecOptions, TaskFacts};

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

/// Stops a live task gracefully and waits until it has ended and its
/// resources are dealt with.
pub(crate) async fn cancel(ctx: &Ctx, id: &Uuid) -> Result<Cancelled, Error> {
    let id = *id;
    let Some(row) = ctx.store.call(move |r| r.get(&id)).await? else {
        return Err(orch_registry::Error::NotFound(id.to_string()).into());
    };
    if row.state.is_terminal() {
        return Ok(Cancelled::AlreadyEnded(row.state));
    }
    // Waiting in a daemon's queue: nothing exists yet to stop.
    let dequeued = ctx
        .store
        .call(move |r| r.cancel_queued(&id, "cancelled (orch cancel)", orch_registry::now_ms()))
        .await?;
    if dequeued {
        return Ok(Cancelled::Ended(State::Cancelled));
    }
    ctx.store.call(move |r| r.request_cancel(&id)).await?;
    let facts = TaskFacts::from(&row);
    let node = ctx.node_id().map(str::to_owned);
    let foreign = crate::owner::is_foreign(&row, node.as_deref());
    let alive = || async {
        match ctx.store.call(move |r| r.get(&id)).await {
            Ok(Some(now)) => crate::owner::runs(&now, node.as_deref()),
            _ => false,
        }
    };
    let deadline = tokio::time::Instant::now() + facts.stop_grace + OWNER_SLACK;
    let has_containers = || async {
        let mut selector = ctx.selector(None);
        selector.task = Some(id);
        ctx.runtime.list(&selector).await.map(|c| !c.is_empty())
    };
    while alive().await && tokio::time::Instant::now() < deadline {
        if let Some(now) = ctx.store.call(move |r| r.get(&id)).await? {
            // Ended, and its resources dealt with: container gone,
            // workspace settled. Another node's are its own to see to.
            let settled = now.workspace_settled() && (foreign || !has_containers().await?);
            if now.state.is_terminal() && settled {
                return Ok(Cancelled::Ended(now.state));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The owner may have finished the task (and settled its workspace) and
    // exited since the last look: then there is nothing left to do.
    let Some(now) = ctx.store.call(move |r| r.get(&id)).await? else {
        return Ok(Cancelled::Ended(State::Cancelled));
    };
    if now.state.is_terminal() && (now.workspace_settled() || foreign) {
        return Ok(Cancelled::Ended(now.state));
    }
    if foreign && !crate::owner::runs(&now, node.as_deref()) {
        // Another node's task whose lease ran out: a rescuer's to end, and
        // this is one. Its resources are that node's own to settle.
        ctx.store.call(|r| r.rescue()).await?;
        let state = ctx
            .store
            .call(move |r| r.get(&id))
            .await?
            .map_or(State::Lost, |r| r.state);
        return Ok(Cancelled::Ended(state));
    }
    if crate::owner::runs(&now, node.as_deref()) {
        return Err(Error::Timeout {
            action: "wait for the owner to cancel",
            target: format!("task {id}"),
            after: facts.stop_grace + OWNER_SLACK,
        });
    }

    // The owner is gone: its work, by the same policy.
    let facts = TaskFacts::from(&now);
    let mut selector = ctx.selector(None);
    selector.task = Some(id);
    let containers = ctx.runtime.list(&selector).await?;
    let layout = ctx.home.layout();
    let dirs = crate::workspace::blocking(move || layout.task_dirs()).await?;
    let found = found_of(&facts, &containers, &dirs, None);
    let plan = teardown::plan(
        &facts,
        Cause::Cancel("orch cancel; its owner was gone".into()),
        found,
    );
    let executed = teardown::execute(ctx, &plan, ExecOptions::default(), &mut |_| {}).await;
    if let Some(error) = executed.errors.first() {
        return Err(Error::Teardown {
            task: id,
            message: error.clone(),
        });
    }
    Ok(Cancelled::Ended(executed.state.unwrap_or(State::Cancelled)))
}
