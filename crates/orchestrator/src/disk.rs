//! Disk use of workspaces (`orch du`, `GET /v1/du`): each workspace, per
//! project, and in total, counted as `du` counts (allocated blocks).

use std::collections::BTreeMap;

use orch_protocol::{DuAnswer, DuProject, DuTotal, DuWorkspace};
use orch_workspace::{Layout, TaskDir, du};

use crate::Error;

/// What the workspaces of a home hold.
#[derive(Debug, Clone, Default)]
pub struct DuReport {
    /// Each workspace and its size.
    pub workspaces: Vec<(TaskDir, du::Size)>,
    /// Per project: size and number of workspaces.
    pub projects: BTreeMap<String, (du::Size, usize)>,
    /// All of them, mirrors included.
    pub total: du::Size,
    /// Mirrors of projects from a git server, and their sizes.
    pub mirrors: Vec<(orch_workspace::Mirror, du::Size)>,
}

impl DuReport {
    /// Measures every workspace under `layout`. Walks trees: call it on the
    /// blocking pool.
    pub fn measure(layout: &Layout) -> Result<DuReport, Error> {
        let mut report = DuReport::default();
        for dir in layout.task_dirs()? {
            let size = orch_workspace::workspace_size(&dir.path)?;
            let entry = report.projects.entry(dir.project.clone()).or_default();
            entry.0 += size;
            entry.1 += 1;
            report.total += size;
            report.workspaces.push((dir, size));
        }
        for mirror in orch_workspace::mirror::mirrors(layout) {
            let size = du::measure(&mirror.path)?;
            report.total += size;
            report.mirrors.push((mirror, size));
        }
        Ok(report)
    }

    /// As `orch du --json` prints it and `GET /v1/du` answers it.
    pub fn answer(&self) -> DuAnswer {
        DuAnswer {
            workspaces: self
                .workspaces
                .iter()
                .map(|(dir, size)| DuWorkspace {
                    project: dir.project.clone(),
                    task_id: dir.task_id.clone(),
                    path: dir.path.clone(),
                    bytes: size.bytes,
                    files: size.files,
                })
                .collect(),
            projects: self
                .projects
                .iter()
                .map(|(name, (size, count))| DuProject {
                    project: name.clone(),
                    workspaces: *count,
                    bytes: size.bytes,
                    files: size.files,
                })
                .collect(),
            total: DuTotal {
                workspaces: self.workspaces.len(),
                bytes: self.total.bytes,
                files: self.total.files,
            },
            mirrors: self
                .mirrors
                .iter()
                .map(|(mirror, size)| orch_protocol::MirrorCleanup {
                    url: mirror.url.clone(),
                    path: mirror.path.clone(),
                    bytes: size.bytes,
                })
                .collect(),
        }
    }
}
