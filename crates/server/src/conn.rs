//! Connections, held to bounds: anyone who can reach a listener (a task on
//! the bridge network reaches `--listen 0.0.0.0`) can open connections
//! without a token, so none of them may hold the daemon's resources for
//! long.
//!
//! - Each listener has its own cap on open connections
//!   ([`Limits::connections`]); past it, new ones are closed at once. The
//!   unix socket's cap is its own, so local control (`orch ps`, `orch
//!   cancel`) works whatever the TCP listener suffers.
//! - A request's head must arrive within [`HEAD_DEADLINE`] of the moment
//!   the connection is ready for one; that also closes a connection left
//!   idle between requests (hyper's header-read timer starts whenever it
//!   waits for a head).
//! - A request's body must arrive within [`BODY_DEADLINE`]; a `Content-Length`
//!   of 10 GB with no body behind it is dropped, not held.
//! - An `accept` that fails for lack of descriptors pauses the listener for
//!   a moment instead of spinning.
//!
//! Streams the daemon sends (`/v1/events`, `logs?follow=1`) are not
//! bounded: they are answers, sent for as long as the client reads.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a request's head may take to arrive (and a connection may sit
/// idle between requests).
pub(crate) const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// How long a request's body may take to arrive.
pub(crate) const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// How long connections get to finish once the daemon stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once.
    pub(crate) connections: usize,
}

/// The TCP listener's: enough for a dashboard, Prometheus and many
/// clients, far below any descriptor limit.
pub(crate) const TCP: Limits = Limits { connections: 256 };
/// The unix socket's, apart from TCP's.
pub(crate) const UNIX: Limits = Limits { connections: 128 };

/// A listener of either kind.
pub(crate) trait Listener: Send + 'static {
    /// One accepted connection.
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// Serves `router` on `listener` until `stop`, within `limits`; then gives
/// open connections a moment to finish.
pub(crate) async fn serve<L: Listener>(
    listener: L,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    tls: Option<Arc<crate::tls::ServerTls>>,
) {
    let router = router.layer(axum::middleware::map_request(bounded_body));
    let permits = Arc::new(Semaphore::new(limits.connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // Out of descriptors (or a connection that died on the
                // way): wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("too many connections: closing a new one");
            drop(io);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        // The handshake happens on the connection's own task (a slow one
        // never holds the accept loop), within the head's deadline.
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        connections.spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(HEAD_DEADLINE, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => serve_io(tls, service, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake did not finish in time"),
                    }
                }
                None => serve_io(io, service, stop).await,
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(DRAIN * 2, connections.wait()).await;
}

/// Serves HTTP/1.1 on one connection until it closes, or, once `stop`
/// fires, for a moment more.
async fn serve_io<IO>(
    io: IO,
    service: hyper_util::service::TowerToHyperService<Router>,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_DEADLINE)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// Gives a request's body its deadline.
async fn bounded_body(request: axum::extract::Request) -> axum::extract::Request {
    request.map(|body| Body::new(Deadlined::new(body, BODY_DEADLINE)))
}

/// A body that fails once its deadline passes before it is whole.
struct Deadlined {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deadlined {
    fn new(inner: Body, limit: Duration) -> Deadlined {
        Deadlined {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl http_body::Body for Deadlined {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the request's body did not arrive within {BODY_DEADLINE:?}"),
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
