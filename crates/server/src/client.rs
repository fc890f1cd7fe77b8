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

/// A client of one daemon: its unix socket, or its TCP listener (with the
/// token, which every request but `/healthz` needs there).
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    tcp: Option<Tcp>,
}

#[derive(Debug, Clone)]
struct Tcp {
    /// `host:port`.
    authority: String,
    token: Option<String>,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            tcp: None,
        }
    }

    /// A client of the daemon whose API is at `url` (`http://host:port`),
    /// sending `token` with each request.
    pub fn tcp(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let authority = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|a| {
                !a.is_empty()
                    && !a.contains(['/', '?', '#', '@'])
                    && !a.contains(char::is_whitespace)
            })
            .ok_or_else(|| ClientError::Refused {
                status: 0,
                message: format!("{url:?} is not an http://host:port URL"),
            })?;
        Ok(Client {
            socket: PathBuf::from(url),
            tcp: Some(Tcp {
                authority: authority.to_owned(),
                token,
            }),
        })
    }

    /// The socket (or the URL).
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
        let work = async {
            let response = self.send(method, path, body).await?;
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

    /// Sends one request and returns the answer once its head is in; its
    /// body streams.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let transport = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Transport {
            path: self.socket.clone(),
            source,
        };
        let mut builder = Request::builder().method(method).uri(path);
        builder = match &self.tcp {
            Some(tcp) => {
                let mut builder = builder.header(hyper::header::HOST, &tcp.authority);
                if let Some(token) = &tcp.token {
                    builder =
                        builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
                }
                builder
            }
            None => builder.header(hyper::header::HOST, "orch"),
        };
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
        let head = async {
            match &self.tcp {
                Some(tcp) => {
                    let stream = tokio::net::TcpStream::connect(&tcp.authority)
                        .await
                        .map_err(|source| self.connect_error(source))?;
                    exchange(stream, request).await.map_err(transport)
                }
                None => {
                    let stream = tokio::net::UnixStream::connect(&self.socket)
                        .await
                        .map_err(|source| self.connect_error(source))?;
                    exchange(stream, request).await.map_err(transport)
                }
            }
        };
        tokio::time::timeout(REQUEST_DEADLINE, head)
            .await
            .map_err(|_| transport("no answer in time".into()))?
    }

    fn connect_error(&self, source: std::io::Error) -> ClientError {
        match source.kind() {
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
        }
    }

    /// `GET /v1/tasks/{id}/logs`, streamed (`follow`: until the task ends).
    pub async fn open_logs(
        &self,
        id: &str,
        follow: bool,
    ) -> Result<hyper::body::Incoming, ClientError> {
        let path = format!(
            "/v1/tasks/{}/logs{}",
            segment(id),
            if follow { "?follow=1" } else { "" }
        );
        let response = self.send(Method::GET, &path, None).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Err(ClientError::Refused {
            status: status.as_u16(),
            message: serde_json::from_slice::<ErrorBody>(&bytes)
                .map_or_else(|_| format!("the daemon answered {status}"), |e| e.error),
        })
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

/// One HTTP/1.1 exchange on `stream`: the answer once its head is in.
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}
