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
mod cleanup;
mod config;
mod docker;
mod error;
mod events;
mod failpoint;
mod guard;
mod home;
pub mod labels;
mod owner;
mod remove;
mod run;
mod shutdown;
mod workspace;

use std::time::Duration;

pub use active::ActiveSet;
pub use cleanup::{CleanedContainer, CleanupOptions, CleanupReport};
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
pub use run::{Outcome, Status, TaskRequest};
pub use shutdown::Shutdown;
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
    session: Session,
    active: ActiveSet,
}

impl Orchestrator {
    /// Connects to the Docker engine (`DOCKER_HOST`, API version negotiated)
    /// for a session in `home`.
    pub async fn connect(home: Home) -> Result<Orchestrator, Error> {
        let docker = docker::connect(ENGINE_TIMEOUT).await?;
        Ok(Orchestrator {
            docker,
            home,
            session: Session::new(),
            active: ActiveSet::default(),
        })
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
