//! Workspaces against real git: the work comes home, the user's repository
//! changes only by its task branch, and nothing a task writes runs.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::*;

/// A user repository with one commit and an ignored pattern, a home, and a
/// marker path outside everything that hostile tasks try to create.
pub(crate) struct Fixture {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) repo: Repo,
    pub(crate) layout: Layout,
    pub(crate) base: String,
    pub(crate) marker: PathBuf,
}

/// git as the user (or the task) runs it, in `dir`.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub(crate) fn fixture() -> Fixture {
    fixture_with(&[])
}

/// A fixture whose repository is made by `git init` with `init` added.
pub(crate) fn fixture_with(init: &[&str]) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let project = root.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let mut args = vec!["init", "--quiet", "--initial-branch=main"];
    args.extend_from_slice(init);
    git(&project, &args);
    std::fs::write(project.join(".gitignore"), "*.log\n").unwrap();
    std::fs::write(project.join("README"), "hello\n").unwrap();
    git(&project, &["add", "."]);
    git(&project, &["commit", "--quiet", "-m", "init"]);
    let layout = Layout::new(root.join("home"));
    let repo = Repo::discover(&project, &layout).unwrap();
    let base = repo.resolve(&layout, "HEAD").unwrap();
    Fixture {
        marker: root.join("MARKER"),
        tmp,
        repo,
        layout,
        base,
    }
}

impl Fixture {
    pub(crate) fn workspace(&self, id: &str) -> (Workspace, TaskLock) {
        let ws = Workspace::planned(&self.layout, &self.repo, "p", id, &self.base).unwrap();
        let lock = TaskLock::acquire(&self.layout, "p", id).unwrap();
        ws.create(&self.layout, &lock).unwrap();
        (ws, lock)
    }

    /// Everything of the user's repository a task must not change: its
    /// config, hooks, HEAD, index, every ref (but task branches, listed
    /// apart) and the working tree.
    pub(crate) fn user_state(&self) -> (BTreeMap<PathBuf, Vec<u8>>, String) {
        let mut files = BTreeMap::new();
        let top = &self.repo.top;
        let mut stack = vec![top.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(top).unwrap().to_path_buf();
                let s = rel.to_string_lossy();
                // Objects only grow (by the task branch's); logs and
                // FETCH_HEAD are git's own bookkeeping.
                if s.starts_with(".git/objects") || s.starts_with(".git/logs") {
                    continue;
                }
                if s.starts_with(".git/refs/heads/orch") {
                    continue;
                }
                let meta = path.symlink_metadata().unwrap();
                if meta.is_dir() {
                    stack.push(path);
                } else {
                    files.insert(rel, std::fs::read(&path).unwrap_or_default());
                }
            }
        }
        let refs = git(top, &["for-each-ref", "--format=%(refname) %(objectname)"])
            .lines()
            .filter(|l| !l.starts_with("refs/heads/orch/"))
            .collect::<Vec<_>>()
            .join("\n");
        (files, refs)
    }
}

