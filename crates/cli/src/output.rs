//! How a foreground task looks in the terminal: its output on our stdout and
//! stderr as it comes, orch's own lines on stderr, and progress as a bar when
//! stderr is a terminal or as plain lines when it is not.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orch_orchestrator::{Event, Observer, StopReason, Stream};

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
