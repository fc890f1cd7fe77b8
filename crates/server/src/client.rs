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
    /// The TLS handshake failed: the server's certificate was not
    /// trusted, or the server refused ours.
    #[error("TLS with {} failed: {message}", path.display())]
    Tls {
        /// The daemon's URL.
        path: PathBuf,
        /// rustls's own words.
        message: String,
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
/// token, which every request but `/healthz` needs there), over TLS when
/// its URL says `https://`.
#[derive(Clone)]
pub struct Client {
    socket: PathBuf,
    tcp: Option<Tcp>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.socket)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Tcp {
    /// `host:port`.
    authority: String,
    /// The host, as its certificate must name it.
    host: String,
    token: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            tcp: None,
        }
    }

    /// Whether this client reaches its daemon over TCP (possibly on another
    /// machine) rather than a unix socket on this one.
    pub fn is_tcp(&self) -> bool {
        self.tcp.is_some()
    }

    /// A client of the daemon whose API is at `url` (`http://host:port`),
    /// sending `token` with each request.
    pub fn tcp(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::remote(url, token, &crate::ClientTls::default())
    }

    /// A client of the daemon at `url`: `https://host:port` (verified
    /// against `tls`: the system's roots or its CA), `http://host:port`,
    /// or `unix:///path/to/orch.sock`; sending `token` over TCP.
    pub fn remote(
        url: &str,
        token: Option<String>,
        tls: &crate::ClientTls,
    ) -> Result<Client, ClientError> {
        // Never echo what may be a credential in it.
        let shown = match url.split_once("://") {
            Some((scheme, rest)) => match rest.split('/').next().unwrap_or("").rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        };
        let bad = |why: &str| ClientError::Refused {
            status: 0,
            message: format!("{shown:?} is not a daemon's address: {why}"),
        };
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("give unix:///absolute/path/orch.sock"));
            }
            return Ok(Client::new(path));
        }
        let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad(
                "expected https://host:port, http://host:port or unix:///path",
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty()
            || authority.contains(['/', '?', '#', '@'])
            || authority.contains(char::is_whitespace)
        {
            return Err(bad(
                "expected https://host:port, http://host:port or unix:///path",
            ));
        }
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host.to_owned(),
            _ => authority.to_owned(),
        };
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if secure { 443 } else { 80 })
        };
        let tls = if secure {
            Some(tls.connector().map_err(|e| ClientError::Refused {
                status: 0,
                message: e.to_string(),
            })?)
        } else {
            None
        };
        Ok(Client {
            socket: PathBuf::from(url),
            tcp: Some(Tcp {
                authority,
                host,
                token,
                tls,
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
                    match &tcp.tls {
                        Some(connector) => {
                            let name = crate::tls::server_name(&tcp.host)
                                .map_err(|e| transport(e.into()))?;
                            let stream = connector.connect(name, stream).await.map_err(|e| {
                                // rustls's own words: which certificate, and why.
                                ClientError::Tls {
                                    path: self.socket.clone(),
                                    message: e.to_string(),
                                }
                            })?;
                            exchange(stream, request).await.map_err(|e| {
                                match refused_certificate(&*e) {
                                    Some(message) => ClientError::Tls {
                                        path: self.socket.clone(),
                                        message,
                                    },
                                    None => transport(e),
                                }
                            })
                        }
                        None => exchange(stream, request).await.map_err(transport),
                    }
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
        from: orch_protocol::LogFrom,
    ) -> Result<hyper::body::Incoming, ClientError> {
        let mut query = Vec::new();
        if follow {
            query.push("follow=1".to_owned());
        }
        query.extend(from.query());
        let path = format!(
            "/v1/tasks/{}/logs{}{}",
            segment(id),
            if query.is_empty() { "" } else { "?" },
            query.join("&")
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
    let connection = tokio::spawn(connection);
    match sender.send_request(request).await {
        Ok(response) => Ok(response),
        // The connection's own error says why (a TLS alert, a reset), where
        // the request's says only that it was cancelled.
        Err(e) if e.is_canceled() => match connection.await {
            Ok(Err(why)) => Err(why.into()),
            _ => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The daemon's refusal of our client certificate, which TLS 1.3 reports
/// only after the handshake: an alert on the first exchange.
fn refused_certificate(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(rustls::Error::AlertReceived(alert)) = e.downcast_ref::<rustls::Error>() {
            return Some(match alert {
                rustls::AlertDescription::CertificateRequired => {
                    "the daemon requires a client certificate: set ORCH_TLS_CERT and ORCH_TLS_KEY"
                        .to_owned()
                }
                other => format!("the daemon refused our client certificate ({other:?})"),
            });
        }
        // An I/O error carries rustls's as its payload, not as its source.
        cause = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => e.source(),
        };
    }
    None
}
