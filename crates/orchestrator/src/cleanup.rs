//! `orch cleanup`, and the sweep of this session's containers on the way out.
//!
//! Both only ever select containers by this instance's labels, so another
//! instance's objects are invisible to them.

use bollard::query_parameters::ListContainersOptionsBuilder;
use uuid::Uuid;

use crate::labels::{self, OwnedContainer};
use crate::remove::{Gone, remove_containers};
use crate::{Error, Orchestrator};

/// What `orch cleanup` should remove.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanupOptions {
    /// Every container of this instance, live owners included.
    pub all: bool,
    /// Only say what would be removed.
    pub dry_run: bool,
}

/// One container that cleanup selected, and what became of it.
#[derive(Debug)]
pub struct CleanedContainer {
    /// Container name.
    pub name: String,
    /// Its task, if labelled.
    pub task_id: Option<Uuid>,
    /// Why it was selected.
    pub reason: &'static str,
    /// `None` on a dry run.
    pub result: Option<Result<Gone, Error>>,
}

/// What a cleanup did.
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Every container selected.
    pub containers: Vec<CleanedContainer>,
}

impl CleanupReport {
    /// Containers that are gone now (or would be, on a dry run).
    pub fn removed(&self) -> usize {
        self.containers
            .iter()
            .filter(|c| !matches!(c.result, Some(Err(_))))
            .count()
    }

    /// Containers whose removal failed.
    pub fn failed(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.containers.iter().filter_map(|c| match &c.result {
            Some(Err(e)) => Some((c.name.as_str(), e)),
            _ => None,
        })
    }
}

impl Orchestrator {
    /// Lists this instance's containers, or one session's.
    pub async fn list_containers(
        &self,
        session: Option<&Uuid>,
    ) -> Result<Vec<OwnedContainer>, Error> {
        let filters = labels::filters(self.home.instance_id(), session);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| {
                Error::docker("list containers of instance", self.home.instance_id(), e)
            })?;
        Ok(summaries
            .iter()
            .filter_map(OwnedContainer::from_summary)
            .collect())
    }

    /// Removes this instance's containers whose owner process is dead, or
    /// with `all`, every one of them.
    pub async fn cleanup(&self, options: CleanupOptions) -> Result<CleanupReport, Error> {
        let selected: Vec<(OwnedContainer, &'static str)> = self
            .list_containers(None)
            .await?
            .into_iter()
            .filter_map(|c| {
                if options.all {
                    Some((c, "--all"))
                } else if c.session == Some(self.session.id) {
                    None
                } else if !c.owner_alive() {
                    Some((c, "owner process is gone"))
                } else {
                    None
                }
            })
            .collect();
        self.remove_selected(selected, options.dry_run).await
    }

    /// Removes every container of this session: those it knows it created
    /// and those whose create call it may not have seen answered. The path a
    /// dying process takes after a panic or a failed cleanup.
    pub async fn sweep_session(&self) -> Result<CleanupReport, Error> {
        let mut names: Vec<(OwnedContainer, &'static str)> = self
            .list_containers(Some(&self.session.id))
            .await?
            .into_iter()
            .map(|c| (c, "left by this session"))
            .collect();
        for name in self.active.names() {
            if !names.iter().any(|(c, _)| c.name == name) {
                names.push((
                    OwnedContainer {
                        name,
                        task_id: None,
                        session: Some(self.session.id),
                        project: None,
                        owner: Some(self.session.owner.clone()),
                        state: String::new(),
                    },
                    "left by this session",
                ));
            }
        }
        self.remove_selected(names, false).await
    }

    async fn remove_selected(
        &self,
        selected: Vec<(OwnedContainer, &'static str)>,
        dry_run: bool,
    ) -> Result<CleanupReport, Error> {
        let mut report = CleanupReport {
            containers: selected
                .iter()
                .map(|(c, reason)| CleanedContainer {
                    name: c.name.clone(),
                    task_id: c.task_id,
                    reason,
                    result: None,
                })
                .collect(),
        };
        if dry_run {
            return Ok(report);
        }
        let names = selected.into_iter().map(|(c, _)| c.name).collect();
        for (name, result) in remove_containers(&self.docker, names).await {
            if result.is_ok() {
                self.active.remove(&name);
            }
            if let Some(item) = report.containers.iter_mut().find(|c| c.name == name) {
                match &result {
                    Ok(_) => {
                        tracing::info!(container = %name, task = ?item.task_id, reason = item.reason, "removed container")
                    }
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "failed to remove container")
                    }
                }
                item.result = Some(result);
            }
        }
        Ok(report)
    }
}
