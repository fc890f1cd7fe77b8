//! How a foreground task looks in the terminal: its output on our stdout and
//! stderr as it comes, orch's own lines on stderr, and progress as a bar when
//! stderr is a terminal or as plain lines when it is not.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orch_orchestrator::{Event, Observer, StopReason, Stream, WorkspaceFate, human_bytes};

/// Shows a task's events in the terminal.
pub(crate) struct Terminal {
    bar: Option<ProgressBar>,
    fancy: bool,
    /// The run did not end by itself, so its cleanup is worth reporting.
    interrupted: bool,
    verbose: bool,
    /// The terminal is the task's while it runs (`-it`).
    lend: bool,
    /// The terminal's settings while it is lent, given back when dropped.
    lent: Option<Lent>,
}

impl Terminal {
    pub(crate) fn new(verbose: bool) -> Terminal {
        Terminal {
            bar: None,
            fancy: can_draw_bar(),
            interrupted: false,
            verbose,
            lend: false,
            lent: None,
        }
    }

    /// From the task's start to its end, keys typed go to it as they are
    /// (the terminal in raw mode, as `docker run -it` puts it).
    pub(crate) fn lending_the_terminal(mut self, lend: bool) -> Terminal {
        self.lend = lend;
        self
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
            self.note(format!("orch: progress {percent}% {}", safe(&message)).trim_end());
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            // The message takes what is left of the line, cut to fit.
            if let Ok(style) =
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos:>3}% {wide_msg}")
            {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(u64::from(percent));
        bar.set_message(safe(&message).into_owned());
    }
}

/// The terminal (orch's input) lent to a task: in raw mode, so that keys
/// reach the task as typed (Ctrl+C included: it is the task's terminal's
/// now), with output still turning `\n` into `\r\n` so that orch's own
/// lines stay lines. Ctrl+Z stays orch's: it freezes the task as without
/// `-t`, and the terminal is given back while orch is stopped. Its settings
/// come back when this is dropped: at the task's end, on an error, and on a
/// panic's unwinding.
struct Lent;

/// The terminal's settings before it was lent, and while lent.
static LENT: std::sync::Mutex<Option<(Termios, Termios)>> = std::sync::Mutex::new(None);

use rustix::termios::Termios;

fn set_terminal(modes: &Termios) {
    let _ = rustix::termios::tcsetattr(
        std::io::stdin(),
        rustix::termios::OptionalActions::Now,
        modes,
    );
}

fn lent() -> std::sync::MutexGuard<'static, Option<(Termios, Termios)>> {
    LENT.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lent {
    fn lend() -> std::io::Result<Lent> {
        use rustix::termios::{LocalModes, OutputModes, SpecialCodeIndex, tcgetattr};
        let before = tcgetattr(std::io::stdin())?;
        let mut raw = before.clone();
        raw.make_raw();
        raw.output_modes |= OutputModes::OPOST | OutputModes::ONLCR;
        // Of the keys that signal, only Ctrl+Z (orch's freeze) is left.
        raw.local_modes |= LocalModes::ISIG;
        raw.special_codes[SpecialCodeIndex::VINTR] = 0;
        raw.special_codes[SpecialCodeIndex::VQUIT] = 0;
        rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &raw,
        )?;
        *lent() = Some((before, raw));
        Ok(Lent)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some((before, _)) = lent().take() {
            set_terminal(&before);
        }
    }
}

/// Gives a lent terminal back while orch is stopped (Ctrl+Z).
pub(crate) fn give_back_while_stopped() {
    if let Some((before, _)) = &*lent() {
        set_terminal(before);
    }
}

/// Lends it again when orch continues.
pub(crate) fn lend_again() {
    if let Some((_, raw)) = &*lent() {
        set_terminal(raw);
    }
}

/// The narrowest terminal a progress bar is drawn on.
const MIN_BAR_COLUMNS: u16 = 40;

