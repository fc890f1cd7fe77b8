//! Who may use the TCP listener: whoever shows the bearer token
//! (`Authorization: Bearer <token>`), or the cookie the dashboard was given
//! for it. `GET /healthz` is open. The unix socket needs none of this: its
//! mode (0600) is the access control.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;

/// The cookie that carries the token for the dashboard.
pub(crate) const COOKIE: &str = "orch_token";

/// The token a listener expects.
#[derive(Clone)]
pub(crate) struct Token(pub(crate) std::sync::Arc<str>);

/// Compares without stopping at the first difference.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token a request shows: the bearer header, or the dashboard's
/// cookie.
pub(crate) fn shown(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            pair.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
}

/// Refuses (401) every request but `GET /healthz` that does not show the
/// token.
pub(crate) async fn require(
    State(token): State<Token>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if request.uri().path() == "/healthz" {
        return Ok(next.run(request).await);
    }
    match shown(&request) {
        Some(given) if same(&given, &token.0) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this listener needs Authorization: Bearer <token> (ORCH_TOKEN, or $ORCH_HOME/api-token)",
        )),
    }
}