/// Makes `path` an executable script that creates the marker.
pub(crate) fn hostile_script(path: &Path, marker: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_tasks_commits_and_pending_work_land_on_its_branch_and_nothing_else_changes() {
    let f = fixture();
    let before = f.user_state();
    let (ws, lock) = f.workspace("0123abcd");
    // The user's repository gained the branch, at the base.
    assert_eq!(git(&f.repo.top, &["rev-parse", "orch/0123abcd"]), f.base);
    // Git works inside the task's own repository.
    std::fs::write(ws.path.join("committed.txt"), "one\n").unwrap();
    git(&ws.path, &["add", "committed.txt"]);
    git(&ws.path, &["commit", "--quiet", "-m", "from the task"]);
    git(&ws.path, &["branch", "side"]);
    git(&ws.path, &["log", "--oneline"]);
    std::fs::write(ws.path.join("pending.txt"), "two\n").unwrap();
    std::fs::write(ws.path.join("README"), "changed\n").unwrap();
    std::fs::write(ws.path.join("noise.log"), "ignored\n").unwrap();

    // In two halves, as at the end of a run: saved (only read), then gone.
    let saved = ws
        .save_for_removal(&f.layout, &lock, Unsaved::Keep)
        .unwrap();
    assert!(ws.path.join("pending.txt").exists());
    let removed = ws
        .remove(&f.layout, &lock, Unsaved::Keep, Some(saved))
        .unwrap();
    assert!(removed.saved.imported, "{:?}", removed.saved);
    assert!(removed.saved.pending_commit.is_some());
    assert_eq!(removed.saved.warning, None);
    assert!(!ws.path.exists());
    let top = &f.repo.top;
    let files = git(top, &["ls-tree", "-r", "--name-only", "orch/0123abcd"]);
    assert!(
        files.contains("committed.txt") && files.contains("pending.txt"),
        "{files}"
    );
    assert!(
        !files.contains("noise.log"),
        "ignored files stay out: {files}"
    );
    assert_eq!(git(top, &["show", "orch/0123abcd:README"]), "changed");
    assert_eq!(
        git(top, &["log", "-1", "--format=%s", "orch/0123abcd~1"]),
        "from the task"
    );
    assert_eq!(f.user_state(), before, "only the task branch changed");
    assert!(!f.layout.shadow_dir("p", "0123abcd").unwrap().exists());
}

#[test]
fn git_inside_the_task_can_rebase_and_reset() {
    let f = fixture();
    let (ws, lock) = f.workspace("0456");
    std::fs::write(ws.path.join("a.txt"), "a\n").unwrap();
    git(&ws.path, &["add", "."]);
    git(&ws.path, &["commit", "--quiet", "-m", "a"]);
    std::fs::write(ws.path.join("b.txt"), "b\n").unwrap();
    git(&ws.path, &["add", "."]);
    git(&ws.path, &["commit", "--quiet", "-m", "b"]);
    git(&ws.path, &["rebase", "--quiet", "-X", "theirs", "HEAD~1"]);
    git(&ws.path, &["status", "--short"]);
    git(&ws.path, &["diff", "HEAD~1"]);
    let saved = ws.save(&f.layout, &lock).unwrap();
    assert!(
        saved.imported && saved.pending_commit.is_none(),
        "{saved:?}"
    );
    assert_eq!(
        git(&f.repo.top, &["log", "-1", "--format=%s", "orch/0456"]),
        "b"
    );
}

#[test]
fn the_container_gets_its_workspace_and_the_users_objects_read_only() {
    let f = fixture();
    let (ws, _lock) = f.workspace("0789");
    let mounts = ws.mounts();
    assert_eq!(mounts[0].source, ws.path);
    assert!(!mounts[0].read_only);
    let objects = f.repo.common_dir.join("objects").canonicalize().unwrap();
    assert!(mounts.iter().any(|m| m.source == objects && m.read_only));
    assert!(
        !mounts
            .iter()
            .any(|m| m.source == f.repo.common_dir || m.source == f.repo.top),
        "never the user's git directory or working tree: {mounts:?}"
    );
}

#[test]
fn hooks_and_config_the_task_writes_never_run_on_the_host() {
    let f = fixture();
    let before = f.user_state();
    let (ws, lock) = f.workspace("0aaa");
    let hooks = ws.path.join(".git/hooks");
    for hook in [
        "post-commit",
        "pre-commit",
        "post-checkout",
        "reference-transaction",
        "post-index-change",
        "pre-auto-gc",
        "post-rewrite",
    ] {
        hostile_script(&hooks.join(hook), &f.marker);
    }
    let script = ws.path.join("evil.sh");
    hostile_script(&script, &f.marker);
    let config = ws.path.join(".git/config");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[core]\n\tfsmonitor = {s}\n\thooksPath = {h}\n[filter \"evil\"]\n\tclean = {s}\n\tsmudge = {s}\n\trequired = true\n[diff \"evil\"]\n\ttextconv = {s}\n",
        s = script.display(),
        h = hooks.display()
    ));
    std::fs::write(&config, text).unwrap();
    std::fs::write(ws.path.join(".gitattributes"), "* filter=evil diff=evil\n").unwrap();
    std::fs::write(ws.path.join("work.txt"), "work\n").unwrap();
    let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    assert!(
        !f.marker.exists(),
        "a task-written hook or command ran on the host"
    );
    assert!(removed.saved.imported);
    assert_eq!(git(&f.repo.top, &["show", "orch/0aaa:work.txt"]), "work");
    assert_eq!(f.user_state(), before);
}

