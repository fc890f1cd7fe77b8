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
use crate::run::TaskRequest;
use crate::runtime::{ContainerSpec, Mount, Ownership};
use crate::teardown::{RepoFacts, WorkspaceTarget};

/// How long the privileged removal container may run.
const HELPER_DEADLINE: Duration = Duration::from_secs(120);
/// The image that removes root-owned files when the task's is unknown.
const FALLBACK_IMAGE: &str = "orch-agent:dev";

/// `--from-worktree`: a commit of the project's working tree as it is now
/// (tracked changes and untracked files that are not ignored), made in an
/// index of its own so that the user's tree, index and branches stay as
/// they are; the task's branch starts from it.
pub fn snapshot_worktree(
    home: &crate::Home,
    project: &crate::Project,
    desc: &str,
) -> Result<String, Error> {
    let refuse = |message: &str| crate::ConfigError::Flag {
        flag: "--from-worktree".into(),
        message: message.into(),
    };
    if project.remote.is_some() {
        return Err(refuse("a project from a git server has no working tree here").into());
    }
    if project.settings.workspace == crate::WorkspaceMode::None {
        return Err(refuse("the task has no workspace to start from it").into());
    }
    let layout = home.layout();
    let repo = Repo::discover(&project.path, &layout)?;
    Ok(repo.snapshot_worktree(&layout, desc)?)
}

/// The warning for a task that starts from `base` (HEAD) while the working
/// tree of `repo` holds changes it will not see (a task gets a checkout):
/// what `orch task` and `orch submit` say.
pub fn uncommitted_warning(
    layout: &Layout,
    repo: &Repo,
    base: &str,
) -> Result<Option<String>, orch_workspace::Error> {
    Ok(match repo.uncommitted(layout)? {
        0 => None,
        n => Some(format!(
            "warning: {} has {n} uncommitted change(s) the task will not see: it starts from HEAD ({}); commit them first, or start it from the tree as it is with --from-worktree",
            repo.top.display(),
            base.get(..12).unwrap_or(base),
        )),
    })
}

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
    mirror: bool,
) -> Result<(Repo, String), Error> {
    blocking(move || {
        let repo = if mirror {
            Repo::stored(&dir, &dir)
        } else {
            Repo::discover(&dir, &layout)?
        };
        let base = repo.resolve(&layout, git_ref.as_deref().unwrap_or("HEAD"))?;
        Ok((repo, base))
    })
    .await
}

/// For a project from a git server: fetches its mirror (made first if
/// there is none), reads the `orch.toml` of the ref being run from it as
/// data, and settles the project's settings and path (the mirror) with it.
pub(crate) async fn fetch_remote(ctx: &Ctx, request: &mut TaskRequest) -> Result<(), Error> {
    let Some(remote) = &request.project.remote else {
        return Ok(());
    };
    let layout = ctx.home.layout();
    let url = remote.url.clone();
    let git_ref = request.git_ref.clone().unwrap_or_else(|| "HEAD".into());
    let (mirror, text) = blocking(move || {
        let mirror = orch_workspace::Mirror::of(&layout, &url)?;
        mirror.fetch(&layout)?;
        let text = mirror.file(&layout, &git_ref, "orch.toml")?;
        Ok((mirror, text))
    })
    .await?;
    request
        .project
        .with_remote_file(text.as_deref(), &mirror.path)?;
    Ok(())
}

