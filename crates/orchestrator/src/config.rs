//! Projects and their settings (SPEC 3).
//!
//! Settings come in layers: built-in defaults, the project's own `orch.toml`,
//! the user's global config entry `[projects.<name>]`, then command-line
//! overrides. Everything is validated here, before anything is created, so a
//! bad key fails the run with an error naming the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// Default grace between SIGTERM and SIGKILL, as `docker stop`.
pub(crate) const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Who the task runs as inside its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// The uid:gid of the orch process, so files in the workspace stay the
    /// user's own.
    Host,
    /// root inside the container.
    Root,
    /// An explicit `UID[:GID]`.
    Id(String),
}

impl User {
    /// The `--user` value to give Docker.
    pub fn docker_user(&self) -> String {
        match self {
            User::Host => format!(
                "{}:{}",
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw()
            ),
            User::Root => "0:0".to_owned(),
            User::Id(id) => id.clone(),
        }
    }

    /// True if the task runs as a uid other than orch's own and not root:
    /// its workspace must be opened to it (root writes anyway).
    pub fn is_other(&self) -> bool {
        match self {
            User::Host | User::Root => false,
            User::Id(id) => {
                let uid = id.split(':').next().unwrap_or_default();
                uid != "0" && uid != rustix::process::getuid().as_raw().to_string()
            }
        }
    }

    /// True if the task runs as uid 0.
    pub fn is_root(&self) -> bool {
        match self {
            User::Host => rustix::process::getuid().is_root(),
            User::Root => true,
            User::Id(id) => id.split(':').next() == Some("0"),
        }
    }

    fn parse(text: &str) -> Result<User, String> {
        match text {
            "host" => Ok(User::Host),
            "root" => Ok(User::Root),
            _ => {
                let mut parts = text.splitn(2, ':');
                let all_numeric =
                    parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                if !all_numeric {
                    return Err(format!(
                        "invalid user {text:?}: expected \"host\", \"root\" or UID[:GID]"
                    ));
                }
                // The kernel's ids are 32 bits, and (uid_t)-1 means "none".
                let in_range = text
                    .split(':')
                    .all(|id| id.parse::<u32>().is_ok_and(|id| id < u32::MAX));
                if in_range {
                    Ok(User::Id(text.to_owned()))
                } else {
                    Err(format!(
                        "invalid user {text:?}: ids must be below {}",
                        u32::MAX
                    ))
                }
            }
        }
    }
}

/// Whether a task gets a git worktree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    /// A locked git worktree on branch `orch/<id>`.
    Worktree,
    /// No workspace at all.
    None,
}

/// Where a task's `HOME` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HomeMode {
    /// A fresh, private tmpfs at [`TASK_HOME`], owned by the task's user
    /// and gone with the container: tools that write to `~` work.
    Tmpfs,
    /// Whatever the image says (often `/`, not writable by the user).
    Image,
}

/// The task's home directory when [`HomeMode::Tmpfs`].
pub(crate) const TASK_HOME: &str = "/home/orch";

/// The resolved settings of one task: every layer applied, every value
/// checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image to run.
    pub image: String,
    /// Command, with `{desc}` still in it.
    pub command: Vec<String>,
    /// Replacement ENTRYPOINT, if any.
    pub entrypoint: Option<Vec<String>>,
    /// Who runs the task.
    pub user: User,
    /// SIGTERM, then SIGKILL after this.
    pub stop_grace: Duration,
    /// Deadline of the task; `None` runs until it ends.
    pub timeout: Option<Duration>,
    /// Docker network mode or network name.
    pub network: String,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// Worktree (the default; the project must be in a git repository) or
    /// none.
    pub workspace: WorkspaceMode,
    /// Keep the workspace of a failed, timed-out or lost task.
    pub keep_failed_workspace: bool,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// At most this many of the project's tasks run at once under a daemon.
    pub max_parallel: Option<u32>,
    /// A running task with no progress and no output for this long is
    /// stuck (an alert); `None`: the daemon's default.
    pub stuck_after: Option<Duration>,
    /// The container's confinement (capabilities, privileges, pids,
    /// runtime, egress).
    pub sandbox: Sandbox,
    /// Where the task's `HOME` is.
    pub home: HomeMode,
    /// Give the task the user's git identity (`user.name`, `user.email`)
    /// as `GIT_AUTHOR_*` and `GIT_COMMITTER_*`, unless `env` sets them.
    pub git_identity: bool,
}

