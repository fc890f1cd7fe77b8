//! Making the task's things, in an order a crash at any instant leaves
//! findable: the workspace (directory, then branch), the watchdog told,
//! the way out if it has one, the container (while git fills the
//! workspace), then the attached output.

use orch_registry::WorkspaceState;
use orch_workspace::failpoint;
use tokio::sync::watch;

use crate::Error;
use crate::events::Event;
use crate::guard::ContainerGuard;
use crate::output::spawn_pump;
use crate::run::prepare::spec;
use crate::run::task::{TaskRun, stopped_by};
use crate::runtime::ContainerSpec;
use crate::teardown::Ending;
use crate::{leases, workspace};

impl TaskRun<'_> {
    /// Creates the task's container under its guard, taking the long name
    /// if another task took the short one in the same millisecond.
    async fn create_container(&mut self, spec: &ContainerSpec) -> Result<(), Error> {
        let ctx = self.ctx;
        let task_id = self.prepared.task_id;
        self.guard = Some(ContainerGuard::arm(
            &ctx.active,
            &ctx.runtime,
            &ctx.tracker,
            &self.name,
            task_id,
        ));
        match ctx.runtime.create(&self.name, spec).await {
            Err(e) if e.is_conflict() => {
                // Another task started in the same millisecond (on this
                // engine, maybe in another instance) took the short name.
                self.name = format!("orch-{}", task_id.simple());
                if let Some(guard) = &mut self.guard {
                    guard.rename(&self.name);
                }
                ctx.runtime.create(&self.name, spec).await?;
                let name = self.name.clone();
                let holds = self.prepared.holds();
                ctx.store
                    .call(move |r| r.set_container(&holds, &name))
                    .await?;
            }
            other => other?,
        }
        Ok(())
    }

    /// The container's spec, the watchdog told of the task, and its way
    /// out opened if it has `egress`.
    async fn spec_with_way_out(&mut self) -> Result<ContainerSpec, Error> {
        let ctx = self.ctx;
        let task_id = self.prepared.task_id;
        let egress = self
            .prepared
            .request
            .project
            .settings
            .sandbox
            .egress
            .as_deref();
        let machine = ctx.runtime.machine().await?;
        let mut spec = spec(
            ctx,
            &self.prepared.request,
            task_id,
            self.held.as_ref().map(|h| &h.workspace),
            &machine,
        );
        let settings = &self.prepared.request.project.settings;
        // The user's identity fills in what the task's environment does not
        // set itself, variable by variable (`-e GIT_AUTHOR_NAME=x` changes
        // that name alone).
        let chosen = |key: &str| spec.env.iter().any(|(k, _)| k == key);
        let identity_keys = [
            "GIT_AUTHOR_NAME",
            "GIT_AUTHOR_EMAIL",
            "GIT_COMMITTER_NAME",
            "GIT_COMMITTER_EMAIL",
        ];
        if settings.git_identity && !identity_keys.iter().all(|k| chosen(k)) {
            let layout = ctx.home.layout();
            let git_dir = self
                .prepared
                .repo
                .as_ref()
                .map(|(r, _)| r.common_dir.clone());
            let identity = crate::workspace::blocking(move || {
                Ok(orch_workspace::git_identity(&layout, git_dir.as_deref()))
            })
            .await?;
            let missing: Vec<(String, String)> =
                identity.into_iter().filter(|(k, _)| !chosen(k)).collect();
            spec.env.extend(missing);
        }
        crate::link::register(ctx.watchdog.as_deref(), &self.facts(), &self.name);
        match egress {
            None => {}
            // Allowed nowhere: no network but its own loopback.
            Some([]) => spec.network = "none".into(),
            Some(egress) => {
                // Known before it exists: whatever goes wrong from here, the
                // teardown removes it (and its network).
                self.egress = Some(crate::runtime::egress_name(&self.name));
                let (network, hosts) =
                    crate::egress::open(ctx, task_id, &self.name, &spec, egress).await?;
                spec.network = network;
                spec.extra_hosts = hosts;
            }
        }
        Ok(spec)
    }

    /// Creates the workspace and the container and attaches to its output;
    /// `Some` ending if the run is stopped before the container exists.
    pub(super) async fn create(
        &mut self,
        progress: watch::Sender<leases::Progress>,
    ) -> Result<Option<Ending>, Error> {
        let ctx = self.ctx;
        let task_id = self.prepared.task_id;
        if self.shutdown.is_stopping() {
            return Ok(Some(Ending::Cancelled(stopped_by(&self.shutdown))));
        }
        if let Some((repo, base)) = &self.prepared.repo {
            let held = workspace::begin(
                ctx,
                repo,
                &self.prepared.request.project.name,
                &task_id,
                base,
                &self.prepared.request.desc,
            )
            .await?;
            self.held = Some(held);
        }
        failpoint::hit("after-workspace");

        // From here on a container may exist: the guard is armed before the
        // create call is sent, and the watchdog hears of the task first.
        let spec = self.spec_with_way_out().await?;
        // The engine creates the container (it needs only the workspace's
        // directory to exist) while git fills the workspace; both are done
        // before the container starts.
        let begun = self.held.take();
        let other = self.prepared.request.project.settings.user.is_other();
        let filling = async {
            match begun {
                Some(held) => workspace::populate(ctx, held, other).await,
                None => (Ok(()), None),
            }
        };
        let ((filled, held), created) = tokio::join!(filling, self.create_container(&spec));
        self.held = held;
        if let Err(e) = filled {
            // Unwound already: nothing of the workspace is left to settle.
            self.held = None;
            return Err(e);
        }
        if self.held.is_some() {
            let holds = self.prepared.holds();
            ctx.store
                .call(move |r| r.set_workspace_state(&holds, WorkspaceState::Present))
                .await?;
        }
        created?;
        failpoint::hit("after-create");
        self.attach(progress).await?;
        Ok(None)
    }

    /// Attaches to the created container and starts copying its output to
    /// the log and the sink.
    async fn attach(&mut self, progress: watch::Sender<leases::Progress>) -> Result<(), Error> {
        let ctx = self.ctx;
        let task_id = self.prepared.task_id;
        let attached = ctx.runtime.attach(&self.name).await?;
        let log_path = ctx.home.log_path(&task_id);
        let log = match crate::home::open_private_append(&log_path).await {
            Ok(file) => {
                let times = crate::output::times_path(&log_path);
                Some((file, crate::home::open_private_append(&times).await.ok()))
            }
            Err(e) => {
                tracing::warn!(path = %log_path.display(), error = %e, "cannot write the task's log");
                self.sink.send(Event::Notice(format!(
                    "cannot write the task's log {}: {e}",
                    log_path.display()
                )));
                None
            }
        };
        if self.prepared.request.stdin {
            // Attached before it starts, so no input is lost; its end of
            // input when orch's ends.
            let mut input = ctx.runtime.attach_stdin(&self.name).await?;
            self.input.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stdin = tokio::io::stdin();
                if let Err(e) = tokio::io::copy(&mut stdin, &mut input).await {
                    tracing::debug!(error = %e, "the task's input ended early");
                }
                let _ = input.shutdown().await;
            }));
        }
        if self.prepared.request.tty && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            self.input.push(tokio::spawn(follow_size(
                ctx.runtime.clone(),
                self.name.clone(),
                self.ran.subscribe(),
            )));
        }
        self.pump = Some(spawn_pump(
            &ctx.tracker,
            attached,
            crate::output::Source {
                runtime: ctx.runtime.clone(),
                container: self.name.clone(),
                over: self.over.subscribe(),
                started: self.ran.subscribe(),
            },
            self.sink.clone(),
            log,
            progress,
        ));
        Ok(())
    }
}

/// Keeps the task's terminal the size of the one its output goes to (this
/// process's): once it started, then at each SIGWINCH, as `docker run -t`
/// does.
async fn follow_size(
    runtime: std::sync::Arc<dyn crate::runtime::Runtime>,
    name: String,
    mut started: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut resized) = signal(SignalKind::window_change()) else {
        return;
    };
    if started.wait_for(|s| *s).await.is_err() {
        return;
    }
    loop {
        if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdout()) {
            if let Err(e) = runtime.resize_tty(&name, size.ws_row, size.ws_col).await {
                tracing::debug!(error = %e, "cannot resize the task's terminal");
            }
        }
        if resized.recv().await.is_none() {
            return;
        }
    }
}