#[test]
fn a_git_directory_the_task_points_elsewhere_is_never_followed() {
    let f = fixture();
    let before = f.user_state();
    // An evil repository with hooks and config of its own.
    let evil = f.tmp.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    git(&evil, &["init", "--quiet"]);
    let script = evil.join("run.sh");
    hostile_script(&script, &f.marker);
    for hook in [
        "post-commit",
        "pre-commit",
        "reference-transaction",
        "post-checkout",
    ] {
        hostile_script(&evil.join(".git/hooks").join(hook), &f.marker);
    }
    std::fs::write(
        evil.join(".git/config"),
        format!("[core]\n\tfsmonitor = {}\n", script.display()),
    )
    .unwrap();
    for (n, replace) in ["file", "symlink", "commondir", "deleted"]
        .iter()
        .enumerate()
    {
        let id = format!("0bb{n}");
        let (ws, lock) = f.workspace(&id);
        std::fs::write(ws.path.join("work.txt"), format!("{replace}\n")).unwrap();
        let dotgit = ws.path.join(".git");
        match *replace {
            "file" => {
                std::fs::remove_dir_all(&dotgit).unwrap();
                std::fs::write(
                    &dotgit,
                    format!("gitdir: {}\n", evil.join(".git").display()),
                )
                .unwrap();
            }
            "symlink" => {
                std::fs::remove_dir_all(&dotgit).unwrap();
                std::os::unix::fs::symlink(evil.join(".git"), &dotgit).unwrap();
            }
            "commondir" => {
                std::fs::write(
                    dotgit.join("commondir"),
                    evil.join(".git").display().to_string(),
                )
                .unwrap();
            }
            _ => std::fs::remove_dir_all(&dotgit).unwrap(),
        }
        let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
        assert!(
            !f.marker.exists(),
            "{replace}: something of the evil repository ran"
        );
        if *replace != "commondir" {
            assert!(
                removed
                    .saved
                    .warning
                    .as_deref()
                    .is_some_and(|w| w.contains("not used")),
                "{replace}: {:?}",
                removed.saved
            );
        }
        assert_eq!(
            git(&f.repo.top, &["show", &format!("orch/{id}:work.txt")]),
            *replace,
            "{replace}: the files were saved anyway"
        );
    }
    assert_eq!(f.user_state(), before);
}

#[test]
fn a_workspace_where_nothing_ran_is_unwound_with_its_branch() {
    let f = fixture();
    let before = f.user_state();
    let ws = Workspace::planned(&f.layout, &f.repo, "p", "0ddd", &f.base).unwrap();
    let lock = TaskLock::acquire(&f.layout, "p", "0ddd").unwrap();
    ws.create(&f.layout, &lock).unwrap();
    ws.unwind(&f.layout, &lock).unwrap();
    assert!(!ws.path.exists());
    assert_eq!(git(&f.repo.top, &["branch", "--list", "orch/*"]), "");
    assert_eq!(f.user_state(), before);
}

#[test]
fn a_bad_ref_and_a_non_repository_are_clear_errors() {
    let f = fixture();
    let err = f.repo.resolve(&f.layout, "no-such-ref").unwrap_err();
    assert!(
        err.to_string().contains("\"no-such-ref\" names no commit"),
        "{err}"
    );
    let plain = f.tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    assert!(matches!(
        Repo::discover(&plain, &f.layout),
        Err(Error::NotARepository { .. })
    ));
    // A ref that looks like an option is not taken for one.
    assert!(f.repo.resolve(&f.layout, "--output=/tmp/x").is_err());
}

