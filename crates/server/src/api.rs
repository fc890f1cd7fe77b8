//! The routes of SPEC 9 and their handlers: each parses, calls one
//! supervisor method, and answers JSON.

use orch_protocol::{CleanupRequest, Submitted};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State as Extract};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::Stream;
use orch_orchestrator::cluster::LogSource;
use orch_orchestrator::supervisor::{SubmitSpec, Supervisor};
use orch_orchestrator::{CleanupOptions, Strategy, Thresholds, parse_duration};
use orch_registry::State;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::Client;
use crate::error::ApiError;

/// The largest request body taken.
const BODY_LIMIT: usize = 64 * 1024;
/// How often a followed log is looked at.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) supervisor: Arc<Supervisor>,
    /// Fires when the daemon stops: endless answers (events, followed
    /// logs) end with it, so that shutting down never waits on a client.
    pub(crate) stop: tokio_util::sync::CancellationToken,
    /// The daemon's token: in a cluster every node has the same, and a
    /// node relaying another's answer presents it there.
    pub(crate) token: Arc<str>,
}

/// The API's routes (no authentication: the listeners add it).
pub(crate) fn routes(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/{id}", get(show).delete(cancel))
        .route("/v1/tasks/{id}/progress", get(progress))
        .route("/v1/tasks/{id}/logs", get(logs))
        .route("/v1/cleanup", post(cleanup))
        .route("/v1/du", get(du))
        .route("/v1/events", get(events))
        .route("/v1/cleanups", get(recent_cleanups))
        .route("/v1/alerts", get(alerts))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// `200 ok` while the daemon accepts work: not shutting down, and its
/// engine within reach (else submissions are refused with a 503 too).
async fn healthz(Extract(s): Extract<Shared>) -> Response {
    match s.supervisor.refusing(Duration::from_secs(2)).await {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// A JSON body, with a one-line 400 for anything malformed. Whatever its
/// `Content-Type` says: `curl -d` sends JSON as a form, and an API that
/// takes only JSON has nothing else to read it as.
fn body<T: DeserializeOwned>(raw: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {BODY_LIMIT} bytes"),
            ));
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "invalid request body: {}",
                e.body_text()
            )));
        }
    };
    serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    parsed
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

async fn submit(
    Extract(s): Extract<Shared>,
    spec: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec: SubmitSpec = body(spec)?;
    let record = s.supervisor.submit(spec).await?;
    let answer = Submitted {
        id: record.id,
        state: record.state,
        warnings: s.supervisor.placement(&record).await.into_iter().collect(),
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    all: Option<String>,
    state: Option<String>,
    project: Option<String>,
    name: Option<String>,
}

fn flag(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("0" | "false" | "no") => Ok(false),
        Some("" | "1" | "true" | "yes") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid flag value {other:?}: expected 1 or 0"
        ))),
    }
}

async fn list(
    Extract(s): Extract<Shared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let state: Option<State> = q
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: orch_registry::UnknownState| ApiError::bad_request(e.to_string()))?;
    // A project named by its URL: the tasks whose work goes there.
    let url = q.project.clone().filter(|p| orch_orchestrator::is_url(p));
    let by_name = q.project.filter(|_| url.is_none());
    let mut tasks = s
        .supervisor
        .tasks(flag(q.all.as_deref())?, state, by_name)
        .await?;
    if let Some(url) = &url {
        tasks.retain(|t| t.workspace.remote.as_ref() == Some(url));
    }
    if let Some(name) = &q.name {
        tasks.retain(|t| t.name.as_ref() == Some(name));
    }
    Ok(Json(tasks).into_response())
}

async fn show(Extract(s): Extract<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(s.supervisor.task(&id).await?).into_response())
}

async fn progress(
    Extract(s): Extract<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.supervisor.progress(&id).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    wait: Option<String>,
}

