//! The public face of one orch process: a thin [`Orchestrator`] over the
//! shared [`Ctx`](crate::context::Ctx), each method one call into the
//! module that does the work.

use std::sync::Arc;
use std::time::Duration;

use orch_registry::TaskRecord;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cancel::{self, Cancelled};
use crate::cluster::NodeIdentity;
use crate::context::Ctx;
use crate::events::{EventSink, Observer};
use crate::link::WatchdogLink;
use crate::reconcile::{self, CleanupOptions, CleanupReport};
use crate::run::{self, Outcome, PreparedTask, TaskRequest};
use crate::runtime::{DockerRuntime, Gone, Runtime, RuntimeError};
use crate::store::Records;
use crate::watchdog::{self, Reaped, WatchdogLog};
use crate::{Error, Home, Session, Shutdown};

/// How long the observer may take to show what is queued at the end.
const OBSERVER_DEADLINE: Duration = Duration::from_secs(10);

/// One orch session: a runtime connection, an orch home and its registry,
/// and what this process has not cleaned up yet.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    ctx: Arc<Ctx>,
}

impl Orchestrator {
    /// Opens the registry of `home` and connects to the Docker engine
    /// (`DOCKER_HOST`, API version negotiated) for a new session.
    pub async fn connect(home: Home) -> Result<Orchestrator, Error> {
        Orchestrator::connect_as(home, None).await
    }

    /// As [`Orchestrator::connect`], named `node_name` in a cluster (else
    /// `ORCH_NODE_NAME` or the host's name).
    pub async fn connect_as(home: Home, node_name: Option<&str>) -> Result<Orchestrator, Error> {
        let store = Records::of_home(&home).await?;
        let node = if store.shared() {
            Some(NodeIdentity::of(&home, node_name)?)
        } else {
            None
        };
        let runtime = DockerRuntime::connect().await?;
        let mut orch = Orchestrator::with_runtime(home, store, Arc::new(runtime));
        if let Some(ctx) = Arc::get_mut(&mut orch.ctx) {
            ctx.set_node(node)?;
        }
        Ok(orch)
    }

    pub(crate) fn with_runtime(
        home: Home,
        store: Records,
        runtime: Arc<dyn Runtime>,
    ) -> Orchestrator {
        Orchestrator {
            ctx: Arc::new(Ctx::new(runtime, home, store)),
        }
    }

    /// Hands the watchdog this session; from now on it reaps the session
    /// if the pipe closes without `exit`. Call before anything runs.
    pub fn with_watchdog(self, link: WatchdogLink) -> Orchestrator {
        link.session(&self.ctx.session.id);
        let mut ctx = Arc::try_unwrap(self.ctx).unwrap_or_else(|shared| {
            // Cloned already: build a fresh context sharing the same parts.
            let mut fresh = Ctx::new(
                Arc::clone(&shared.runtime),
                shared.home.clone(),
                shared.store.clone(),
            );
            fresh.session = shared.session.clone();
            fresh.node = shared.node.clone();
            fresh.leases = shared.leases.clone();
            fresh
        });
        let link = Arc::new(link);
        ctx.leases.set_watchdog(Arc::clone(&link));
        ctx.watchdog = Some(link);
        Orchestrator { ctx: Arc::new(ctx) }
    }

    /// Checks everything a run needs before anything is created: the image
    /// (pulled if missing), the network, the repository and ref of a
    /// workspace. Bad input fails here, leaving no trace.
    pub async fn prepare(&self, request: TaskRequest) -> Result<PreparedTask, Error> {
        run::prepare(&self.ctx, request, &EventSink::discard()).await
    }

    /// Prepares and runs one task to its end, and tears it down, whichever
    /// way it ends. `shutdown` stops it from outside; `observer` is shown
    /// its id, output, progress and cleanup as they happen.
    pub async fn run_task(
        &self,
        request: TaskRequest,
        shutdown: Shutdown,
        observer: Box<dyn Observer>,
    ) -> Result<Outcome, Error> {
        let (sink, observer_thread) = EventSink::spawn(observer);
        let result = run::drive(
            &self.ctx,
            run::Start::Request(Box::new(request)),
            shutdown,
            sink,
        )
        .await;
        if !observer_thread.join(OBSERVER_DEADLINE).await {
            tracing::warn!("the observer did not finish showing the task's output in time");
        }
        result
    }

