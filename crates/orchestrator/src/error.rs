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
        "unknown project {name:?}: not a path (paths contain '/') and not in [projects] of {}",
        config.as_ref().map_or_else(|| "the global config (none found)".to_owned(), |p| p.display().to_string())
    )]
    UnknownProject {
        /// The name as given.
        name: String,
        /// The global config that was searched.
        config: Option<PathBuf>,
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
    /// No Docker engine answers at the configured host.
    #[error("cannot reach the Docker engine at {host}: {reason}")]
    DockerUnreachable {
        /// `DOCKER_HOST` or the default socket.
        host: String,
        /// The cause, flattened to one line.
        reason: String,
    },
    /// The image is not present and could not be pulled.
    #[error(
        "image {image} is not available locally and could not be pulled ({reason}); \
         for the offline image orch-agent:dev run `just image`"
    )]
    ImageMissing {
        /// The image reference.
        image: String,
        /// Why the pull failed.
        reason: String,
    },
    /// Shutdown was requested before the task was created: nothing exists.
    #[error("interrupted before the task started ({reason}); nothing was created")]
    Interrupted {
        /// What stopped it: a signal name, or "shutdown".
        reason: String,
    },
    /// A Docker call failed.
    #[error("failed to {action} {target}")]
    Docker {
        /// What was being done, e.g. "create container".
        action: &'static str,
        /// The container or image concerned.
        target: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// A Docker call did not answer in time.
    #[error("timed out after {after:?} trying to {action} {target}")]
    DockerTimeout {
        /// What was being done.
        action: &'static str,
        /// The container concerned.
        target: String,
        /// How long we waited.
        after: std::time::Duration,
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

impl Error {
    pub(crate) fn docker(
        action: &'static str,
        target: impl Into<String>,
        source: bollard::errors::Error,
    ) -> Self {
        Error::Docker {
            action,
            target: target.into(),
            source,
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
