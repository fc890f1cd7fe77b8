//! The output pump: copies a container's output to its log file and to the
//! observer, and picks out progress lines, until the container's streams
//! close. The log is complete before the container is removed, because the
//! run waits for the pump first.
//!
//! A full disk is ordinary: before the disk holding the log fills up, the
//! pump stops writing it (leaving room for the registry to record the
//! task's end, which matters more than the log's tail), notes that in the
//! log and tells the observer; the output still reaches the terminal.

use std::os::fd::AsFd;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::events::{Event, EventSink, ProgressParser, Stream as OutStream};
use crate::leases::Progress;
use crate::runtime::OutputStream;

/// Free space the log never eats into: the registry needs it to record the
/// task's end.
const RESERVE: u64 = 512 * 1024;
/// Free space is looked at again after this many bytes are written.
const CHECK_EVERY: u64 = 64 * 1024;

/// Starts copying `output` until it ends.
pub(crate) fn spawn_pump(
    tracker: &TaskTracker,
    output: OutputStream,
    sink: EventSink,
    log: Option<tokio::fs::File>,
    progress: watch::Sender<Progress>,
) -> JoinHandle<()> {
    tracker.spawn(pump(output, sink, log, progress))
}

/// The task's log, as the pump writes it.
struct Log {
    file: Option<tokio::fs::File>,
    since_check: u64,
    dropped: u64,
}

impl Log {
    /// Appends `data`, unless the disk is (nearly) full; then stops for
    /// good, noting why in the log if there is room for a line.
    async fn write(&mut self, data: &[u8], sink: &EventSink) {
        let Some(file) = &mut self.file else {
            self.dropped += data.len() as u64;
            return;
        };
        let mut full = false;
        if self.since_check >= CHECK_EVERY {
            self.since_check = 0;
            full = free_space(file).is_some_and(|free| free < RESERVE + data.len() as u64);
        }
        if !full {
            match file.write_all(data).await {
                Ok(()) => {
                    self.since_check += data.len() as u64;
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc_enospc()) => full = true,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to write the task's log; output goes to the terminal only");
                    sink.send(Event::Notice(format!(
                        "failed to write the task's log ({e}); its output from here on is not kept"
                    )));
                    self.file = None;
                    self.dropped += data.len() as u64;
                    return;
                }
            }
        }
        if full {
            let _ = file
                .write_all(b"\n[orch: the log stops here: the disk is full]\n")
                .await;
            let _ = file.flush().await;
            sink.send(Event::Notice(
                "the disk holding the task's log is full: the rest of its output is not kept in the log".into(),
            ));
            self.file = None;
            self.dropped += data.len() as u64;
        }
    }
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

/// Bytes free to this user on the file's filesystem.
fn free_space(file: &tokio::fs::File) -> Option<u64> {
    let stat = rustix::fs::fstatvfs(file.as_fd()).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

async fn pump(
    mut output: OutputStream,
    sink: EventSink,
    log: Option<tokio::fs::File>,
    progress: watch::Sender<Progress>,
) {
    let mut parser = ProgressParser::default();
    let mut log = Log {
        file: log,
        since_check: CHECK_EVERY,
        dropped: 0,
    };
    while let Some(item) = output.next().await {
        let (stream, data) = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::debug!(error = %e, "output stream ended with an error");
                break;
            }
        };
        log.write(&data, &sink).await;
        let found = if stream == OutStream::Stdout {
            parser.feed(&data)
        } else {
            Vec::new()
        };
        sink.output(stream, data).await;
        for (percent, message) in found {
            progress.send_replace(Some((percent, message.clone())));
            sink.send(Event::Progress { percent, message });
        }
    }
    if let Some(mut file) = log.file {
        let _ = file.flush().await;
    }
    if log.dropped > 0 {
        tracing::warn!(bytes = log.dropped, "output left out of the task's log");
    }
}

/// Lets the pump finish what the removed container's stream still holds,
/// then stops it.
pub(crate) async fn finish_pump(mut pump: JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(2), &mut pump)
        .await
        .is_err()
    {
        pump.abort();
    }
}