/// What confines a task's container beyond its user and limits. The
/// defaults are the strict ones; each is a setting of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Capabilities added to what the task's user gets by default
    /// ([`default_capabilities`]).
    pub cap_add: Vec<String>,
    /// Capabilities taken away from that.
    pub cap_drop: Vec<String>,
    /// No process of the task may gain privileges (setuid binaries and file
    /// capabilities do nothing).
    pub no_new_privileges: bool,
    /// At most this many processes at once; `None`: no limit.
    pub pids_limit: Option<i64>,
    /// The OCI runtime (`runsc`, ...), if not the engine's default.
    pub runtime: Option<String>,
    /// The only places the task may reach (`host:port`), if set: every
    /// other address, the host's included, is unreachable. Set and empty:
    /// nowhere (the task has no network but its own loopback).
    pub egress: Option<Vec<String>>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            no_new_privileges: true,
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            runtime: None,
            egress: None,
        }
    }
}

/// A task's processes at most, by default: far more than a build or an
/// agent starts, far fewer than a fork bomb needs to hurt the host.
pub(crate) const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// The capabilities a task's user gets unless its settings say otherwise:
/// none at all for anyone but root; for root, what installing packages
/// needs (dpkg sets owners and modes, apt drops to its own user) and what
/// writing the host user's workspace needs, and nothing else (no raw
/// sockets, no device nodes, no chroot, no audit).
pub(crate) fn default_capabilities(user: &User) -> &'static [&'static str] {
    if user.is_root() {
        &[
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "SETUID",
            "SETGID",
        ]
    } else {
        &[]
    }
}

/// Capability names Docker knows (without `CAP_`).
const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// A capability name as Docker takes it (`net_admin`, `CAP_NET_ADMIN` and
/// `NET_ADMIN` alike), or why not.
fn capability(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        Ok(bare.to_owned())
    } else {
        Err(format!("unknown capability {name:?}"))
    }
}

/// An `egress` entry: `host:port`, a host name (the task reaches it by
/// name) and a port.
fn egress_entry(text: &str) -> Result<String, String> {
    let bad = || format!("invalid egress {text:?}: expected host:port, e.g. \"github.com:443\"");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if port == 0 || !name_ok {
        return Err(
            if host.parse::<std::net::IpAddr>().is_ok()
                || host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            {
                format!(
                    "invalid egress {text:?}: give a host name, not an address (the task reaches it by its name)"
                )
            } else {
                bad()
            },
        );
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: String::new(),
            command: vec!["sh".into(), "-c".into(), "{desc}".into()],
            entrypoint: None,
            user: User::Host,
            stop_grace: DEFAULT_STOP_GRACE,
            timeout: None,
            network: "bridge".into(),
            memory: None,
            cpus: None,
            workspace: WorkspaceMode::Worktree,
            keep_failed_workspace: true,
            env: BTreeMap::new(),
            max_parallel: None,
            stuck_after: None,
            sandbox: Sandbox::default(),
            home: HomeMode::Tmpfs,
            git_identity: true,
        }
    }
}

/// Values given on the command line; each one set wins over every file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--image`
    pub image: Option<String>,
    /// `--timeout`
    pub timeout: Option<Duration>,
    /// `--stop-grace`
    pub stop_grace: Option<Duration>,
    /// `--user`
    pub user: Option<String>,
    /// `--env K=V`, in order.
    pub env: Vec<(String, String)>,
    /// `--no-workspace`
    pub no_workspace: bool,
    /// `--memory` (`512m`, `2g`, or bytes)
    pub memory: Option<String>,
    /// `--cpus`
    pub cpus: Option<f64>,
    /// `--network`
    pub network: Option<String>,
}

/// A project: a directory, its name and its resolved settings.
#[derive(Debug, Clone)]
pub struct Project {
    /// Name used in labels and paths.
    pub name: String,
    /// Canonical directory of the project (for one from a git server: its
    /// mirror, once fetched).
    pub path: PathBuf,
    /// Resolved settings.
    pub settings: Settings,
    /// A project from a git server: its URL, and what its settings are
    /// made of until its `orch.toml` is read from the mirror.
    pub remote: Option<Remote>,
}

/// A project from a git server, as resolved before its mirror is fetched.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The repository URL.
    pub url: String,
    configured_name: Option<String>,
    global_layer: Option<FileSettings>,
    config_path: Option<PathBuf>,
    overrides: Overrides,
}

