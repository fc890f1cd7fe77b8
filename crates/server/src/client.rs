//! A client of a daemon's unix socket: what `orch submit` and the tests
//! speak to it with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// How long one request may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket may not be opened by this user.
    #[error("permission denied opening the daemon's socket {}: it belongs to another user (or its directory is private)", path.display())]
    Denied {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing listens on the socket.
    #[error("no orch daemon listens on {}: start one with `orch serve`", path.display())]
    NoDaemon {
        /// The socket.
        path: PathBuf,
        /// Why connecting failed.
        #[source]
        source: std::io::Error,
    },
    /// The request failed on its way.
    #[error("failed to talk to the daemon on {}", path.display())]
    Transport {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Refused {
        /// Its status.
        status: u16,
        /// Its `error` field.
        message: String,
    },
}

/// A client of one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; the status and body of the answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let transport = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Transport {
            path: self.socket.clone(),
            source,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::PermissionDenied => ClientError::Denied {
                    path: self.socket.clone(),
                    source,
                },
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NoDaemon {
                        path: self.socket.clone(),
                        source,
                    }
                }
                _ => ClientError::Transport {
                    path: self.socket.clone(),
                    source: Box::new(source),
                },
            })?;
        let work = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| transport(Box::new(e)))?;
            tokio::spawn(connection);
            let mut builder = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "orch");
            let payload = match body {
                Some(value) => {
                    builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
                    Bytes::from(value.to_string())
                }
                None => Bytes::new(),
            };
            let request = builder
                .body(Full::new(payload))
                .map_err(|e| transport(Box::new(e)))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transport(Box::new(e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(Box::new(e)))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_DEADLINE, work)
            .await
            .map_err(|_| transport("no answer in time".into()))?
    }

    /// Sends a request and reads a JSON answer; an error status becomes
    /// [`ClientError::Refused`] with the daemon's message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let (status, bytes) = self.request(method, path, body).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes).trim() }),
        );
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Refused {
                status: status.as_u16(),
                message: value["error"]
                    .as_str()
                    .map_or_else(|| format!("the daemon answered {status}"), str::to_owned),
            })
        }
    }
}
