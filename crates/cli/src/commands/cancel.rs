//! `orch cancel`: stop tasks gracefully from any terminal, then sweep
//! orphans.

use std::process::ExitCode;
use std::time::Duration;

use orch_orchestrator::{Cancelled, Orchestrator};

use crate::args::CancelArgs;
use crate::exit;

pub(crate) async fn run(args: &CancelArgs) -> anyhow::Result<ExitCode> {
    let (ids, mut failed) = super::blocking(|| -> anyhow::Result<_> {
        let registry = super::ps::require_registry()?;
        let mut ids = Vec::new();
        let mut failed = false;
        for given in &args.ids {
            match registry.resolve(given) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    crate::output::say(&format!("orch: error: {e}"));
                    failed = true;
                }
            }
        }
        Ok((ids, failed))
    })?;
    let home = super::open_home()?;
    let orch = Orchestrator::connect(home).await?;
    let cancels = ids.iter().map(|id| orch.cancel(id));
    for (id, result) in ids
        .iter()
        .zip(futures_util::future::join_all(cancels).await)
    {
        match result {
            Ok(Cancelled::Ended(state)) => {
                crate::outln!("{id} {state}")?;
            }
            Ok(Cancelled::AlreadyEnded(state)) => {
                crate::outln!("{id} had already ended ({state})")?;
            }
            Err(e) => {
                crate::output::say(&format!("orch: error: failed to cancel {id}: {e:#}"));
                failed = true;
            }
        }
    }
    if let Err(e) = orch.reconcile(Duration::from_secs(30)).await {
        crate::output::say(&format!("orch: warning: orphan sweep failed: {e:#}"));
    }
    Ok(if failed {
        ExitCode::from(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// `orch push <id>`: delivers a finished task's branch to its project's
/// git server from this node's mirror.
pub(crate) async fn push(args: &crate::args::PushArgs) -> anyhow::Result<ExitCode> {
    let id = super::blocking(|| -> anyhow::Result<_> {
        let registry = super::ps::require_registry()?;
        Ok(registry.resolve(&args.id)?)
    })?;
    let home = super::open_home()?;
    let orch = Orchestrator::connect(home).await?;
    let url = orch.push(&id).await?;
    crate::outln!("pushed orch/{id} to {url}")?;
    Ok(ExitCode::SUCCESS)
}