impl Project {
    /// For a project from a git server, once its mirror is fetched: its
    /// settings made again with the `orch.toml` of the ref being run
    /// (`text`, read from the mirror as data), and its path the mirror's.
    pub fn with_remote_file(
        &mut self,
        text: Option<&[u8]>,
        mirror: &Path,
    ) -> Result<(), ConfigError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let shown = PathBuf::from(format!("orch.toml of {}", remote.url));
        let mut settings = Settings::default();
        let mut name = remote.configured_name.clone();
        if let Some(text) = text {
            let text = String::from_utf8_lossy(text);
            let mut layer: FileSettings = parse_toml(&text, &shown)?;
            if let Some(file_name) = layer.name.take() {
                orch_workspace::validate_project_name(&file_name).map_err(|e| {
                    ConfigError::Invalid {
                        path: shown.clone(),
                        key: "name".into(),
                        message: e.to_string(),
                    }
                })?;
                name.get_or_insert(file_name);
            }
            layer.apply(&mut settings, &shown)?;
        }
        if let (Some(layer), Some(config)) = (&remote.global_layer, &remote.config_path) {
            layer.clone().apply(&mut settings, config)?;
        }
        let name = match name {
            Some(name) => name,
            None => {
                let guess = orch_workspace::mirror::name_of(&remote.url);
                orch_workspace::validate_project_name(&guess).map_err(|_| {
                    ConfigError::UnnamedProject {
                        path: PathBuf::from(&remote.url),
                        dir_name: guess.clone(),
                    }
                })?;
                guess
            }
        };
        remote.overrides.apply(&mut settings)?;
        if settings.image.is_empty() {
            return Err(ConfigError::NoImage {
                project: name,
                path: shown,
            });
        }
        self.name = name;
        self.settings = settings;
        self.path = mirror.to_path_buf();
        Ok(())
    }
}

/// Retention thresholds from the `[cleanup]` table of the global config.
#[derive(Debug, Clone, Default)]
pub struct CleanupThresholds {
    /// Age after which succeeded/cancelled tasks are removed.
    pub completed_age: Option<Duration>,
    /// Age after which failed/timed-out/lost tasks are removed.
    pub failed_age: Option<Duration>,
    /// Lease expiry after which a dead owner's task is stale.
    pub stale_age: Option<Duration>,
    /// Age after which any task but a live one is removed.
    pub old_age: Option<Duration>,
    /// How often a daemon runs the `all` strategy.
    pub interval: Option<Duration>,
}

/// The events a webhook can ask for.
pub const WEBHOOK_EVENTS: [&str; 3] = ["task.finished", "task.stuck", "cleanup.done"];

/// A webhook of the global config (`[[webhooks]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Where events are POSTed.
    pub url: String,
    /// Which events (all of them if the config names none).
    pub events: Vec<String>,
    /// Signs each body (`X-Orch-Signature: sha256=<hmac>`), if set.
    pub secret: Option<String>,
    /// For an `https://` receiver: a CA (PEM) to verify it against instead
    /// of the system's roots.
    pub ca: Option<PathBuf>,
}

/// The user's global configuration (`$ORCH_CONFIG`).
#[derive(Debug, Clone, Default)]
pub struct GlobalConfig {
    path: Option<PathBuf>,
    projects: BTreeMap<String, (PathBuf, FileSettings)>,
    /// Configured projects from a git server: name to URL.
    remote_projects: BTreeMap<String, (String, FileSettings)>,
    /// `[cleanup]` thresholds.
    pub cleanup: CleanupThresholds,
    /// `stuck_after`: the default for every project.
    pub stuck_after: Option<Duration>,
    /// `[[webhooks]]`.
    pub webhooks: Vec<Webhook>,
    /// `[registry] url`: a PostgreSQL database shared by a cluster.
    pub registry_url: Option<String>,
}

/// One layer of settings as written in a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    /// Only in `orch.toml`: the project's name.
    name: Option<String>,
    /// Only in the global config: the project's directory.
    path: Option<PathBuf>,
    image: Option<String>,
    command: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    user: Option<String>,
    stop_grace: Option<DurationValue>,
    timeout: Option<DurationValue>,
    network: Option<String>,
    /// Only in the global config: the project's repository URL (instead of
    /// `path`).
    repo: Option<String>,
    memory: Option<MemoryValue>,
    cpus: Option<f64>,
    workspace: Option<WorkspaceMode>,
    keep_failed_workspace: Option<bool>,
    env: Option<BTreeMap<String, String>>,
    max_parallel: Option<u32>,
    stuck_after: Option<DurationValue>,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    no_new_privileges: Option<bool>,
    pids_limit: Option<i64>,
    runtime: Option<String>,
    egress: Option<Vec<String>>,
    home: Option<HomeMode>,
    git_identity: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalFile {
    #[serde(default)]
    projects: BTreeMap<String, FileSettings>,
    #[serde(default)]
    cleanup: CleanupFile,
    stuck_after: Option<DurationValue>,
    #[serde(default)]
    webhooks: Vec<WebhookFile>,
    #[serde(default)]
    registry: RegistryFile,
}

