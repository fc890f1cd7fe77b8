//! What a running task reports to whoever shows it, in order.
//!
//! Events go to an [`Observer`] that runs on a thread of its own, so a slow
//! or blocked terminal (a full pipe, a paused pager) never stalls the loop
//! that watches the container, its deadline and the shutdown trigger. Output
//! is bounded in flight: the reader of the container's output waits once a
//! megabyte is queued, which pushes back on Docker instead of on memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

/// Bytes of output that may be queued for the observer at once.
const OUTPUT_IN_FLIGHT: usize = 1 << 20;

pub use crate::runtime::Stream;

/// Why orch is stopping a task that has not ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Its timeout passed.
    Timeout,
    /// A stop was requested: by a signal (`SIGINT`), `orch cancel`, a
    /// daemon's shutdown.
    Requested(String),
}

/// One thing that happened to a task.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The task has an id; nothing is created yet.
    Planned {
        /// The task id.
        task_id: Uuid,
        /// The container name it will have.
        container: String,
    },
    /// Its inputs are checked (nothing exists yet): how long it may stay
    /// silent before it is stuck, if its project says.
    Prepared {
        /// Its project's `stuck_after`.
        stuck_after: Option<Duration>,
    },
    /// A missing image is being pulled.
    Pulling {
        /// The image.
        image: String,
    },
    /// The container is running.
    Started,
    /// Output of the task.
    Output {
        /// Which stream.
        stream: Stream,
        /// The bytes, as the task wrote them.
        data: Bytes,
    },
    /// A `::progress::` line.
    Progress {
        /// 0 to 100.
        percent: u8,
        /// Text after the percentage.
        message: String,
    },
    /// The task's run is over (it exited, failed or never started): its
    /// output is drained and its teardown begins.
    Ended,
    /// Graceful stop begun: SIGTERM now, SIGKILL after `grace`.
    Stopping {
        /// Why.
        reason: StopReason,
        /// Time before SIGKILL.
        grace: Duration,
    },
    /// Forced removal begun.
    Forcing,
    /// The workspace was removed or kept.
    Workspace(crate::fate::WorkspaceFate),
    /// Something the user should know, on one line.
    Notice(String),
    /// Cleanup finished: what was removed, and how long it took.
    Cleaned {
        /// The container removed, if there was one.
        container: Option<String>,
        /// Time from the task's end to the container being gone.
        elapsed: Duration,
    },
}

/// Receives a task's events, in order, on a thread of its own.
pub trait Observer: Send + 'static {
    /// Called once per event. May block.
    fn on_event(&mut self, event: Event);
}

/// An observer that drops everything.
#[derive(Debug, Default)]
pub struct Discard;

impl Observer for Discard {
    fn on_event(&mut self, _event: Event) {}
}

type Item = (Event, Option<OwnedSemaphorePermit>);

/// A handler that takes events where they happen; it must never block.
pub(crate) type Direct = Arc<dyn Fn(Event) + Send + Sync>;

/// The sending half: cheap to clone, never blocks the caller except for
/// output beyond the in-flight bound.
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: mpsc::UnboundedSender<Item>,
    budget: Arc<Semaphore>,
    /// Instead of the channel: a handler called in place (the daemon's,
    /// which forwards and counts and never blocks).
    direct: Option<Direct>,
}

/// The observer's thread, to be joined when the task is over.
pub(crate) struct ObserverThread {
    done: std::sync::mpsc::Receiver<()>,
}

impl EventSink {
    /// Starts the observer thread.
    pub(crate) fn spawn(mut observer: Box<dyn Observer>) -> (EventSink, ObserverThread) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("orch-observer".into())
            .spawn(move || {
                while let Some((event, permit)) = rx.blocking_recv() {
                    observer.on_event(event);
                    drop(permit);
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "failed to start the observer thread; output is dropped");
        }
        let sink = EventSink {
            tx,
            budget: Arc::new(Semaphore::new(OUTPUT_IN_FLIGHT)),
            direct: None,
        };
        (sink, ObserverThread { done })
    }

    /// A sink that drops everything (no observer).
    pub(crate) fn discard() -> EventSink {
        let (tx, _) = mpsc::unbounded_channel();
        EventSink {
            tx,
            budget: Arc::new(Semaphore::new(OUTPUT_IN_FLIGHT)),
            direct: None,
        }
    }

