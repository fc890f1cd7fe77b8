//! `orch diff` and `orch merge`: a task's result, reviewed and taken into
//! the user's branch, through the hardened git.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use orch_workspace::review::{self, MergeWay, Merged};
use orch_workspace::{Layout, Repo};

use crate::args::{DiffArgs, MergeArgs};

/// A task's branch: the repository, the base and the branch (which must
/// still exist), and what the task was.
struct Branch {
    repo: Repo,
    base: String,
    name: String,
    layout: Layout,
    /// The task's id, as its branch names it.
    id: String,
    description: String,
    /// Its state, while its record is there (`None` once it is gone: the
    /// task ended).
    state: Option<orch_registry::State>,
}

/// The branch of the task `id` names (an id, a prefix, a short id, a name,
/// or the branch `orch/<id>` itself): from its record, or, once the record
/// is gone, from what the registry remembers of the branch.
fn branch_of(id: &str) -> anyhow::Result<Branch> {
    let registry = super::ps::require_registry()?;
    let layout = super::open_home()?.layout();
    let asked = id.strip_prefix("orch/").unwrap_or(id);
    let mut removed = removed_branches(registry.as_ref(), asked)?;
    let task = match registry.resolve(asked) {
        Ok(id) if removed.is_empty() => registry
            .get(&id)?
            .ok_or_else(|| anyhow::anyhow!("no task {id}"))?,
        Ok(id) => anyhow::bail!(
            "{asked} is ambiguous: task {id}, and {} branch(es) of removed tasks ({}): give more of the id",
            removed.len(),
            names(&removed)
        ),
        Err(orch_registry::Error::NotFound(_)) => {
            return match removed.len() {
                0 => anyhow::bail!(
                    "no task {asked} in this orch home, and no branch orch/{asked}… of one of its removed tasks"
                ),
                1 => {
                    let branch = removed.remove(0);
                    found(
                        &branch.top,
                        &branch.known.base,
                        &branch.name,
                        layout,
                        branch.id,
                        branch.known.description.unwrap_or_default(),
                        None,
                    )
                }
                n => anyhow::bail!(
                    "{asked} is ambiguous: {n} branches of removed tasks ({}): give more of the id",
                    names(&removed)
                ),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let ws = &task.workspace;
    let (Some(top), Some(base), Some(name)) = (&ws.repo, &ws.base, &ws.branch) else {
        anyhow::bail!("task {} has no branch: it ran without a workspace", task.id);
    };
    found(
        Path::new(top),
        base,
        name,
        layout,
        task.id.to_string(),
        task.description.clone(),
        Some(task.state),
    )
}

/// A branch of a task whose record is gone.
struct Removed {
    /// The repository it is in.
    top: std::path::PathBuf,
    /// `orch/<id>`.
    name: String,
    /// The task's id.
    id: String,
    /// What the registry remembers of it.
    known: orch_registry::KnownBranch,
}

/// The branches of tasks whose records are gone that `asked` names (a
/// prefix of the id, or of the short id).
fn removed_branches(
    registry: &dyn orch_registry::Store,
    asked: &str,
) -> anyhow::Result<Vec<Removed>> {
    let asked = asked.to_ascii_lowercase();
    if asked.len() < 4 || !asked.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Ok(Vec::new());
    }
    let mut matches = Vec::new();
    for top in registry.repos()? {
        for (name, known) in registry.branches(&top)? {
            let Some(id) = name.strip_prefix("orch/") else {
                continue;
            };
            // A prefix of the id, or of its short id (its last 8 hex digits).
            let hex = id.replace('-', "");
            let short = &hex[hex.len().saturating_sub(orch_registry::SHORT_ID_LEN)..];
            if !known.recorded && (id.starts_with(&asked) || short.starts_with(&asked)) {
                matches.push(Removed {
                    top: top.clone(),
                    id: id.to_owned(),
                    name: name.clone(),
                    known,
                });
            }
        }
    }
    Ok(matches)
}

/// The branch names of `removed`, a few of them.
fn names(removed: &[Removed]) -> String {
    let mut names: Vec<&str> = removed.iter().take(5).map(|r| r.name.as_str()).collect();
    if removed.len() > 5 {
        names.push("…");
    }
    names.join(", ")
}

/// The task's branch `name` in the repository at `top`, which must still
/// hold it.
fn found(
    top: &Path,
    base: &str,
    name: &str,
    layout: Layout,
    id: String,
    description: String,
    state: Option<orch_registry::State>,
) -> anyhow::Result<Branch> {
    // The repository the user started the task in, as orch recorded it
    // when it found it (the one discovery orch does).
    let repo = Repo::discover(top, &layout)?;
    if review::branch_tip(&repo, &layout, name)?.is_none() {
        anyhow::bail!(
            "branch {name} is no longer in {} (deleted by cleanup --branches, or by hand)",
            repo.top.display()
        );
    }
    Ok(Branch {
        repo,
        base: base.to_owned(),
        name: name.to_owned(),
        layout,
        id,
        description,
        state,
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
    if let Some(state) = branch.state.filter(|s| !s.is_terminal()) {
        anyhow::bail!(
            "task {} is {state}: merge its branch once it has ended",
            branch.id
        );
    }
    let way = if args.squash {
        MergeWay::Squash
    } else {
        MergeWay::Merge
    };
    // The description is the task's text: no escape sequence of it gets
    // into the user's history.
    let description = review::plain_text(&branch.description);
    let summary = description.lines().next().unwrap_or_default();
    let message = match way {
        MergeWay::Merge => format!(
            "Merge task {}: {summary}\n\nBranch {}, task {} ({}).",
            uuid::Uuid::parse_str(&branch.id)
                .map_or_else(|_| branch.id.clone(), |id| orch_registry::short_id(&id)),
            branch.name,
            branch.id,
            description
        ),
        MergeWay::Squash => format!(
            "{summary}\n\nSquashed from branch {} of task {}:\n{}",
            branch.name, branch.id, description
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
