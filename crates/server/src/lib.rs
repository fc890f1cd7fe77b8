//! orch's HTTP API (SPEC 9): a thin shell over the daemon's
//! [`Supervisor`](orch_orchestrator::supervisor::Supervisor).
//!
//! Handlers parse a request, call one supervisor method, and map its typed
//! error to a status in one place ([`ApiError`]). The API is served on the
//! home's unix socket (0600: the socket's mode is the access control) and,
//! on request, on a TCP address where every request but `GET /healthz`
//! needs the bearer token. [`Client`] speaks to the socket.

#![warn(missing_docs)]

mod api;
mod auth;
mod client;
mod conn;
mod dashboard;
mod error;
mod listen;
mod tls;
mod webhooks;

pub use client::{Client, ClientError};
pub use error::ApiError;
pub use listen::{Bound, Listeners, ServeError, bind};
pub use tls::{ClientTls, ServerTls, TlsError, TlsFiles};
pub use webhooks::{WebhookError, Webhooks, signature};
