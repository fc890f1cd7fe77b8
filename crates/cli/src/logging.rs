//! Where tracing's lines go: stderr, through a thread of their own. A
//! terminal that stopped reading (scroll lock, a stopped pager, a hung-up
//! SSH session) or a full pipe blocks only that thread, never a task's run
//! or its cleanup: lines beyond a bounded backlog are dropped, and counted
//! in a note once stderr takes writes again.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// Lines waiting at most.
const BACKLOG: usize = 4096;

struct Shared {
    lines: SyncSender<Vec<u8>>,
    /// Lines sent and not yet written.
    pending: AtomicUsize,
    dropped: AtomicUsize,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let (lines, rx) = sync_channel(BACKLOG);
        let spawned = std::thread::Builder::new()
            .name("orch-log".into())
            .spawn(move || write_all(&rx));
        if let Err(e) = spawned {
            // Nothing to write with: lines are dropped, never blocking.
            let _ = writeln!(std::io::stderr(), "orch: no log thread: {e}");
        }
        Shared {
            lines,
            pending: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
        }
    })
}

fn write_all(rx: &Receiver<Vec<u8>>) {
    let mut stderr = std::io::stderr();
    for line in rx {
        let dropped = shared().dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                stderr,
                "orch: {dropped} log line(s) dropped: stderr was not taking them"
            );
        }
        // A closed or broken stderr is ignored: the log is advice.
        let _ = stderr.write_all(&line);
        shared().pending.fetch_sub(1, Ordering::Release);
    }
}

/// A tracing writer: each event's bytes go to the log thread as one line.
#[derive(Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let shared = shared();
        shared.pending.fetch_add(1, Ordering::Acquire);
        match shared.lines.try_send(std::mem::take(&mut self.buf)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                shared.pending.fetch_sub(1, Ordering::Release);
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits (at most `limit`) for the lines already logged to be written: at
/// exit, so that the last warnings are not lost to a working stderr.
pub(crate) fn flush(limit: Duration) {
    let Some(shared) = SHARED.get() else { return };
    let deadline = Instant::now() + limit;
    while shared.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_never_blocks_and_flush_waits_for_the_backlog() {
        for i in 0..(BACKLOG * 2) {
            let mut w = Writer::default();
            let _ = writeln!(w, "line {i}");
        }
        flush(Duration::from_secs(10));
        assert_eq!(shared().pending.load(Ordering::Acquire), 0);
    }
}
