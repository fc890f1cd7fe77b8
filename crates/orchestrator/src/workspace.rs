//! A task's workspace as the orchestrator handles it: created before the
//! container, mounted into it, and removed or kept by policy after it.
//!
//! Git and the filesystem block, so every workspace operation runs on the
//! blocking pool. Files a root task left behind that this user cannot delete
//! are removed through a short-lived container of the task's image, on the
//! same path-validated directory, and that container goes the one removal
//! path too.

use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, WaitContainerOptionsBuilder};
use futures_util::StreamExt;
use orch_workspace::{RemovedWorkspace, Repo, TaskLock, Workspace};
use uuid::Uuid;

use crate::guard::ContainerGuard;
use crate::remove::remove_container;
use crate::run::Status;
use crate::{Error, Orchestrator, labels};

/// How long the privileged removal container may run.
const HELPER_DEADLINE: Duration = Duration::from_secs(120);

/// A created workspace and the lock its task holds while it exists.
#[derive(Debug)]
pub(crate) struct HeldWorkspace {
    pub(crate) workspace: Workspace,
    pub(crate) lock: TaskLock,
}

/// What became of a task's workspace at its end.
#[derive(Debug, Clone)]
pub enum WorkspaceFate {
    /// Removed, its uncommitted work saved to its branch first.
    Removed {
        /// The workspace's path.
        path: std::path::PathBuf,
        /// The branch that keeps the task's work.
        branch: String,
        /// The commit made of uncommitted work, if any.
        saved_commit: Option<String>,
        /// Bytes and files removed.
        size: orch_workspace::du::Size,
        /// Time the removal took.
        took: Duration,
    },
    /// Kept for debugging (or on request).
    Kept {
        /// The workspace's path.
        path: std::path::PathBuf,
        /// The branch.
        branch: String,
    },
}

