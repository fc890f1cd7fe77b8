//! The output pump: copies a container's output to its log file and to the
//! observer, and picks out progress lines, until the container's streams
//! close. The log is complete before the container is removed, because the
//! run waits for the pump first.
//!
//! A full disk is ordinary: before the disk holding the log fills up, the
//! pump stops writing it (leaving room for the registry to record the
//! task's end, which matters more than the log's tail), notes that in the
//! log and tells the observer; the output still reaches the terminal.
//!
//! So is a dropped engine connection: if the stream breaks before the
//! container's output ends, the pump reads it again from the engine's log of
//! the container, skipping what it already has, so the log stays whole.
//! If that cannot be done, the log says where its output stops.
//!
//! Beside the log, `<id>.times` says when its output came: a line
//! `<offset> <unix ms>` at most once a second, for `orch logs --since`.

use std::os::fd::AsFd;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::events::{Event, EventSink, ProgressParser, Stream as OutStream};
use crate::leases::Progress;
use crate::runtime::{OutputStream, Runtime};

/// Free space the log never eats into: the registry needs it to record the
/// task's end.
const RESERVE: u64 = 512 * 1024;
/// Free space is looked at again after this many bytes are written.
const CHECK_EVERY: u64 = 64 * 1024;

/// How often the time index gets a line, at most.
const MARK_EVERY_MS: i64 = 1_000;

/// How many times a broken output stream is read again.
const REOPEN_ATTEMPTS: u32 = 20;

/// How long after its stream ends the run is expected to be over, if the
/// end was the container's.
const END_AGREES: Duration = Duration::from_millis(500);

/// Where the output comes from again if its stream breaks: the container's
/// log in the engine.
pub(crate) struct Source {
    pub(crate) runtime: std::sync::Arc<dyn Runtime>,
    pub(crate) container: String,
    /// True once the run is over.
    pub(crate) over: watch::Receiver<bool>,
    /// True once the container was started.
    pub(crate) started: watch::Receiver<bool>,
}

impl Source {
    /// Whether a stream that ended was cut short: the run did not end
    /// with it (an engine connection that drops may end the stream as
    /// cleanly as the container's exit does).
    async fn cut_short(&mut self) -> bool {
        // A container that never started has no more to say: its stream
        // ends when its start fails, and so does the run.
        let mut started = self.started.clone();
        let mut over = self.over.clone();
        tokio::select! {
            _ = started.wait_for(|s| *s) => {}
            _ = over.wait_for(|o| *o) => {
                if !*self.started.borrow() {
                    return false;
                }
            }
        }
        let over = tokio::time::timeout(END_AGREES, self.over.wait_for(|over| *over)).await;
        !matches!(over, Ok(Ok(_)))
    }
}

/// Starts copying `output` until it ends.
pub(crate) fn spawn_pump(
    tracker: &TaskTracker,
    output: OutputStream,
    source: Source,
    sink: EventSink,
    log: Option<(tokio::fs::File, Option<tokio::fs::File>)>,
    progress: watch::Sender<Progress>,
) -> JoinHandle<()> {
    tracker.spawn(pump(output, source, sink, log, progress))
}

/// The task's log, as the pump writes it, and its time index.
struct Log {
    file: Option<tokio::fs::File>,
    times: Option<tokio::fs::File>,
    /// Bytes in the log so far (where the next chunk starts).
    written: u64,
    last_mark: i64,
    since_check: u64,
    dropped: u64,
}

/// The time index beside a log: `<id>.times` for `<id>.log`.
pub fn times_path(log: &std::path::Path) -> std::path::PathBuf {
    log.with_extension("times")
}

