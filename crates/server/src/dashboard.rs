//! The dashboard (SPEC 11): one page at `/` of the TCP listener, served
//! from the binary, with no build step and nothing from other hosts. It
//! uses the API like any client, with the token in a cookie: opening
//! `/?token=T` once sets an HttpOnly, SameSite=Strict cookie and redirects
//! to `/`, so the token leaves the address bar and the history.

use axum::Router;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::auth::{COOKIE, Token};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Only this origin's scripts, styles and connections; never framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The page and its two files, added to the TCP listener's routes.
pub(crate) fn routes(api: Router, token: Token) -> Router {
    api.route(
        "/",
        get(move |q: Result<Query<IndexQuery>, QueryRejection>| index(q, token.clone())),
    )
    .route(
        "/dashboard.js",
        get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
    )
    .route(
        "/dashboard.css",
        get(|| asset(STYLE, "text/css; charset=utf-8")),
    )
}

#[derive(Debug, Deserialize)]
struct IndexQuery {
    token: Option<String>,
}

async fn index(q: Result<Query<IndexQuery>, QueryRejection>, token: Token) -> Response {
    match q.ok().and_then(|Query(q)| q.token) {
        // The middleware let this through to set the cookie: check it here.
        Some(given) if token.grants(&given).is_some() => {
            let cookie = format!("{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/");
            let mut answer = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                answer.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            secure(answer)
        }
        Some(_) => secure(
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "wrong token\n",
            )
                .into_response(),
        ),
        None => {
            secure(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response())
        }
    }
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    secure(([(header::CONTENT_TYPE, kind)], body).into_response())
}

/// Headers every dashboard answer carries.
fn secure(mut answer: Response) -> Response {
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}