#[test]
fn task_branches_are_judged_from_the_recorded_base_and_deleted_only_there() {
    let f = fixture();
    let (empty, lock) = f.workspace("0eee");
    empty.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    let (full, lock) = f.workspace("0fff");
    std::fs::write(full.path.join("out.txt"), "data").unwrap();
    full.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    let bases: BTreeMap<String, String> = [
        ("orch/0eee".to_owned(), f.base.clone()),
        ("orch/0fff".to_owned(), f.base.clone()),
    ]
    .into();
    let found = task_branches(&f.repo, &f.layout, &bases).unwrap();
    let full_tip = git(&f.repo.top, &["rev-parse", "orch/0fff"]);
    assert_eq!(
        found,
        vec![
            TaskBranch {
                name: "orch/0eee".into(),
                tip: f.base.clone(),
                holds: Holds::Nothing,
            },
            TaskBranch {
                name: "orch/0fff".into(),
                tip: full_tip.clone(),
                holds: Holds::Commits(1),
            }
        ]
    );
    assert!(
        task_branches(&f.repo, &f.layout, &BTreeMap::new())
            .unwrap()
            .is_empty(),
        "a branch whose base orch does not know is not judged"
    );
    delete_branch(&f.repo, &f.layout, "orch/0eee", &f.base).unwrap();
    assert!(
        delete_branch(&f.repo, &f.layout, "orch/0fff", &f.base).is_err(),
        "moved: kept"
    );
    assert_eq!(
        git(&f.repo.top, &["branch", "--list", "orch/*"]).trim_start_matches(['*', ' ']),
        "orch/0fff"
    );
    // Merged into the checked-out branch, it loses nothing either.
    git(&f.repo.top, &["merge", "-q", "--no-edit", "orch/0fff"]);
    assert_eq!(
        task_branches(&f.repo, &f.layout, &bases).unwrap(),
        vec![TaskBranch {
            name: "orch/0fff".into(),
            tip: full_tip.clone(),
            holds: Holds::Merged,
        }]
    );
    delete_branch(&f.repo, &f.layout, "orch/0fff", &full_tip).unwrap();
}

#[test]
fn a_branch_started_from_the_working_tree_holds_that_tree() {
    let f = fixture();
    f.layout.prepare().unwrap();
    assert_eq!(
        f.repo.snapshot_worktree(&f.layout, "clean").unwrap(),
        f.base,
        "nothing uncommitted: HEAD itself"
    );
    std::fs::write(f.repo.top.join("README"), "edited, not committed\n").unwrap();
    let snapshot = f.repo.snapshot_worktree(&f.layout, "a task\nmore").unwrap();
    assert_eq!(
        f.repo.snapshot_parent(&f.layout, &snapshot).unwrap(),
        Some(f.base.clone())
    );
    assert_eq!(f.repo.work_start(&f.layout, &snapshot).unwrap(), f.base);
    assert_eq!(f.repo.work_start(&f.layout, &f.base).unwrap(), f.base);
    // A commit of the user's with the same subject is not taken for one.
    git(
        &f.repo.top,
        &["commit", "-qam", "orch: the working tree of /x"],
    );
    let own = git(&f.repo.top, &["rev-parse", "HEAD"]);
    assert_eq!(f.repo.snapshot_parent(&f.layout, &own).unwrap(), None);
    git(&f.repo.top, &["reset", "-q", "--hard", &f.base]);

    // A task that changed nothing: its branch still holds the snapshot.
    let ws = Workspace::planned(&f.layout, &f.repo, "p", "0aaa", &snapshot).unwrap();
    let lock = TaskLock::acquire(&f.layout, "p", "0aaa").unwrap();
    ws.create(&f.layout, &lock).unwrap();
    ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    let bases: BTreeMap<String, String> = [("orch/0aaa".to_owned(), snapshot.clone())].into();
    assert_eq!(
        task_branches(&f.repo, &f.layout, &bases).unwrap(),
        vec![TaskBranch {
            name: "orch/0aaa".into(),
            tip: snapshot.clone(),
            holds: Holds::Commits(1),
        }]
    );
}

#[test]
fn sixteen_tasks_on_one_repository_at_once_all_succeed() {
    let f = fixture();
    let ids: Vec<String> = (0..16).map(|i| format!("1{i:03x}")).collect();
    std::thread::scope(|s| {
        for id in &ids {
            let f = &f;
            s.spawn(move || {
                let ws = Workspace::planned(&f.layout, &f.repo, "p", id, &f.base).unwrap();
                let lock = TaskLock::acquire(&f.layout, "p", id).unwrap();
                ws.create(&f.layout, &lock).unwrap();
                std::fs::write(ws.path.join("mine.txt"), id).unwrap();
                ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
            });
        }
    });
    for id in &ids {
        assert_eq!(
            git(&f.repo.top, &["show", &format!("orch/{id}:mine.txt")]),
            *id
        );
    }
    assert!(f.layout.task_dirs().unwrap().is_empty());
}

#[test]
fn files_and_directories_orch_makes_are_private_whatever_the_umask() {
    let f = fixture();
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let lock = TaskLock::acquire(&f.layout, "p", "0abc").unwrap();
    f.layout.prepare().unwrap();
    rustix::process::umask(old);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&f.layout.locks_dir("p").unwrap()), 0o700);
    assert_eq!(
        mode(&f.layout.locks_dir("p").unwrap().join("0abc.lock")),
        0o600
    );
    assert_eq!(mode(&f.layout.empty_dir()), 0o700);
    drop(lock);
}

