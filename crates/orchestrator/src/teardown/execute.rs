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

use orch_registry::{Finish, State, WorkspaceState, now_ms};
use orch_workspace::TaskLock;

use crate::context::Ctx;
use crate::fate::WorkspaceFate;
use crate::teardown::{Ending, Executed, Fate, RecordEnd, Step, Teardown};
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
    let mut done = Executed::default();
    let mut report = |done: &mut Executed, step: Step| {
        on_step(&step);
        done.steps.push(step);
    };

    // 1. The record's end.
    let mut record_failed = false;
    if let Some(id) = plan.task {
        let ending = match &plan.record {
            RecordEnd::Leave => None,
            RecordEnd::Finish(ending) => Some(ending.clone()),
            RecordEnd::FromExit(reason) => Some(exit_of(ctx, plan, reason).await),
        };
        match ending {
            Some(ending) => {
                let finish = Finish {
                    state: ending.state(),
                    exit_code: ending.exit_code(),
                    reason: ending.reason(),
                    at: now_ms(),
                };
                let reason = finish.reason.clone();
                match ctx.store.call(move |r| r.finish(&id, &finish)).await {
                    Ok(_) => {
                        done.state = Some(ending.state());
                        report(
                            &mut done,
                            Step::RecordEnded {
                                state: ending.state(),
                                reason,
                            },
                        );
                    }
                    // Someone else ended it first: theirs stands.
                    Err(Error::Registry(orch_registry::Error::IllegalTransition {
                        from, ..
                    })) => done.state = Some(from),
                    Err(Error::Registry(orch_registry::Error::NotFound(_))) => {
                        done.state = Some(ending.state());
                    }
                    Err(e) => {
                        record_failed = true;
                        done.errors.push(format!("failed to record the end: {e:#}"));
                    }
                }
            }
            None => {
                done.state = match ctx.store.call(move |r| r.get(&id)).await {
                    Ok(row) => row.map(|r| r.state),
                    Err(_) => None,
                };
            }
        }
    }

    // 2. Containers: stopped gracefully if they still run a task, then
    //    removed. A workspace that will go, of a task that exited, has its
    //    work saved meanwhile (saving only reads it). While its work is
    //    saved the record says so: `orch ps` and the metrics show the slot
    //    busy.
    let saves = plan
        .workspace
        .as_ref()
        .is_some_and(|step| step.started && step.target.repo.is_some());
    let saving_state = |state: WorkspaceState| async move {
        if let (true, Some(id), false) = (saves, plan.task, plan.delete_record) {
            let _ = ctx
                .store
                .call(move |r| r.set_workspace_state(&id, state))
                .await;
        }
    };
    saving_state(WorkspaceState::Saving).await;
    let mut held_lock = options.held_lock;
    let ahead = match (plan.saves_ahead(), held_lock.take()) {
        (Some(step), Some(lock)) => Some((step, lock)),
        (_, lock) => {
            held_lock = lock;
            None
        }
    };
    let saving = async {
        match ahead {
            Some((step, lock)) => {
                workspace::save_ahead(ctx, &step.target, lock, step.fate.unsaved()).await
            }
            None => (None, None),
        }
    };
    let removing = async {
        let mut containers_left = false;
        for step in &plan.containers {
            if let Some(grace) = step.stop_grace {
                if let Err(e) = ctx.runtime.stop(&step.name, grace).await {
                    tracing::warn!(container = %step.name, error = %format!("{e:#}"), "graceful stop failed; removing it");
                }
            }
            match ctx.runtime.remove(&step.name).await {
                Ok(gone) => {
                    ctx.active.remove(&step.name);
                    report(
                        &mut done,
                        Step::ContainerRemoved {
                            name: step.name.clone(),
                            gone,
                        },
                    );
                }
                Err(e) => {
                    containers_left = true;
                    done.errors.push(format!(
                        "failed to remove container {}: {}",
                        step.name,
                        chain(&e)
                    ));
                }
            }
        }
        containers_left
    };
    let ((saved, lock_back), containers_left) = tokio::join!(saving, removing);
    if lock_back.is_some() {
        held_lock = lock_back;
    }
    if containers_left {
        saving_state(WorkspaceState::Present).await;
        return done;
    }

    // 3. The workspace: kept or removed, its work saved first.
    if let Some(step) = &plan.workspace {
        let keep = match step.fate {
            // Nothing is lost: if the end could not be recorded, keep it.
            _ if record_failed => true,
            Fate::ByPolicy => step.started && step.policy.keeps(done.state.unwrap_or(State::Lost)),
            Fate::Remove | Fate::Discard => false,
        };
        let settled = if keep {
            let lock = match held_lock {
                Some(lock) => Ok(lock),
                None => workspace::lock(ctx, &step.target, options.lock_wait).await,
            };
            match lock {
                // Saved and handed back safe to use; already so if kept
                // before.
                Ok(lock) if step.started => Ok(workspace::keep(ctx, &step.target, lock).await),
                _ => Ok(WorkspaceFate::Kept {
                    path: step.target.path.clone(),
                    branch: step.target.repo.as_ref().map(|_| branch_of(plan)),
                    saved_commit: None,
                    warning: None,
                }),
            }
        } else {
            let lock = match held_lock {
                Some(lock) => Ok(lock),
                None => workspace::lock(ctx, &step.target, options.lock_wait).await,
            };
            match lock {
                Ok(lock) => {
                    let unsaved = step.fate.unsaved();
                    workspace::remove(ctx, &step.target, lock, unsaved, step.started, saved).await
                }
                Err(e) => Err(e),
            }
        };
        match settled {
            Ok(fate) => {
                let warning = match &fate {
                    WorkspaceFate::Removed { warning, .. }
                    | WorkspaceFate::Kept { warning, .. } => warning.clone(),
                    WorkspaceFate::Unwound { .. } => None,
                };
                if let (Some(id), false, Some(warning)) = (plan.task, plan.delete_record, warning) {
                    note(ctx, id, &format!("workspace: {warning}")).await;
                }
                if let (Some(id), false) = (plan.task, plan.delete_record) {
                    let state = match fate {
                        WorkspaceFate::Kept { .. } => WorkspaceState::Kept,
                        WorkspaceFate::Removed { .. } | WorkspaceFate::Unwound { .. } => {
                            WorkspaceState::Removed
                        }
                    };
                    if let Err(e) = ctx
                        .store
                        .call(move |r| r.set_workspace_state(&id, state))
                        .await
                    {
                        done.errors.push(format!("{e:#}"));
                    }
                }
                report(&mut done, Step::Workspace(fate));
            }
            Err(e) => {
                done.errors.push(format!(
                    "workspace {} kept: {}",
                    step.target.path.display(),
                    chain(&e)
                ));
                if let (Some(id), false) = (plan.task, plan.delete_record) {
                    note(ctx, id, &format!("workspace kept: {}", chain(&e))).await;
                    let _ = ctx
                        .store
                        .call(move |r| r.set_workspace_state(&id, WorkspaceState::Kept))
                        .await;
                }
                return done;
            }
        }
    }

    // 4. Record and log, last: nothing of the task is left to find them by.
    if let (true, Some(id)) = (plan.delete_record, plan.task) {
        if let Err(e) = ctx.store.call(move |r| r.delete(&id)).await {
            done.errors.push(format!("{e:#}"));
            return done;
        }
        report(&mut done, Step::RecordDeleted);
    }
    if let Some((log, bytes)) = &plan.log {
        match tokio::fs::remove_file(log).await {
            Ok(()) => report(&mut done, Step::LogDeleted { bytes: *bytes }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => done
                .errors
                .push(format!("failed to remove {}: {e}", log.display())),
        }
    }
    done
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
async fn note(ctx: &Ctx, id: uuid::Uuid, text: &str) {
    let text = text.to_owned();
    if let Err(e) = ctx.store.call(move |r| r.add_note(&id, &text)).await {
        tracing::warn!(task = %id, error = %format!("{e:#}"), "cannot note on the task's record");
    }
}

fn branch_of(plan: &Teardown) -> String {
    plan.task.map(|id| format!("orch/{id}")).unwrap_or_default()
}

/// An error and its causes on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    crate::runtime::display_chain(error)
}
