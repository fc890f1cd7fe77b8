//! `orch cleanup`: retention and reconciliation, with a plan (`--dry-run`),
//! what was done once it is done, a one-line summary and `--json`.

use std::io::Write;
use std::process::ExitCode;

use orch_orchestrator::{
    CleanupOptions, CleanupReport, GlobalConfig, Home, Item, Orchestrator, Thresholds, human_bytes,
    teardown::{Ending, RecordEnd},
};

use crate::args::CleanupArgs;
use crate::exit;
use crate::output::{safe, say};

pub(crate) async fn run(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let config = GlobalConfig::load(GlobalConfig::default_path().as_deref())?;
    let thresholds = match args.older_than {
        Some(age) => Thresholds::all(age),
        None => Thresholds::resolve(&config.cleanup)?,
    };
    let options = CleanupOptions {
        strategy: args.strategy.strategy(),
        thresholds,
        status: args.status,
        all: args.all,
        dry_run: args.dry_run,
        branches: args.branches,
    };
    let path = super::home_path()?;
    let existing = Home::open_existing(&path).map_err(|e| super::unusable_home(&path, e.into()))?;
    let report = match existing {
        Some(home) => {
            super::note_tightened(&home);
            Orchestrator::connect(home).await?.cleanup(&options).await?
        }
        None => CleanupReport {
            dry_run: args.dry_run,
            ..CleanupReport::default()
        },
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report.answer())?)?;
    } else {
        print_human(&mut out, &report)?;
    }
    out.flush()?;
    Ok(if report.failures().next().is_some() {
        ExitCode::from(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// What a plan would do, in a few words each.
fn planned(item: &Item) -> Vec<String> {
    let plan = &item.plan;
    let mut what = Vec::new();
    match &plan.record {
        RecordEnd::Finish(Ending::Lost(_)) => what.push("mark lost".to_owned()),
        RecordEnd::Finish(ending) => what.push(format!("end as {}", ending.state())),
        RecordEnd::FromExit(_) => what.push("record its exit".to_owned()),
        RecordEnd::Leave => {}
    }
    for container in &plan.containers {
        what.push(format!("container {}", container.name));
    }
    if let Some(workspace) = plan.removed_workspace() {
        what.push(format!(
            "workspace {} ({})",
            workspace.path.display(),
            human_bytes(workspace.bytes)
        ));
    } else if plan.workspace.is_some() {
        what.push("keep workspace".to_owned());
    }
    if plan.delete_record {
        what.push("record".to_owned());
    }
    if let Some((_, bytes)) = &plan.log {
        what.push(format!("log ({})", human_bytes(*bytes)));
    }
    what
}

fn print_human(out: &mut impl Write, report: &CleanupReport) -> std::io::Result<()> {
    for item in &report.items {
        let who = item
            .task_id()
            .map_or_else(|| "ownerless objects".to_owned(), |t| format!("task {t}"));
        let strategy = item.strategy.name();
        let reason = safe(&item.reason);
        if report.dry_run {
            writeln!(
                out,
                "would clean {who} [{strategy}]: {}: {reason}",
                planned(item).join(", ")
            )?;
            continue;
        }
        if !item.steps.is_empty() {
            let done = item.done();
            writeln!(
                out,
                "cleaned {who} [{strategy}]: {}: {reason}",
                done.join(", ")
            )?;
        }
        for error in &item.errors {
            say(&format!("orch: error: {who} [{strategy}]: {}", safe(error)));
        }
    }
    for mirror in &report.mirrors {
        writeln!(
            out,
            "{} mirror of {} ({} bytes, unused)",
            if report.dry_run {
                "would remove"
            } else {
                "removed"
            },
            safe(&mirror.url),
            mirror.bytes
        )?;
    }
    for repo in &report.repos {
        if repo.pruned > 0 {
            writeln!(
                out,
                "pruned {} worktree entries in {}",
                repo.pruned,
                repo.repo.display()
            )?;
        }
        let verb = if report.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        for branch in &repo.branches {
            writeln!(out, "{verb} branch {branch} in {}", repo.repo.display())?;
        }
        for error in &repo.errors {
            say(&format!(
                "orch: error: {}: {}",
                repo.repo.display(),
                safe(error)
            ));
        }
    }
    writeln!(out, "{}", report.summary())
}

#[cfg(test)]
mod tests {
    use orch_orchestrator::Strategy;
    use orch_orchestrator::teardown::{ContainerStep, Teardown, WorkspaceTarget};

    use super::*;

    fn item(strategy: Strategy, containers: usize, workspace_bytes: Option<u64>) -> Item {
        let mut plan = Teardown::ownerless(
            Some(uuid::Uuid::new_v4()),
            Vec::new(),
            workspace_bytes.map(|bytes| WorkspaceTarget {
                project: "p".into(),
                dir_name: "d".into(),
                path: "/h/workspaces/p/tasks/d".into(),
                bytes,
                image: None,
                repo: None,
            }),
        );
        plan.containers = (0..containers)
            .map(|i| ContainerStep {
                name: format!("c{i}"),
                stop_grace: None,
            })
            .collect();
        plan.delete_record = true;
        Item::new(strategy, "because", plan)
    }

    #[test]
    fn the_summary_line_reads_as_the_contract_says() {
        let gib = 1 << 30;
        let items = vec![
            item(Strategy::Completed, 1, Some(gib)),
            item(Strategy::Completed, 0, Some(gib / 5)),
            item(Strategy::Completed, 0, None),
            item(Strategy::Completed, 0, None),
            item(Strategy::Completed, 0, None),
            item(Strategy::Stale, 1, None),
            item(Strategy::Stale, 0, None),
            item(Strategy::Old, 1, None),
        ];
        let report = CleanupReport {
            dry_run: true,
            items,
            repos: Vec::new(),
            mirrors: Vec::new(),
        };
        assert_eq!(
            report.summary(),
            "Would clean up 8 task(s): 5 completed, 2 stale, 1 old; 3 containers, 2 workspaces, 1.2 GiB to free"
        );
        let answer = report.answer();
        assert_eq!(answer.strategies["completed"].tasks, 5);
        assert_eq!(answer.total.containers, 3);
        let empty = CleanupReport {
            dry_run: true,
            ..CleanupReport::default()
        };
        assert_eq!(
            empty.summary(),
            "Would clean up 0 task(s); 0 containers, 0 workspaces, 0 B to free"
        );
    }
}
