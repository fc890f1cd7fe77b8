//! Taking a task's result: what its branch changed against its base
//! (`orch diff`), and bringing it into the user's current branch (`orch
//! merge`).
//!
//! Both go through the hardened git with no system or global config
//! (`isolated`): the task's tree may carry `.gitattributes` naming filter,
//! diff or merge drivers, and none is defined anywhere orch's git looks (a
//! merge also switches off those of the repository's own config), so
//! nothing the task wrote can make the host run a program. Hooks are off as
//! for every call.

use crate::git::{Git, HEAVY_TIMEOUT, Repo};
use crate::lock::RepoLock;
use crate::{Error, Layout};

/// How `orch merge` brings a branch in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeWay {
    /// A merge commit (`git merge --no-ff`), the task's commits kept.
    Merge,
    /// One new commit with the branch's changes (`git merge --squash`).
    Squash,
}

/// What `orch merge` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// The branch is in: the new tip of the user's branch.
    Done {
        /// The commit made.
        commit: String,
    },
    /// The branch had nothing the user's branch lacks.
    AlreadyUpToDate,
    /// git stopped on conflicts, left in the user's tree to resolve (or
    /// `git merge --abort`).
    Conflicts {
        /// The paths in conflict.
        paths: Vec<String>,
    },
}

/// A task's text (its description) as orch puts it in a commit message
/// or a reflog: lines and tabs kept, every other control character and
/// the bidirectional overrides left out, so that `git log` in a terminal
/// shows text and runs no escape sequence the task's author wrote.
pub fn plain_text(text: &str) -> String {
    text.chars()
        .filter(|c| {
            matches!(c, '\n' | '\t')
                || !(c.is_control()
                    || matches!(c, '\u{2028}' | '\u{2029}')
                    || ('\u{202a}'..='\u{202e}').contains(c)
                    || ('\u{2066}'..='\u{2069}').contains(c))
        })
        .collect()
}

/// The tip of `branch` in `repo`, if the branch exists.
pub fn branch_tip(repo: &Repo, layout: &Layout, branch: &str) -> Result<Option<String>, Error> {
    let tip = Git::at(layout, &repo.common_dir)
        .run(
            "read a task's branch",
            &[
                "for-each-ref",
                "--format=%(objectname)",
                &format!("refs/heads/{branch}"),
            ],
        )?
        .trim()
        .to_owned();
    Ok((!tip.is_empty()).then_some(tip))
}

/// What `branch` changed against `base`, as `git diff` prints it (`stat`:
/// as `git diff --stat`; `color`: with colours).
pub fn diff(
    repo: &Repo,
    layout: &Layout,
    base: &str,
    branch: &str,
    stat: bool,
    color: bool,
) -> Result<Vec<u8>, Error> {
    let mut args = vec![
        "diff".to_owned(),
        "--no-ext-diff".into(),
        "--no-textconv".into(),
        if color {
            "--color=always".into()
        } else {
            "--no-color".into()
        },
    ];
    if stat {
        args.push("--stat".into());
    }
    args.extend([base.to_owned(), format!("refs/heads/{branch}"), "--".into()]);
    Git::at(layout, &repo.common_dir)
        .isolated()
        .timeout(HEAVY_TIMEOUT)
        .run_bytes("diff a task's branch", &args)
}