#[test]
fn a_directory_deleted_behind_orchs_back_is_fine() {
    let f = fixture();
    let (ws, lock) = f.workspace("0aab");
    std::fs::remove_dir_all(&ws.path).unwrap();
    ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    assert_eq!(git(&f.repo.top, &["rev-parse", "orch/0aab"]), f.base);
}

#[test]
fn repositories_the_task_made_inside_its_workspace_are_saved_as_files() {
    let f = fixture();
    let (ws, lock) = f.workspace("0a01");
    // One with no commit, one with a commit and a repository inside it.
    let empty = ws.path.join("vendor/empty");
    std::fs::create_dir_all(&empty).unwrap();
    git(&empty, &["init", "--quiet"]);
    std::fs::write(empty.join("a.txt"), "a").unwrap();
    let full = ws.path.join("full");
    std::fs::create_dir_all(&full).unwrap();
    git(&full, &["init", "--quiet"]);
    std::fs::write(full.join("b.txt"), "b").unwrap();
    std::fs::write(full.join(".gitignore"), "*.tmp\n").unwrap();
    std::fs::write(full.join("skip.tmp"), "ignored").unwrap();
    git(&full, &["add", "."]);
    git(&full, &["commit", "--quiet", "-m", "inner"]);
    let deeper = full.join("deeper");
    std::fs::create_dir_all(&deeper).unwrap();
    git(&deeper, &["init", "--quiet"]);
    std::fs::write(deeper.join("c.txt"), "c").unwrap();
    std::fs::write(ws.path.join("top.txt"), "top").unwrap();
    let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    assert!(
        removed
            .saved
            .warning
            .as_deref()
            .is_some_and(|w| w.contains("saved as plain files")),
        "{:?}",
        removed.saved
    );
    let files = git(&f.repo.top, &["ls-tree", "-r", "--name-only", "orch/0a01"]);
    for wanted in [
        "top.txt",
        "vendor/empty/a.txt",
        "full/b.txt",
        "full/.gitignore",
        "full/deeper/c.txt",
    ] {
        assert!(files.lines().any(|l| l == wanted), "{wanted} in {files}");
    }
    assert!(
        !files.contains("skip.tmp"),
        "its ignore rules hold: {files}"
    );
    assert!(!files.contains(".git/"), "no repository internals: {files}");
}

/// A file that costs the task nothing (sparse) but would make orch read
/// and compress its whole length is left out of the saved work: the rest
/// lands on the branch, and the workspace is kept, not removed, so nothing
/// is lost. Cleanup's discard removes it anyway.
#[test]
fn a_huge_sparse_file_is_left_out_and_its_workspace_kept() {
    let f = fixture();
    let (ws, lock) = f.workspace("5a5a5a5a");
    std::fs::write(ws.path.join("small.txt"), "kept\n").unwrap();
    let huge = std::fs::File::create(ws.path.join("huge.bin")).unwrap();
    // A tracked file grown past the limit is left at its committed content.
    huge.set_len(64 << 30).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(ws.path.join("README"))
        .unwrap()
        .set_len(200 << 20)
        .unwrap();

    let started = std::time::Instant::now();
    let err = ws
        .remove(&f.layout, &lock, Unsaved::Keep, None)
        .unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "64 GiB were not read"
    );
    let text = err.to_string();
    assert!(
        matches!(err, crate::Error::TooLargeToSave { left_out: 2, .. }),
        "{text}"
    );
    assert!(
        text.contains("huge.bin") && text.contains("README"),
        "{text}"
    );
    assert!(ws.path.join("huge.bin").exists(), "the workspace is kept");
    let top = &f.repo.top;
    let files = git(top, &["ls-tree", "-r", "--name-only", "orch/5a5a5a5a"]);
    assert!(files.contains("small.txt"), "{files}");
    assert!(!files.contains("huge.bin"), "{files}");
    let readme = git(top, &["cat-file", "-s", "orch/5a5a5a5a:README"]);
    assert!(readme.parse::<u64>().unwrap() < 1 << 20, "{readme}");

    // Retention removes it, saying what was left out.
    let removed = ws
        .remove(&f.layout, &lock, Unsaved::KeepOnFailure, None)
        .unwrap();
    assert_eq!(removed.saved.left_out, 2);
    let warning = removed.saved.warning.unwrap_or_default();
    assert!(warning.contains("huge.bin"), "{warning}");
    assert!(!ws.path.exists());
}

