//! Task branches in the user's repository, after their tasks: finding the
//! ones that hold nothing (`cleanup --branches`), and the entries older
//! orch versions left when they used worktrees.

use std::collections::BTreeMap;
use std::path::Path;

use crate::git::{Git, Repo};
use crate::lock::RepoLock;
use crate::{Error, Layout, TaskLock};

/// A branch `orch/*` of a task, as `cleanup --branches` judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskBranch {
    /// Branch name.
    pub name: String,
    /// Its tip when found (a deletion happens only if it is still there).
    pub tip: String,
    /// What it holds.
    pub holds: Holds,
}

/// What a task branch holds that the user's repository has nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// No commit beyond the one its work counts from.
    Nothing,
    /// Commits, all of them in the branch checked out in the repository
    /// (merged, not squashed).
    Merged,
    /// This many commits the checked-out branch lacks (a snapshot of the
    /// working tree a task started from counts as one).
    Commits(u64),
}

impl TaskBranch {
    /// Deleting it loses nothing.
    pub fn deletable(&self) -> bool {
        matches!(self.holds, Holds::Nothing | Holds::Merged)
    }
}

/// The `orch/*` branches of `repo` that orch made and still knows the base
/// of (as `bases`, orch's registry, records it), none checked out
/// anywhere, with what each holds: nothing beyond the commit its work
/// counts from (the base, or the commit a snapshot of the working tree was
/// made on: [`Repo::work_start`]), commits the branch checked out in `repo`
/// already contains (merged), or commits of its own. A branch whose base
/// orch does not know is not orch's to judge, and is left out.
pub fn task_branches(
    repo: &Repo,
    layout: &Layout,
    bases: &BTreeMap<String, String>,
) -> Result<Vec<TaskBranch>, Error> {
    let git = Git::at(layout, &repo.common_dir);
    let refs = git.run(
        "list task branches",
        &[
            "for-each-ref",
            "--format=%(refname:short) %(objectname)",
            "refs/heads/orch/",
        ],
    )?;
    let checked_out = git.run("list worktrees", &["worktree", "list", "--porcelain"])?;
    let in_use: Vec<&str> = checked_out
        .lines()
        .filter_map(|l| l.strip_prefix("branch refs/heads/"))
        .collect();
    let mut found = Vec::new();
    for line in refs.lines() {
        let Some((name, tip)) = line.split_once(' ') else {
            continue;
        };
        if in_use.contains(&name) {
            continue;
        }
        let Some(base) = bases.get(name) else {
            continue;
        };
        let start = repo.work_start(layout, base)?;
        let here = Git::at(layout, &repo.git_dir);
        let holds = if start == tip {
            Holds::Nothing
        } else if here
            .run(
                "see whether a task branch is merged",
                &["merge-base", "--is-ancestor", tip, "HEAD"],
            )
            .is_ok()
        {
            Holds::Merged
        } else {
            let count = here.run(
                "count a task branch's commits",
                &["rev-list", "--count", tip, "--not", &start, "HEAD"],
            )?;
            Holds::Commits(count.trim().parse().unwrap_or(0))
        };
        found.push(TaskBranch {
            name: name.to_owned(),
            tip: tip.to_owned(),
            holds,
        });
    }
    Ok(found)
}

/// Deletes a task branch, only if it still points at `tip`.
pub fn delete_branch(repo: &Repo, layout: &Layout, name: &str, tip: &str) -> Result<(), Error> {
    let lock = RepoLock::acquire(layout, &repo.common_dir)?;
    Git::at(layout, &repo.common_dir)
        .holding(&lock)
        .run(
            "delete a task branch",
            &["update-ref", "-d", &format!("refs/heads/{name}"), tip],
        )
        .map(drop)
}

/// Prunes the entries of worktrees an older orch made whose directories
/// are gone (unlocking them first: git never prunes a locked worktree);
/// returns how many there were. Only entries under the layout's
/// workspaces, and only those whose task lock is free. Worktrees elsewhere
/// are not orch's and are left alone.
pub fn prune_worktrees(repo: &Repo, layout: &Layout) -> Result<usize, Error> {
    if !repo.common_dir.join("worktrees").is_dir() {
        return Ok(0);
    }
    let root = layout.workspaces_root();
    let git = Git::at(layout, &repo.common_dir);
    let list = git.run("list worktrees", &["worktree", "list", "--porcelain"])?;
    let mut pruned = 0;
    for path in list.lines().filter_map(|l| l.strip_prefix("worktree ")) {
        let path = Path::new(path);
        if !path.starts_with(&root) || path.exists() {
            continue;
        }
        // <root>/<project>/tasks/<id>
        let (Some(id), Some(project)) = (
            path.file_name().and_then(|n| n.to_str()),
            path.parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .and_then(|n| n.to_str()),
        ) else {
            continue;
        };
        let Ok(Some(lock)) = TaskLock::try_acquire(layout, project, id) else {
            continue; // being created, or not a name orch makes
        };
        let shown = path.to_string_lossy();
        let held = RepoLock::acquire(layout, &repo.common_dir)?;
        let git = git.clone().holding(&held);
        let _ = git.run(
            "unlock a vanished worktree",
            &["worktree", "unlock", &shown],
        );
        git.run("prune worktree entries", &["worktree", "prune"])?;
        lock.release_and_delete();
        pruned += 1;
    }
    Ok(pruned)
}