/// Brings `branch` into the branch checked out in `repo`'s working tree,
/// committed with `message` by `identity` (`GIT_AUTHOR_*` and
/// `GIT_COMMITTER_*` pairs: the user's own, read from their config, since
/// this git reads none of it). Refused when tracked files have changes:
/// the user's work in progress is never mixed into the merge.
pub fn merge(
    repo: &Repo,
    layout: &Layout,
    branch: &str,
    way: MergeWay,
    message: &str,
    identity: &[(String, String)],
) -> Result<Merged, Error> {
    let bare = Git::at(layout, &repo.git_dir).run(
        "look at the repository",
        &["rev-parse", "--is-bare-repository"],
    )?;
    if bare == "true" {
        return Err(Error::Refused(format!(
            "{} has no working tree to merge into (fetch {branch} from it and merge it in a clone)",
            repo.top.display()
        )));
    }
    for (marker, what) in [
        ("MERGE_HEAD", "merge"),
        ("CHERRY_PICK_HEAD", "cherry-pick"),
        ("REVERT_HEAD", "revert"),
        ("rebase-merge", "rebase"),
        ("rebase-apply", "rebase"),
    ] {
        if repo.git_dir.join(marker).exists() {
            return Err(Error::Refused(format!(
                "{} is in the middle of a {what}: conclude it or abort it first",
                repo.top.display()
            )));
        }
    }
    let lock = RepoLock::acquire(layout, &repo.common_dir)?;
    let off = drivers_off(repo, layout)?;
    let git = || {
        let mut git = Git::at(layout, &repo.git_dir)
            .work_tree(&repo.top)
            .in_dir(&repo.top)
            .isolated()
            .settings(&off)
            .holding(&lock)
            .timeout(HEAVY_TIMEOUT);
        for (key, value) in identity {
            git = git.env(key, value);
        }
        git
    };
    let changed = git().run_bytes(
        "look for uncommitted changes",
        &["status", "--porcelain=v1", "-z", "--untracked-files=no"],
    )?;
    let count = crate::git::status_entries(&changed);
    if count > 0 {
        return Err(Error::Refused(format!(
            "{} has {count} uncommitted change(s) to tracked files: commit or stash them first",
            repo.top.display()
        )));
    }
    let tip_ref = format!("refs/heads/{branch}");
    let head = git().run("read HEAD", &["rev-parse", "--verify", "HEAD^{commit}"])?;
    let merged = git().run(
        "compare the branch with HEAD",
        &["rev-list", "--count", &format!("HEAD..{tip_ref}")],
    )?;
    if merged.trim() == "0" {
        return Ok(Merged::AlreadyUpToDate);
    }
    // Files the branch adds where the user's tree has an untracked or an
    // ignored file (a `.env`): git's merge would refuse the first but
    // silently replace the second, whatever `--no-overwrite-ignore` says.
    let added = git().run_bytes(
        "list the files the branch adds",
        &[
            "diff",
            "--name-only",
            "-z",
            "--no-renames",
            "--diff-filter=A",
            &format!("HEAD...{tip_ref}"),
        ],
    )?;
    // Each added path, and each directory it needs: a file, a link or
    // anything but a directory of the user's at one of those is in the
    // way (git would replace it with the branch's directory).
    let mut present = std::collections::BTreeSet::new();
    for path in added.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let parents = path
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(|(i, _)| &path[..i]);
        for dir in parents {
            if lstat(repo, dir).is_some_and(|m| !m.is_dir()) {
                present.insert(dir);
            }
        }
        if lstat(repo, path).is_some() {
            present.insert(path);
        }
    }
    if !present.is_empty() {
        let tracked = git().run_bytes("list tracked files", &["ls-files", "-z"])?;
        let tracked: std::collections::HashSet<&[u8]> = tracked.split(|b| *b == 0).collect();
        let in_the_way: Vec<String> = present
            .into_iter()
            .filter(|p| !tracked.contains(p))
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        if !in_the_way.is_empty() {
            return Err(untracked_refusal(repo, &in_the_way));
        }
    }
    let attempt = match way {
        MergeWay::Merge => git().run(
            "merge a task's branch",
            &[
                "merge",
                "--no-ff",
                "--no-edit",
                "--no-overwrite-ignore",
                "-m",
                message,
                &tip_ref,
            ],
        ),
        MergeWay::Squash => git()
            .run(
                "squash a task's branch",
                &["merge", "--squash", "--no-overwrite-ignore", &tip_ref],
            )
            .and_then(|_| {
                let staged = git().run_bytes(
                    "look at the squashed changes",
                    &["diff", "--cached", "--name-only", "-z"],
                )?;
                if staged.is_empty() {
                    return Ok(String::new());
                }
                git().run(
                    "commit the squashed changes",
                    &["commit", "--no-verify", "-m", message],
                )
            }),
    };
    if let Err(error) = attempt {
        let conflicted = git()
            .run_bytes(
                "list conflicts",
                &["diff", "--name-only", "-z", "--diff-filter=U"],
            )
            .unwrap_or_default();
        let paths: Vec<String> = conflicted
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        if !paths.is_empty() {
            return Ok(Merged::Conflicts { paths });
        }
        if let Some(files) = untracked_in_the_way(&error) {
            return Err(untracked_refusal(repo, &files));
        }
        // What git said it could not do, without the command line (the
        // whole message is in it).
        if let Error::Git { stderr, .. } = &error {
            let said: Vec<&str> = stderr
                .split("; ")
                .map(str::trim)
                .filter(|l| l.starts_with("error:") || l.starts_with("fatal:"))
                .collect();
            if !said.is_empty() {
                return Err(Error::Refused(format!(
                    "git could not merge {branch} into {}: {}",
                    repo.top.display(),
                    said.join("; ")
                )));
            }
        }
        return Err(error);
    }
    let commit = git().run("read HEAD", &["rev-parse", "--verify", "HEAD^{commit}"])?;
    if commit == head {
        return Ok(Merged::AlreadyUpToDate);
    }
    Ok(Merged::Done { commit })
}