    /// A sink that hands every event to `handler` where it happens: no
    /// thread, no queue. The handler must not block.
    pub(crate) fn direct(handler: Direct) -> EventSink {
        let (tx, _) = mpsc::unbounded_channel();
        EventSink {
            tx,
            budget: Arc::new(Semaphore::new(OUTPUT_IN_FLIGHT)),
            direct: Some(handler),
        }
    }

    /// Sends a control event; never waits.
    pub(crate) fn send(&self, event: Event) {
        if let Some(handler) = &self.direct {
            handler(event);
            return;
        }
        let _ = self.tx.send((event, None));
    }

    /// Sends output, waiting while too much is already queued.
    pub(crate) async fn output(&self, stream: Stream, data: Bytes) {
        if let Some(handler) = &self.direct {
            handler(Event::Output { stream, data });
            return;
        }
        let cost = data.len().clamp(1, OUTPUT_IN_FLIGHT) as u32;
        let permit = Arc::clone(&self.budget).acquire_many_owned(cost).await.ok();
        let _ = self.tx.send((Event::Output { stream, data }, permit));
    }
}

impl ObserverThread {
    /// Waits until every event sent before the last sink was dropped has
    /// been handled, for at most `deadline`.
    pub(crate) async fn join(self, deadline: Duration) -> bool {
        let done = self.done;
        tokio::task::spawn_blocking(move || done.recv_timeout(deadline).is_ok())
            .await
            .unwrap_or(false)
    }
}

/// Picks `::progress::<pct> [message]` lines out of a stdout byte stream that
/// arrives in arbitrary chunks.
#[derive(Debug, Default)]
pub(crate) struct ProgressParser {
    line: Vec<u8>,
    /// The current line is too long to be a progress line; skip to its end.
    skipping: bool,
}

const PROGRESS_PREFIX: &[u8] = b"::progress::";
const PROGRESS_LINE_MAX: usize = 4096;

impl ProgressParser {
    /// Feeds a chunk; returns the progress lines it completed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<(u8, String)> {
        let mut found = Vec::new();
        for part in chunk.split_inclusive(|&b| b == b'\n') {
            let complete = part.ends_with(b"\n");
            if !self.skipping {
                self.line.extend_from_slice(part);
                let prefix_len = self.line.len().min(PROGRESS_PREFIX.len());
                if self.line[..prefix_len] != PROGRESS_PREFIX[..prefix_len]
                    || self.line.len() > PROGRESS_LINE_MAX
                {
                    self.line.clear();
                    self.skipping = !complete;
                }
            }
            if complete {
                if let Some(progress) = parse_progress(&self.line) {
                    found.push(progress);
                }
                self.line.clear();
                self.skipping = false;
            }
        }
        found
    }
}

fn parse_progress(line: &[u8]) -> Option<(u8, String)> {
    let text = std::str::from_utf8(line.strip_prefix(PROGRESS_PREFIX)?).ok()?;
    let text = text.trim_end_matches(['\n', '\r']);
    let (pct, message) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let pct: u8 = pct.trim().parse().ok().filter(|p| *p <= 100)?;
    Some((pct, message.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_across_chunks() {
        let mut parser = ProgressParser::default();
        assert!(parser.feed(b"hello\n::prog").is_empty());
        assert_eq!(
            parser.feed(b"ress::42 half way\nx"),
            vec![(42, "half way".to_owned())]
        );
        assert_eq!(
            parser.feed(b"\n::progress::100\n"),
            vec![(100, String::new())]
        );
        assert!(parser.feed(b"::progress::101 too much\n").is_empty());
        assert!(parser.feed(b"::progress::abc\n").is_empty());
        assert!(
            parser.feed(b"say ::progress::5\n").is_empty(),
            "only at line start"
        );
        let long = vec![b'x'; 10_000];
        assert!(parser.feed(&long).is_empty());
        assert_eq!(
            parser.feed(b"\n::progress::7 ok\r\n"),
            vec![(7, "ok".to_owned())]
        );
        let mut huge = b"::progress::9 ".to_vec();
        huge.extend(vec![b'y'; 10_000]);
        assert!(parser.feed(&huge).is_empty());
        assert!(
            parser.feed(b"\n").is_empty(),
            "an overlong line is not progress"
        );
    }
}
