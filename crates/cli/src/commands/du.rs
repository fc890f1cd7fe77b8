//! `orch du`: disk use of every workspace, per project, and in total.

use std::process::ExitCode;

use orch_orchestrator::{DuReport, human_bytes};
use orch_protocol::DuAnswer;
use orch_workspace::Layout;

use crate::args::DuArgs;

pub(crate) fn run(args: &DuArgs) -> anyhow::Result<ExitCode> {
    let home = super::home_path()?;
    let workspaces = home.join("workspaces");
    super::exists_in_home(&home, &workspaces)?;
    let report = DuReport::measure(&Layout::new(&home))
        .map_err(|e| super::unusable_home(&home, e.into()))?;
    print(&report.answer(), args.json)
}

/// `orch du`'s output of `answer` (`--json`: the API's answer itself).
pub(crate) fn print(answer: &DuAnswer, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(answer)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!(
        "{:<20} {:<36} {:>10} {:>8}  PATH",
        "PROJECT",
        "TASK",
        "SIZE",
        "FILES"
    )?;
    for w in &answer.workspaces {
        crate::outln!(
            "{:<20} {:<36} {:>10} {:>8}  {}",
            w.project,
            w.task_id,
            human_bytes(w.bytes),
            w.files,
            w.path.display()
        )?;
    }
    for p in &answer.projects {
        crate::outln!(
            "{}: {} workspace(s), {}",
            p.project,
            p.workspaces,
            human_bytes(p.bytes)
        )?;
    }
    for mirror in &answer.mirrors {
        crate::outln!(
            "mirror of {}: {}  {}",
            crate::output::safe(&mirror.url),
            human_bytes(mirror.bytes),
            mirror.path.display()
        )?;
    }
    let mirrors = match answer.mirrors.len() {
        0 => String::new(),
        n => format!(" and {n} mirror(s)"),
    };
    crate::outln!(
        "total: {} workspace(s){mirrors}, {}",
        answer.total.workspaces,
        human_bytes(answer.total.bytes)
    )?;
    Ok(ExitCode::SUCCESS)
}
