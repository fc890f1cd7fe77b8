//! Typed errors of the orchestrator. Each says what failed and on what
//! (container, image, path), and keeps its cause as `source`.

use std::path::PathBuf;

/// A project or its settings could not be resolved. Nothing has been created
/// when one of these is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `<project>` is neither a path nor a configured project.
    #[error(
        "unknown project {name:?}: not a path (paths contain '/') and not in [projects] of {}{}",
        config.as_ref().map_or_else(|| "the global config (none found)".to_owned(), |p| p.display().to_string()),
        if *is_dir { format!("; for the directory, say ./{name}") } else { String::new() }
    )]
    UnknownProject {
        /// The name as given.
        name: String,
        /// The global config that was searched.
        config: Option<PathBuf>,
        /// A directory of that name is here.
        is_dir: bool,
    },
    /// The project directory does not exist or is not a directory.
    #[error("project directory {} is not usable", path.display())]
    ProjectDir {
        /// The directory as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A config file exists but cannot be read.
    #[error("failed to read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A config file has a bad key or value.
    #[error("invalid {}: {}{message}", path.display(), key_prefix(key))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, dotted (`cleanup.old_age`), or empty for syntax errors.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The directory name cannot be a project name and `orch.toml` gives none.
    #[error(
        "project directory {} has a name ({dir_name:?}) orch cannot use: set name = \"...\" in its orch.toml",
        path.display()
    )]
    UnnamedProject {
        /// The project directory.
        path: PathBuf,
        /// Its file name.
        dir_name: String,
    },
    /// No image anywhere.
    #[error("no image for project {project}: set image = \"...\" in {} or pass --image", path.display())]
    NoImage {
        /// The project's name.
        project: String,
        /// Where the image was looked for.
        path: PathBuf,
    },
    /// A command-line value is invalid.
    #[error("invalid {flag}: {message}")]
    Flag {
        /// The flag.
        flag: String,
        /// What is wrong.
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Why an orchestrator operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad project or settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The container runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// A request refused as it stands (the reason says what to do first).
    #[error("{0}")]
    Refused(String),
    /// Shutdown was requested before the task was created: nothing exists.
    #[error("interrupted before the task started ({reason}); nothing was created")]
    Interrupted {
        /// What stopped it: a signal name, or "shutdown".
        reason: String,
    },
    /// Something did not finish in time.
    #[error("timed out after {after:?} trying to {action} {target}")]
    Timeout {
        /// What was being done.
        action: &'static str,
        /// What it concerned.
        target: String,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// Tearing a task down failed part-way; what is left stays for the
    /// next cleanup.
    #[error("failed to tear down task {task}: {message}")]
    Teardown {
        /// The task.
        task: uuid::Uuid,
        /// What failed, with its cause.
        message: String,
    },
    /// A file or directory of the orch home could not be used.
    #[error("failed to {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A workspace operation failed.
    #[error(transparent)]
    Workspace(#[from] orch_workspace::Error),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] orch_registry::Error),
}

/// What kind of failure an [`Error`] is, for whoever maps it to a status
/// (an exit code, an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request, the project or a setting is wrong: orch refuses it.
    Input,
    /// No task matches.
    NotFound,
    /// Several tasks match an id prefix.
    Ambiguous,
    /// The engine (or something else orch needs) is not available now.
    Unavailable,
    /// orch itself failed.
    Internal,
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use crate::runtime::RuntimeError as R;
        match self {
            Error::Config(_) | Error::Refused(_) => ErrorKind::Input,
            Error::Runtime(R::Refused { status, .. }) if status.is_none_or(|s| s < 500) => {
                ErrorKind::Input
            }
            Error::Runtime(R::ImageMissing { .. } | R::NotInvoked { .. }) => ErrorKind::Input,
            Error::Runtime(_) | Error::Interrupted { .. } | Error::Timeout { .. } => {
                ErrorKind::Unavailable
            }
            Error::Workspace(
                orch_workspace::Error::NotARepository { .. }
                | orch_workspace::Error::Git { .. }
                | orch_workspace::Error::InvalidProjectName { .. }
                | orch_workspace::Error::InvalidTaskId { .. },
            ) => ErrorKind::Input,
            Error::Registry(orch_registry::Error::NotFound(_)) => ErrorKind::NotFound,
            Error::Registry(orch_registry::Error::Ambiguous { .. }) => ErrorKind::Ambiguous,
            Error::Registry(
                orch_registry::Error::InvalidId(_) | orch_registry::Error::NameTaken(_),
            ) => ErrorKind::Input,
            _ => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
