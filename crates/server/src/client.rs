//! A client of a daemon's unix socket: what `orch submit` and the tests
//! speak to it with, in the types of [`orch_protocol`]: one method per
//! route, the daemon's errors as [`ClientError::Refused`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use orch_protocol::{
    Alert, CleanupAnswer, CleanupRequest, DuAnswer, ErrorBody, Progress, RecentCleanup, SubmitSpec,
    Submitted, TaskQuery, TaskRecord,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
        body: Option<Vec<u8>>,
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
                Some(json) => {
                    builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
                    Bytes::from(json)
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

    /// Sends `body` (JSON) and reads the answer as `T`; an error status
    /// becomes [`ClientError::Refused`] with the daemon's message.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let transport = |e: serde_json::Error| ClientError::Transport {
            path: self.socket.clone(),
            source: Box::new(e),
        };
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(transport)?;
        let (status, bytes) = self.request(method, path, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| {
                    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
                    if text.is_empty() {
                        format!("the daemon answered {status}")
                    } else {
                        text
                    }
                });
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(transport)
    }

    /// `POST /v1/tasks`: queues a task.
    pub async fn submit(&self, spec: &SubmitSpec) -> Result<Submitted, ClientError> {
        self.call(Method::POST, "/v1/tasks", Some(spec)).await
    }

    /// `GET /v1/tasks`: the tasks `query` selects.
    pub async fn tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, ClientError> {
        let path = format!("/v1/tasks{}", query.to_query());
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/tasks/{id}`: one task (a unique prefix will do).
    pub async fn task(&self, id: &str) -> Result<TaskRecord, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/tasks/{}", segment(id)),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/tasks/{id}/progress`.
    pub async fn progress(&self, id: &str) -> Result<Progress, ClientError> {
        let path = format!("/v1/tasks/{}/progress", segment(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `DELETE /v1/tasks/{id}`: cancels it; with `wait`, answers once it
    /// has ended.
    pub async fn cancel(&self, id: &str, wait: bool) -> Result<TaskRecord, ClientError> {
        let path = format!(
            "/v1/tasks/{}{}",
            segment(id),
            if wait { "?wait=1" } else { "" }
        );
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `POST /v1/cleanup`.
    pub async fn cleanup(&self, request: &CleanupRequest) -> Result<CleanupAnswer, ClientError> {
        self.call(Method::POST, "/v1/cleanup", Some(request)).await
    }

    /// `GET /v1/du`.
    pub async fn du(&self) -> Result<DuAnswer, ClientError> {
        self.call(Method::GET, "/v1/du", None::<&()>).await
    }

    /// `GET /v1/alerts`.
    pub async fn alerts(&self) -> Result<Vec<Alert>, ClientError> {
        self.call(Method::GET, "/v1/alerts", None::<&()>).await
    }

    /// `GET /v1/cleanups`.
    pub async fn recent_cleanups(&self) -> Result<Vec<RecentCleanup>, ClientError> {
        self.call(Method::GET, "/v1/cleanups", None::<&()>).await
    }

    /// `GET /v1/tasks/{id}/logs`: the output so far.
    pub async fn logs(&self, id: &str) -> Result<Bytes, ClientError> {
        let path = format!("/v1/tasks/{}/logs", segment(id));
        let (status, bytes) = self.request(Method::GET, &path, None).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(ClientError::Refused {
                status: status.as_u16(),
                message: serde_json::from_slice::<ErrorBody>(&bytes)
                    .map_or_else(|_| format!("the daemon answered {status}"), |e| e.error),
            })
        }
    }
}

/// A path segment as given, every byte outside the unreserved ones of RFC
/// 3986 `%`-encoded.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