/// `[registry]`: where the records are, when not in the home.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookFile {
    url: String,
    #[serde(default)]
    events: Vec<String>,
    secret: Option<String>,
    ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupFile {
    completed_age: Option<DurationValue>,
    failed_age: Option<DurationValue>,
    stale_age: Option<DurationValue>,
    old_age: Option<DurationValue>,
    interval: Option<DurationValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum MemoryValue {
    Bytes(i64),
    Text(String),
}

/// Parses a duration: humantime (`90s`, `3m`, `24h`, `1h 30m`) or plain
/// seconds (`90`, `1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad =
        || format!("invalid duration {text:?}: expected e.g. 90s, 3m, 24h or a number of seconds");
    let parsed = if let Ok(secs) = text.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(secs) = text.parse::<f64>() {
        Duration::try_from_secs_f64(secs).map_err(|_| bad())?
    } else {
        humantime::parse_duration(text).map_err(|_| bad())?
    };
    if parsed > MAX_DURATION {
        return Err(format!("invalid duration {text:?}: longer than 100 years"));
    }
    Ok(parsed)
}

/// No duration orch takes is longer (it keeps deadline arithmetic safe).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a memory size as Docker does: a number with an optional unit b, k,
/// m, g or t (binary multiples, an optional trailing `b`).
pub fn parse_memory(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid memory size {text:?}: expected e.g. 512m or 2g");
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: f64 = match unit.trim().trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = number * multiplier;
    if !(bytes >= 1.0 && bytes < i64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// Parses `KEY=VALUE` of `--env`.
pub fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if valid_env_key(key) => Ok((key.to_owned(), value.to_owned())),
        // The name alone: the value is never repeated in a message.
        Some((key, _)) => Err(format!(
            "invalid environment variable name {key:?}: expected KEY=VALUE"
        )),
        None => Err(format!(
            "invalid environment variable {text:?}: expected KEY=VALUE"
        )),
    }
}

/// A name `--env` and `env` accept: not empty, no `=`, NUL or whitespace.
pub fn valid_env_key(key: &str) -> bool {
    !key.is_empty() && !key.contains(['=', '\0']) && !key.chars().any(char::is_whitespace)
}

impl FileSettings {
    /// Applies this layer over `settings`, checking each value and naming the
    /// key on error.
    fn apply(self, settings: &mut Settings, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: file.to_path_buf(),
            key: key.to_owned(),
            message,
        };
        if self.name.is_some() {
            return Err(invalid("name", "belongs in the project's orch.toml".into()));
        }
        if self.path.is_some() {
            return Err(invalid(
                "path",
                "belongs in the global config's [projects.<name>]".into(),
            ));
        }
        if self.repo.is_some() {
            return Err(invalid(
                "repo",
                "belongs in the global config's [projects.<name>]".into(),
            ));
        }
        if let Some(image) = self.image {
            if image.trim().is_empty() {
                return Err(invalid("image", "must not be empty".into()));
            }
            settings.image = image;
        }
        if let Some(command) = self.command {
            if command.is_empty() {
                return Err(invalid("command", "must not be empty".into()));
            }
            settings.command = command;
        }
        if let Some(entrypoint) = self.entrypoint {
            settings.entrypoint = Some(entrypoint);
        }
        if let Some(user) = self.user {
            settings.user = User::parse(&user).map_err(|m| invalid("user", m))?;
        }
        if let Some(grace) = self.stop_grace {
            settings.stop_grace = grace.parse().map_err(|m| invalid("stop_grace", m))?;
        }
        if let Some(timeout) = self.timeout {
            let timeout = timeout.parse().map_err(|m| invalid("timeout", m))?;
            settings.timeout = (!timeout.is_zero()).then_some(timeout);
        }
        if let Some(network) = self.network {
            if network.trim().is_empty() {
                return Err(invalid("network", "must not be empty".into()));
            }
            settings.network = network;
        }
        if let Some(memory) = self.memory {
            settings.memory = Some(match memory {
                MemoryValue::Bytes(b) if b > 0 => b,
                MemoryValue::Bytes(b) => {
                    return Err(invalid("memory", format!("must be positive, got {b}")));
                }
                MemoryValue::Text(t) => parse_memory(&t).map_err(|m| invalid("memory", m))?,
            });
        }
        if let Some(cpus) = self.cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(invalid(
                    "cpus",
                    format!("must be a positive number, got {cpus}"),
                ));
            }
            settings.cpus = Some(cpus);
        }
        if let Some(mode) = self.workspace {
            settings.workspace = mode;
        }
        if let Some(keep) = self.keep_failed_workspace {
            settings.keep_failed_workspace = keep;
        }
        if let Some(home) = self.home {
            settings.home = home;
        }
        if let Some(identity) = self.git_identity {
            settings.git_identity = identity;
        }
        if let Some(max) = self.max_parallel {
            if max == 0 {
                return Err(invalid("max_parallel", "must be at least 1".into()));
            }
            settings.max_parallel = Some(max);
        }
        if let Some(stuck) = self.stuck_after {
            let stuck = stuck.parse().map_err(|m| invalid("stuck_after", m))?;
            if stuck.is_zero() {
                return Err(invalid("stuck_after", "must be longer than 0s".into()));
            }
            settings.stuck_after = Some(stuck);
        }
        for (key, value) in self.env.unwrap_or_default() {
            if !valid_env_key(&key) {
                return Err(invalid("env", format!("invalid variable name {key:?}")));
            }
            settings.env.insert(key, value);
        }
        let sandbox = &mut settings.sandbox;
        if let Some(caps) = self.cap_add {
            sandbox.cap_add = caps
                .iter()
                .map(|c| capability(c))
                .collect::<Result<_, _>>()
                .map_err(|m| invalid("cap_add", m))?;
        }
        if let Some(caps) = self.cap_drop {
            sandbox.cap_drop = caps
                .iter()
                .map(|c| capability(c))
                .collect::<Result<_, _>>()
                .map_err(|m| invalid("cap_drop", m))?;
        }
        if let Some(nnp) = self.no_new_privileges {
            sandbox.no_new_privileges = nnp;
        }
        if let Some(pids) = self.pids_limit {
            sandbox.pids_limit = match pids {
                0 => None,
                n if n > 0 => Some(n),
                n => {
                    return Err(invalid(
                        "pids_limit",
                        format!("must be positive (or 0 for none), got {n}"),
                    ));
                }
            };
        }
        if let Some(runtime) = self.runtime {
            let ok = !runtime.is_empty()
                && runtime
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(invalid(
                    "runtime",
                    format!("invalid runtime name {runtime:?}"),
                ));
            }
            sandbox.runtime = Some(runtime);
        }
        if let Some(egress) = self.egress {
            sandbox.egress = Some(
                egress
                    .iter()
                    .map(|e| egress_entry(e))
                    .collect::<Result<_, _>>()
                    .map_err(|m| invalid("egress", m))?,
            );
        }
        Ok(())
    }
}