/// Where the output written at or after `since` (Unix ms) starts in the
/// log at `log`, by its time index: 0 if it has none (all of it), the
/// log's length if nothing came since.
pub fn since_offset(log: &std::path::Path, since: i64) -> std::io::Result<u64> {
    let text = match std::fs::read_to_string(times_path(log)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let marks = text.lines().filter_map(|line| {
        let (offset, at) = line.split_once(' ')?;
        Some((offset.parse::<u64>().ok()?, at.parse::<i64>().ok()?))
    });
    // A mark says where output written at its time starts; output up to
    // the next mark came within a second of it (a quiet second gets a
    // mark of its own). So start at the last mark less than a second
    // before `since` (a second early at most), or at the first one after.
    let mut before: Option<(u64, i64)> = None;
    for (offset, at) in marks {
        if at >= since {
            return Ok(match before {
                Some((start, at)) if since - at < MARK_EVERY_MS => start,
                Some(_) => offset,
                None => 0,
            });
        }
        before = Some((offset, at));
    }
    Ok(match before {
        Some((start, at)) if since - at < MARK_EVERY_MS => start,
        Some(_) => std::fs::metadata(log).map_or(0, |m| m.len()),
        None => 0,
    })
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
                    self.mark().await;
                    self.written += data.len() as u64;
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

impl Log {
    /// A line in the time index for the chunk starting at `written`, if
    /// the last one is a second old.
    async fn mark(&mut self) {
        let now = orch_registry::now_ms();
        if now.saturating_sub(self.last_mark) < MARK_EVERY_MS {
            return;
        }
        self.last_mark = now;
        if let Some(times) = &mut self.times {
            let line = format!("{} {now}\n", self.written);
            if times.write_all(line.as_bytes()).await.is_err() {
                self.times = None;
            }
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
    mut source: Source,
    sink: EventSink,
    log: Option<(tokio::fs::File, Option<tokio::fs::File>)>,
    progress: watch::Sender<Progress>,
) {
    let mut parser = ProgressParser::default();
    let (file, times) = log.map_or((None, None), |(file, times)| (Some(file), times));
    let written = match &file {
        Some(file) => file.metadata().await.map_or(0, |m| m.len()),
        None => 0,
    };
    let mut log = Log {
        file,
        times,
        written,
        last_mark: i64::MIN,
        since_check: CHECK_EVERY,
        dropped: 0,
    };
    // Bytes had of stdout and stderr, and bytes of each to pass over (what
    // a reopened stream delivers again).
    let mut had = [0u64; 2];
    let mut skip = [0u64; 2];
    let mut reopened = 0;
    loop {
        let broken = loop {
            let Some(item) = output.next().await else {
                break None;
            };
            let (stream, mut data) = match item {
                Ok(chunk) => chunk,
                Err(e) => break Some(e),
            };
            let which = usize::from(stream == OutStream::Stderr);
            if skip[which] > 0 {
                let over = usize::try_from(skip[which])
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                skip[which] -= over as u64;
                data = data.slice(over..);
                if data.is_empty() {
                    continue;
                }
            }
            had[which] += data.len() as u64;
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
        };
        let error = match broken {
            Some(error) => crate::runtime::display_chain(&error),
            None if source.cut_short().await => "it ended while the task ran".to_owned(),
            None => break,
        };
        tracing::warn!(container = %source.container, error = %error, "the task's output stream broke; reading it again from the engine");
        let mut again = None;
        while again.is_none() && reopened < REOPEN_ATTEMPTS {
            reopened += 1;
            match source.runtime.logs(&source.container).await {
                Ok(stream) => again = Some(stream),
                // The engine answered: it has no log of it (gone, or a
                // log driver it cannot read back). Asking again won't help.
                Err(e @ crate::runtime::RuntimeError::Refused { .. }) => {
                    tracing::debug!(error = %crate::runtime::display_chain(&e), "the engine has no log of the task");
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %crate::runtime::display_chain(&e), "reading the output again failed");
                    tokio::time::sleep(Duration::from_millis(250) * reopened.min(4)).await;
                }
            }
        }
        match again {
            Some(stream) => {
                output = stream;
                skip = had;
            }
            None => {
                if let Some(file) = &mut log.file {
                    let _ = file
                        .write_all(b"\n[orch: the log stops here: the engine's connection broke and its log of the task could not be read]\n")
                        .await;
                }
                sink.send(Event::Notice(format!(
                    "the task's output stream broke ({error}) and could not be read again: the rest of its output is not in its log"
                )));
                break;
            }
        }
    }
    if let Some(mut file) = log.file {
        let _ = file.flush().await;
    }
    if let Some(mut times) = log.times {
        let _ = times.flush().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_finds_the_output_of_a_moment_by_the_time_index() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();
        // No index: all of it.
        assert_eq!(since_offset(&log, 5_000).unwrap(), 0);
        std::fs::write(times_path(&log), "0 1000\n2 5000\n6 9000\n").unwrap();
        assert_eq!(since_offset(&log, 0).unwrap(), 0, "before all");
        assert_eq!(since_offset(&log, 5_000).unwrap(), 2, "at a mark");
        assert_eq!(since_offset(&log, 5_500).unwrap(), 2, "within its second");
        assert_eq!(since_offset(&log, 7_000).unwrap(), 6, "between marks");
        assert_eq!(
            since_offset(&log, 9_500).unwrap(),
            6,
            "within the last second"
        );
        assert_eq!(since_offset(&log, 20_000).unwrap(), 8, "nothing since");
    }
}
