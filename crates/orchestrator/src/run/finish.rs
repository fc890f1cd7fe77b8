//! The one end of every run: the output drained, then the teardown plan of
//! how it ended, carried out by the one executor.

use std::time::{Duration, Instant};

use crate::Error;
use crate::events::Event;
use crate::output::finish_pump;
use crate::run::task::{DRAIN_DEADLINE, TaskRun, stopped_by};
use crate::run::{Outcome, Status};
use crate::runtime::{ContainerState, Gone};
use crate::teardown::{self, Cause, Ending, ExecOptions, Found, RepoFacts, Step, WorkspaceTarget};

impl TaskRun<'_> {
    /// The one end of every run: drain the output, then the teardown plan
    /// of how it ended, carried out by the one executor.
    pub(super) async fn finish(&mut self, ending: Result<Ending, Error>) -> Result<Outcome, Error> {
        let ended = Instant::now();
        self.ctx.leases.ending(&self.prepared.holds());
        for input in self.input.drain(..) {
            input.abort();
        }
        self.over.send_replace(true);
        self.sink.send(Event::Ended);
        self.drain().await;
        if self.ctx.store.shared() {
            // Before the record ends: whoever reads it ended finds the
            // output in the registry.
            crate::cluster::keep_log(self.ctx, self.prepared.holds().id).await;
        }
        let (ending, error) = match ending {
            Ok(ending) => (ending, None),
            Err(e) => {
                let text = crate::runtime::display_chain(&e);
                let ending = if self.started {
                    Ending::Failed(text)
                } else {
                    Ending::NotStarted(text)
                };
                (ending, Some(e))
            }
        };
        let fate = self.tear_down(&ending, ended).await;
        if let Some(pump) = self.pump.take() {
            finish_pump(pump).await;
        }
        crate::link::done(self.ctx.watchdog.as_deref(), &self.prepared.task_id);
        if let Some(error) = error {
            return Err(error);
        }
        let (status, exit_code) = match &ending {
            Ending::Exited(0) => (Status::Succeeded, Some(0)),
            Ending::Exited(code) => (Status::Failed, Some(*code)),
            Ending::TimedOut(..) => (Status::TimedOut, None),
            Ending::Cancelled(_) | Ending::NotStarted(_) => (Status::Cancelled, None),
            Ending::Failed(_) | Ending::Lost(_) => (Status::Failed, None),
        };
        Ok(Outcome {
            task_id: self.prepared.task_id,
            container: self.name.clone(),
            status,
            exit_code,
            stopped_by: (status == Status::Cancelled).then(|| stopped_by(&self.shutdown)),
            workspace: fate,
        })
    }

    /// Waits for the output (unless forced), so the log is whole.
    async fn drain(&mut self) {
        if let Some(running) = &mut self.pump {
            if !self.shutdown.is_forced() {
                tokio::select! {
                    drained = tokio::time::timeout(DRAIN_DEADLINE, running) => {
                        if drained.is_ok() {
                            self.pump = None;
                        }
                    }
                    () = self.shutdown.forced() => self.sink.send(Event::Forcing),
                }
            }
        }
    }

    /// What the run made, as the teardown finds it.
    fn found(&self) -> Found {
        Found {
            containers: self
                .guard
                .as_ref()
                .map(|g| (g.name().to_owned(), ContainerState::Other))
                .into_iter()
                .chain(
                    self.egress
                        .clone()
                        .map(|name| (name, ContainerState::Other)),
                )
                .collect(),
            workspace: self.held.as_ref().map(|h| WorkspaceTarget {
                project: h.workspace.project.clone(),
                dir_name: h.workspace.task_id.clone(),
                path: h.workspace.path.clone(),
                bytes: 0,
                image: Some(self.prepared.request.project.settings.image.clone()),
                repo: self.prepared.repo.as_ref().map(|(repo, base)| RepoFacts {
                    top: repo.top.clone(),
                    git_dir: repo.common_dir.clone(),
                    base: base.clone(),
                    remote: self.remote(),
                    description: Some(self.prepared.request.desc.clone()),
                    taken_over: None,
                }),
            }),
            log: None,
        }
    }

    /// Plans the teardown of `ending` and carries it out, telling the sink
    /// each step; what became of the workspace.
    async fn tear_down(&mut self, ending: &Ending, ended: Instant) -> Option<crate::WorkspaceFate> {
        let plan = teardown::plan(&self.facts(), Cause::Ended(ending.clone()), self.found());
        let options = ExecOptions {
            held_lock: self.held.take().map(|h| h.lock),
            lock_wait: Duration::ZERO,
        };
        let sink = self.sink.clone();
        let mut fate = None;
        let mut removed = false;
        let executed = teardown::execute(self.ctx, &plan, options, &mut |step| match step {
            Step::ContainerRemoved { name, gone } => {
                removed = true;
                sink.send(Event::Cleaned {
                    container: (*gone == Gone::Removed).then(|| name.clone()),
                    elapsed: ended.elapsed(),
                });
            }
            Step::Workspace(settled) => {
                fate = Some(settled.clone());
                sink.send(Event::Workspace(settled.clone()));
            }
            _ => {}
        })
        .await;
        for failure in &executed.errors {
            self.sink.send(Event::Notice(failure.clone()));
        }
        if removed {
            if let Some(guard) = self.guard.take() {
                guard.disarm();
            }
        }
        fate
    }
}