impl DurationValue {
    fn parse(self) -> Result<Duration, String> {
        match self {
            DurationValue::Seconds(s) => parse_duration(&s.to_string()),
            DurationValue::Text(t) => parse_duration(&t),
        }
    }
}

/// Reads and parses a TOML file, naming the file, the key and the line on
/// error.
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, path)
}

fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let located = |message: &str, span: Option<std::ops::Range<usize>>| {
        let line = span.map(|s| {
            let before = text.get(..s.start).unwrap_or(text);
            before.bytes().filter(|b| *b == b'\n').count() + 1
        });
        match line {
            Some(line) => format!("{message} (line {line})"),
            None => message.to_owned(),
        }
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: String::new(),
        message: located(e.message(), e.span()),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key: if key == "." { String::new() } else { key },
            message: located(inner.message(), inner.span()),
        }
    })
}

impl GlobalConfig {
    /// The default location: `$ORCH_CONFIG`, else
    /// `$XDG_CONFIG_HOME/orch/config.toml`, else `~/.config/orch/config.toml`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("ORCH_CONFIG") {
            return Some(PathBuf::from(path));
        }
        if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("orch/config.toml"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/orch/config.toml"))
    }

    /// Loads the global config from `path`; a missing file is an empty config,
    /// but one named by `$ORCH_CONFIG` must exist.
    pub fn load(path: Option<&Path>) -> Result<GlobalConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(GlobalConfig::default());
        };
        if !path.exists() && std::env::var_os("ORCH_CONFIG").is_none() {
            return Ok(GlobalConfig::default());
        }
        let file: GlobalFile = read_toml(path)?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_owned(),
            message,
        };
        let age = |key: &str, value: Option<DurationValue>| {
            value
                .map(|v| v.parse().map_err(|m| invalid(&format!("cleanup.{key}"), m)))
                .transpose()
        };
        let cleanup = CleanupThresholds {
            completed_age: age("completed_age", file.cleanup.completed_age)?,
            failed_age: age("failed_age", file.cleanup.failed_age)?,
            stale_age: age("stale_age", file.cleanup.stale_age)?,
            old_age: age("old_age", file.cleanup.old_age)?,
            interval: age("interval", file.cleanup.interval)?,
        };
        let stuck_after = file
            .stuck_after
            .map(|v| v.parse().map_err(|m| invalid("stuck_after", m)))
            .transpose()?;
        let mut webhooks = Vec::new();
        for (i, hook) in file.webhooks.into_iter().enumerate() {
            let key = format!("webhooks[{i}]");
            let url = hook.url.trim().to_owned();
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
            match host {
                Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {}
                _ => {
                    return Err(invalid(
                        &format!("{key}.url"),
                        format!("{url:?} is not an https://host[:port][/path] (or http://) URL"),
                    ));
                }
            }
            if hook.ca.is_some() && !url.starts_with("https://") {
                return Err(invalid(
                    &format!("{key}.ca"),
                    "a CA is for an https:// receiver".into(),
                ));
            }
            for event in &hook.events {
                if !WEBHOOK_EVENTS.contains(&event.as_str()) {
                    return Err(invalid(
                        &format!("{key}.events"),
                        format!(
                            "unknown event {event:?}: expected one of {}",
                            WEBHOOK_EVENTS.join(", ")
                        ),
                    ));
                }
            }
            webhooks.push(Webhook {
                url,
                events: if hook.events.is_empty() {
                    WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect()
                } else {
                    hook.events
                },
                secret: hook.secret,
                ca: hook.ca,
            });
        }
        let mut projects = BTreeMap::new();
        let mut remote_projects = BTreeMap::new();
        for (name, mut entry) in file.projects {
            let key = format!("projects.{name}");
            orch_workspace::validate_project_name(&name)
                .map_err(|e| invalid(&key, e.to_string()))?;
            match (entry.path.take(), entry.repo.take()) {
                (Some(dir), None) => {
                    projects.insert(name, (dir, entry));
                }
                (None, Some(url)) => {
                    orch_workspace::mirror::check_url(&url)
                        .map_err(|e| invalid(&format!("{key}.repo"), e.to_string()))?;
                    remote_projects.insert(name, (url, entry));
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &key,
                        "give path (a directory) or repo (a URL), not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        &format!("{key}.path"),
                        "missing: the project's directory (or repo = \"<url>\")".into(),
                    ));
                }
            }
        }
        let registry_url = match file.registry.url.map(|u| u.trim().to_owned()) {
            Some(url) if !url.starts_with("postgres://") && !url.starts_with("postgresql://") => {
                return Err(invalid(
                    "registry.url",
                    "expected a postgres://user:password@host:port/database URL".into(),
                ));
            }
            url => url,
        };
        Ok(GlobalConfig {
            path: Some(path.to_path_buf()),
            projects,
            remote_projects,
            cleanup,
            stuck_after,
            webhooks,
            registry_url,
        })
    }

    /// Resolves `<project>` of `orch task`: a URL, a path
    /// ([`is_project_path`]), else the name of a configured project.
    pub fn resolve_project(
        &self,
        arg: &str,
        overrides: &Overrides,
    ) -> Result<Project, ConfigError> {
        if orch_workspace::mirror::is_url(arg) {
            orch_workspace::mirror::check_url(arg).map_err(|e| ConfigError::Flag {
                flag: "project".into(),
                message: e.to_string(),
            })?;
            return Ok(self.remote_project(arg, None, None, overrides));
        }
        if let Some((url, layer)) = self.remote_projects.get(arg) {
            return Ok(self.remote_project(url, Some(arg), Some(layer.clone()), overrides));
        }
        let (dir, global_layer, configured_name) = if is_project_path(arg) {
            let dir = PathBuf::from(arg);
            // A path that is also a configured project's path gets its entry.
            let canonical = dir.canonicalize().ok();
            let entry = self
                .projects
                .iter()
                .find(|(_, (p, _))| canonical.is_some() && p.canonicalize().ok() == canonical);
            match entry {
                Some((name, (_, layer))) => (dir, Some(layer.clone()), Some(name.clone())),
                None => (dir, None, None),
            }
        } else {
            let Some((path, layer)) = self.projects.get(arg) else {
                return Err(ConfigError::UnknownProject {
                    name: arg.to_owned(),
                    config: self.path.clone(),
                    is_dir: Path::new(arg).is_dir(),
                });
            };
            (path.clone(), Some(layer.clone()), Some(arg.to_owned()))
        };
        let path = dir
            .canonicalize()
            .map_err(|source| ConfigError::ProjectDir {
                path: dir.clone(),
                source,
            })?;
        if !path.is_dir() {
            return Err(ConfigError::ProjectDir {
                path: dir,
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }

        let mut settings = Settings::default();
        let mut name = configured_name;
        let (root, file) = find_project_file(&path);
        if file.exists() {
            let mut layer: FileSettings = read_toml(&file)?;
            if let Some(file_name) = layer.name.take() {
                orch_workspace::validate_project_name(&file_name).map_err(|e| {
                    ConfigError::Invalid {
                        path: file.clone(),
                        key: "name".into(),
                        message: e.to_string(),
                    }
                })?;
                name.get_or_insert(file_name);
            }
            layer.apply(&mut settings, &file)?;
        }
        if let (Some(layer), Some(config)) = (global_layer, &self.path) {
            layer.apply(&mut settings, config)?;
        }
        let name = match name {
            Some(name) => name,
            None => {
                let dir_name = root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                orch_workspace::validate_project_name(&dir_name).map_err(|_| {
                    ConfigError::UnnamedProject {
                        path: root.clone(),
                        dir_name: dir_name.clone(),
                    }
                })?;
                dir_name
            }
        };
        overrides.apply(&mut settings)?;
        if settings.image.is_empty() {
            return Err(ConfigError::NoImage {
                project: name,
                path: file,
            });
        }
        Ok(Project {
            name,
            path,
            settings,
            remote: None,
        })
    }

    /// A project from a git server, settled once its mirror is fetched
    /// ([`Project::with_remote_file`]). A URL that is also a configured
    /// project's gets that entry.
    fn remote_project(
        &self,
        url: &str,
        name: Option<&str>,
        layer: Option<FileSettings>,
        overrides: &Overrides,
    ) -> Project {
        let (name, layer) = match (name, layer) {
            (Some(name), layer) => (Some(name.to_owned()), layer),
            (None, _) => match self.remote_projects.iter().find(|(_, (u, _))| u == url) {
                Some((name, (_, layer))) => (Some(name.clone()), Some(layer.clone())),
                None => (None, None),
            },
        };
        Project {
            name: name
                .clone()
                .unwrap_or_else(|| orch_workspace::mirror::name_of(url)),
            path: PathBuf::new(),
            settings: Settings::default(),
            remote: Some(Remote {
                url: url.to_owned(),
                configured_name: name,
                global_layer: layer,
                config_path: self.path.clone(),
                overrides: overrides.clone(),
            }),
        }
    }
}

/// The project's `orch.toml`, searched from `dir` upward to the root of
/// the git repository it is in (as cargo and git look for theirs); outside
/// a repository, only in `dir`. The directory it names the project after
/// (where the file was found, else `dir`) and the file (which may not
/// exist).
fn find_project_file(dir: &Path) -> (PathBuf, PathBuf) {
    let here = (dir.to_path_buf(), dir.join("orch.toml"));
    let mut upward = Vec::new();
    for ancestor in dir.ancestors() {
        upward.push(ancestor);
        if ancestor.join(".git").exists() {
            return upward
                .into_iter()
                .map(|d| (d.to_path_buf(), d.join("orch.toml")))
                .find(|(_, file)| file.is_file())
                .unwrap_or(here);
        }
    }
    here
}

impl Overrides {
    fn apply(&self, settings: &mut Settings) -> Result<(), ConfigError> {
        let flag = |flag: &str, message: String| ConfigError::Flag {
            flag: flag.to_owned(),
            message,
        };
        if let Some(image) = &self.image {
            if image.trim().is_empty() {
                return Err(flag("--image", "must not be empty".into()));
            }
            settings.image = image.clone();
        }
        if let Some(timeout) = self.timeout {
            settings.timeout = (!timeout.is_zero()).then_some(timeout);
        }
        if let Some(grace) = self.stop_grace {
            settings.stop_grace = grace;
        }
        if let Some(user) = &self.user {
            settings.user = User::parse(user).map_err(|m| flag("--user", m))?;
        }
        for (key, value) in &self.env {
            settings.env.insert(key.clone(), value.clone());
        }
        if self.no_workspace {
            settings.workspace = WorkspaceMode::None;
        }
        if let Some(memory) = &self.memory {
            let bytes = parse_memory(memory).map_err(|m| flag("--memory", m))?;
            if bytes <= 0 {
                return Err(flag(
                    "--memory",
                    format!("must be positive, got {memory:?}"),
                ));
            }
            settings.memory = Some(bytes);
        }
        if let Some(cpus) = self.cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(flag(
                    "--cpus",
                    format!("must be a positive number, got {cpus}"),
                ));
            }
            settings.cpus = Some(cpus);
        }
        if let Some(network) = &self.network {
            if network.trim().is_empty() || network.chars().any(char::is_control) {
                return Err(flag("--network", format!("invalid network {network:?}")));
            }
            settings.network = network.clone();
        }
        Ok(())
    }
}