/// What is at `path` (relative to the top) in the user's tree, not
/// following a link there.
fn lstat(repo: &Repo, path: &[u8]) -> Option<std::fs::Metadata> {
    use std::os::unix::ffi::OsStrExt;
    repo.top
        .join(std::ffi::OsStr::from_bytes(path))
        .symlink_metadata()
        .ok()
}

/// The refusal of a merge that would overwrite `files`, untracked or
/// ignored in the user's tree.
fn untracked_refusal(repo: &Repo, files: &[String]) -> Error {
    let mut named = files
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > 10 {
        named.push_str(&format!(" and {} more", files.len() - 10));
    }
    Error::Refused(format!(
        "{} has files git does not track there that the merge would overwrite ({named}): move or remove them first",
        repo.top.display(),
    ))
}

/// The untracked files of the user's tree (ignored ones too: a task must
/// not replace a `.env` of the user's) that stopped a merge before it
/// began (git names them and changes nothing), if that is why it failed.
fn untracked_in_the_way(error: &Error) -> Option<Vec<String>> {
    let Error::Git { stderr, .. } = error else {
        return None;
    };
    // git's lines, joined by "; ": the heading, one path per line, then
    // "Please move or remove them before you merge."
    let mut lines = stderr.split("; ").map(str::trim);
    lines.find(|l| l.contains("untracked working tree files would be overwritten by"))?;
    let files: Vec<String> = lines
        .take_while(|l| !l.starts_with("Please move") && !l.starts_with("Aborting"))
        .map(str::to_owned)
        .collect();
    (!files.is_empty()).then_some(files)
}

/// Settings that switch off every filter and merge driver the repository's
/// own config defines (no other config is read): the task's
/// `.gitattributes` may name any of them, and none may run while its
/// branch is merged. A filter does nothing; a merge driver is `false`, so a
/// file it would have merged is left in conflict.
fn drivers_off(repo: &Repo, layout: &Layout) -> Result<Vec<String>, Error> {
    let keys = Git::at(layout, &repo.git_dir).isolated().run(
        "read the repository's config",
        &["config", "--local", "--list", "--name-only"],
    )?;
    let mut off = std::collections::BTreeSet::new();
    for key in keys.lines() {
        if let Some(name) = key.strip_prefix("filter.").and_then(|k| k.rsplit_once('.')) {
            for var in ["clean=", "smudge=", "process=", "required=false"] {
                off.insert(format!("filter.{}.{var}", name.0));
            }
        } else if let Some(name) = key.strip_prefix("merge.").and_then(|k| k.rsplit_once('.')) {
            off.insert(format!("merge.{}.driver=false", name.0));
        }
    }
    Ok(off.into_iter().collect())
}
