//! Who may use the TCP listener: whoever shows the bearer token
//! (`Authorization: Bearer <token>`), or the cookie the dashboard was given
//! for it; a read-only token, if one is set, may only read. `GET /healthz`
//! is open. The unix socket needs none of this: its
//! mode (0600) is the access control.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;

/// The cookie that carries the token for the dashboard.
pub(crate) const COOKIE: &str = "orch_token";

/// The tokens a listener takes: the full one, and a read-only one (for
/// dashboard viewers and scrapers: list, show, follow, scrape; no submit,
/// cancel or cleanup), if set.
#[derive(Clone)]
pub(crate) struct Token(
    pub(crate) std::sync::Arc<str>,
    pub(crate) Option<std::sync::Arc<str>>,
);

impl Token {
    /// What `given` may do: `Some(true)` everything, `Some(false)` read.
    pub(crate) fn grants(&self, given: &str) -> Option<bool> {
        if same(given, &self.0) {
            return Some(true);
        }
        self.1
            .as_deref()
            .filter(|read| same(given, read))
            .map(|_| false)
    }
}

/// Compares without stopping at the first difference.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// How a request showed a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shown {
    /// `Authorization: Bearer`: a program, which no other site can make
    /// send it.
    Bearer(String),
    /// The dashboard's cookie, which a browser sends by itself.
    Cookie(String),
}

/// The token a request shows: the bearer header, or the dashboard's
/// cookie.
pub(crate) fn shown(request: &Request) -> Option<Shown> {
    let headers = request.headers();
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return value
            .strip_prefix("Bearer ")
            .map(|t| Shown::Bearer(t.trim().to_owned()));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            pair.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(|t| Shown::Cookie(t.to_owned()))
        })
}

/// A request made with the cookie that changes something must come from
/// the dashboard itself: with its header (which a page of another site
/// cannot add without this listener's consent, never given) and, when the
/// browser says where it comes from, from this very origin. SameSite=Strict
/// already keeps the cookie off other sites' requests; this is the second
/// lock.
fn same_site(request: &Request) -> bool {
    let headers = request.headers();
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let from_dashboard = value("x-orch-request") == Some("dashboard");
    let site_ok = value("sec-fetch-site").is_none_or(|s| s == "same-origin");
    let origin_ok = match (value("origin"), value("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        }
        (Some(_), None) => false,
    };
    from_dashboard && site_ok && origin_ok
}

/// Refuses (401) every request but `GET /healthz` that does not show the
/// token, and (403) a cookie's request that changes something from
/// anywhere but the dashboard.
pub(crate) async fn require(
    State(token): State<Token>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = request.uri().path();
    // `/?token=` is how the dashboard is first opened: its handler checks
    // the token and sets the cookie.
    let opening = path == "/"
        && request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("token=")));
    if path == "/healthz" || opening {
        return Ok(next.run(request).await);
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let read_only = || {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "refused: this token may only read (list, show, follow, scrape)",
        ))
    };
    match shown(&request) {
        Some(Shown::Bearer(given)) => match token.grants(&given) {
            Some(true) => Ok(next.run(request).await),
            Some(false) if safe => Ok(next.run(request).await),
            Some(false) => read_only(),
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong token")),
        },
        Some(Shown::Cookie(given)) if token.grants(&given).is_some() => {
            if token.grants(&given) == Some(false) && !safe {
                read_only()
            } else if safe || same_site(&request) {
                Ok(next.run(request).await)
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "refused: a request with the dashboard's cookie must come from the dashboard",
                ))
            }
        }
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong token")),
        None if path == "/" => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "open the dashboard as /?token=<token> (ORCH_TOKEN, or $ORCH_HOME/api-token)",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this listener needs Authorization: Bearer <token> (ORCH_TOKEN, or $ORCH_HOME/api-token)",
        )),
    }
}