/// Whether progress can be a bar redrawn in place on stderr: a terminal,
/// not `TERM=dumb`, at least [`MIN_BAR_COLUMNS`] wide. Otherwise plain
/// lines, which any terminal or log shows as they are.
fn can_draw_bar() -> bool {
    let stderr = std::io::stderr();
    if !stderr.is_terminal() || std::env::var("TERM").is_ok_and(|t| t == "dumb" || t.is_empty()) {
        return false;
    }
    rustix::termios::tcgetwinsize(&stderr).is_ok_and(|size| size.ws_col >= MIN_BAR_COLUMNS)
}

impl Observer for Terminal {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Planned { task_id, .. } => self.note(&format!("task {task_id}")),
            Event::Started if self.lend => match Lent::lend() {
                Ok(lent) => self.lent = Some(lent),
                Err(e) => self.note(&format!("orch: cannot give the terminal to the task: {e}")),
            },
            Event::Ended => self.lent = None,
            Event::Pulling { image } => self.note(&format!("orch: pulling image {image}")),
            Event::Output { stream, data } => self.write(stream, &data),
            Event::Progress { percent, message } => self.progress(percent, message),
            Event::Stopping { reason, grace } => {
                self.interrupted = true;
                let grace = humantime::format_duration(grace);
                let line = match reason {
                    StopReason::Timeout => {
                        format!("orch: timed out: SIGTERM to the task, SIGKILL after {grace}")
                    }
                    StopReason::Requested(by) => format!(
                        "orch: {} received: stopping gracefully (SIGTERM to the task, SIGKILL after {grace}); press Ctrl+C again to force",
                        safe(&by)
                    ),
                };
                self.note(&line);
            }
            Event::Forcing => {
                self.interrupted = true;
                self.note("orch: forcing: killing and removing the container now");
            }
            Event::Notice(message) => self.note(&format!("orch: {}", safe(&message))),
            Event::Workspace(WorkspaceFate::Kept {
                path,
                branch,
                saved_commit,
                warning,
            }) => {
                if let Some(warning) = warning {
                    self.note(&format!("orch: warning: {}", safe(&warning)));
                }
                if let (Some(commit), Some(branch)) = (saved_commit, &branch) {
                    let short = commit.get(..12).unwrap_or(&commit);
                    self.note(&format!(
                        "orch: uncommitted work saved to {branch} ({short})"
                    ));
                }
                let branch = branch.map(|b| format!(" (branch {b})")).unwrap_or_default();
                self.note(&format!(
                    "orch: workspace kept at {}{branch}",
                    path.display()
                ));
            }
            Event::Workspace(WorkspaceFate::Unwound { path }) if self.verbose => {
                self.note(&format!(
                    "orch: workspace {} removed: the task never ran",
                    path.display()
                ));
            }
            Event::Workspace(WorkspaceFate::Removed {
                branch,
                saved_commit,
                warning,
                size,
                took,
                ..
            }) => {
                if let Some(warning) = warning {
                    self.note(&format!("orch: warning: {}", safe(&warning)));
                }
                if let (Some(commit), Some(branch)) = (saved_commit, branch) {
                    let short = commit.get(..12).unwrap_or(&commit);
                    self.note(&format!(
                        "orch: uncommitted work saved to {branch} ({short})"
                    ));
                }
                if self.verbose {
                    self.note(&format!(
                        "orch: workspace removed ({} files, {}, {:.1}s)",
                        size.files,
                        human_bytes(size.bytes),
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

/// Writes one line of orch's own to stderr. Never panics and never fails:
/// a closed pipe or a hung-up terminal must not stop a run or its cleanup.
pub(crate) fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.write_all(b"\n");
}

/// Text that came from a task (or anyone else) made safe for a terminal
/// line: control characters, and the Unicode ones that reorder text, are
/// shown escaped instead of acting.
pub(crate) fn safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
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

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(safe("plain text, ümlauts"), "plain text, ümlauts");
        assert_eq!(
            safe("\u{1b}[2J\u{1b}]0;pwned\u{7}red\r\nx\u{9b}31m\u{202e}y"),
            "\\x1b[2J\\x1b]0;pwned\\x07red\\r\\nx\\x9b31m\\u{202e}y"
        );
    }
}
