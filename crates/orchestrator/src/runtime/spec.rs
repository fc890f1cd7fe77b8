//! What orch asks of a container engine, in the engine's absence: the
//! [`Runtime`] trait and the plain data it speaks in.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use crate::owner::Owner;
use crate::runtime::RuntimeError;

/// Which stream output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The task's stdout.
    Stdout,
    /// The task's stderr.
    Stderr,
}

/// What an engine can do beyond the basics every engine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// It can mount directories of this host into a container (needed for
    /// workspaces).
    pub host_mounts: bool,
    /// It keeps the owning process's identity (pid, start time, boot id)
    /// with each container, so a container's owner can be checked without
    /// the registry.
    pub owner_identity: bool,
}

/// Who a container belongs to. The engine stores this with the container
/// when it is created (Docker: labels) and gives it back when listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// The orch home's instance id.
    pub instance: String,
    /// The creating orch process's session.
    pub session: Uuid,
    /// The task.
    pub task: Uuid,
    /// The task's project.
    pub project: String,
    /// The creating process.
    pub owner: Owner,
}

/// A directory of this host inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host directory.
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: PathBuf,
    /// The container may not write it.
    pub read_only: bool,
}

/// Everything a container is created with.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Image reference.
    pub image: String,
    /// Replaces the image's command.
    pub command: Vec<String>,
    /// Replaces the image's entrypoint, if set.
    pub entrypoint: Option<Vec<String>>,
    /// `UID:GID` the task runs as.
    pub user: String,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Where the command starts.
    pub workdir: Option<PathBuf>,
    /// Host directories it sees (needs [`Capabilities::host_mounts`]).
    pub mounts: Vec<Mount>,
    /// Network mode or name.
    pub network: String,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// SIGTERM-to-SIGKILL grace the engine uses if it stops it itself.
    pub stop_grace: Duration,
    /// The capabilities it keeps; every other one is dropped.
    pub capabilities: Vec<String>,
    /// No process in it may gain privileges (setuid, file capabilities).
    pub no_new_privileges: bool,
    /// At most this many processes; `None`: no limit.
    pub pids_limit: Option<i64>,
    /// The OCI runtime, if not the engine's default.
    pub runtime: Option<String>,
    /// `name:address` lines added to its `/etc/hosts`.
    pub extra_hosts: Vec<String>,
    /// More networks it joins (after `network`), before it starts.
    pub extra_networks: Vec<String>,
    /// tmpfs mounts: where, and their mount options.
    pub tmpfs: Vec<(PathBuf, String)>,
    /// Its standard input is kept open for [`Runtime::attach_stdin`]
    /// (closed when that attachment closes), as `docker run -i`.
    pub stdin: bool,
    /// It gets a terminal, as `docker run -t`: its output is one stream.
    pub tty: bool,
    /// The terminal's first size (rows, columns), where the engine takes
    /// one at creation (API 1.42 and later; before, it is set at the start).
    pub console: Option<(u16, u16)>,
    /// Whose it is.
    pub ownership: Ownership,
}

impl ContainerSpec {
    /// A spec with engine defaults for everything but what is given: for
    /// orch's own helper containers.
    pub fn plain(image: &str, command: Vec<String>, ownership: Ownership) -> ContainerSpec {
        ContainerSpec {
            image: image.to_owned(),
            command,
            entrypoint: None,
            user: "0:0".into(),
            env: Vec::new(),
            workdir: None,
            mounts: Vec::new(),
            network: "none".into(),
            memory: None,
            cpus: None,
            stop_grace: Duration::from_secs(1),
            capabilities: Vec::new(),
            no_new_privileges: true,
            pids_limit: None,
            runtime: None,
            extra_hosts: Vec::new(),
            extra_networks: Vec::new(),
            tmpfs: Vec::new(),
            stdin: false,
            tty: false,
            console: None,
            ownership,
        }
    }
}

/// The machine an engine runs on, as it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// Its memory, in bytes.
    pub memory: i64,
    /// Its CPUs.
    pub cpus: f64,
    /// The OCI runtimes it knows.
    pub runtimes: Vec<String>,
}

impl Machine {
    /// A task's memory limit unless its settings say: half the machine's.
    pub fn default_memory(&self) -> i64 {
        (self.memory / 2).max(256 << 20)
    }

    /// A task's CPU limit unless its settings say: all CPUs but one, left
    /// to the host (orch, the engine, git), at least one.
    pub fn default_cpus(&self) -> f64 {
        (self.cpus - 1.0).max(1.0).min(self.cpus.max(1.0))
    }
}

/// A container's state as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running (or paused).
    Running,
    /// Exited.
    Exited,
    /// Anything else: restarting, being removed, dead.
    Other,
}

/// A container of this instance, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedContainer {
    /// Its name.
    pub name: String,
    /// Its task, if the engine kept it.
    pub task_id: Option<Uuid>,
    /// The session that created it.
    pub session: Option<Uuid>,
    /// The process that created it, if the engine keeps owners.
    pub owner: Option<Owner>,
    /// Its state.
    pub state: ContainerState,
}

impl OwnedContainer {
    /// True if the creating process still runs. Unknown owners count as
    /// dead.
    pub fn owner_alive(&self) -> bool {
        self.owner.as_ref().is_some_and(Owner::is_alive)
    }

