//! `orch cleanup`: retention and reconciliation, with a plan (`--dry-run`),
//! a one-line summary and `--json`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use orch_orchestrator::{
    CleanupOptions, CleanupReport, GlobalConfig, Home, Item, Mark, Orchestrator, Strategy,
    Thresholds,
};
use serde_json::json;

use crate::args::CleanupArgs;
use crate::exit;
use crate::output::human_bytes;

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
    let report = match Home::open_existing(&path)? {
        Some(home) => Orchestrator::connect(home).await?.cleanup(&options).await?,
        None => CleanupReport {
            dry_run: args.dry_run,
            ..CleanupReport::default()
        },
    };
    if args.json {
        println!("{:#}", to_json(&report));
    } else {
        print_human(&report);
    }
    Ok(if report.failures().next().is_some() {
        ExitCode::from(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// What one item does, in a few words.
fn actions(item: &Item) -> Vec<String> {
    let mut what = Vec::new();
    match &item.mark {
        Some(Mark::Lost(_)) => what.push("mark lost".to_owned()),
        Some(Mark::Exited) => what.push("record its exit".to_owned()),
        None => {}
    }
    for container in &item.containers {
        what.push(format!("container {}", container.name));
    }
    if let Some(workspace) = item.removed_workspace() {
        what.push(format!(
            "workspace {} ({})",
            workspace.path.display(),
            human_bytes(workspace.bytes)
        ));
    } else if item.keep_workspace {
        what.push("keep workspace".to_owned());
    }
    if item.record {
        what.push("record".to_owned());
    }
    if let Some((_, bytes)) = &item.log {
        what.push(format!("log ({})", human_bytes(*bytes)));
    }
    what
}

fn print_human(report: &CleanupReport) {
    let verb = if report.dry_run {
        "would clean"
    } else {
        "cleaned"
    };
    for item in &report.items {
        let who = item
            .task_id
            .map_or_else(|| "ownerless".to_owned(), |t| format!("task {t}"));
        println!(
            "{verb} {who} [{}]: {}: {}",
            item.strategy.name(),
            actions(item).join(", "),
            item.reason
        );
        for error in &item.errors {
            eprintln!("orch: error: {who}: {error}");
        }
    }
    for repo in &report.repos {
        if repo.pruned > 0 {
            println!(
                "pruned {} worktree entries in {}",
                repo.pruned,
                repo.repo.display()
            );
        }
        for branch in &repo.branches {
            let verb = if report.dry_run {
                "would delete"
            } else {
                "deleted"
            };
            println!("{verb} branch {branch} in {}", repo.repo.display());
        }
        for error in &repo.errors {
            eprintln!("orch: error: {}: {error}", repo.repo.display());
        }
    }
    println!("{}", summary(report));
}

/// `Cleaned up 8 task(s): 5 completed, 2 stale, 1 old; 3 containers, 2
/// workspaces, 1.2 GiB freed`.
fn summary(report: &CleanupReport) -> String {
    let done: Vec<&Item> = report
        .items
        .iter()
        .filter(|i| i.errors.is_empty())
        .collect();
    let mut per_strategy: BTreeMap<usize, (&str, BTreeSet<uuid::Uuid>)> = BTreeMap::new();
    for item in &done {
        if let Some(task) = item.task_id {
            let order = [
                Strategy::Orphans,
                Strategy::Completed,
                Strategy::Stale,
                Strategy::Old,
                Strategy::All,
            ]
            .iter()
            .position(|s| *s == item.strategy)
            .unwrap_or(0);
            per_strategy
                .entry(order)
                .or_insert_with(|| (item.strategy.name(), BTreeSet::new()))
                .1
                .insert(task);
        }
    }
    let tasks: usize = per_strategy.values().map(|(_, t)| t.len()).sum();
    let breakdown: Vec<String> = per_strategy
        .values()
        .map(|(name, t)| format!("{} {name}", t.len()))
        .collect();
    let containers: usize = done.iter().map(|i| i.containers.len()).sum();
    let workspaces = done
        .iter()
        .filter(|i| i.removed_workspace().is_some())
        .count();
    let bytes: u64 = done.iter().map(|i| i.bytes()).sum();
    let branches: usize = report.repos.iter().map(|r| r.branches.len()).sum();
    let head = if report.dry_run {
        "Would clean up"
    } else {
        "Cleaned up"
    };
    let mut line = format!("{head} {tasks} task(s)");
    if !breakdown.is_empty() {
        line.push_str(&format!(": {}", breakdown.join(", ")));
    }
    line.push_str(&format!(
        "; {containers} containers, {workspaces} workspaces, {} {}",
        human_bytes(bytes),
        if report.dry_run { "to free" } else { "freed" }
    ));
    if branches > 0 {
        line.push_str(&format!("; {branches} branches"));
    }
    line
}

fn to_json(report: &CleanupReport) -> serde_json::Value {
    let mut strategies: BTreeMap<&str, serde_json::Map<String, serde_json::Value>> =
        BTreeMap::new();
    let mut tasks_seen: BTreeMap<&str, BTreeSet<uuid::Uuid>> = BTreeMap::new();
    for item in report.items.iter().filter(|i| i.errors.is_empty()) {
        let name = item.strategy.name();
        let counts = strategies.entry(name).or_default();
        let mut add = |key: &str, n: u64| {
            let entry = counts.entry(key.to_owned()).or_insert(json!(0));
            *entry = json!(entry.as_u64().unwrap_or(0) + n);
        };
        add("containers", item.containers.len() as u64);
        add("workspaces", u64::from(item.removed_workspace().is_some()));
        add("records", u64::from(item.record));
        add("logs", u64::from(item.log.is_some()));
        add(
            "marked_lost",
            u64::from(matches!(item.mark, Some(Mark::Lost(_)))),
        );
        add("bytes", item.bytes());
        if let Some(task) = item.task_id {
            tasks_seen.entry(name).or_default().insert(task);
        }
    }
    for (name, tasks) in &tasks_seen {
        strategies
            .entry(name)
            .or_default()
            .insert("tasks".into(), json!(tasks.len()));
    }
    let items: Vec<serde_json::Value> = report
        .items
        .iter()
        .map(|item| {
            json!({
                "strategy": item.strategy.name(),
                "task_id": item.task_id,
                "reason": item.reason,
                "mark": match &item.mark {
                    Some(Mark::Lost(_)) => Some("lost"),
                    Some(Mark::Exited) => Some("exited"),
                    None => None,
                },
                "containers": item.containers.iter().map(|c| &c.name).collect::<Vec<_>>(),
                "workspace": item.workspace.as_ref().map(|w| json!({
                    "path": w.path,
                    "bytes": w.bytes,
                    "kept": item.keep_workspace,
                })),
                "record": item.record,
                "log": item.log.as_ref().map(|(p, b)| json!({"path": p, "bytes": b})),
                "bytes": item.bytes(),
                "errors": item.errors,
            })
        })
        .collect();
    let repos: Vec<serde_json::Value> = report
        .repos
        .iter()
        .map(|r| json!({"repo": r.repo, "pruned": r.pruned, "branches": r.branches, "errors": r.errors}))
        .collect();
    json!({
        "dry_run": report.dry_run,
        "summary": summary(report),
        "strategies": strategies,
        "items": items,
        "repos": repos,
    })
}

#[cfg(test)]
mod tests {
    use orch_orchestrator::{ContainerTarget, WorkspaceTarget};

    use super::*;

    fn item(strategy: Strategy, containers: usize, workspace_bytes: Option<u64>) -> Item {
        Item {
            strategy,
            reason: "because".into(),
            task_id: Some(uuid::Uuid::new_v4()),
            mark: None,
            containers: (0..containers)
                .map(|i| ContainerTarget {
                    name: format!("c{i}"),
                    stop_grace: None,
                })
                .collect(),
            workspace: workspace_bytes.map(|bytes| WorkspaceTarget {
                project: "p".into(),
                dir_name: "d".into(),
                path: "/h/workspaces/p/tasks/d".into(),
                bytes,
                image: None,
            }),
            keep_workspace: false,
            record: true,
            log: None,
            errors: Vec::new(),
        }
    }

    #[test]
    fn the_summary_line_reads_as_the_contract_says() {
        let gib = 1 << 30;
        let mut items = vec![
            item(Strategy::Completed, 1, Some(gib)),
            item(Strategy::Completed, 0, Some(gib / 5)),
            item(Strategy::Completed, 0, None),
            item(Strategy::Completed, 0, None),
            item(Strategy::Completed, 0, None),
            item(Strategy::Stale, 1, None),
            item(Strategy::Stale, 0, None),
            item(Strategy::Old, 1, None),
        ];
        let mut failed = item(Strategy::Old, 1, None);
        failed.errors.push("boom".into());
        items.push(failed);
        let report = CleanupReport {
            dry_run: false,
            items,
            repos: Vec::new(),
        };
        assert_eq!(
            summary(&report),
            "Cleaned up 8 task(s): 5 completed, 2 stale, 1 old; 3 containers, 2 workspaces, 1.2 GiB freed"
        );
        let dry = CleanupReport {
            dry_run: true,
            ..CleanupReport::default()
        };
        assert_eq!(
            summary(&dry),
            "Would clean up 0 task(s); 0 containers, 0 workspaces, 0 B to free"
        );
    }
}