/// Whether a task that ended with `status` keeps its workspace.
pub(crate) fn keeps_workspace(
    status: Option<Status>,
    keep_failed: bool,
    requested: Option<bool>,
) -> bool {
    requested.unwrap_or(match status {
        Some(Status::Succeeded | Status::Cancelled) => false,
        // Failed, timed out, or the run itself failed.
        Some(Status::Failed | Status::TimedOut) | None => keep_failed,
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, orch_workspace::Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| {
            Error::io(
                "run workspace work for",
                "the task",
                std::io::Error::other(e),
            )
        })?
        .map_err(Error::from)
}

impl Orchestrator {
    /// The repository of a project that wants a worktree, checked before
    /// anything exists; and that `git_ref`, if given, names a commit.
    pub(crate) async fn find_repo(
        &self,
        dir: &std::path::Path,
        git_ref: Option<&str>,
    ) -> Result<Repo, Error> {
        let dir = dir.to_path_buf();
        let git_ref = git_ref.map(str::to_owned);
        blocking(move || {
            let repo = Repo::discover(&dir)?;
            repo.resolve(git_ref.as_deref().unwrap_or("HEAD"))?;
            Ok(repo)
        })
        .await
    }

    /// Takes the task's lock and creates its worktree.
    pub(crate) async fn create_workspace(
        &self,
        repo: &Repo,
        project: &str,
        task_id: &Uuid,
        git_ref: Option<&str>,
    ) -> Result<HeldWorkspace, Error> {
        let layout = self.home.layout();
        let workspace = Workspace::planned(&layout, repo, project, &task_id.to_string())?;
        let git_ref = git_ref.map(str::to_owned);
        blocking(move || {
            let lock = TaskLock::acquire(&layout, &workspace.project, &workspace.task_id)?;
            workspace.create(&lock, git_ref.as_deref())?;
            Ok(HeldWorkspace { workspace, lock })
        })
        .await
    }

    /// Keeps or removes a task's workspace, then releases its lock.
    pub(crate) async fn settle_workspace(
        &self,
        held: HeldWorkspace,
        keep: bool,
        image: &str,
    ) -> Result<WorkspaceFate, Error> {
        let branch = held.workspace.branch.clone();
        if keep {
            let path = held.workspace.path.clone();
            drop(held.lock);
            return Ok(WorkspaceFate::Kept { path, branch });
        }
        let removed = self
            .remove_workspace(held.workspace, held.lock, image, false)
            .await?;
        Ok(WorkspaceFate::Removed {
            path: removed.path,
            branch,
            saved_commit: removed.saved_commit,
            size: removed.size,
            took: removed.took,
        })
    }

    /// Saves pending work and removes the workspace, through a root
    /// container of `image` if the host user cannot delete some files. The
    /// lock is released (and its file deleted) once the workspace is gone.
    pub(crate) async fn remove_workspace(
        &self,
        workspace: Workspace,
        lock: TaskLock,
        image: &str,
        discard: bool,
    ) -> Result<RemovedWorkspace, Error> {
        let layout = self.home.layout();
        let attempt = {
            let layout = layout.clone();
            let workspace = workspace.clone();
            tokio::task::spawn_blocking(move || {
                let result = workspace.remove(&layout, &lock, discard);
                (result, lock)
            })
        };
        let (result, lock) = attempt
            .await
            .map_err(|e| Error::io("remove", &workspace.path, std::io::Error::other(e)))?;
        let removed = match result {
            Ok(removed) => removed,
            Err(orch_workspace::Error::NeedsPrivilege { .. }) => {
                tracing::info!(
                    workspace = %workspace.path.display(),
                    image,
                    "some files belong to another user; removing them through a container"
                );
                let started = std::time::Instant::now();
                let size = orch_workspace::du::measure(&workspace.path).unwrap_or_default();
                self.remove_as_root(&workspace, image).await?;
                let finished = workspace.clone();
                blocking(move || finished.finish_removal(&layout)).await?;
                RemovedWorkspace {
                    path: workspace.path.clone(),
                    saved_commit: None,
                    size,
                    took: started.elapsed(),
                }
            }
            Err(e) => return Err(e.into()),
        };
        lock.release_and_delete();
        tracing::info!(
            workspace = %removed.path.display(),
            files = removed.size.files,
            bytes = removed.size.bytes,
            took_ms = removed.took.as_millis(),
            saved_commit = removed.saved_commit.as_deref().unwrap_or("-"),
            "workspace removed"
        );
        Ok(removed)
    }

    /// Empties a workspace with `rm -rf` as root in a container of `image`
    /// that sees nothing but that (validated, canonical) directory.
    async fn remove_as_root(&self, workspace: &Workspace, image: &str) -> Result<(), Error> {
        let layout = self.home.layout();
        let Some(dir) = layout.check_removable(&workspace.project, &workspace.path)? else {
            return Ok(());
        };
        let task_id: Uuid =
            workspace
                .task_id
                .parse()
                .map_err(|_| orch_workspace::Error::InvalidTaskId {
                    id: workspace.task_id.clone(),
                })?;
        let name = format!("orch-rm-{}", &task_id.simple().to_string()[..12]);
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec!["rm".into()]),
            cmd: Some(vec!["-rf".into(), "/orch-rm".into()]),
            user: Some("0:0".into()),
            labels: Some(labels::for_task(
                self.home.instance_id(),
                &self.session,
                &task_id,
                &workspace.project,
            )),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:/orch-rm", dir.display())]),
                network_mode: Some("none".into()),
                init: Some(true),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let guard = ContainerGuard::arm(&self.active, &name, task_id);
        let ran = async {
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            self.docker
                .create_container(Some(options), body)
                .await
                .map_err(|e| Error::docker("create removal container", &name, e))?;
            self.docker
                .start_container(&name, None)
                .await
                .map_err(|e| Error::docker("start removal container", &name, e))?;
            let wait = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            // Its exit code says little (rm cannot remove the mount point
            // itself); the directory is checked afterwards.
            let _ = self.docker.wait_container(&name, Some(wait)).next().await;
            Ok::<(), Error>(())
        };
        let ran = tokio::time::timeout(HELPER_DEADLINE, ran)
            .await
            .unwrap_or_else(|_| {
                Err(Error::DockerTimeout {
                    action: "run removal container",
                    target: name.clone(),
                    after: HELPER_DEADLINE,
                })
            });
        let removed = remove_container(&self.docker, &name).await;
        if removed.is_ok() {
            guard.disarm();
        }
        ran?;
        removed.map(drop)
    }
}
