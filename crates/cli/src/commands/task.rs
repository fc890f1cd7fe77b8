//! `orch task`: run one task in the foreground.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use orch_orchestrator::{GlobalConfig, Home, Orchestrator, Overrides, Shutdown, TaskRequest};

use crate::args::TaskArgs;
use crate::exit;
use crate::output::Terminal;
use crate::signals::SignalWatch;

pub(crate) async fn run(args: TaskArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    // Signals are ours from the first moment: nothing can be created before
    // a Ctrl+C would reach the cleanup path.
    let shutdown = Shutdown::new();
    let signals = SignalWatch::start(&shutdown).context("failed to install signal handlers")?;

    let config = GlobalConfig::load(GlobalConfig::default_path().as_deref())?;
    let overrides = Overrides {
        image: args.image,
        timeout: args.timeout,
        stop_grace: args.stop_grace,
        user: args.user,
        env: args.env,
        no_workspace: args.no_workspace,
    };
    let project = config.resolve_project(&args.project, &overrides)?;
    let home = Home::open(super::home_path()?)?;
    let orch = Arc::new(Orchestrator::connect(home).await?);

    let request = TaskRequest {
        project,
        desc: args.desc,
        git_ref: args.git_ref,
        keep_workspace: match (args.keep_workspace, args.rm_workspace) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        detached: false,
    };
    // The run is a task of its own so that a panic inside it comes back here
    // as an error, and this session's containers can still be swept.
    let run = tokio::spawn({
        let orch = Arc::clone(&orch);
        let shutdown = shutdown.clone();
        async move {
            orch.run_task(request, shutdown, Box::new(Terminal::new(verbose)))
                .await
        }
    });
    match run.await {
        Ok(Ok(outcome)) => Ok(exit::for_outcome(&outcome, signals.first())),
        Ok(Err(error)) => {
            sweep(&orch).await;
            Err(error.into())
        }
        Err(join) => {
            tracing::error!(error = %join, "the task's run ended abnormally");
            sweep(&orch).await;
            Ok(ExitCode::from(exit::ORCH_FAILED))
        }
    }
}

/// Removes whatever this session still has in Docker, reporting each.
async fn sweep(orch: &Orchestrator) {
    match orch.sweep_session().await {
        Ok(report) => {
            for item in &report.containers {
                match &item.result {
                    Some(Ok(_)) => eprintln!("orch: removed container {}", item.name),
                    Some(Err(e)) => {
                        eprintln!("orch: failed to remove container {}: {e:#}", item.name)
                    }
                    None => {}
                }
            }
        }
        Err(e) => eprintln!("orch: failed to sweep this session's containers: {e:#}"),
    }
}