    /// True if it is running a task.
    pub fn is_running(&self) -> bool {
        self.state == ContainerState::Running
    }
}

/// Which containers to list: always one instance's, optionally narrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The instance; nothing of another instance is ever listed.
    pub instance: String,
    /// Only this session's.
    pub session: Option<Uuid>,
    /// Only this task's.
    pub task: Option<Uuid>,
}

/// A network of this instance, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedNetwork {
    /// Its name.
    pub name: String,
    /// Its task.
    pub task_id: Option<Uuid>,
    /// The session that created it.
    pub session: Option<Uuid>,
}

/// What a removal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// It existed and was removed now.
    Removed,
    /// It did not exist (any more).
    AlreadyGone,
}

/// Output of a container: which stream, and the bytes as written.
pub type OutputChunk = (Stream, Bytes);

/// A container's output until its streams close.
pub type OutputStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<OutputChunk, RuntimeError>> + Send>>;

/// A container engine, as orch needs it. Every call is bounded by a
/// deadline of its own and retries what the engine may get wrong for a
/// moment (a refused or dropped connection, a 5xx) where repeating it is
/// safe; removal is idempotent.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// What this engine can do.
    fn capabilities(&self) -> Capabilities;

    /// Makes sure `image` is present, pulling it if not; `progress` hears
    /// each new pull status.
    async fn ensure_image(
        &self,
        image: &str,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), RuntimeError>;

    /// Checks that the engine answers.
    async fn ping(&self) -> Result<(), RuntimeError>;

    /// The machine the engine runs on (asked once, then remembered).
    async fn machine(&self) -> Result<Machine, RuntimeError>;

    /// Checks what the engine would refuse about `spec` only at create time
    /// (an unknown network), before anything is made.
    async fn preflight(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;

    /// Creates a container named `name`.
    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<(), RuntimeError>;

    /// Attaches to a created container's output.
    async fn attach(&self, name: &str) -> Result<OutputStream, RuntimeError>;

    /// Attaches to the standard input of a created container whose spec
    /// asked for it: what is written reaches the task; shutting the writer
    /// down is the task's end of input.
    async fn attach_stdin(&self, name: &str) -> Result<StdinWriter, RuntimeError>;

    /// Sets the size of a running container's terminal (a spec with `tty`).
    async fn resize_tty(&self, name: &str, rows: u16, columns: u16) -> Result<(), RuntimeError>;

    /// Its output from its start, following it until its streams close:
    /// what an attached stream that broke did not deliver. Errs if the
    /// engine keeps no such log of it.
    async fn logs(&self, name: &str) -> Result<OutputStream, RuntimeError>;

    /// Starts it.
    async fn start(&self, name: &str) -> Result<(), RuntimeError>;

    /// SIGTERM now, SIGKILL after `grace`; returns once it is not running,
    /// saying which signal ended it.
    async fn stop(&self, name: &str, grace: Duration) -> Result<Stopped, RuntimeError>;

    /// Creates a network that only its containers share: no way out, and
    /// no address of the host on it (the host's services are out of its
    /// reach). Owned like a container.
    async fn create_isolated_network(
        &self,
        name: &str,
        ownership: &Ownership,
    ) -> Result<(), RuntimeError>;

    /// Removes a network; a missing one is gone already.
    async fn remove_network(&self, name: &str) -> Result<Gone, RuntimeError>;

    /// This instance's networks (narrowed as `selector` says).
    async fn list_networks(&self, selector: &Selector) -> Result<Vec<OwnedNetwork>, RuntimeError>;

    /// A container's address on a network, once it has one.
    async fn address(&self, name: &str, network: &str) -> Result<Option<String>, RuntimeError>;

    /// Freezes every process of it (Ctrl+Z of its owner).
    async fn pause(&self, name: &str) -> Result<(), RuntimeError>;

    /// Thaws it.
    async fn unpause(&self, name: &str) -> Result<(), RuntimeError>;

    /// Waits until it is not running; its exit code.
    async fn wait(&self, name: &str) -> Result<i64, RuntimeError>;

    /// The exit code of an exited container, if it has one.
    async fn exit_code(&self, name: &str) -> Result<Option<i64>, RuntimeError>;

    /// Removes it, killing it if it runs. Idempotent: a container that is
    /// already gone is [`Gone::AlreadyGone`].
    async fn remove(&self, name: &str) -> Result<Gone, RuntimeError>;

    /// The containers `selector` picks.
    async fn list(&self, selector: &Selector) -> Result<Vec<OwnedContainer>, RuntimeError>;
}

/// The name of a task's egress forwarder, and of the network it owns: one
/// name for both, so whoever removes the forwarder removes the network.
pub(crate) fn egress_name(container: &str) -> String {
    format!("{container}-egress")
}

/// True if `container` is a task's egress forwarder.
pub(crate) fn is_egress(container: &str) -> bool {
    container.ends_with("-egress")
}

/// How a stopped container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running, or SIGTERM ended it within its grace.
    OnTerm,
    /// It outlived its grace and was killed.
    Killed,
}

/// The writing end of a task's standard input.
pub type StdinWriter = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;
