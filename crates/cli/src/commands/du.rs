//! `orch du`: disk use of every workspace, per project, and in total.

use std::process::ExitCode;

use orch_orchestrator::{DuReport, human_bytes};
use orch_workspace::Layout;

use crate::args::DuArgs;

pub(crate) fn run(args: &DuArgs) -> anyhow::Result<ExitCode> {
    let report = DuReport::measure(&Layout::new(super::home_path()?))?;
    if args.json {
        crate::outln!("{:#}", report.to_json())?;
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
    Ok(ExitCode::SUCCESS)
}
