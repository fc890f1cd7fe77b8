//! `orch du`: disk use of every workspace, per project, and in total.

use std::collections::BTreeMap;
use std::process::ExitCode;

use orch_workspace::{Layout, du};
use serde_json::json;

use crate::args::DuArgs;
use crate::output::human_bytes;

pub(crate) fn run(args: &DuArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(super::home_path()?);
    let mut rows = Vec::new();
    for dir in layout.task_dirs()? {
        let size = du::measure(&dir.path)?;
        rows.push((dir, size));
    }
    let mut projects: BTreeMap<&str, (du::Size, usize)> = BTreeMap::new();
    let mut total = du::Size::default();
    for (dir, size) in &rows {
        let entry = projects.entry(dir.project.as_str()).or_default();
        entry.0 += *size;
        entry.1 += 1;
        total += *size;
    }

    if args.json {
        let value = json!({
            "workspaces": rows.iter().map(|(dir, size)| json!({
                "project": dir.project,
                "task_id": dir.task_id,
                "path": dir.path,
                "bytes": size.bytes,
                "files": size.files,
            })).collect::<Vec<_>>(),
            "projects": projects.iter().map(|(name, (size, count))| json!({
                "project": name,
                "workspaces": count,
                "bytes": size.bytes,
                "files": size.files,
            })).collect::<Vec<_>>(),
            "total": { "workspaces": rows.len(), "bytes": total.bytes, "files": total.files },
        });
        println!("{value:#}");
        return Ok(ExitCode::SUCCESS);
    }

    println!(
        "{:<20} {:<36} {:>10} {:>8}  PATH",
        "PROJECT", "TASK", "SIZE", "FILES"
    );
    for (dir, size) in &rows {
        println!(
            "{:<20} {:<36} {:>10} {:>8}  {}",
            dir.project,
            dir.task_id,
            human_bytes(size.bytes),
            size.files,
            dir.path.display()
        );
    }
    for (name, (size, count)) in &projects {
        println!("{name}: {count} workspace(s), {}", human_bytes(size.bytes));
    }
    println!(
        "total: {} workspace(s), {}",
        rows.len(),
        human_bytes(total.bytes)
    );
    Ok(ExitCode::SUCCESS)
}
