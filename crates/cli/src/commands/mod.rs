//! One module per subcommand; this one only dispatches and maps errors to
//! exit codes.

mod cancel;
mod cleanup;
mod du;
mod logs;
mod ps;
mod remote;
mod review;
mod serve;
mod submit;
mod task;

use std::process::ExitCode;

use crate::args::Command;
use crate::exit;

/// Runs a command and turns its error, if any, into one line and an exit
/// code.
pub(crate) async fn run(
    command: Command,
    verbose: bool,
    watchdog: Option<orch_orchestrator::WatchdogLink>,
    host: Option<String>,
) -> ExitCode {
    let (result, failure_code) = match (command, host) {
        (command, Some(host)) => remote::run(command, &host).await,
        (command, None) => local(command, verbose, watchdog).await,
    };
    result.unwrap_or_else(|error| {
        // A reader that went away (`orch ps | head`) is not an error.
        let broken_pipe = error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            return ExitCode::SUCCESS;
        }
        crate::output::say(&format!(
            "orch: error: {}",
            crate::output::safe(&format!("{error:#}"))
        ));
        // A registry that cannot be used is orch failing, whatever the
        // command.
        let registry = registry_unusable(&error);
        ExitCode::from(if registry {
            exit::ORCH_FAILED
        } else {
            failure_code
        })
    })
}

/// Whether `error` says the registry cannot be used: a cluster's database
/// out of reach, refusing, newer than this orch, or `ORCH_REGISTRY` set
/// wrong.
fn registry_unusable(error: &anyhow::Error) -> bool {
    use orch_orchestrator::ConfigError;
    use orch_registry::Error as Registry;
    let registry = |e: &Registry| {
        matches!(
            e,
            Registry::Postgres { .. } | Registry::Setting(_) | Registry::TooNew { .. }
        )
    };
    let setting =
        |e: &ConfigError| matches!(e, ConfigError::Flag { flag, .. } if flag == "ORCH_REGISTRY");
    error.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<orch_orchestrator::Error>() {
            return match e {
                orch_orchestrator::Error::Registry(e) => registry(e),
                orch_orchestrator::Error::Config(e) => setting(e),
                _ => false,
            };
        }
        cause.downcast_ref::<Registry>().is_some_and(registry)
            || cause.downcast_ref::<ConfigError>().is_some_and(setting)
    })
}

/// The orch home to use, or an error saying how to name one.
fn home_path() -> anyhow::Result<std::path::PathBuf> {
    orch_orchestrator::Home::default_path()
        .ok_or_else(|| anyhow::anyhow!("no orch home: set ORCH_HOME (or HOME)"))
}

/// Opens the orch home; a failure names the home and how to choose another.
fn open_home() -> anyhow::Result<orch_orchestrator::Home> {
    let path = home_path()?;
    orch_orchestrator::Home::open(&path).map_err(|e| unusable_home(&path, e.into()))
}

/// An error about the orch home at `path`, saying where it came from.
fn unusable_home(path: &std::path::Path, error: anyhow::Error) -> anyhow::Error {
    let from = if std::env::var_os("ORCH_HOME").is_some_and(|v| !v.is_empty()) {
        "ORCH_HOME"
    } else {
        "the default; set ORCH_HOME to choose another"
    };
    error.context(format!(
        "cannot use the orch home {} ({from})",
        path.display()
    ))
}

/// `path` under the orch home exists: `false` only if it surely does not,
/// an error if the home cannot be read.
fn exists_in_home(home: &std::path::Path, path: &std::path::Path) -> anyhow::Result<bool> {
    path.try_exists()
        .map_err(|e| unusable_home(home, anyhow::Error::new(e)))
}

/// Shows, once, that a home readable by others was made private.
fn note_tightened(home: &orch_orchestrator::Home) {
    if let Some(note) = home.tightened() {
        crate::output::say(&format!("orch: note: {note}"));
    }
}

/// Runs `work`, which blocks (a registry's calls do: a cluster's client
/// runs a small runtime of its own), off the async runtime's workers.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// A command on this host's own home.
async fn local(
    command: Command,
    verbose: bool,
    watchdog: Option<orch_orchestrator::WatchdogLink>,
) -> (anyhow::Result<ExitCode>, u8) {
    match command {
        Command::Task(args) => (task::run(args, verbose, watchdog).await, exit::ORCH_FAILED),
        Command::Supervise(args) => (
            task::run_supervisor(args, watchdog).await,
            exit::ORCH_FAILED,
        ),
        // Run before the runtime starts (`main`).
        Command::Watchdog | Command::Completions { .. } | Command::Man => {
            (Ok(ExitCode::SUCCESS), exit::FAILED)
        }
        Command::Egress { entries } => (
            orch_orchestrator::egress::forward(entries)
                .await
                .map(|()| ExitCode::SUCCESS)
                .map_err(Into::into),
            exit::FAILED,
        ),
        Command::Ps(args) => (blocking(|| ps::ps(&args)), exit::FAILED),
        Command::Show(args) => (blocking(|| ps::show(&args)), exit::FAILED),
        Command::Logs(args) => (logs::run(&args).await, exit::FAILED),
        Command::Wait(args) => (logs::wait(&args).await, exit::FAILED),
        Command::Cancel(args) => (cancel::run(&args).await, exit::FAILED),
        Command::Push(args) => (cancel::push(&args).await, exit::ORCH_FAILED),
        Command::Diff(args) => (blocking(|| review::diff(&args)), exit::FAILED),
        Command::Merge(args) => (blocking(|| review::merge(&args)), exit::FAILED),
        Command::Cleanup(args) => (cleanup::run(args).await, exit::FAILED),
        Command::Rm(args) => (cleanup::rm(&args).await, exit::FAILED),
        Command::Du(args) => (blocking(|| du::run(&args)), exit::FAILED),
        Command::Serve(args) => (serve::run(args, watchdog).await, exit::ORCH_FAILED),
        Command::Submit(args) => (submit::run(args, None).await, exit::ORCH_FAILED),
    }
}
