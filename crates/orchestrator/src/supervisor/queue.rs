//! The queue loop: claims queued tasks while fewer than the concurrency
//! run, drives each through the one task runner, and lets it go when it
//! ends; and submissions into the queue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_registry::{Claimant, State, TaskQueue, TaskRecord, now_ms};
use uuid::Uuid;

use crate::events::{Event, EventSink};
use crate::supervisor::core::{Live, Sign, mark};
use crate::supervisor::{DaemonEvent, SubmitSpec, Supervisor};
use crate::{Error, Shutdown, run, session};

impl Supervisor {
    /// Claims queued tasks while fewer than the concurrency run.
    pub(super) async fn fill(self: &Arc<Self>) {
        while self.accepting() && self.running() < self.config.concurrency {
            let session = &self.ctx().session;
            let claimant = Claimant {
                session: session.id.to_string(),
                pid: i64::from(session.owner.pid),
                start: i64::try_from(session.owner.start).unwrap_or(i64::MAX),
                boot: session.owner.boot.clone(),
                node: self
                    .ctx()
                    .node
                    .as_ref()
                    .map(|n| (n.id.clone(), n.name.clone())),
                labels: self.config.labels.clone(),
            };
            let lease = self.ctx().leases.lease();
            let claimed = self
                .ctx()
                .store
                .call(move |r| r.claim(&claimant, lease))
                .await;
            match claimed {
                Ok(Some(record)) => self.start(record),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "failed to claim a queued task");
                    return;
                }
            }
        }
    }

    /// Runs a claimed task in the background.
    pub(super) fn start(self: &Arc<Self>, record: TaskRecord) {
        let id = record.id;
        self.metrics.claimed(Duration::from_millis(
            u64::try_from(now_ms() - record.created_at).unwrap_or(0),
        ));
        let shutdown = self.tasks.child();
        let last_sign: Sign = Arc::new(Mutex::new(Some(Instant::now())));
        self.live().insert(
            id,
            Live {
                shutdown: shutdown.clone(),
                project: record.project.clone(),
                stuck_after: self.config.stuck_after,
                last_sign: last_sign.clone(),
                stuck: false,
            },
        );
        self.emit(DaemonEvent::TaskState {
            id,
            project: record.project.clone(),
            state: State::Creating,
        });
        let me = self.clone();
        self.ctx().tracker.spawn(async move {
            if let Err(e) = me.run_claimed(record, shutdown, last_sign).await {
                tracing::warn!(task = %id, error = %format!("{e:#}"), "task failed to run");
            }
            me.finished(id).await;
        });
    }

    /// Prepares and runs one claimed task through the one run and teardown.
    pub(super) async fn run_claimed(
        self: &Arc<Self>,
        record: TaskRecord,
        shutdown: Shutdown,
        last_sign: Sign,
    ) -> Result<(), Error> {
        let id = record.id;
        let project = record.project.clone();
        let events = self.events.clone();
        let live = Arc::downgrade(self);
        let sink = EventSink::direct(Arc::new(move |event: Event| match event {
            Event::Prepared {
                stuck_after: Some(stuck),
            } => {
                if let Some(me) = live.upgrade() {
                    if let Some(live) = me.live().get_mut(&id) {
                        live.stuck_after = stuck;
                    }
                }
            }
            Event::Started => {
                mark(&last_sign, Some(Instant::now()));
                let _ = events.send(DaemonEvent::TaskState {
                    id,
                    project: project.clone(),
                    state: State::Running,
                });
            }
            Event::Progress { percent, message } => {
                mark(&last_sign, Some(Instant::now()));
                let _ = events.send(DaemonEvent::TaskProgress {
                    id,
                    percent,
                    message,
                });
            }
            Event::Output { .. } => mark(&last_sign, Some(Instant::now())),
            Event::Stopping { .. } | Event::Forcing | Event::Ended => mark(&last_sign, None),
            // No terminal here: what a foreground run would print goes to
            // the daemon's log (and what lasts, to the record's notes).
            Event::Notice(message) => tracing::warn!(task = %id, "{message}"),
            Event::Workspace(crate::WorkspaceFate::Removed {
                warning: Some(warning),
                ..
            })
            | Event::Workspace(crate::WorkspaceFate::Kept {
                warning: Some(warning),
                ..
            }) => tracing::warn!(task = %id, "workspace: {warning}"),
            _ => {}
        }));
        let start = run::Start::Claimed {
            record: Box::new(record),
            config: Box::new(self.global_config()),
        };
        run::drive(self.ctx(), start, shutdown, sink)
            .await
            .map(drop)
    }

    /// A task of this daemon is over: it leaves the live set.
    pub(super) async fn finished(&self, id: Uuid) {
        let live = self.live().remove(&id);
        let record = self.ctx().store.call(move |r| r.get(&id)).await;
        if let Ok(Some(record)) = record {
            self.emit(DaemonEvent::TaskState {
                id,
                project: record.project.clone(),
                state: record.state,
            });
            if record.state.is_terminal() {
                self.ended(record);
            }
        } else if let Some(live) = live {
            tracing::warn!(task = %id, project = %live.project, "a finished task's record is gone");
        }
        self.wake.notify_one();
    }

    /// Checks a submission as `orch task` would and records it `queued`.
    pub async fn submit(self: &Arc<Self>, spec: SubmitSpec) -> Result<TaskRecord, Error> {
        if !self.accepting() {
            return Err(Error::Interrupted {
                reason: "the daemon is shutting down".into(),
            });
        }
        let config = self.global_config()?;
        let mut request = crate::supervisor::request_of(&spec, &config, None)?;
        let id = session::new_task_id();
        crate::workspace::fetch_remote(self.ctx(), &mut request).await?;
        // As `orch task` would: no engine, no task; no repository or ref,
        // no task. A burst of submissions shares the answers the world
        // gave within the last moment.
        if !self.checked.fresh(&Checked::Engine) {
            self.ctx().runtime.ping().await?;
            self.checked.saw(Checked::Engine);
        }
        let repo = Checked::Repo(request.project.path.clone(), request.git_ref.clone());
        let known = self.checked.fresh(&repo);
        run::check(self.ctx(), &request, id, !known).await?;
        if !known {
            self.checked.saw(repo);
        }
        let settings = &request.project.settings;
        let mut record = TaskRecord::new(
            id,
            &request.project.name,
            &request.desc,
            State::Queued,
            &session::container_name(&id),
            &settings.image,
        );
        record.name = request.name.clone();
        record.stop_grace_ms = i64::try_from(settings.stop_grace.as_millis()).unwrap_or(i64::MAX);
        record.owner.detached = true;
        record.workspace.keep_failed_workspace = settings.keep_failed_workspace;
        record.workspace.keep_workspace = request.keep_workspace;
        record.queue = TaskQueue {
            spec: Some(serde_json::to_string(&spec).map_err(|e| Error::Io {
                action: "record the submitted task in",
                path: self.ctx().home.registry_path(),
                source: std::io::Error::other(e),
            })?),
            priority: spec.priority,
            max_parallel: settings.max_parallel.map(i64::from),
            retries: i64::from(spec.retries),
            constraints: spec.constraints.clone(),
        };
        let inserted = record.clone();
        self.ctx().store.call(move |r| r.insert(&inserted)).await?;
        self.metrics.submitted();
        self.emit(DaemonEvent::TaskState {
            id,
            project: record.project.clone(),
            state: State::Queued,
        });
        self.wake.notify_one();
        self.piggyback_cleanup();
        Ok(record)
    }

    /// In a cluster, a warning for a queued task whose constraints no live
    /// node's labels satisfy: it waits until such a node joins. Best
    /// effort: a registry that cannot say gives no warning.
    pub async fn placement(&self, record: &TaskRecord) -> Option<String> {
        let constraints = record.queue.constraints.clone();
        if constraints.is_empty() || !self.ctx().store.shared() {
            return None;
        }
        let nodes = self.ctx().store.call(|r| r.nodes()).await.ok()?;
        let placeable = nodes
            .iter()
            .any(|n| n.alive && !n.left && constraints.iter().all(|c| n.node.labels.contains(c)));
        (!placeable).then(|| {
            format!(
                "warning: no live node has {}: task {} waits in the queue until one joins",
                constraints.join(", "),
                orch_registry::short_id(&record.id)
            )
        })
    }
}

/// How long an answer of the world serves the submissions that follow it.
const CHECKED_FOR: Duration = Duration::from_secs(1);

/// What a submission asks of the world before it is queued.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Checked {
    /// The engine answers.
    Engine,
    /// A project's repository resolves this ref.
    Repo(PathBuf, Option<String>),
}

/// The answers of the last [`CHECKED_FOR`]: fifty clients submitting to
/// one project at once make one check of each, not fifty. A task whose
/// repository or engine went away in that moment fails when it starts,
/// saying so, as one whose went away after its submission does.
#[derive(Debug, Default)]
pub(super) struct Recently {
    seen: Mutex<HashMap<Checked, Instant>>,
}

impl Recently {
    pub(super) fn fresh(&self, what: &Checked) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(what)
            .is_some_and(|at| at.elapsed() < CHECKED_FOR)
    }

    pub(super) fn saw(&self, what: Checked) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| at.elapsed() < CHECKED_FOR);
        seen.insert(what, Instant::now());
    }
}