/// A file the task turned into a directory, and a directory it turned into
/// a file, are saved as they are now.
#[test]
fn files_and_directories_that_swapped_places_are_saved() {
    let f = fixture();
    let (ws, lock) = f.workspace("d1d1d1d1");
    std::fs::create_dir(ws.path.join("dir")).unwrap();
    std::fs::write(ws.path.join("dir/inside"), "x\n").unwrap();
    git(&ws.path, &["add", "dir"]);
    git(&ws.path, &["commit", "--quiet", "-m", "a directory"]);
    std::fs::remove_dir_all(ws.path.join("dir")).unwrap();
    std::fs::write(ws.path.join("dir"), "now a file\n").unwrap();
    std::fs::remove_file(ws.path.join("README")).unwrap();
    std::fs::create_dir(ws.path.join("README")).unwrap();
    std::fs::write(ws.path.join("README/inside"), "now a directory\n").unwrap();

    let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    assert!(removed.saved.pending_commit.is_some());
    let files = git(
        &f.repo.top,
        &["ls-tree", "-r", "--name-only", "orch/d1d1d1d1"],
    );
    let files: Vec<&str> = files.lines().collect();
    assert!(
        files.contains(&"dir") && files.contains(&"README/inside"),
        "{files:?}"
    );
    assert!(
        !files.contains(&"dir/inside") && !files.contains(&"README"),
        "{files:?}"
    );
}

/// A large file the task committed is held to the save's budget as an
/// uncommitted one is: its commit does not come home, the file is left out
/// and named, the rest of the work comes home, and the workspace is kept.
#[test]
fn a_large_file_the_task_committed_is_held_to_the_budget() {
    let f = fixture();
    let (ws, lock) = f.workspace("b1b1b1b1");
    let big = std::fs::File::create(ws.path.join("big.bin")).unwrap();
    big.set_len((100 << 20) + 1).unwrap();
    git(&ws.path, &["add", "big.bin"]);
    git(&ws.path, &["commit", "--quiet", "-m", "a big file"]);
    std::fs::write(ws.path.join("new.txt"), "new\n").unwrap();

    let err = ws
        .remove(&f.layout, &lock, Unsaved::Keep, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::TooLargeToSave { left_out: 1, .. }),
        "{err}"
    );
    assert!(ws.path.join("big.bin").exists(), "kept");
    let files = git(
        &f.repo.top,
        &["ls-tree", "-r", "--name-only", "orch/b1b1b1b1"],
    );
    assert!(
        !files.contains("big.bin") && files.contains("new.txt"),
        "{files}"
    );
}

/// A directory of the tree replaced by a symbolic link (out of the
/// workspace, inside it, or dangling) is saved as that link, and the rest
/// of the work with it.
#[test]
fn a_directory_replaced_by_a_link_is_saved_with_the_rest() {
    for (n, target) in ["/etc", "other", "/nonexistent"].into_iter().enumerate() {
        let f = fixture();
        let id = format!("c{n}c{n}c{n}c{n}");
        let (ws, lock) = f.workspace(&id);
        for dir in ["dir", "other"] {
            std::fs::create_dir(ws.path.join(dir)).unwrap();
            std::fs::write(ws.path.join(dir).join("inside"), "x\n").unwrap();
        }
        git(&ws.path, &["add", "dir", "other"]);
        git(&ws.path, &["commit", "--quiet", "-m", "directories"]);
        std::fs::remove_dir_all(ws.path.join("dir")).unwrap();
        std::os::unix::fs::symlink(target, ws.path.join("dir")).unwrap();
        std::fs::write(ws.path.join("unrelated"), "new\n").unwrap();

        let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
        assert!(removed.saved.pending_commit.is_some(), "{target}");
        let branch = format!("orch/{id}");
        let files = git(&f.repo.top, &["ls-tree", "-r", &branch]);
        assert!(
            files
                .lines()
                .any(|l| l.starts_with("120000") && l.ends_with("\tdir")),
            "{target}: {files}"
        );
        assert!(!files.contains("dir/inside"), "{target}: {files}");
        assert!(files.contains("\tunrelated"), "{target}: {files}");
        assert!(files.contains("\tother/inside"), "{target}: {files}");
    }
}

