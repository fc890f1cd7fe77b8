//! How a container engine fails, in words that hold for any engine.

use std::time::Duration;

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The engine does not answer at all.
    #[error("cannot reach the {engine}: {reason}")]
    Unreachable {
        /// The engine and where it was looked for.
        engine: String,
        /// The cause, on one line.
        reason: String,
    },
    /// The engine answered and refused the request.
    #[error("failed to {action} {target}: {message}")]
    Refused {
        /// What was being done, e.g. "create container".
        action: &'static str,
        /// The container, image or network concerned.
        target: String,
        /// The engine's status code, if it has one (HTTP for Docker).
        status: Option<u16>,
        /// What the engine said, in full, on one line.
        message: String,
    },
    /// The call failed on its way to or from the engine.
    #[error("failed to {action} {target}")]
    Engine {
        /// What was being done.
        action: &'static str,
        /// The container, image or network concerned.
        target: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The call did not finish within its deadline (retries included).
    #[error("timed out after {after:?} trying to {action} {target}")]
    Timeout {
        /// What was being done.
        action: &'static str,
        /// The container or image concerned.
        target: String,
        /// The deadline.
        after: Duration,
    },
    /// The image is not present and could not be pulled.
    #[error("image {image} is not available locally and could not be pulled ({reason}){hint}")]
    ImageMissing {
        /// The image reference.
        image: String,
        /// Why the pull failed.
        reason: String,
        /// How to get the image instead, for the images orch itself builds.
        hint: String,
    },
    /// The container's command could not be run: 127 not found, 126 not
    /// executable, as `docker run` exits.
    #[error("{message}")]
    NotInvoked {
        /// 126 or 127.
        code: i64,
        /// What the engine said.
        message: String,
    },
}

impl RuntimeError {
    /// The engine said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RuntimeError::Refused {
                status: Some(404),
                ..
            }
        )
    }

    /// The engine refused because of a conflict (a name in use).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            RuntimeError::Refused {
                status: Some(409),
                ..
            }
        )
    }

    /// The failure is the engine's or the connection's, not the
    /// request's: worth trying again later.
    pub fn is_transient(&self) -> bool {
        match self {
            RuntimeError::Unreachable { .. }
            | RuntimeError::Engine { .. }
            | RuntimeError::Timeout { .. } => true,
            RuntimeError::Refused { status, .. } => status.is_some_and(|s| s >= 500),
            RuntimeError::ImageMissing { .. } | RuntimeError::NotInvoked { .. } => false,
        }
    }
}
