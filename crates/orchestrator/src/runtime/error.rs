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

    /// The failure is the connection's, or an answer the engine gives for
    /// a passing condition: worth trying again. An answer that will be the
    /// same next time (a missing network, an OCI runtime error, a bad
    /// mount: Docker says 500 for all of these) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            RuntimeError::Unreachable { .. }
            | RuntimeError::Engine { .. }
            | RuntimeError::Timeout { .. } => true,
            RuntimeError::Refused {
                status, message, ..
            } => match status {
                // Bad gateway, unavailable, gateway timeout: a proxy or an
                // engine not ready yet.
                Some(502..=504) => true,
                Some(500..) => passing(message),
                _ => false,
            },
            RuntimeError::ImageMissing { .. } | RuntimeError::NotInvoked { .. } => false,
        }
    }
}

/// Words of an engine's 5xx answer for a condition that passes: a busy
/// device, a timeout inside the engine, a resource briefly short.
fn passing(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "device or resource busy",
        "context deadline exceeded",
        "i/o timeout",
        "connection reset",
        "resource temporarily unavailable",
        "try again",
        "too many open files",
        "is restarting",
    ]
    .iter()
    .any(|words| message.contains(words))
}

/// An error and its causes, `: `-separated.
pub fn display_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, message: &str) -> RuntimeError {
        RuntimeError::Refused {
            action: "start container",
            target: "x".into(),
            status: Some(status),
            message: message.into(),
        }
    }

    #[test]
    fn only_passing_answers_are_retried() {
        for permanent in [
            "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init",
            "network orch-gone not found",
            "error while creating mount source path '/nope': mkdir /nope: read-only file system",
            "Cannot link to a non running container",
        ] {
            assert!(!refused(500, permanent).is_transient(), "{permanent}");
        }
        assert!(
            refused(500, "unable to remove filesystem: device or resource busy").is_transient()
        );
        assert!(refused(503, "").is_transient());
        assert!(!refused(404, "no such container").is_transient());
    }
}
