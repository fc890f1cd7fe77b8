//! `orch diff` and `orch merge`: a task's result, reviewed and taken into
//! the user's branch, through the hardened git.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use orch_registry::TaskRecord;
use orch_workspace::review::{self, MergeWay, Merged};
use orch_workspace::{Layout, Repo};

use crate::args::{DiffArgs, MergeArgs};

/// A task's branch as its record names it: the repository, the base and
/// the branch (which must still exist).
struct Branch {
    repo: Repo,
    base: String,
    name: String,
    layout: Layout,
    task: TaskRecord,
}

fn branch_of(id: &str) -> anyhow::Result<Branch> {
    let registry = super::ps::require_registry()?;
    let id = registry.resolve(id)?;
    let task = registry
        .get(&id)?
        .ok_or_else(|| anyhow::anyhow!("no task {id}"))?;
    let ws = &task.workspace;
    let (Some(top), Some(base), Some(name)) = (&ws.repo, &ws.base, &ws.branch) else {
        anyhow::bail!("task {id} has no branch: it ran without a workspace");
    };
    let layout = super::open_home()?.layout();
    // The repository the user started the task in, as orch recorded it
    // when it found it (the one discovery orch does).
    let repo = Repo::discover(Path::new(top), &layout)?;
    if review::branch_tip(&repo, &layout, name)?.is_none() {
        anyhow::bail!(
            "branch {name} is no longer in {} (deleted by cleanup --branches, or by hand)",
            repo.top.display()
        );
    }
    Ok(Branch {
        repo,
        base: base.clone(),
        name: name.clone(),
        layout,
        task,
    })
}

pub(crate) fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let branch = branch_of(&args.id)?;
    let color = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").as_deref() != Ok("dumb");
    // A task started --from-worktree has a snapshot of the user's tree of
    // then as its first commit: a merge brings it in, so the diff shows it.
    let start = branch.repo.work_start(&branch.layout, &branch.base)?;
    if start != branch.base {
        crate::output::say(&format!(
            "note: {} starts with a snapshot of your working tree as it was ({}); this diff, as orch merge, includes it (git diff {} {} shows the task's changes alone)",
            branch.name,
            short(&branch.base),
            short(&branch.base),
            branch.name
        ));
    }
    let text = review::diff(
        &branch.repo,
        &branch.layout,
        &start,
        &branch.name,
        args.stat,
        color,
    )?;
    let mut out = std::io::stdout().lock();
    out.write_all(&text)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn merge(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    let branch = branch_of(&args.id)?;
    let task = &branch.task;
    if !task.state.is_terminal() {
        anyhow::bail!(
            "task {} is {}: merge its branch once it has ended",
            task.id,
            task.state
        );
    }
    let way = if args.squash {
        MergeWay::Squash
    } else {
        MergeWay::Merge
    };
    // The description is the task's text: no escape sequence of it gets
    // into the user's history.
    let description = review::plain_text(&task.description);
    let summary = description.lines().next().unwrap_or_default();
    let message = match way {
        MergeWay::Merge => format!(
            "Merge task {}: {summary}\n\nBranch {}, task {} ({}).",
            orch_registry::short_id(&task.id),
            branch.name,
            task.id,
            description
        ),
        MergeWay::Squash => format!(
            "{summary}\n\nSquashed from branch {} of task {}:\n{}",
            branch.name, task.id, description
        ),
    };
    let identity =
        orch_workspace::git_identity(&branch.layout, Some(branch.repo.git_dir.as_path()));
    match review::merge(
        &branch.repo,
        &branch.layout,
        &branch.name,
        way,
        &message,
        &identity,
    )? {
        Merged::Done { commit } => {
            crate::outln!(
                "{} {} into {} ({})",
                if args.squash { "squashed" } else { "merged" },
                branch.name,
                current_branch(&branch.repo),
                short(&commit)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Merged::AlreadyUpToDate => {
            crate::outln!("{} has nothing your branch lacks", branch.name)?;
            Ok(ExitCode::SUCCESS)
        }
        Merged::Conflicts { paths } => anyhow::bail!(
            "merging {} stopped on conflicts in {}: resolve them and commit, or run git merge --abort",
            branch.name,
            paths.join(", ")
        ),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The branch checked out in the user's working tree, as git names it.
fn current_branch(repo: &Repo) -> String {
    std::fs::read_to_string(repo.git_dir.join("HEAD"))
        .ok()
        .and_then(|head| {
            head.trim()
                .strip_prefix("ref: refs/heads/")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "HEAD".into())
}
