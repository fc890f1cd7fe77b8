//! The output pump: copies a container's output to its log file and to the
//! observer, and picks out progress lines, until the container's streams
//! close. The log is complete before the container is removed, because the
//! run waits for the pump first.

use std::pin::Pin;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::{Event, EventSink, ProgressParser, Stream as OutStream};

/// The latest progress report of a task.
pub(crate) type Progress = Option<(u8, String)>;

/// Starts copying `output` until it ends.
pub(crate) fn spawn_pump(
    output: Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>,
    sink: EventSink,
    log: Option<tokio::fs::File>,
    progress: watch::Sender<Progress>,
) -> JoinHandle<()> {
    tokio::spawn(pump(output, sink, log, progress))
}

async fn pump(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>,
    sink: EventSink,
    mut log: Option<tokio::fs::File>,
    progress: watch::Sender<Progress>,
) {
    let mut parser = ProgressParser::default();
    while let Some(item) = output.next().await {
        let (stream, data) = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                (OutStream::Stdout, message)
            }
            Ok(LogOutput::StdErr { message }) => (OutStream::Stderr, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "output stream ended with an error");
                break;
            }
        };
        if let Some(file) = &mut log {
            if let Err(e) = file.write_all(&data).await {
                tracing::warn!(error = %e, "failed to write the task's log; output goes to the terminal only");
                log = None;
            }
        }
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
    if let Some(mut file) = log {
        let _ = file.flush().await;
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
