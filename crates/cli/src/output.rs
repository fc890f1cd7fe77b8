//! How a foreground task looks in the terminal: its output on our stdout and
//! stderr as it comes, orch's own lines on stderr, and progress as a bar when
//! stderr is a terminal or as plain lines when it is not.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orch_orchestrator::{Event, Observer, StopReason, Stream, WorkspaceFate};

/// Shows a task's events in the terminal.
pub(crate) struct Terminal {
    bar: Option<ProgressBar>,
    fancy: bool,
    /// The run did not end by itself, so its cleanup is worth reporting.
    interrupted: bool,
    verbose: bool,
}

impl Terminal {
    pub(crate) fn new(verbose: bool) -> Terminal {
        Terminal {
            bar: None,
            fancy: std::io::stderr().is_terminal(),
            interrupted: false,
            verbose,
        }
    }

    /// Writes without ever failing: a closed pipe or terminal must not stop
    /// the run (or its cleanup).
    fn write(&self, stream: Stream, data: &[u8]) {
        let write = || match stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(data).and_then(|()| out.flush());
            }
            Stream::Stderr => {
                let _ = std::io::stderr().lock().write_all(data);
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    fn note(&self, line: &str) {
        let mut text = line.to_owned();
        text.push('\n');
        self.write(Stream::Stderr, text.as_bytes());
    }

    fn progress(&mut self, percent: u8, message: String) {
        if !self.fancy {
            self.note(format!("orch: progress {percent}% {message}").trim_end());
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{bar:30.cyan/blue} {pos:>3}% {msg}") {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(u64::from(percent));
        bar.set_message(message);
    }
}

impl Observer for Terminal {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Planned { task_id, .. } => self.note(&format!("task {task_id}")),
            Event::Pulling { image } => self.note(&format!("orch: pulling image {image}")),
            Event::Output { stream, data } => self.write(stream, &data),
            Event::Progress { percent, message } => self.progress(percent, message),
            Event::Stopping { reason, grace } => {
                self.interrupted = true;
                let why = match reason {
                    StopReason::Timeout => "timed out",
                    StopReason::Shutdown => "stopping",
                };
                self.note(&format!(
                    "orch: {why}: SIGTERM to the task, SIGKILL after {}",
                    humantime::format_duration(grace)
                ));
            }
            Event::Forcing => {
                self.interrupted = true;
                self.note("orch: forcing: killing and removing the container now");
            }
            Event::Notice(message) => self.note(&format!("orch: {message}")),
            Event::Workspace(WorkspaceFate::Kept { path, branch }) => {
                self.note(&format!(
                    "orch: workspace kept at {} (branch {branch})",
                    path.display()
                ));
            }
            Event::Workspace(WorkspaceFate::Removed {
                branch,
                saved_commit,
                size,
                took,
                ..
            }) => {
                if let Some(commit) = saved_commit {
                    let short = commit.get(..12).unwrap_or(&commit);
                    self.note(&format!(
                        "orch: uncommitted work saved to {branch} ({short})"
                    ));
                }
                if self.verbose {
                    self.note(&format!(
                        "orch: workspace removed ({} files, {}, {:.1}s)",
                        size.files,
                        crate::output::human_bytes(size.bytes),
                        took.as_secs_f64()
                    ));
                }
            }
            Event::Cleaned { container, elapsed } => {
                if let Some(bar) = self.bar.take() {
                    bar.abandon();
                }
                if let Some(container) = container.filter(|_| self.interrupted || self.verbose) {
                    self.note(&format!(
                        "orch: removed container {container} ({:.1}s after the task ended)",
                        elapsed.as_secs_f64()
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Bytes in binary units, one decimal: `1.2 GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_du_h() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1288490189), "1.2 GiB");
    }
}
