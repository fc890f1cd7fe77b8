//! `orch`: run a task in a throwaway Docker container and clean up on every
//! exit path.
//!
//! This binary is the only place that owns the process: it installs the
//! signal handlers and the panic hook, sets up tracing, and maps every error
//! to an exit code. The work itself is in the `orch-orchestrator` library.

/// `println!` that returns the write's error instead of panicking: a closed
/// pipe is ordinary (`main` treats it as success).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod args;
mod commands;
mod docs;
mod exit;
mod logging;
mod output;
mod signals;
mod watchdog;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return exit::usage_error(&error),
    };
    // `ORCH_HOST=` (empty) means no remote daemon, as an unset one does.
    if cli.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
        cli.host = None;
    }
    match cli.command {
        Command::Watchdog => return watchdog::run(),
        Command::Completions { shell } => return docs::completions(shell),
        Command::Man => return docs::man(),
        _ => {}
    }
    init_tracing(cli.verbose);
    signals::install_panic_hook();
    raise_descriptor_limit();
    // Before the runtime and before any container: the watchdog of the
    // commands that create containers.
    let creates_containers = match &cli.command {
        // Against a remote daemon, the daemon's own watchdog guards it.
        _ if cli.host.is_some() => false,
        Command::Task(args) => !args.detach,
        Command::Supervise(_) | Command::Serve(_) => true,
        _ => false,
    };
    let watchdog = if creates_containers {
        watchdog::start().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "failed to start the watchdog; a killed orch is cleaned up by the next run");
            None
        })
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            crate::output::say(&format!(
                "orch: error: failed to start the async runtime: {e}"
            ));
            return ExitCode::from(exit::ORCH_FAILED);
        }
    };
    let code = runtime.block_on(commands::run(
        cli.command,
        cli.verbose > 0,
        watchdog,
        cli.host,
    ));
    // Output pumps of removed containers may still be winding down; they hold
    // nothing that needs cleaning.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    logging::flush(std::time::Duration::from_secs(1));
    code
}

/// Raises the soft limit of open descriptors to the hard one: a daemon
/// holds a connection, pipes and git's files per task, and a default soft
/// limit of 1,024 is reached long before the machine's.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the descriptor limit");
        }
    }
}

/// `RUST_LOG` wins; otherwise `-v` raises the level from warnings.
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(logging::Writer::default)
        .with_target(false)
        .compact()
        .init();
}