/// A repository of SHA-256 objects: the task's commits and pending work
/// come home as in any other.
#[test]
fn work_in_a_sha256_repository_is_saved() {
    let f = fixture_with(&["--object-format=sha256"]);
    let (ws, lock) = f.workspace("a256a256");
    std::fs::write(ws.path.join("committed.txt"), "c\n").unwrap();
    git(&ws.path, &["add", "committed.txt"]);
    git(
        &ws.path,
        &["commit", "--quiet", "-m", "committed by the task"],
    );
    std::fs::write(ws.path.join("pending.txt"), "p\n").unwrap();

    let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    let tip = removed.saved.tip.unwrap();
    assert_eq!(tip.len(), 64, "{tip}");
    let branch = "orch/a256a256";
    let files = git(&f.repo.top, &["ls-tree", "-r", "--name-only", branch]);
    assert!(
        files.contains("committed.txt") && files.contains("pending.txt"),
        "{files}"
    );
    let log = git(&f.repo.top, &["log", "--format=%s", branch]);
    assert!(log.contains("committed by the task"), "{log}");
    git(&f.repo.top, &["fsck", "--strict"]);
}

/// A FIFO or a socket where a tracked file was (or new ones) holds nothing
/// git can store: it is absent from the branch and named, and neither the
/// task's commit nor the rest of its work is lost for it.
#[test]
fn fifos_and_sockets_do_not_stop_the_save() {
    let f = fixture();
    let (ws, lock) = f.workspace("f1f1f1f1");
    std::fs::write(ws.path.join("tracked.txt"), "x\n").unwrap();
    git(&ws.path, &["add", "tracked.txt"]);
    git(
        &ws.path,
        &["commit", "--quiet", "-m", "committed by the task"],
    );
    std::fs::remove_file(ws.path.join("tracked.txt")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        ws.path.join("tracked.txt").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(ws.path.join("new.sock")).unwrap();
    std::fs::write(ws.path.join("keep.txt"), "keep\n").unwrap();

    let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    assert!(!ws.path.exists());
    let warning = removed.saved.warning.clone().unwrap_or_default();
    assert!(
        warning.contains("tracked.txt") && warning.contains("git cannot store"),
        "{warning}"
    );
    let branch = "orch/f1f1f1f1";
    let files = git(&f.repo.top, &["ls-tree", "-r", "--name-only", branch]);
    assert!(files.contains("keep.txt"), "{files}");
    assert!(
        !files.contains("tracked.txt") && !files.contains("new.sock"),
        "{files}"
    );
    let log = git(&f.repo.top, &["log", "--format=%s", branch]);
    assert!(log.contains("committed by the task"), "{log}");
}

/// A large file the task committed and then renamed, and a copy of it:
/// both are held to the budget, as anything the task brings is.
#[test]
fn a_renamed_large_file_is_held_to_the_budget_too() {
    let f = fixture();
    let (ws, lock) = f.workspace("e1e1e1e1");
    let size = (100 << 20) + 1;
    std::fs::File::create(ws.path.join("big.bin"))
        .unwrap()
        .set_len(size)
        .unwrap();
    git(&ws.path, &["add", "big.bin"]);
    git(&ws.path, &["commit", "--quiet", "-m", "a big file"]);
    std::fs::rename(ws.path.join("big.bin"), ws.path.join("renamed.bin")).unwrap();
    std::fs::File::create(ws.path.join("copy.bin"))
        .unwrap()
        .set_len(size)
        .unwrap();

    let removed = ws
        .remove(&f.layout, &lock, Unsaved::KeepOnFailure, None)
        .unwrap();
    assert_eq!(removed.saved.left_out, 2, "{:?}", removed.saved);
    let files = git(
        &f.repo.top,
        &["ls-tree", "-r", "--name-only", "orch/e1e1e1e1"],
    );
    let files: Vec<&str> = files.lines().collect();
    for name in ["big.bin", "renamed.bin", "copy.bin"] {
        assert!(!files.contains(&name), "{name}: {files:?}");
    }
}

#[test]
fn a_description_reaches_commit_messages_as_plain_text() {
    assert_eq!(
        crate::review::plain_text(
            "fix\u{1b}]0;TITLE\u{7}\u{1b}[2J it\n\tnow\r\u{9b}31m\u{202e}x\u{2028}y"
        ),
        "fix]0;TITLE[2J it\n\tnow31mxy"
    );
}