    /// Pushes a finished task's branch from this node's mirror to its
    /// project's URL (what `orch push` does after a push that failed);
    /// returns the URL.
    pub async fn push(&self, id: &Uuid) -> Result<String, Error> {
        let id = *id;
        let record = self
            .ctx
            .store
            .call(move |r| r.get(&id))
            .await?
            .ok_or_else(|| orch_registry::Error::NotFound(id.to_string()))?;
        let refuse = |message: String| {
            Error::Config(crate::ConfigError::Flag {
                flag: "push".into(),
                message,
            })
        };
        let Some(url) = record.workspace.remote.clone() else {
            return Err(refuse(format!(
                "task {id} is not of a project from a git server: its branch is in its repository already"
            )));
        };
        if record.state.is_live() {
            return Err(refuse(format!(
                "task {id} is {}: its work is pushed when it ends",
                record.state
            )));
        }
        crate::workspace::deliver(&self.ctx, &id.to_string(), &url)
            .await
            .map_err(|why| {
                Error::io(
                    "push the task's branch to",
                    std::path::Path::new(&url),
                    std::io::Error::other(format!("{why} (the work stays in this node's mirror)")),
                )
            })?;
        Ok(url)
    }

    /// Stops a live task gracefully and waits until it has ended.
    pub async fn cancel(&self, id: &Uuid) -> Result<Cancelled, Error> {
        cancel::cancel(&self.ctx, id).await
    }

    /// Plans and (unless a dry run) carries out a cleanup.
    pub async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport, Error> {
        reconcile::cleanup(&self.ctx, options).await
    }

    /// `orch rm`: everything of these ended tasks, their work saved to
    /// their branches first (unless `dry_run`, which only plans).
    pub async fn remove(&self, ids: &[Uuid], dry_run: bool) -> Result<CleanupReport, Error> {
        reconcile::remove(&self.ctx, ids, dry_run).await
    }

    /// Reconciliation alone, bounded by `limit`; it stops between items
    /// when this process winds down ([`Orchestrator::wind_down`]).
    pub async fn reconcile(&self, limit: Duration) -> Result<CleanupReport, Error> {
        reconcile::reconcile(&self.ctx, limit, &self.ctx.closing).await
    }

    /// Reaps a session whose orch died: the watchdog's work.
    pub async fn reap_session(&self, log: &WatchdogLog) -> Reaped {
        watchdog::reap(&self.ctx, log).await
    }

    /// Removes every container of this session: those it knows it created
    /// and those whose create call it may not have seen answered. The path
    /// a process takes after a panic or a failed teardown.
    pub async fn sweep_session(&self) -> Result<Vec<(String, Result<Gone, RuntimeError>)>, Error> {
        let ctx = &self.ctx;
        let mut names: Vec<String> = ctx
            .runtime
            .list(&ctx.selector(Some(ctx.session.id)))
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        for name in ctx.active.names() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let mut results = Vec::new();
        for name in names {
            let result = ctx.runtime.remove(&name).await;
            if result.is_ok() {
                ctx.active.remove(&name);
            }
            results.push((name, result));
        }
        crate::egress::sweep_networks(ctx, &ctx.selector(Some(ctx.session.id)), false).await?;
        Ok(results)
    }

    /// Stops this process's background work (reconciliation stops between
    /// items, the lease loop ends) and waits, at most `bound`, for every
    /// task it spawned to finish: none is abandoned in the middle of a git
    /// call. True if all finished.
    pub async fn wind_down(&self, bound: Duration) -> bool {
        self.ctx.closing.cancel();
        self.ctx.tracker.close();
        tokio::time::timeout(bound, self.ctx.tracker.wait())
            .await
            .is_ok()
    }

    /// Tells the watchdog, if any, that this process is exiting cleanly.
    pub fn watchdog_clean_exit(&self) {
        if let Some(link) = &self.ctx.watchdog {
            link.clean_exit();
        }
    }

    /// One task's record.
    pub async fn task(&self, id: &Uuid) -> Result<Option<TaskRecord>, Error> {
        let id = *id;
        self.ctx.store.call(move |r| r.get(&id)).await
    }

    /// The orch home.
    pub fn home(&self) -> &Home {
        &self.ctx.home
    }

    /// This session.
    pub fn session(&self) -> &Session {
        &self.ctx.session
    }

    /// Names of the containers created (or being created) and not yet
    /// removed.
    pub fn active(&self) -> Vec<String> {
        self.ctx.active.names()
    }

    #[cfg(test)]
    pub(crate) fn ctx_for_tests(&self) -> &Ctx {
        &self.ctx
    }

    pub(crate) fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// A token that fires when this process winds down.
    pub fn closing(&self) -> CancellationToken {
        self.ctx.closing.clone()
    }
}
