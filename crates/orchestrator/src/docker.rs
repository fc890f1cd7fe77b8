//! The connection to the Docker engine, and how its answers are read.

use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;

use crate::Error;

/// How long connecting and negotiating the API version may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `DOCKER_HOST`, or the default local socket.
pub(crate) fn host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned())
}

/// Connects to the engine named by `DOCKER_HOST` and negotiates the API
/// version, so an older engine (API 1.41 and up) is spoken to in its own
/// version. `request_timeout` bounds every request's answer; it must exceed
/// the longest stop grace, since `stop` answers only once the container is
/// down.
pub(crate) async fn connect(request_timeout: Duration) -> Result<Docker, Error> {
    let host = host();
    let unreachable = |reason: String| Error::DockerUnreachable {
        host: host.clone(),
        reason,
    };
    let docker = Docker::connect_with_defaults()
        .map_err(|e| unreachable(one_line(&e)))?
        .with_timeout(CONNECT_TIMEOUT);
    let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(one_line(&e)))?;
    Ok(docker.with_timeout(request_timeout.max(Duration::from_secs(120))))
}

/// The HTTP status of an engine error, if it is one.
pub(crate) fn status(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// "No such container/image": the thing is already gone.
pub(crate) fn is_not_found(error: &DockerError) -> bool {
    status(error) == Some(404)
}

/// The engine's message, or the error itself, on one line.
pub(crate) fn one_line(error: &DockerError) -> String {
    let mut text = match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    };
    text.retain(|c| c != '\n' && c != '\r');
    text
}
