//! `orch cleanup`: remove what orch left behind.

use std::process::ExitCode;

use orch_orchestrator::{CleanupOptions, Home, Orchestrator};

use crate::args::CleanupArgs;
use crate::exit;

pub(crate) async fn run(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let path = super::home_path()?;
    let Some(home) = Home::open_existing(&path)? else {
        println!("Nothing to clean up: no orch home at {}", path.display());
        return Ok(ExitCode::SUCCESS);
    };
    let orch = Orchestrator::connect(home).await?;
    let report = orch
        .cleanup(CleanupOptions {
            all: args.all,
            dry_run: args.dry_run,
        })
        .await?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for item in &report.containers {
        let task = item
            .task_id
            .map(|t| format!(" (task {t})"))
            .unwrap_or_default();
        match &item.result {
            Some(Err(e)) => eprintln!("orch: failed to remove container {}: {e:#}", item.name),
            _ => println!("{verb} container {}{task}: {}", item.name, item.reason),
        }
    }
    let count = report.removed();
    if args.dry_run {
        println!("Would clean up {count} container(s)");
    } else {
        println!("Cleaned up {count} container(s)");
    }
    Ok(if report.failed().next().is_some() {
        ExitCode::from(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