async fn cancel(
    Extract(s): Extract<Shared>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let wait = flag(query(q)?.wait.as_deref())?;
    let record = s.supervisor.cancel(&id, wait).await?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowQuery {
    follow: Option<String>,
    /// Only the last this many lines of what the log holds now.
    tail: Option<usize>,
    /// Only what came at or after this time (Unix ms).
    since: Option<i64>,
}

async fn logs(
    Extract(s): Extract<Shared>,
    Path(id): Path<String>,
    q: Result<Query<FollowQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let follow = flag(q.follow.as_deref())?;
    let from = match (q.tail, q.since) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give tail or since, not both"));
        }
        (Some(lines), None) => orch_protocol::LogFrom::Tail(lines),
        (None, Some(at)) => orch_protocol::LogFrom::Since(at),
        (None, None) => orch_protocol::LogFrom::Start,
    };
    let task = s.supervisor.task(&id).await?;
    let text = |body| {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    };
    let path = match s.supervisor.log_source(&task).await? {
        LogSource::Local(path) => path,
        LogSource::Kept(mut bytes) => {
            // A kept copy has no time index: `since` gives all of it.
            if let orch_protocol::LogFrom::Tail(lines) = from {
                bytes.drain(..orch_orchestrator::cluster::tail_start(&bytes, lines));
            }
            return text(Body::from(bytes));
        }
        // Running on another node: its owner serves it, relayed as it comes.
        LogSource::Remote { url } => {
            let relayed = Client::remote(
                &url,
                Some(s.token.to_string()),
                &crate::ClientTls::from_env(),
            )
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?
            .open_logs(&task.id.to_string(), follow, from)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the task runs on {url}, which could not be reached: {e}"),
                )
            })?;
            return text(Body::new(relayed));
        }
        LogSource::Unreachable { node } => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the task runs on node {node}, which advertises no URL (orch serve --advertise) to read its output from"
                ),
            ));
        }
    };
    let start = match from {
        orch_protocol::LogFrom::Start => 0,
        from => {
            let at = path.clone();
            tokio::task::spawn_blocking(move || match from {
                orch_protocol::LogFrom::Tail(lines) => {
                    orch_orchestrator::cluster::tail_offset(&at, lines)
                }
                orch_protocol::LogFrom::Since(ms) => orch_orchestrator::since_offset(&at, ms),
                orch_protocol::LogFrom::Start => Ok(0),
            })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to read {}: {e}", path.display()),
                )
            })?
        }
    };
    if !follow {
        let bytes = match tokio::fs::read(&path).await {
            Ok(mut bytes) => {
                bytes.drain(..usize::try_from(start).unwrap_or(0).min(bytes.len()));
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to read {}: {e}", path.display()),
                ));
            }
        };
        return text(Body::from(bytes));
    }
    let supervisor = s.supervisor.clone();
    let id = task.id.to_string();
    // Each step: whether the task had ended before the read, then whatever
    // the log holds past `offset`; ends after a read that followed the end.
    let stream = futures_util::stream::unfold((start, false), move |(offset, over)| {
        let (supervisor, path, id) = (supervisor.clone(), path.clone(), id.clone());
        async move {
            if over {
                return None;
            }
            loop {
                let ended = supervisor
                    .task(&id)
                    .await
                    .map_or(true, |t| t.state.is_terminal());
                let chunk = read_from(&path, offset).await;
                if !chunk.is_empty() {
                    let next = offset + chunk.len() as u64;
                    return Some((Ok::<_, Infallible>(Bytes::from(chunk)), (next, ended)));
                }
                if ended {
                    return None;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    });
    let stop = s.stop.clone();
    text(Body::from_stream(futures_util::StreamExt::take_until(
        stream,
        stop.cancelled_owned(),
    )))
}

/// What `path` holds past `offset` (nothing if it does not exist yet).
async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = (&mut file).take(1 << 20).read_to_end(&mut buf).await;
    buf
}

async fn cleanup(
    Extract(s): Extract<Shared>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // An empty body is an empty request.
    let request: CleanupRequest = match request {
        Ok(raw) if raw.iter().all(u8::is_ascii_whitespace) => CleanupRequest::default(),
        other => body(other)?,
    };
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    let strategy = match request.strategy.as_deref() {
        None => Strategy::All,
        Some(name) => Strategy::parse(name).ok_or_else(|| {
            unprocessable(format!(
                "unknown strategy {name:?}: expected all, orphans, completed, stale or old"
            ))
        })?,
    };
    let thresholds = match request.older_than.as_deref() {
        Some(age) => Thresholds::all(parse_duration(age).map_err(unprocessable)?),
        None => s.supervisor.thresholds(),
    };
    let status = request
        .status
        .as_deref()
        .map(str::parse::<State>)
        .transpose()
        .map_err(|e| unprocessable(e.to_string()))?;
    let options = CleanupOptions {
        strategy,
        thresholds,
        status,
        all: false,
        dry_run: request.dry_run,
        branches: false,
    };
    let report = s.supervisor.cleanup(&options).await?;
    Ok(Json(report.answer()).into_response())
}

/// OpenMetrics to whoever asks for it (Prometheus does), the classic
/// text format to everyone else.
async fn metrics(
    Extract(s): Extract<Shared>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    use orch_orchestrator::supervisor::{classic_metrics, metrics_format};
    let text = s.supervisor.metrics_text().await?;
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        ([(header::CONTENT_TYPE, metrics_format::OPENMETRICS)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, metrics_format::CLASSIC)],
            classic_metrics(&text),
        )
            .into_response()
    })
}

async fn recent_cleanups(Extract(s): Extract<Shared>) -> Response {
    Json(s.supervisor.recent_cleanups()).into_response()
}

async fn alerts(Extract(s): Extract<Shared>) -> Response {
    Json(s.supervisor.alerts()).into_response()
}

async fn du(Extract(s): Extract<Shared>) -> Result<Response, ApiError> {
    Ok(Json(s.supervisor.du().await?.answer()).into_response())
}

async fn events(
    Extract(s): Extract<Shared>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.supervisor.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let sse = match rx.recv().await {
            Ok(event) => {
                let data = serde_json::to_string(&event).unwrap_or_default();
                SseEvent::default().event(event.kind()).data(data)
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(sse), rx))
    });
    let stream = futures_util::StreamExt::take_until(stream, s.stop.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The TCP listener's routes: the API plus the dashboard (`/`), which
/// gets its token once as `?token=` and keeps it in a cookie.
pub(crate) fn with_dashboard(api: Router, token: crate::auth::Token) -> Router {
    crate::dashboard::routes(api, token)
}
