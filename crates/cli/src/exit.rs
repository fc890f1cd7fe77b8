//! Exit codes, in one place (SPEC 5).
//!
//! `orch task` exits with the task's own code, 124 when it timed out, 128+N
//! when signal N stopped it (130 SIGINT, 143 SIGTERM, 129 SIGHUP), 125 when
//! orch itself failed before or around the task, and 126/127 when the command
//! could not be invoked, as `docker run` does. Other commands exit 1 on
//! failure and 2 on bad usage.

use std::process::ExitCode;

use orch_orchestrator::{Outcome, Status};

/// orch itself failed before or around the task.
pub(crate) const ORCH_FAILED: u8 = 125;
/// The task's deadline passed.
pub(crate) const TIMED_OUT: u8 = 124;
/// Cancelled without a signal of ours (e.g. `orch cancel` from elsewhere):
/// reported like an interrupt.
pub(crate) const CANCELLED: u8 = 130;
/// A command other than `task` failed.
pub(crate) const FAILED: u8 = 1;
/// Bad usage of a command other than `task`.
pub(crate) const USAGE: u8 = 2;

/// The exit code of `orch task` for a finished run.
pub(crate) fn for_outcome(outcome: &Outcome, signal: Option<i32>) -> ExitCode {
    let code = match outcome.status {
        Status::Succeeded => 0,
        Status::Failed => outcome
            .exit_code
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(ORCH_FAILED),
        Status::TimedOut => TIMED_OUT,
        Status::Cancelled => return for_signal(signal),
    };
    ExitCode::from(code)
}

/// The exit code `orch task` gave, or would have given, for a task that
/// ended as `record` says: what `orch logs -f` exits with.
pub(crate) fn for_record(record: &orch_registry::TaskRecord) -> ExitCode {
    ExitCode::from(code_of(record))
}

/// The same, as a number (what `orch wait` prints).
pub(crate) fn code_of(record: &orch_registry::TaskRecord) -> u8 {
    use orch_registry::State;
    match record.state {
        State::Succeeded => 0,
        State::Failed => record
            .outcome
            .exit_code
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(ORCH_FAILED),
        State::TimedOut => TIMED_OUT,
        State::Cancelled => {
            let reason = record.outcome.reason.as_deref().unwrap_or_default();
            // "cancelled (SIGTERM)": 128 + its number, as orch task exited.
            [
                ("SIGHUP", 129),
                ("SIGINT", 130),
                ("SIGQUIT", 131),
                ("SIGTERM", 143),
            ]
            .iter()
            .find(|(name, _)| reason.starts_with(&format!("cancelled ({name}")))
            .map_or(CANCELLED, |(_, code)| *code)
        }
        State::Lost => ORCH_FAILED,
        State::Queued | State::Creating | State::Running => 0,
    }
}

/// 128 + the signal that stopped orch; 130 if none did (a cancel request).
pub(crate) fn for_signal(signal: Option<i32>) -> ExitCode {
    ExitCode::from(
        signal
            .and_then(|s| u8::try_from(128 + s).ok())
            .unwrap_or(CANCELLED),
    )
}

/// Prints a command-line error on one line and exits: 125 for `orch task`
/// (as `docker run`), 2 otherwise; help and version exit 0.
pub(crate) fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            return ExitCode::from(USAGE);
        }
        _ => {}
    }
    let rendered = error.render().to_string();
    // clap's first paragraph is the error; the rest is usage and hints.
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = first.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    // clap's own hint ("a similar subcommand exists: 'ps'"), kept.
    let tips: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("tip: "))
        .collect();
    let tip = if tips.is_empty() {
        String::new()
    } else {
        format!("; {}", tips.join("; "))
    };
    // The command's own help, where the command is known.
    let command = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let known = command.as_deref().filter(|c| {
        <crate::args::Cli as clap::CommandFactory>::command()
            .find_subcommand(c)
            .is_some_and(|s| !s.is_hide_set())
    });
    let help = known.map_or_else(|| "orch --help".to_owned(), |c| format!("orch {c} --help"));
    crate::output::say(&format!("orch: error: {message}{tip} (see {help})"));
    let is_task = command.as_deref() == Some("task");
    ExitCode::from(if is_task { ORCH_FAILED } else { USAGE })
}
