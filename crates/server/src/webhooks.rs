//! Webhooks (SPEC 11): a JSON POST per event to each configured receiver,
//! signed `X-Orch-Signature: sha256=<HMAC-SHA256 of the body>`, retried with
//! backoff and a bound.
//!
//! Each receiver has a queue and a sender of its own, fed by one listener
//! of the supervisor's events: the supervisor never waits on a receiver,
//! and a slow or dead receiver never delays another. A delivery given up
//! (retries spent, or its queue full) is logged and counted
//! (`orch_webhook_failures_total`), never fatal.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use orch_orchestrator::Webhook;
use orch_orchestrator::supervisor::{DaemonEvent, Supervisor};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Deliveries waiting per receiver before new ones are dropped.
const QUEUE: usize = 1000;
/// Attempts per delivery.
const ATTEMPTS: u32 = 6;
/// The first retry's wait; doubled each time, up to [`BACKOFF_MAX`].
const BACKOFF: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// One attempt's deadline: connect, send, and the answer's head.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(10);
/// How long queued deliveries may still go out once the daemon stops.
const DRAIN: Duration = Duration::from_secs(10);

/// A webhook the daemon cannot use.
#[derive(Debug, thiserror::Error)]
#[error("webhook {url:?}: {why}")]
pub struct WebhookError {
    url: String,
    why: String,
}

/// One event on its way to one receiver.
#[derive(Debug, Clone)]
struct Delivery {
    kind: &'static str,
    id: uuid::Uuid,
    body: Bytes,
}

/// A receiver: where, what it wants, and its key.
#[derive(Clone)]
struct Receiver {
    url: String,
    uri: Uri,
    events: Vec<String>,
    secret: Option<String>,
    /// For an `https://` receiver: its certificate verified against the
    /// system's roots, or the hook's own CA.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The running webhook senders; [`Webhooks::finish`] lets them drain.
#[derive(Debug)]
pub struct Webhooks {
    tasks: tokio::task::JoinSet<()>,
}

impl Webhooks {
    /// Starts the receivers' senders and the listener that feeds them.
    pub fn start(
        hooks: &[Webhook],
        supervisor: &Arc<Supervisor>,
        stop: CancellationToken,
    ) -> Result<Webhooks, WebhookError> {
        let mut receivers = Vec::new();
        for hook in hooks {
            let refuse = |why: &str| WebhookError {
                url: hook.url.clone(),
                why: why.to_owned(),
            };
            // The config checked the scheme and the host.
            let uri: Uri = hook.url.parse().map_err(|_| refuse("not a valid URL"))?;
            let tls = if uri.scheme_str() == Some("https") {
                let settings = crate::ClientTls {
                    ca: hook.ca.clone(),
                    identity: None,
                };
                Some(settings.connector().map_err(|e| refuse(&e.to_string()))?)
            } else {
                None
            };
            receivers.push(Receiver {
                url: hook.url.clone(),
                uri,
                events: hook.events.clone(),
                secret: hook.secret.clone(),
                tls,
            });
        }
        let mut tasks = tokio::task::JoinSet::new();
        if receivers.is_empty() {
            return Ok(Webhooks { tasks });
        }
        let mut queues = Vec::new();
        for receiver in receivers {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push((receiver.clone(), tx));
            tasks.spawn(send_all(receiver, rx, supervisor.clone(), stop.clone()));
        }
        let events = supervisor.subscribe();
        tasks.spawn(listen(events, queues, supervisor.clone(), stop));
        Ok(Webhooks { tasks })
    }

    /// Waits for the senders to deliver what is queued, within a bound.
    pub async fn finish(mut self) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            tracing::warn!("webhooks still undelivered at exit were dropped");
        }
    }
}

/// Hands each event to the receivers that want it, until the daemon stops.
async fn listen(
    mut events: tokio::sync::broadcast::Receiver<DaemonEvent>,
    queues: Vec<(Receiver, mpsc::Sender<Delivery>)>,
    supervisor: Arc<Supervisor>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            // Events already sent still go out: the last task ends are
            // sent just before the daemon stops listening.
            () = stop.cancelled() => match events.try_recv() {
                Ok(event) => Ok(event),
                Err(_) => return,
            },
        };
        let event = match event {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "webhooks fell behind the events; some were not sent"
                );
                for _ in 0..missed {
                    supervisor.metrics().webhook_failed("lagged");
                }
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let kind = event.kind();
        if !queues
            .iter()
            .any(|(r, _)| r.events.iter().any(|e| e == kind))
        {
            continue;
        }
        // A cleanup that found nothing to do is no news: one every few
        // minutes would drown the ones that did something.
        if let DaemonEvent::CleanupDone { report, .. } = &event {
            if report.total.tasks == 0 && report.total.containers == 0 {
                continue;
            }
        }
        let body = match body_of(&event, &supervisor).await {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::warn!(event = kind, error = %e, "failed to encode a webhook");
                continue;
            }
        };
        let delivery = Delivery {
            kind,
            id: uuid::Uuid::now_v7(),
            body,
        };
        for (receiver, queue) in &queues {
            if !receiver.events.iter().any(|e| e == kind) {
                continue;
            }
            if queue.try_send(delivery.clone()).is_err() {
                tracing::warn!(url = %receiver.url, event = kind, "webhook queue full; dropped");
                supervisor.metrics().webhook_failed(kind);
            }
        }
    }
}

