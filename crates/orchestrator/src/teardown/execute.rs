//! The one executor of teardown plans.
//!
//! Steps run in order and each is reported once it is done: the record
//! ends, the containers go, the workspace is kept or removed, then the
//! record and the log go if the plan says so. Every step is idempotent (an
//! ended record, a missing container, directory or log mean done), so a
//! plan can be carried out again after a crash, or by two processes at
//! once. A failed container removal stops the plan there: nothing is
//! deleted while a resource it owned is still around. One step overlaps
//! another: the work of a task that exited is brought home while its
//! container is removed (see [`Teardown::saves_ahead`]); its directory
//! goes after.

use std::time::Duration;

use orch_registry::{Attempt, Finish, State, WorkspaceState, now_ms};
use orch_workspace::{Saved, TaskLock};

use crate::context::Ctx;
use crate::fate::WorkspaceFate;
use crate::teardown::{
    Ending, Executed, Fate, RecordEnd, Step, Teardown, WorkspaceStep, WorkspaceTarget,
};
use crate::{Error, workspace};

/// How a plan is carried out.
#[derive(Debug, Default)]
pub(crate) struct ExecOptions {
    /// The workspace lock, if the caller holds it (a run holds its own).
    pub(crate) held_lock: Option<TaskLock>,
    /// How long to wait for a workspace's lock held by someone else (an
    /// owner still settling it); zero: give up at once.
    pub(crate) lock_wait: Duration,
}

/// Carries out `plan`, calling `on_step` after each step.
pub(crate) async fn execute(
    ctx: &Ctx,
    plan: &Teardown,
    options: ExecOptions,
    on_step: &mut (dyn FnMut(&Step) + Send),
) -> Executed {
    #[cfg(test)]
    ctx.executed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(plan.clone());
    let mut run = Execution {
        ctx,
        plan,
        on_step,
        done: Executed::default(),
        fenced: false,
    };
    // A task ended by someone other than its run (its watchdog, or
    // reconciliation when its node returns): its output goes to a shared
    // registry first, as its run would have sent it, for the other nodes.
    // So does that of a task a rescuer ended while its node was away, once
    // the node is back and removes what the task left.
    let ended_for_owner = matches!(
        plan.record,
        RecordEnd::FromExit(_) | RecordEnd::Retry(_) | RecordEnd::Finish(Ending::Lost(_))
    ) || (matches!(plan.record, RecordEnd::Leave)
        && !plan.delete_record
        && !plan.containers.is_empty());
    if let (true, true, Some(id)) = (ended_for_owner, ctx.store.shared(), plan.task) {
        crate::cluster::keep_log(ctx, id).await;
    }
    let recorded = run.end_record().await;
    let Some((saved, held_lock)) = run.containers(options.held_lock).await else {
        return run.done;
    };
    if plan.gone_workspace {
        let _ = run.workspace_state(WorkspaceState::Removed).await;
    }
    if let Some(step) = &plan.workspace {
        let lock = match held_lock {
            Some(lock) => Ok(lock),
            None => workspace::lock(ctx, &step.target, options.lock_wait).await,
        };
        if !run.settle_workspace(step, recorded, lock, saved).await {
            return run.done;
        }
    }
    run.remove_record_and_log().await;
    run.done
}

/// One plan being carried out: what it has done so far.
struct Execution<'a> {
    ctx: &'a Ctx,
    plan: &'a Teardown,
    on_step: &'a mut (dyn FnMut(&Step) + Send),
    done: Executed,
    /// The record is another attempt's: nothing more is written to it.
    fenced: bool,
}