/// Whether `<project>` of `orch task` names a directory: it is no URL and
/// contains `/`, or is `.` or `..` (else it names a configured project).
pub fn is_project_path(arg: &str) -> bool {
    (arg.contains('/') || arg == "." || arg == "..") && !orch_workspace::mirror::is_url(arg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_project(text: &str) -> Result<FileSettings, ConfigError> {
        parse_toml(text, Path::new("/p/orch.toml"))
    }

    /// `orch.toml` is found upward to the repository's root (the project is
    /// named after where it was found); outside a repository only in the
    /// directory given.
    #[test]
    fn the_project_file_is_found_upward_within_the_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("outer");
        let repo = top.join("api");
        let sub = repo.join("src/deep");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::create_dir(repo.join(".git")).unwrap();
        std::fs::write(top.join("orch.toml"), "image = \"outside:1\"\n").unwrap();
        std::fs::write(repo.join("orch.toml"), "image = \"inside:1\"\n").unwrap();
        let config = GlobalConfig::default();
        let resolve = |dir: &Path| {
            config
                .resolve_project(dir.to_str().unwrap(), &Overrides::default())
                .unwrap()
        };
        let project = resolve(&sub);
        assert_eq!(project.settings.image, "inside:1");
        assert_eq!(project.name, "api");
        assert_eq!(
            project.path,
            sub.canonicalize().unwrap(),
            "the task starts where asked"
        );
        // Not past the repository's root...
        std::fs::remove_file(repo.join("orch.toml")).unwrap();
        let err = config
            .resolve_project(sub.to_str().unwrap(), &Overrides::default())
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoImage { .. }), "{err}");
        // ...and not upward at all outside a repository.
        std::fs::remove_dir(repo.join(".git")).unwrap();
        std::fs::write(top.join("orch.toml"), "image = \"outside:1\"\n").unwrap();
        let err = config
            .resolve_project(repo.to_str().unwrap(), &Overrides::default())
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoImage { .. }), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "5x", "-1", "soon", "NaN", "1e20", "inf", "200000000000"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("2g").unwrap(), 2 << 30);
        assert_eq!(parse_memory("2GB").unwrap(), 2 << 30);
        assert_eq!(parse_memory("1024").unwrap(), 1024);
        for bad in ["", "g", "2x", "-1g", "0"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users() {
        assert_eq!(User::parse("host").unwrap(), User::Host);
        assert_eq!(User::parse("root").unwrap(), User::Root);
        assert_eq!(
            User::parse("1000:1000").unwrap(),
            User::Id("1000:1000".into())
        );
        assert_eq!(User::parse("1000").unwrap(), User::Id("1000".into()));
        for bad in ["", "bob", "1000:", ":1", "1:2:3"] {
            assert!(User::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env_pair("A=").unwrap(), ("A".into(), String::new()));
        assert!(parse_env_pair("A").is_err());
        assert!(parse_env_pair("=x").is_err());
    }

    #[test]
    fn file_layers_apply_in_order() {
        let file = parse_project(
            r#"
            image = "img:1"
            command = ["/bin/x", "{desc}"]
            stop_grace = "3s"
            timeout = 60
            memory = "1g"
            cpus = 1.5
            user = "root"
            env = { A = "1" }
            "#,
        )
        .unwrap();
        let mut settings = Settings::default();
        file.apply(&mut settings, Path::new("/p/orch.toml"))
            .unwrap();
        let overrides = Overrides {
            timeout: Some(Duration::from_secs(5)),
            env: vec![("B".into(), "2".into())],
            ..Overrides::default()
        };
        overrides.apply(&mut settings).unwrap();
        assert_eq!(settings.image, "img:1");
        assert_eq!(settings.stop_grace, Duration::from_secs(3));
        assert_eq!(settings.timeout, Some(Duration::from_secs(5)));
        assert_eq!(settings.memory, Some(1 << 30));
        assert_eq!(settings.user, User::Root);
        assert_eq!(settings.env.len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("imgae = \"x\"", "imgae", "unknown field"),
            ("image = 5", "image", "invalid type"),
            ("timeout = \"5x\"", "timeout", "invalid duration"),
            ("memory = \"lots\"", "memory", "invalid memory"),
            ("user = \"bob\"", "user", "invalid user"),
            ("workspace = \"copy\"", "workspace", "unknown variant"),
            ("image = ", "", "line 1"),
            ("image = \"x\"\nbogus = 1", "bogus", "(line 2)"),
            ("image = \"x\"\n\n[env]\nA = 1", "env.A", "(line 4)"),
        ];
        for (text, key, needle) in cases {
            let result = parse_project(text)
                .and_then(|f| f.apply(&mut Settings::default(), Path::new("/p/orch.toml")));
            let err = result.expect_err(text);
            let shown = err.to_string();
            assert!(shown.contains(needle), "{text}: {shown}");
            assert!(!shown.contains('\n'), "{text}: one line: {shown}");
            if let ConfigError::Invalid { key: k, .. } = &err {
                assert_eq!(k, key, "{text}: {shown}");
            }
        }
    }
}