/// Takes the task's lock and begins its workspace: the directory and the
/// branch ([`populate`] fills it).
pub(crate) async fn begin(
    ctx: &Ctx,
    repo: &Repo,
    project: &str,
    task_id: &Uuid,
    base: &str,
    description: &str,
) -> Result<HeldWorkspace, Error> {
    let layout = ctx.home.layout();
    let mut workspace = Workspace::planned(&layout, repo, project, &task_id.to_string(), base)?;
    workspace.description = Some(description.to_owned());
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
    open_to_others: bool,
) -> (Result<(), Error>, Option<HeldWorkspace>) {
    let layout = ctx.home.layout();
    let filling = tokio::task::spawn_blocking(move || {
        let made = held.workspace.populate(&layout, &held.lock).and_then(|()| {
            if open_to_others {
                orch_workspace::open_to_others(&held.workspace.path)?;
            }
            Ok(())
        });
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
    let mut workspace = Workspace::planned(
        layout,
        &stored,
        &target.project,
        &target.dir_name,
        &repo.base,
    )?;
    workspace.description.clone_from(&repo.description);
    if let Some(attempt) = repo.taken_over {
        workspace.branch = format!("{}-attempt-{attempt}", workspace.branch);
    }
    Ok(workspace)
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
    let (commit, mut notes) = match settled {
        Ok(settled) => settled,
        Err(e) => (None, vec![format!("failed to settle the workspace: {e}")]),
    };
    if let Some(url) = repo.remote.as_ref().filter(|_| repo.taken_over.is_none()) {
        if let Err(why) = deliver(ctx, &target.dir_name, url).await {
            notes.push(undelivered(&target.dir_name, url, &why));
        }
    }
    kept(target, commit, notes)
}

/// How often a push is tried before the work is left in the mirror.
const PUSHES: usize = 3;

/// Pushes a finished task's branch from the node's mirror to its project's
/// URL, tried again with backoff, and records whether it got there. `Err`:
/// why it did not (git's own words), for the record and `orch push`.
pub(crate) async fn deliver(ctx: &Ctx, task: &str, url: &str) -> Result<(), String> {
    let layout = ctx.home.layout();
    let branch = format!("orch/{task}");
    let (url2, branch2) = (url.to_owned(), branch.clone());
    let pushed = tokio::task::spawn_blocking(move || {
        let mirror = orch_workspace::Mirror::of(&layout, &url2)?;
        let mut backoff = orch_retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let mut tries = 0;
        loop {
            tries += 1;
            match mirror.push(&layout, &branch2) {
                Ok(()) => return Ok(mirror),
                Err(e) if tries < PUSHES => {
                    tracing::debug!(branch = %branch2, error = %e, "push failed; trying again");
                    backoff.sleep();
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| {
        r.map_err(|e| match e {
            orch_workspace::Error::Git { stderr, .. } => stderr,
            other => crate::runtime::display_chain(&other),
        })
    });
    let delivered = pushed.is_ok();
    if let Ok(id) = task.parse::<Uuid>() {
        if let Err(e) = ctx
            .store
            .call(move |r| r.set_delivered(&id, delivered))
            .await
        {
            tracing::warn!(task = %id, error = %format!("{e:#}"), "cannot record where the task's work is");
        }
    }
    match pushed {
        Ok(mirror) => {
            tracing::info!(branch = %branch, url = %url, mirror = %mirror.path.display(), "work delivered");
            Ok(())
        }
        Err(why) => Err(why),
    }
}

/// What the record says of work a push could not deliver.
fn undelivered(task: &str, url: &str, why: &str) -> String {
    format!(
        "its work is on orch/{task} in this node's mirror of {url}, not on the server ({why}); `orch push {task}` delivers it"
    )
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
    // A project from a git server: its work reaches the server before its
    // workspace goes; if it cannot, the workspace stays.
    // Work of an attempt that was taken over stays on its own branch here.
    let (saved, lock) = match repo.remote.as_ref().filter(|_| repo.taken_over.is_none()) {
        Some(url) => {
            let (layout2, saving) = (layout.clone(), workspace.clone());
            let (result, lock) = tokio::task::spawn_blocking(move || {
                let result = match saved {
                    Some(saved) => Ok(saved),
                    None => saving.save_for_removal(&layout2, &lock, unsaved),
                };
                (result, lock)
            })
            .await
            .map_err(|e| Error::io("save", &workspace.path, std::io::Error::other(e)))?;
            let undelivered = match result {
                Ok(saved) => match deliver(ctx, &target.dir_name, url).await {
                    Ok(()) => Ok(saved),
                    Err(why) => Err((Ok(saved), undelivered(&target.dir_name, url, &why))),
                },
                Err(e) => Err((
                    Err(format!(
                        "{}; the workspace is kept",
                        crate::runtime::display_chain(&e)
                    )),
                    String::new(),
                )),
            };
            match undelivered {
                Ok(saved) => (Some(saved), lock),
                Err((saved, why)) => {
                    let (layout, kept_one) = (ctx.home.layout(), workspace.clone());
                    let settled = tokio::task::spawn_blocking(move || {
                        let mut settled = hand_back(&kept_one, &layout, lock, saved);
                        settled.1.extend((!why.is_empty()).then_some(why));
                        settled
                    })
                    .await
                    .map_err(|e| Error::io("keep", &workspace.path, std::io::Error::other(e)))?;
                    return Ok(kept(target, settled.0, settled.1));
                }
            }
        }
        None => (saved, lock),
    };
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
