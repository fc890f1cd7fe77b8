//! The orchestrator: runs tasks in throwaway Docker containers and owns the
//! one path that removes them.
//!
//! An [`Orchestrator`] is one session: a Docker connection, the orch
//! [`Home`] whose instance id labels everything it creates, and the
//! [`ActiveSet`] of containers not yet removed. It never installs signal
//! handlers; shutdown comes in as a [`Shutdown`] from whoever owns the
//! process.

#![warn(missing_docs)]

mod active;
mod cancel;
mod cleanup;
mod config;
mod container;
mod docker;
mod error;
mod events;
mod failpoint;
mod guard;
mod home;
pub mod labels;
mod lease;
mod output;
mod owner;
mod remove;
mod run;
mod shutdown;
mod watchdog;
mod workspace;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_registry::Registry;

pub use active::ActiveSet;
pub use cancel::Cancelled;
pub use cleanup::{
    CleanupOptions, CleanupReport, ContainerTarget, Item, Mark, RepoItem, Strategy, Thresholds,
    WorkspaceTarget,
};
pub use config::{
    CleanupThresholds, GlobalConfig, Overrides, Project, Settings, User, WorkspaceMode,
    parse_duration, parse_env_pair, parse_memory,
};
pub use error::{ConfigError, Error};
pub use events::{Discard, Event, Observer, StopReason, Stream};
pub use home::Home;
pub use labels::Session;
pub use owner::Owner;
pub use remove::Gone;
pub use run::{Outcome, PreparedTask, Status, TaskRequest};
pub use shutdown::Shutdown;
pub use watchdog::{Reaped, Registered, WatchdogLink, WatchdogLog};
pub use workspace::WorkspaceFate;

/// Requests to the engine never wait longer than this for an answer; calls
/// that can legitimately take long (stop, wait) carry their own bounds.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// One orch session: a Docker connection, an orch home, and the containers
/// this process has not removed yet.
#[derive(Debug)]
pub struct Orchestrator {
    docker: bollard::Docker,
    home: Home,
    registry: Arc<Mutex<Registry>>,
    session: Session,
    active: ActiveSet,
    watchdog: Option<WatchdogLink>,
}

impl Orchestrator {
    /// Opens the registry of `home` and connects to the Docker engine
    /// (`DOCKER_HOST`, API version negotiated) for a new session.
    pub async fn connect(home: Home) -> Result<Orchestrator, Error> {
        let path = home.registry_path();
        let registry = tokio::task::spawn_blocking(move || Registry::open(&path))
            .await
            .map_err(|e| Error::io("open", home.registry_path(), std::io::Error::other(e)))??;
        let docker = docker::connect(ENGINE_TIMEOUT).await?;
        Ok(Orchestrator {
            docker,
            home,
            registry: Arc::new(Mutex::new(registry)),
            session: Session::new(),
            active: ActiveSet::default(),
            watchdog: None,
        })
    }

    /// One task's record.
    pub async fn task(&self, id: &uuid::Uuid) -> Result<Option<orch_registry::TaskRecord>, Error> {
        let id = *id;
        self.db(move |r| r.get(&id)).await
    }

    /// Runs registry work on the blocking pool.
    pub(crate) async fn db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Registry) -> Result<T, orch_registry::Error> + Send + 'static,
    ) -> Result<T, Error> {
        let registry = Arc::clone(&self.registry);
        tokio::task::spawn_blocking(move || {
            let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            work(&registry)
        })
        .await
        .map_err(|e| Error::io("use", self.home.registry_path(), std::io::Error::other(e)))?
        .map_err(Error::from)
    }

    /// The orch home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// This session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Containers created and not yet removed.
    pub fn active(&self) -> &ActiveSet {
        &self.active
    }
}
