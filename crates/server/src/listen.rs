//! Where the API is served: the home's unix socket always, a TCP address on
//! request. A socket a dead daemon left is replaced; a live daemon's never
//! is: each socket has a lock file its daemon holds for as long as it
//! serves.

use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::middleware;
use orch_orchestrator::supervisor::Supervisor;
use rustix::fs::{FlockOperation, flock};
use tokio_util::sync::CancellationToken;

use crate::api::{Shared, routes};
use crate::auth::{Token, require};

/// The listeners of one daemon.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// The unix socket (`$ORCH_HOME/orch.sock` unless `--socket`).
    pub socket: PathBuf,
    /// A TCP address (every request there must show the token given to
    /// [`Bound::serve`]).
    pub tcp: Option<SocketAddr>,
    /// TLS on the TCP address, if given.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// A read-only token the TCP address also takes, if set.
    pub read_token: Option<String>,
}

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Another daemon serves on this socket.
    #[error("a daemon is already serving on {}; stop it first, or give this one another --socket", path.display())]
    SocketInUse {
        /// The socket.
        path: PathBuf,
    },
    /// A listener could not be set up.
    #[error("failed to {action} {target}")]
    Listen {
        /// What was being done.
        action: &'static str,
        /// The socket or address.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn listen_error(
    action: &'static str,
    target: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> ServeError {
    let target = target.to_string();
    move |source| ServeError::Listen {
        action,
        target,
        source,
    }
}

/// A bound unix socket and the lock that makes it ours; the socket file
/// goes when this drops.
struct OwnedSocket {
    path: PathBuf,
    _lock: std::fs::File,
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes `path` for this daemon and binds it, mode 0600.
fn bind_socket(path: &Path) -> Result<(tokio::net::UnixListener, OwnedSocket), ServeError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(listen_error("open", lock_path.display()))?;
    match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            return Err(ServeError::SocketInUse {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(listen_error("lock", lock_path.display())(e.into())),
    }
    // Ours now: whatever is there is a dead daemon's.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_error("replace the stale socket", path.display())(e)),
    }
    // Bound under a private name, made 0600, then moved into place: the
    // socket is never reachable with a looser mode.
    let dir = path.parent().unwrap_or(Path::new("."));
    let staging = dir.join(format!(".orch-sock-{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let std_listener = std::os::unix::net::UnixListener::bind(&staging)
        .map_err(listen_error("listen on", staging.display()))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .map_err(listen_error("make private", staging.display()))?;
    std::fs::rename(&staging, path).map_err(listen_error("move into place", path.display()))?;
    std_listener
        .set_nonblocking(true)
        .map_err(listen_error("configure", path.display()))?;
    let listener = tokio::net::UnixListener::from_std(std_listener)
        .map_err(listen_error("listen on", path.display()))?;
    Ok((
        listener,
        OwnedSocket {
            path: path.to_path_buf(),
            _lock: lock,
        },
    ))
}

/// Every listener of a daemon, bound and not serving yet.
pub struct Bound {
    unix: tokio::net::UnixListener,
    owned: OwnedSocket,
    tcp: Option<tokio::net::TcpListener>,
    listeners: Listeners,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

/// Binds every listener: fails, having served nothing, if one cannot be
/// set up (a live daemon's socket, an address in use).
pub async fn bind(listeners: Listeners) -> Result<Bound, ServeError> {
    let (unix, owned) = bind_socket(&listeners.socket)?;
    let tcp = match &listeners.tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_error("listen on", addr))?,
        ),
        None => None,
    };
    Ok(Bound {
        unix,
        owned,
        tcp,
        listeners,
    })
}

impl Bound {
    /// The TCP address actually bound (port 0 picks one).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves the API until `stop` fires; the socket file goes with it.
    /// `token`: what every request on the TCP listener must show (made
    /// only once the socket is bound, so a daemon refused for another's
    /// live socket leaves nothing behind).
    pub async fn serve(
        self,
        supervisor: Arc<Supervisor>,
        stop: CancellationToken,
        token: String,
    ) -> Result<(), ServeError> {
        let shared = Shared {
            supervisor,
            stop: stop.clone(),
            token: Arc::from(token.as_str()),
        };
        let tcp = self.tcp.map(|listener| {
            let token = Token(
                Arc::from(token.as_str()),
                self.listeners.read_token.as_deref().map(Arc::from),
            );
            let router = crate::api::with_dashboard(routes(shared.clone()), token.clone())
                .layer(middleware::from_fn_with_state(token, require));
            (listener, router)
        });
        let on_socket = crate::conn::serve(
            self.unix,
            routes(shared),
            crate::conn::UNIX,
            stop.clone(),
            None,
        );
        let tls = self.listeners.tls.clone();
        let on_tcp = async move {
            if let Some((listener, router)) = tcp {
                crate::conn::serve(listener, router, crate::conn::TCP, stop, tls).await;
            }
        };
        tokio::join!(on_socket, on_tcp);
        drop(self.owned);
        Ok(())
    }
}
