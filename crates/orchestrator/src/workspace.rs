//! A task's workspace as the orchestrator handles it: created before the
//! container, mounted into it, and kept or removed after it.
//!
//! Git and the filesystem block, so every workspace operation runs on the
//! blocking pool. Files a root task left that this user cannot delete are
//! removed through a short-lived container of the task's image that sees
//! only that (validated) directory, and that container goes the one
//! removal path too.

use std::path::PathBuf;
use std::time::Duration;

use orch_workspace::{Layout, Repo, Saved, TaskLock, Unsaved, Workspace};
use uuid::Uuid;

use crate::Error;
use crate::context::Ctx;
use crate::fate::WorkspaceFate;
use crate::runtime::{ContainerSpec, Mount, Ownership};
use crate::teardown::{RepoFacts, WorkspaceTarget};

/// How long the privileged removal container may run.
const HELPER_DEADLINE: Duration = Duration::from_secs(120);
/// The image that removes root-owned files when the task's is unknown.
const FALLBACK_IMAGE: &str = "orch-agent:dev";

/// A created workspace and the lock its task holds while it exists.
#[derive(Debug)]
pub(crate) struct HeldWorkspace {
    pub(crate) workspace: Workspace,
    pub(crate) lock: TaskLock,
}

/// Runs workspace work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
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

/// The repository of a project that wants a workspace, and the commit its
/// branch starts from; checked before anything exists.
pub(crate) async fn find_repo(
    layout: Layout,
    dir: PathBuf,
    git_ref: Option<String>,
) -> Result<(Repo, String), Error> {
    blocking(move || {
        let repo = Repo::discover(&dir, &layout)?;
        let base = repo.resolve(&layout, git_ref.as_deref().unwrap_or("HEAD"))?;
        Ok((repo, base))
    })
    .await
}

/// Takes the task's lock and begins its workspace: the directory and the
/// branch ([`populate`] fills it).
pub(crate) async fn begin(
    ctx: &Ctx,
    repo: &Repo,
    project: &str,
    task_id: &Uuid,
    base: &str,
) -> Result<HeldWorkspace, Error> {
    let layout = ctx.home.layout();
    let workspace = Workspace::planned(&layout, repo, project, &task_id.to_string(), base)?;
    blocking(move || {
        let lock = TaskLock::acquire(&layout, &workspace.project, &workspace.task_id)?;
        workspace.begin(&layout, &lock)?;
        Ok(HeldWorkspace { workspace, lock })
    })
    .await
}

/// Clones and checks out the task's repository into a begun workspace,
/// handing it back; on failure what was made is unwound (and the lock
/// still handed back, unless the thread panicked).
pub(crate) async fn populate(
    ctx: &Ctx,
    held: HeldWorkspace,
) -> (Result<(), Error>, Option<HeldWorkspace>) {
    let layout = ctx.home.layout();
    let filling = tokio::task::spawn_blocking(move || {
        let made = held.workspace.populate(&layout, &held.lock);
        (made, held)
    });
    match filling.await {
        Ok((made, held)) => (made.map_err(Error::from), Some(held)),
        Err(e) => (
            Err(Error::io(
                "run workspace work for",
                "the task",
                std::io::Error::other(e),
            )),
            None,
        ),
    }
}

