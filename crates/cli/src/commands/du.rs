//! `orch du`: disk use of every workspace, per project, and in total.

use std::process::ExitCode;

use orch_orchestrator::{DuReport, human_bytes};
use orch_workspace::Layout;

use crate::args::DuArgs;

pub(crate) fn run(args: &DuArgs) -> anyhow::Result<ExitCode> {
    let home = super::home_path()?;
    let workspaces = home.join("workspaces");
    super::exists_in_home(&home, &workspaces)?;
    let report = DuReport::measure(&Layout::new(&home))
        .map_err(|e| super::unusable_home(&home, e.into()))?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report.answer())?)?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!(
        "{:<20} {:<36} {:>10} {:>8}  PATH",
        "PROJECT",
        "TASK",
        "SIZE",
        "FILES"
    )?;
    for (dir, size) in &report.workspaces {
        crate::outln!(
            "{:<20} {:<36} {:>10} {:>8}  {}",
            dir.project,
            dir.task_id,
            human_bytes(size.bytes),
            size.files,
            dir.path.display()
        )?;
    }
    for (name, (size, count)) in &report.projects {
        crate::outln!("{name}: {count} workspace(s), {}", human_bytes(size.bytes))?;
    }
    crate::outln!(
        "total: {} workspace(s), {}",
        report.workspaces.len(),
        human_bytes(report.total.bytes)
    )?;
    for (mirror, size) in &report.mirrors {
        crate::outln!(
            "mirror of {}: {}  {}",
            crate::output::safe(&mirror.url),
            human_bytes(size.bytes),
            mirror.path.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
