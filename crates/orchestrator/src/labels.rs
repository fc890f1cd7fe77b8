//! Ownership labels (SPEC 2). Ownership is never derived from names or paths:
//! every object orch creates carries these labels in its create call, and
//! every query orch makes filters on its own instance id.

use std::collections::HashMap;

use bollard::models::ContainerSummary;
use uuid::Uuid;

use crate::owner::Owner;

/// `true` on everything orch creates.
pub const MANAGED: &str = "orch.managed";
/// The instance (orch home) id.
pub const INSTANCE: &str = "orch.instance";
/// The creating session (one orch process).
pub const SESSION: &str = "orch.session";
/// The task id.
pub const TASK: &str = "orch.task";
/// The project name.
pub const PROJECT: &str = "orch.project";
/// Owner pid.
pub const OWNER_PID: &str = "orch.owner.pid";
/// Owner start time (clock ticks since boot).
pub const OWNER_START: &str = "orch.owner.start";
/// Owner boot id.
pub const OWNER_BOOT: &str = "orch.owner.boot";

/// One orch process: a random id plus the owner identity of the process.
#[derive(Debug, Clone)]
pub struct Session {
    /// Random per process.
    pub id: Uuid,
    /// This process.
    pub owner: Owner,
}

impl Session {
    /// A new session for the current process.
    pub fn new() -> Session {
        Session {
            id: Uuid::new_v4(),
            owner: Owner::current(),
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

/// The labels of a task's container.
pub(crate) fn for_task(
    instance_id: &str,
    session: &Session,
    task_id: &Uuid,
    project: &str,
) -> HashMap<String, String> {
    [
        (MANAGED, "true".to_owned()),
        (INSTANCE, instance_id.to_owned()),
        (SESSION, session.id.to_string()),
        (TASK, task_id.to_string()),
        (PROJECT, project.to_owned()),
        (OWNER_PID, session.owner.pid.to_string()),
        (OWNER_START, session.owner.start.to_string()),
        (OWNER_BOOT, session.owner.boot.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Docker list filters selecting this instance's containers, optionally one
/// session's only.
pub(crate) fn filters(instance_id: &str, session: Option<&Uuid>) -> HashMap<String, Vec<String>> {
    let mut labels = vec![
        format!("{MANAGED}=true"),
        format!("{INSTANCE}={instance_id}"),
    ];
    if let Some(session) = session {
        labels.push(format!("{SESSION}={session}"));
    }
    HashMap::from([("label".to_owned(), labels)])
}

/// A container of this instance, as listed by Docker.
#[derive(Debug, Clone)]
pub struct OwnedContainer {
    /// Container name without the leading `/`.
    pub name: String,
    /// Task id, if the label parses.
    pub task_id: Option<Uuid>,
    /// Creating session.
    pub session: Option<Uuid>,
    /// Owning process, if the labels are complete.
    pub owner: Option<Owner>,
    /// Docker state: created, running, exited, ...
    pub state: String,
}

impl OwnedContainer {
    pub(crate) fn from_summary(summary: &ContainerSummary) -> Option<OwnedContainer> {
        let labels = summary.labels.as_ref()?;
        let name = summary
            .names
            .as_ref()
            .and_then(|names| names.first())
            .map(|n| n.trim_start_matches('/').to_owned())
            .or_else(|| summary.id.clone())?;
        let label = |key: &str| labels.get(key).map(String::as_str);
        // Missing or malformed owner labels: owned by nobody alive.
        let owner = match (label(OWNER_PID), label(OWNER_START)) {
            (Some(pid), Some(start)) => match (pid.parse(), start.parse()) {
                (Ok(pid), Ok(start)) => Some(Owner {
                    pid,
                    start,
                    boot: label(OWNER_BOOT).unwrap_or_default().to_owned(),
                }),
                _ => None,
            },
            _ => None,
        };
        Some(OwnedContainer {
            name,
            task_id: label(TASK).and_then(|t| t.parse().ok()),
            session: label(SESSION).and_then(|s| s.parse().ok()),
            owner,
            state: summary
                .state
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        })
    }

    /// True if the owning process is still running. A container without
    /// complete owner labels counts as owned by a dead process.
    pub fn owner_alive(&self) -> bool {
        self.owner.as_ref().is_some_and(Owner::is_alive)
    }
}

/// The container name of a task: `orch-<first 12 hex of the task id>`.
pub fn container_name(task_id: &Uuid) -> String {
    let hex = task_id.simple().to_string();
    format!("orch-{}", &hex[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let id: Uuid = "0192f0e4-7b3a-7c2d-9e1f-000000000001".parse().unwrap();
        assert_eq!(container_name(&id), "orch-0192f0e47b3a");
        let session = Session::new();
        let labels = for_task("abc", &session, &id, "demo");
        assert_eq!(labels[MANAGED], "true");
        assert_eq!(labels[INSTANCE], "abc");
        assert_eq!(labels[TASK], id.to_string());
        assert_eq!(labels[OWNER_PID], std::process::id().to_string());
        let summary = ContainerSummary {
            names: Some(vec!["/orch-0192f0e47b3a".into()]),
            labels: Some(labels),
            ..Default::default()
        };
        let owned = OwnedContainer::from_summary(&summary).unwrap();
        assert_eq!(owned.name, "orch-0192f0e47b3a");
        assert_eq!(owned.task_id, Some(id));
        assert!(owned.owner_alive());

        let mut broken = summary.clone();
        if let Some(labels) = broken.labels.as_mut() {
            labels.insert(OWNER_PID.into(), "not-a-pid".into());
        }
        let owned = OwnedContainer::from_summary(&broken).expect("still listed");
        assert!(!owned.owner_alive(), "a malformed owner counts as dead");
    }
}