/// Takes a workspace's lock, waiting up to `wait` for a holder (an owner
/// still settling it) to let go.
pub(crate) async fn lock(
    ctx: &Ctx,
    target: &WorkspaceTarget,
    wait: Duration,
) -> Result<TaskLock, Error> {
    let end = tokio::time::Instant::now() + wait;
    loop {
        let layout = ctx.home.layout();
        let (project, dir) = (target.project.clone(), target.dir_name.clone());
        let taken = blocking(move || TaskLock::try_acquire(&layout, &project, &dir)).await?;
        if let Some(lock) = taken {
            return Ok(lock);
        }
        if tokio::time::Instant::now() >= end {
            return Err(orch_workspace::Error::InUse {
                path: target.path.clone(),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workspace a teardown target names, in the repository its record
/// holds.
fn known(layout: &Layout, target: &WorkspaceTarget, repo: &RepoFacts) -> Result<Workspace, Error> {
    let stored = Repo::stored(&repo.top, &repo.git_dir);
    Ok(Workspace::planned(
        layout,
        &stored,
        &target.project,
        &target.dir_name,
        &repo.base,
    )?)
}

/// Brings a started workspace's work home ahead of its removal (see
/// [`crate::teardown::Teardown::saves_ahead`]), handing its lock back.
/// `None` if that failed: [`remove`] then saves, and reports, as usual. No
/// lock back only if the saving thread panicked (which released it).
pub(crate) async fn save_ahead(
    ctx: &Ctx,
    target: &WorkspaceTarget,
    lock: TaskLock,
    unsaved: Unsaved,
) -> (Option<Saved>, Option<TaskLock>) {
    let Some(repo) = &target.repo else {
        return (None, Some(lock));
    };
    let layout = ctx.home.layout();
    let Ok(workspace) = known(&layout, target, repo) else {
        return (None, Some(lock));
    };
    let saving = tokio::task::spawn_blocking(move || {
        let saved = workspace.save_for_removal(&layout, &lock, unsaved);
        (saved, lock)
    });
    match saving.await {
        Ok((saved, lock)) => (saved.ok(), Some(lock)),
        Err(_) => (None, None),
    }
}

/// Keeps a started task's workspace whose lock is held: its work brought
/// home to its branch (what cannot be saved stays in it), then handed back
/// with a git directory of orch's making ([`Workspace::hand_back`]). A
/// failure of either is said in the fate's warning: the workspace is kept
/// all the same.
pub(crate) async fn keep(ctx: &Ctx, target: &WorkspaceTarget, lock: TaskLock) -> WorkspaceFate {
    let Some(repo) = &target.repo else {
        return kept(target, None, Vec::new());
    };
    let layout = ctx.home.layout();
    let workspace = match known(&layout, target, repo) {
        Ok(workspace) => workspace,
        Err(e) => return kept(target, None, vec![format!("{e:#}")]),
    };
    let settled = tokio::task::spawn_blocking(move || {
        let saved = workspace.save(&layout, &lock).map_err(|e| {
            format!(
                "its work could not be saved ({}); it stays in the workspace",
                crate::runtime::display_chain(&e)
            )
        });
        hand_back(&workspace, &layout, lock, saved)
    })
    .await;
    match settled {
        Ok((commit, notes)) => kept(target, commit, notes),
        Err(e) => kept(
            target,
            None,
            vec![format!("failed to settle the workspace: {e}")],
        ),
    }
}

/// A kept workspace's fate.
fn kept(
    target: &WorkspaceTarget,
    saved_commit: Option<String>,
    notes: Vec<String>,
) -> WorkspaceFate {
    WorkspaceFate::Kept {
        path: target.path.clone(),
        branch: target
            .repo
            .as_ref()
            .map(|_| format!("orch/{}", target.dir_name)),
        saved_commit,
        warning: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// Hands a kept workspace back safe to use, after `saved` (its save, or
/// why the workspace is kept, in words): the commit it made, and what the
/// user should know.
fn hand_back(
    workspace: &Workspace,
    layout: &Layout,
    lock: TaskLock,
    saved: Result<Saved, String>,
) -> (Option<String>, Vec<String>) {
    let mut notes = Vec::new();
    let saved = match saved {
        Ok(saved) => {
            notes.extend(saved.warning.clone());
            Some(saved)
        }
        Err(why) => {
            notes.push(why);
            None
        }
    };
    let tip = saved
        .as_ref()
        .and_then(|s| s.tip.clone())
        .unwrap_or_else(|| workspace.branch_tip(layout));
    if let Err(e) = workspace.hand_back(layout, &lock, &tip) {
        notes.push(format!(
            "its git directory could not be replaced ({}): git there may run what the task wrote",
            crate::runtime::display_chain(&e)
        ));
    }
    drop(lock);
    (saved.and_then(|s| s.pending_commit), notes)
}

/// Removes a workspace whose lock is held: its work brought home to its
/// branch first (unless nothing ever ran in it: then it is unwound, its
/// untouched branch deleted), or taken as `saved` if [`save_ahead`] did.
/// What becomes of work it cannot save: `unsaved`.
pub(crate) async fn remove(
    ctx: &Ctx,
    target: &WorkspaceTarget,
    lock: TaskLock,
    unsaved: Unsaved,
    started: bool,
    saved: Option<Saved>,
) -> Result<WorkspaceFate, Error> {
    let layout = ctx.home.layout();
    let Some(repo) = &target.repo else {
        // No repository known (no record owns it): a plain directory.
        let (layout2, project, path) =
            (layout.clone(), target.project.clone(), target.path.clone());
        let removed = blocking(move || layout2.remove_task_dir(&project, &path)).await;
        match removed {
            Ok(_) => {}
            Err(Error::Workspace(orch_workspace::Error::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                remove_as_root(ctx, target).await?;
                let (project, path) = (target.project.clone(), target.path.clone());
                blocking(move || layout.remove_task_dir(&project, &path)).await?;
            }
            Err(e) => return Err(e),
        }
        blocking(move || {
            lock.release_and_delete();
            Ok(())
        })
        .await?;
        return Ok(WorkspaceFate::Removed {
            path: target.path.clone(),
            branch: None,
            saved_commit: None,
            warning: None,
            size: orch_workspace::du::Size::default(),
            took: Duration::ZERO,
        });
    };
    let workspace = known(&layout, target, repo)?;
    if !started {
        let path = workspace.path.clone();
        blocking(move || {
            workspace.unwind(&layout, &lock)?;
            lock.release_and_delete();
            Ok(())
        })
        .await?;
        return Ok(WorkspaceFate::Unwound { path });
    }
    let attempt = {
        let (layout, workspace) = (layout.clone(), workspace.clone());
        tokio::task::spawn_blocking(move || {
            let result = workspace.remove(&layout, &lock, unsaved, saved);
            (result, lock)
        })
    };
    let (result, lock) = attempt
        .await
        .map_err(|e| Error::io("remove", &workspace.path, std::io::Error::other(e)))?;
    let removed = match result {
        Ok(removed) => removed,
        Err(orch_workspace::Error::NeedsPrivilege { saved, .. }) => {
            tracing::info!(
                workspace = %workspace.path.display(),
                "some files belong to another user; removing them through a container"
            );
            let started = std::time::Instant::now();
            let path = workspace.path.clone();
            let size = blocking(move || orch_workspace::du::measure(&path))
                .await
                .unwrap_or_default();
            remove_as_root(ctx, target).await?;
            let finished = workspace.clone();
            blocking(move || finished.finish_removal(&layout)).await?;
            orch_workspace::RemovedWorkspace {
                path: workspace.path.clone(),
                saved: *saved,
                size,
                took: started.elapsed(),
            }
        }
        // The work could not be saved (or the directory could not go): the
        // workspace stays, handed back safe as every kept one is.
        Err(e) => {
            let (layout, kept_one) = (ctx.home.layout(), workspace.clone());
            let why = format!(
                "{}; the workspace is kept",
                crate::runtime::display_chain(&e)
            );
            let settled =
                tokio::task::spawn_blocking(move || hand_back(&kept_one, &layout, lock, Err(why)))
                    .await
                    .map_err(|e| Error::io("keep", &workspace.path, std::io::Error::other(e)))?;
            return Ok(kept(target, settled.0, settled.1));
        }
    };
    blocking(move || {
        lock.release_and_delete();
        Ok(())
    })
    .await?;
    tracing::info!(
        workspace = %removed.path.display(),
        files = removed.size.files,
        bytes = removed.size.bytes,
        took_ms = removed.took.as_millis(),
        saved_commit = removed.saved.pending_commit.as_deref().unwrap_or("-"),
        "workspace removed"
    );
    Ok(WorkspaceFate::Removed {
        path: removed.path,
        branch: Some(workspace.branch.clone()),
        saved_commit: removed.saved.pending_commit,
        warning: removed.saved.warning,
        size: removed.size,
        took: removed.took,
    })
}

/// Empties a workspace with `rm -rf` as root in a container of the task's
/// image that sees nothing but that (validated, canonical) directory.
async fn remove_as_root(ctx: &Ctx, target: &WorkspaceTarget) -> Result<(), Error> {
    let layout = ctx.home.layout();
    let (project, path) = (target.project.clone(), target.path.clone());
    let Some(dir) = blocking(move || layout.check_removable(&project, &path)).await? else {
        return Ok(());
    };
    let task_id: Uuid =
        target
            .dir_name
            .parse()
            .map_err(|_| orch_workspace::Error::InvalidTaskId {
                id: target.dir_name.clone(),
            })?;
    let name = format!("orch-rm-{}", &task_id.simple().to_string()[..12]);
    let mut spec = ContainerSpec::plain(
        &target
            .image
            .clone()
            .unwrap_or_else(|| FALLBACK_IMAGE.into()),
        vec!["-rf".into(), "/orch-rm".into()],
        Ownership {
            instance: ctx.home.instance_id().to_owned(),
            session: ctx.session.id,
            task: task_id,
            project: target.project.clone(),
            owner: ctx.session.owner.clone(),
        },
    );
    spec.entrypoint = Some(vec!["rm".into()]);
    // Root, to remove what a root task left; nothing more than that needs.
    spec.capabilities = vec!["DAC_OVERRIDE".into(), "FOWNER".into()];
    spec.mounts = vec![Mount {
        source: dir,
        target: "/orch-rm".into(),
        read_only: false,
    }];
    ctx.active.insert(&name, task_id);
    let runtime = &ctx.runtime;
    let ran = async {
        runtime.create(&name, &spec).await?;
        runtime.start(&name).await?;
        // Its exit code says little (rm cannot remove the mount point
        // itself); the directory is checked afterwards.
        let _ = runtime.wait(&name).await;
        Ok::<(), crate::runtime::RuntimeError>(())
    };
    let ran = tokio::time::timeout(HELPER_DEADLINE, ran)
        .await
        .unwrap_or_else(|_| {
            Err(crate::runtime::RuntimeError::Timeout {
                action: "run removal container",
                target: name.clone(),
                after: HELPER_DEADLINE,
            })
        });
    let removed = ctx.runtime.remove(&name).await;
    if removed.is_ok() {
        ctx.active.remove(&name);
    }
    ran?;
    removed.map(drop).map_err(Error::from)
}
