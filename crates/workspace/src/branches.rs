//! Task branches in the user's repository, after their tasks: finding the
//! ones that hold nothing (`cleanup --branches`), and the entries older
//! orch versions left when they used worktrees.

use std::collections::BTreeMap;
use std::path::Path;

use crate::git::{Git, Repo};
use crate::lock::RepoLock;
use crate::{Error, Layout, TaskLock};

/// A branch `orch/*` whose deletion loses nothing, which `cleanup
/// --branches` may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyBranch {
    /// Branch name.
    pub name: String,
    /// Its tip when found (a deletion happens only if it is still there).
    pub tip: String,
    /// It was merged into the checked-out branch (rather than holding
    /// nothing beyond its base).
    pub merged: bool,
}

/// The `orch/*` branches of `repo` whose deletion loses nothing: those
/// with no commits beyond the commit they started from (as `bases`, orch's
/// registry, records it), and those whose tip the branch checked out in
/// `repo` already contains (merged); none checked out anywhere. A branch
/// whose base orch does not know is not orch's to judge, and is kept.
pub fn empty_branches(
    repo: &Repo,
    layout: &Layout,
    bases: &BTreeMap<String, String>,
) -> Result<Vec<EmptyBranch>, Error> {
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
    let mut empty = Vec::new();
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
        let merged = base != tip
            && Git::at(layout, &repo.git_dir)
                .run(
                    "see whether a task branch is merged",
                    &["merge-base", "--is-ancestor", tip, "HEAD"],
                )
                .is_ok();
        if base == tip || merged {
            empty.push(EmptyBranch {
                name: name.to_owned(),
                tip: tip.to_owned(),
                merged,
            });
        }
    }
    Ok(empty)
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