impl Execution<'_> {
    fn report(&mut self, step: Step) {
        (self.on_step)(&step);
        self.done.steps.push(step);
    }

    /// The record, if it stays: the task and the attempt the plan writes
    /// as.
    fn kept_record(&self) -> Option<Attempt> {
        self.plan.writes_as().filter(|_| !self.plan.delete_record)
    }

    /// 1. The record's end. False if it could not be recorded (then
    ///    nothing of the task may be lost).
    async fn end_record(&mut self) -> bool {
        let (ctx, plan) = (self.ctx, self.plan);
        let Some(task) = plan.writes_as() else {
            return true;
        };
        let id = task.id;
        let ending = match &plan.record {
            RecordEnd::Leave => None,
            RecordEnd::Finish(ending) => Some(ending.clone()),
            RecordEnd::FromExit(reason) => Some(exit_of(ctx, plan, reason).await),
            RecordEnd::Requeue(reason) => return self.requeue(task, reason.clone()).await,
            RecordEnd::Retry(reason) => {
                if self.retry(task, reason.clone()).await {
                    return true;
                }
                Some(Ending::Lost(reason.clone()))
            }
        };
        let Some(ending) = ending else {
            self.done.state = match ctx.store.call(move |r| r.get(&id)).await {
                Ok(row) => row.map(|r| r.state),
                Err(_) => None,
            };
            return true;
        };
        let finish = Finish {
            state: ending.state(),
            exit_code: ending.exit_code(),
            reason: ending.reason(),
            at: now_ms(),
        };
        let reason = finish.reason.clone();
        match ctx.store.call(move |r| r.finish(&task, &finish)).await {
            Ok(_) => {
                self.done.state = Some(ending.state());
                self.report(Step::RecordEnded {
                    state: ending.state(),
                    reason,
                });
            }
            // Someone else ended it first: theirs stands.
            Err(Error::Registry(orch_registry::Error::IllegalTransition { from, .. })) => {
                self.done.state = Some(from);
            }
            Err(Error::Registry(orch_registry::Error::NotFound(_))) => {
                self.done.state = Some(ending.state());
            }
            // Another attempt holds the task (a rescuer queued it again and
            // someone claimed it): its record is theirs; this one's
            // resources are still this plan's to settle.
            Err(Error::Registry(orch_registry::Error::Fenced { .. })) => {
                self.done.state = Some(State::Lost);
                self.fenced = true;
            }
            Err(e) => {
                self.done
                    .errors
                    .push(format!("failed to record the end: {e:#}"));
                return false;
            }
        }
        true
    }

    /// 1, for a task that ran and lost its owner: back to the queue if it
    /// has retries left. True if it went back (the record is then the next
    /// attempt's); false to end it lost.
    async fn retry(&mut self, task: Attempt, reason: String) -> bool {
        let said = format!("{reason}; queued again to retry");
        let shown = said.clone();
        match self.ctx.store.call(move |r| r.retry(&task, &said)).await {
            Ok(true) => {
                self.done.state = Some(State::Queued);
                self.fenced = true;
                self.report(Step::RecordEnded {
                    state: State::Queued,
                    reason: shown,
                });
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(task = %task.id, error = %format!("{e:#}"), "cannot queue the task again; ending it lost");
                false
            }
        }
    }

    /// 1, for a task claimed and never started: back to the queue. The
    /// record is then no longer this attempt's to write.
    async fn requeue(&mut self, task: Attempt, reason: String) -> bool {
        let id = task.id;
        let said = reason.clone();
        match self.ctx.store.call(move |r| r.requeue(&task, &said)).await {
            Ok(true) => {
                self.done.state = Some(State::Queued);
                self.fenced = true;
                self.report(Step::RecordEnded {
                    state: State::Queued,
                    reason,
                });
                true
            }
            // It moved on meanwhile (ended, or claimed again): as it is.
            Ok(false) => {
                self.fenced = true;
                self.done.state = match self.ctx.store.call(move |r| r.get(&id)).await {
                    Ok(row) => row.map(|r| r.state),
                    Err(_) => None,
                };
                true
            }
            Err(e) => {
                self.done
                    .errors
                    .push(format!("failed to queue the task again: {e:#}"));
                false
            }
        }
    }

    /// The workspace a step settles: once another attempt holds the task
    /// (this one was fenced), a started one's work goes to a branch of
    /// this attempt's own, never to the task's branch or server.
    fn target_of(&self, step: &WorkspaceStep) -> WorkspaceTarget {
        let mut target = step.target.clone();
        if let (true, true, Some(task), Some(repo)) = (
            self.fenced,
            step.started,
            self.plan.writes_as(),
            &mut target.repo,
        ) {
            repo.taken_over = Some(task.number);
        }
        target
    }

    /// Sets the workspace's state on a record that stays.
    async fn workspace_state(&mut self, state: WorkspaceState) -> Result<(), Error> {
        match self.kept_record().filter(|_| !self.fenced) {
            Some(task) => {
                self.ctx
                    .store
                    .call(move |r| r.set_workspace_state(&task, state))
                    .await
            }
            None => Ok(()),
        }
    }

    /// 2. Containers: stopped gracefully if they still run a task, then
    ///    removed. A workspace that will go, of a task that exited, has its
    ///    work saved meanwhile (saving only reads it); while it is saved the
    ///    record says so, and `orch ps` and the metrics show the slot busy.
    ///    None if a container is left: the plan stops there.
    async fn containers(
        &mut self,
        held_lock: Option<TaskLock>,
    ) -> Option<(Option<Saved>, Option<TaskLock>)> {
        let (ctx, plan) = (self.ctx, self.plan);
        let saves = plan
            .workspace
            .as_ref()
            .is_some_and(|step| step.started && step.target.repo.is_some());
        if saves {
            let _ = self.workspace_state(WorkspaceState::Saving).await;
        }
        let (ahead, mut held_lock) = match (plan.saves_ahead(), held_lock) {
            (Some(step), Some(lock)) => (Some((step, lock)), None),
            (_, lock) => (None, lock),
        };
        let ahead = ahead.map(|(step, lock)| (step, self.target_of(step), lock));
        let saving = async {
            match ahead {
                Some((step, target, lock)) => {
                    workspace::save_ahead(ctx, &target, lock, step.fate.unsaved()).await
                }
                None => (None, None),
            }
        };
        let ((saved, lock_back), containers_left) = tokio::join!(saving, self.remove_containers());
        if lock_back.is_some() {
            held_lock = lock_back;
        }
        if containers_left {
            if saves {
                let _ = self.workspace_state(WorkspaceState::Present).await;
            }
            return None;
        }
        Some((saved, held_lock))
    }

    /// Stops and removes the plan's containers; true if one is left.
    async fn remove_containers(&mut self) -> bool {
        let ctx = self.ctx;
        let mut left = false;
        for step in &self.plan.containers {
            if let Some(grace) = step.stop_grace {
                if let Err(e) = ctx.runtime.stop(&step.name, grace).await {
                    tracing::warn!(container = %step.name, error = %format!("{e:#}"), "graceful stop failed; removing it");
                }
            }
            match ctx.runtime.remove(&step.name).await {
                Ok(gone) => {
                    ctx.active.remove(&step.name);
                    self.report(Step::ContainerRemoved {
                        name: step.name.clone(),
                        gone,
                    });
                }
                Err(e) => {
                    left = true;
                    self.done.errors.push(format!(
                        "failed to remove container {}: {}",
                        step.name,
                        chain(&e)
                    ));
                }
            }
        }
        left
    }

    /// 3. The workspace: kept (saved and handed back safe to use) or
    ///    removed, its work saved first. False if it could not be settled:
    ///    then it is kept and the plan stops there.
    async fn settle_workspace(
        &mut self,
        step: &WorkspaceStep,
        recorded: bool,
        lock: Result<TaskLock, Error>,
        saved: Option<Saved>,
    ) -> bool {
        let ctx = self.ctx;
        let keep = match step.fate {
            // Nothing is lost: if the end could not be recorded, keep it.
            _ if !recorded => true,
            Fate::ByPolicy => {
                step.started && step.policy.keeps(self.done.state.unwrap_or(State::Lost))
            }
            Fate::Remove | Fate::Discard => false,
        };
        let target = self.target_of(step);
        let settled = match (keep, lock) {
            (true, Ok(lock)) if step.started => Ok(workspace::keep(ctx, &target, lock).await),
            // Never started, or kept before by someone still holding it.
            (true, _) => Ok(WorkspaceFate::Kept {
                path: step.target.path.clone(),
                branch: step.target.repo.as_ref().map(|_| branch_of(self.plan)),
                saved_commit: None,
                warning: None,
            }),
            (false, Ok(lock)) => {
                let unsaved = step.fate.unsaved();
                workspace::remove(ctx, &target, lock, unsaved, step.started, saved).await
            }
            (false, Err(e)) => Err(e),
        };
        let fate = match settled {
            Ok(fate) => fate,
            Err(e) => {
                self.done.errors.push(format!(
                    "workspace {} kept: {}",
                    step.target.path.display(),
                    chain(&e)
                ));
                if let Some(task) = self.kept_record().filter(|_| !self.fenced) {
                    note(ctx, task, &format!("workspace kept: {}", chain(&e))).await;
                    let _ = self.workspace_state(WorkspaceState::Kept).await;
                }
                return false;
            }
        };
        if let Some(task) = self.kept_record().filter(|_| !self.fenced) {
            if let Some(warning) = fate.warning() {
                note(ctx, task, &format!("workspace: {warning}")).await;
            }
            let state = match fate {
                WorkspaceFate::Kept { .. } => WorkspaceState::Kept,
                WorkspaceFate::Removed { .. } | WorkspaceFate::Unwound { .. } => {
                    WorkspaceState::Removed
                }
            };
            if let Err(e) = self.workspace_state(state).await {
                self.done.errors.push(format!("{e:#}"));
            }
        }
        self.report(Step::Workspace(fate));
        true
    }

    /// 4. Record and log, last: nothing of the task is left to find them by.
    async fn remove_record_and_log(&mut self) {
        let plan = self.plan;
        if let (true, Some(id)) = (plan.delete_record, plan.task) {
            if let Err(e) = self.ctx.store.call(move |r| r.delete(&id)).await {
                self.done.errors.push(format!("{e:#}"));
                return;
            }
            self.report(Step::RecordDeleted);
        }
        if let Some((log, bytes)) = &plan.log {
            let _ = tokio::fs::remove_file(crate::output::times_path(log)).await;
            match tokio::fs::remove_file(log).await {
                Ok(()) => self.report(Step::LogDeleted { bytes: *bytes }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self
                    .done
                    .errors
                    .push(format!("failed to remove {}: {e}", log.display())),
            }
        }
    }
}

/// The ending a container that exited while its owner was gone left: its
/// real exit code, read from the runtime.
async fn exit_of(ctx: &Ctx, plan: &Teardown, reason: &str) -> Ending {
    for step in &plan.containers {
        if let Ok(Some(code)) = ctx.runtime.exit_code(&step.name).await {
            return Ending::Exited(code);
        }
    }
    Ending::Lost(format!("{reason} (exit code unknown)"))
}

/// Adds a note to the task's record: what its end left for the user to
/// know, in `orch show` and the API whichever process ended it.
async fn note(ctx: &Ctx, task: Attempt, text: &str) {
    let text = text.to_owned();
    if let Err(e) = ctx.store.call(move |r| r.add_note(&task, &text)).await {
        tracing::warn!(task = %task.id, error = %format!("{e:#}"), "cannot note on the task's record");
    }
}

fn branch_of(plan: &Teardown) -> String {
    plan.task.map(|id| format!("orch/{id}")).unwrap_or_default()
}

/// An error and its causes on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    crate::runtime::display_chain(error)
}
