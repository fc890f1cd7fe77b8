//! `orch cleanup`: retention and reconciliation, with a plan (`--dry-run`),
//! what was done once it is done, a one-line summary and `--json`.

use std::io::Write;
use std::process::ExitCode;

use orch_orchestrator::{
    CleanupOptions, CleanupReport, GlobalConfig, Home, Orchestrator, Thresholds, human_bytes,
};
use orch_protocol::{CleanupAnswer, CleanupItem};

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
    print(&report.answer(), args.json)
}

/// `orch rm`: ended tasks removed whole, after their work is saved.
pub(crate) async fn rm(args: &crate::args::RmArgs) -> anyhow::Result<ExitCode> {
    let ids = super::blocking(|| -> anyhow::Result<Vec<_>> {
        let registry = super::ps::require_registry()?;
        args.ids
            .iter()
            .map(|id| registry.resolve(id).map_err(Into::into))
            .collect()
    })?;
    let home = super::open_home()?;
    let report = Orchestrator::connect(home)
        .await?
        .remove(&ids, args.dry_run)
        .await?;
    print(&report.answer(), args.json)
}

/// Prints what a cleanup planned or did (`--json`: the API's answer), and
/// the exit code it makes: failed if any step failed.
pub(crate) fn print(answer: &CleanupAnswer, json: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(answer)?)?;
    } else {
        print_human(&mut out, answer)?;
    }
    out.flush()?;
    Ok(if answer.items.iter().any(|i| !i.errors.is_empty()) {
        ExitCode::from(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// What a plan would do, in a few words each.
fn planned(item: &CleanupItem) -> Vec<String> {
    let mut what = Vec::new();
    match item.mark.as_deref() {
        Some("lost") => what.push("mark lost".to_owned()),
        Some("exited") => what.push("record its exit".to_owned()),
        Some(state) => what.push(format!("end as {state}")),
        None => {}
    }
    for container in &item.containers {
        what.push(format!("container {container}"));
    }
    match &item.workspace {
        Some(w) if w.kept => what.push("keep workspace".to_owned()),
        Some(w) => what.push(format!(
            "workspace {} ({})",
            w.path.display(),
            human_bytes(w.bytes)
        )),
        None => {}
    }
    if item.record {
        what.push("record".to_owned());
    }
    if let Some(log) = &item.log {
        what.push(format!("log ({})", human_bytes(log.bytes)));
    }
    what
}

fn print_human(out: &mut impl Write, report: &CleanupAnswer) -> std::io::Result<()> {
    for item in &report.items {
        let who = item
            .task_id
            .map_or_else(|| "ownerless objects".to_owned(), |t| format!("task {t}"));
        let strategy = &item.strategy;
        let reason = safe(&item.reason);
        if planned(item).is_empty() && item.done.is_empty() && item.errors.is_empty() {
            // Selected, and left as it is for the reason given.
            let verb = if report.dry_run { "would keep" } else { "kept" };
            writeln!(out, "{verb} {who} [{strategy}]: {reason}")?;
            continue;
        }
        if report.dry_run {
            writeln!(
                out,
                "would clean {who} [{strategy}]: {}: {reason}",
                planned(item).join(", ")
            )?;
            continue;
        }
        if !item.done.is_empty() {
            writeln!(
                out,
                "cleaned {who} [{strategy}]: {}: {reason}",
                item.done.join(", ")
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
        let (delete, keep) = if report.dry_run {
            ("would delete", "would keep")
        } else {
            ("deleted", "kept")
        };
        // What the task was: its description's first line (cut at 100
        // characters), as the registry remembers it.
        let what = |branch: &orch_protocol::BranchCleanup| {
            branch
                .description
                .as_deref()
                .and_then(|d| d.lines().next())
                .map(|line| {
                    let cut: String = line.chars().take(100).collect();
                    let more = if cut.len() < line.len() { "…" } else { "" };
                    format!(": {}{more}", safe(&cut))
                })
                .unwrap_or_default()
        };
        for branch in &repo.branches {
            writeln!(
                out,
                "{delete} branch {}{} in {}{}",
                branch.name,
                if branch.merged { " (merged)" } else { "" },
                repo.repo.display(),
                what(branch)
            )?;
        }
        for branch in &repo.kept {
            writeln!(
                out,
                "{keep} branch {} in {} ({} commit(s) not merged; its record is gone){}",
                branch.name,
                repo.repo.display(),
                branch.commits,
                what(branch)
            )?;
        }
        for error in &repo.errors {
            say(&format!(
                "orch: error: {}: {}",
                repo.repo.display(),
                safe(error)
            ));
        }
    }
    writeln!(out, "{}", report.summary)
}

#[cfg(test)]
mod tests {
    use orch_orchestrator::teardown::{ContainerStep, Teardown, WorkspaceTarget};
    use orch_orchestrator::{Item, Strategy};

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