/// The event's JSON; a stuck task's carries its record too.
async fn body_of(event: &DaemonEvent, supervisor: &Supervisor) -> serde_json::Result<Vec<u8>> {
    let mut value = serde_json::to_value(event)?;
    if let DaemonEvent::TaskStuck { id, .. } = event {
        if let Ok(record) = supervisor.task(&id.to_string()).await {
            value["task"] = serde_json::to_value(record)?;
        }
    }
    serde_json::to_vec(&value)
}

/// Delivers one receiver's queue in order, each with its retries.
async fn send_all(
    receiver: Receiver,
    mut queue: mpsc::Receiver<Delivery>,
    supervisor: Arc<Supervisor>,
    stop: CancellationToken,
) {
    let mut deadline = None;
    loop {
        let next = match deadline {
            None => tokio::select! {
                next = queue.recv() => next,
                () = stop.cancelled() => {
                    deadline = Some(tokio::time::Instant::now() + DRAIN);
                    continue;
                }
            },
            Some(at) => tokio::time::timeout_at(at, queue.recv())
                .await
                .unwrap_or_default(),
        };
        let Some(delivery) = next else {
            // Closed, or draining and out of time: count what is left.
            while let Ok(left) = queue.try_recv() {
                tracing::warn!(url = %receiver.url, event = left.kind, "webhook not sent before exit");
                supervisor.metrics().webhook_failed(left.kind);
            }
            return;
        };
        if !deliver(&receiver, &delivery, deadline).await {
            supervisor.metrics().webhook_failed(delivery.kind);
        }
    }
}

/// Tries one delivery until a 2xx answer, within its attempts (and the
/// drain deadline once the daemon stops).
async fn deliver(
    receiver: &Receiver,
    delivery: &Delivery,
    deadline: Option<tokio::time::Instant>,
) -> bool {
    let signature = receiver
        .secret
        .as_deref()
        .map(|secret| signature(secret.as_bytes(), &delivery.body));
    let mut backoff = orch_retry::Backoff::new(BACKOFF, BACKOFF_MAX);
    if let Some(deadline) = deadline {
        backoff = backoff.until(deadline.into_std());
    }
    for attempt in 1..=ATTEMPTS {
        let outcome = tokio::time::timeout(
            ATTEMPT_DEADLINE,
            post(receiver, delivery, signature.as_deref()),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ATTEMPT_DEADLINE:?}")));
        match outcome {
            Ok(()) => return true,
            Err(why) => {
                let delay = backoff.next_delay().filter(|_| attempt < ATTEMPTS);
                let Some(delay) = delay else {
                    tracing::warn!(url = %receiver.url, event = delivery.kind, attempts = attempt, error = %why, "webhook given up");
                    return false;
                };
                tracing::info!(url = %receiver.url, event = delivery.kind, attempt, error = %why, "webhook failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
    false
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    #[expect(clippy::expect_used, reason = "HMAC takes a key of any length")]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + digest.len() * 2);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// One POST over a fresh HTTP/1.1 connection; Ok on a 2xx answer.
async fn post(
    receiver: &Receiver,
    delivery: &Delivery,
    signature: Option<&str>,
) -> Result<(), String> {
    let uri = &receiver.uri;
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if receiver.tls.is_some() { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match &receiver.tls {
        Some(tls) => {
            let name = crate::tls::server_name(host)?;
            let stream = tls
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            post_on(stream, receiver, delivery, signature).await
        }
        None => post_on(stream, receiver, delivery, signature).await,
    }
}

/// The POST itself, on a connection made.
async fn post_on<S>(
    stream: S,
    receiver: &Receiver,
    delivery: &Delivery,
    signature: Option<&str>,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let uri = &receiver.uri;
    let host = uri.host().unwrap_or_default();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let connection = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("orch/", env!("CARGO_PKG_VERSION")),
        )
        .header("X-Orch-Event", delivery.kind)
        .header("X-Orch-Delivery", delivery.id.to_string());
    if let Some(signature) = signature {
        request = request.header("X-Orch-Signature", signature);
    }
    let request = request
        .body(Full::new(delivery.body.clone()))
        .map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = answer.status();
    // Read the (bounded) answer so the connection closes cleanly.
    let _ = http_body_util::Limited::new(answer.into_body(), 64 * 1024)
        .collect()
        .await;
    connection.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
