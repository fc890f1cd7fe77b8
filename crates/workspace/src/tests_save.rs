//! The save against real git, entry kind by entry kind: the branch holds
//! exactly what the task left, nothing more, nothing less; and against
//! what a hostile task can leave for the save to parse.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::tests::{Fixture, fixture, git, hostile_script};
use crate::*;

/// Something a task does to its workspace.
type Change<'a> = &'a dyn Fn(&Path);

/// The branch's tree as `ls-tree -r` lines (mode, type, id, path).
fn tree(f: &Fixture, id: &str) -> Vec<String> {
    git(&f.repo.top, &["ls-tree", "-r", &format!("orch/{id}")])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn entry<'a>(tree: &'a [String], path: &str) -> Option<&'a str> {
    tree.iter()
        .find(|l| l.ends_with(&format!("\t{path}")))
        .map(String::as_str)
}

/// A fixture whose repository has a submodule at `vendor/lib`, as a second
/// commit on top of the fixture's first.
fn with_submodule() -> (Fixture, String) {
    let f = fixture();
    let lib = f.tmp.path().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(lib.join("lib.c"), "int x;\n").unwrap();
    git(&lib, &["add", "."]);
    git(&lib, &["commit", "--quiet", "-m", "lib"]);
    let pinned = git(&lib, &["rev-parse", "HEAD"]);
    git(
        &f.repo.top,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "--quiet",
            "add",
            lib.to_str().unwrap(),
            "vendor/lib",
        ],
    );
    git(&f.repo.top, &["commit", "--quiet", "-m", "a submodule"]);
    let base = f.repo.resolve(&f.layout, "HEAD").unwrap();
    (Fixture { base, ..f }, pinned)
}

/// A task that changed nothing makes no commit: its branch stays at the
/// base, a submodule with it.
#[test]
fn a_task_that_changes_nothing_makes_no_commit_and_keeps_its_submodules() {
    let (f, pinned) = with_submodule();
    let (ws, lock) = f.workspace("5b0d");
    // The submodule's directory is there, empty, as a checkout leaves it.
    assert!(ws.path.join("vendor/lib").is_dir());
    let saved = ws.save(&f.layout, &lock).unwrap();
    assert_eq!(saved.pending_commit, None, "{saved:?}");
    assert_eq!(saved.tip.as_deref(), Some(f.base.as_str()));
    assert_eq!(git(&f.repo.top, &["rev-parse", "orch/5b0d"]), f.base);

    // With other work, the submodule stays exactly as it was.
    std::fs::write(ws.path.join("new.txt"), "new\n").unwrap();
    let saved = ws.save(&f.layout, &lock).unwrap();
    assert!(saved.pending_commit.is_some(), "{saved:?}");
    let tree = tree(&f, "5b0d");
    let lib = entry(&tree, "vendor/lib").unwrap_or_default();
    assert!(
        lib.starts_with("160000 commit") && lib.contains(&pinned),
        "{tree:?}"
    );
    assert!(entry(&tree, "new.txt").is_some());
    let diff = git(
        &f.repo.top,
        &["diff", "--name-status", &f.base, "orch/5b0d"],
    );
    assert_eq!(diff, "A\tnew.txt", "only what the task did");
}

/// A submodule the task moved in its own commit is kept as it recorded
/// it; one it checked out (a `.git` file and files inside) is not turned
/// into plain files.
#[test]
fn a_submodule_the_task_moved_or_checked_out_stays_a_submodule() {
    let (f, pinned) = with_submodule();
    let (ws, lock) = f.workspace("5b0e");
    let moved = "1234567890123456789012345678901234567890";
    git(
        &ws.path,
        &[
            "update-index",
            "--cacheinfo",
            &format!("160000,{moved},vendor/lib"),
        ],
    );
    git(&ws.path, &["commit", "--quiet", "-m", "bump the submodule"]);
    // And checked out by hand inside: a gitdir file, a file of its own.
    std::fs::write(
        ws.path.join("vendor/lib/.git"),
        "gitdir: ../../.git/modules/vendor/lib\n",
    )
    .unwrap();
    std::fs::write(ws.path.join("vendor/lib/lib.c"), "int y;\n").unwrap();
    let saved = ws.save(&f.layout, &lock).unwrap();
    assert!(
        saved.imported && saved.pending_commit.is_none(),
        "{saved:?}"
    );
    let tree = tree(&f, "5b0e");
    let lib = entry(&tree, "vendor/lib").unwrap_or_default();
    assert!(
        lib.starts_with("160000 commit") && lib.contains(moved),
        "{tree:?}"
    );
    assert!(!lib.contains(&pinned));
    assert!(entry(&tree, "vendor/lib/lib.c").is_none(), "{tree:?}");
}

/// The task put something else where a submodule was: a file (staged as
/// one, as `git add -A` would), or a repository of its own making (its
/// files staged as plain files, as any repository nested in the work).
/// Nothing of it is lost.
#[test]
fn what_the_task_put_where_a_submodule_was_is_saved() {
    let (f, _) = with_submodule();
    let (ws, lock) = f.workspace("5b1f");
    let lib = ws.path.join("vendor/lib");
    let _ = std::fs::remove_dir_all(&lib);
    std::fs::write(&lib, "a file now\n").unwrap();
    ws.save(&f.layout, &lock).unwrap();
    let first = tree(&f, "5b1f");
    let entry_now = entry(&first, "vendor/lib").unwrap_or_default();
    assert!(entry_now.starts_with("100644 blob"), "{first:?}");

    let (ws, lock) = f.workspace("5b20");
    let lib = ws.path.join("vendor/lib");
    let _ = std::fs::remove_dir_all(&lib);
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, &["init", "--quiet"]);
    std::fs::write(lib.join("z"), "z\n").unwrap();
    git(&lib, &["add", "z"]);
    git(&lib, &["commit", "--quiet", "-m", "z"]);
    let saved = ws.save(&f.layout, &lock).unwrap();
    let second = tree(&f, "5b20");
    assert!(entry(&second, "vendor/lib/z").is_some(), "{second:?}");
    assert!(
        saved.warning.unwrap_or_default().contains("vendor/lib/"),
        "named as saved as plain files"
    );
}

/// Every other kind of entry, one task each: the branch holds what the
/// task left, and a task that touched nothing has no commit.
#[test]
fn each_kind_of_entry_is_saved_as_the_task_left_it() {
    let f = fixture();
    let top = &f.repo.top;
    // The user's tree: a link, an executable, a tracked file under an
    // ignore pattern, an LFS pointer under a filter nobody defines, a file
    // committed with CRLF before `text=auto` came.
    std::os::unix::fs::symlink("README", top.join("link")).unwrap();
    std::fs::write(top.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(top.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(top.join("kept.log"), "tracked though ignored\n").unwrap();
    std::fs::write(top.join("crlf.txt"), "one\r\ntwo\r\n").unwrap();
    std::fs::write(
        top.join("big.bin"),
        "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n",
    )
    .unwrap();
    git(top, &["add", "-f", "."]);
    git(top, &["commit", "--quiet", "-m", "kinds"]);
    std::fs::write(
        top.join(".gitattributes"),
        "* text=auto\n*.bin filter=lfs diff=lfs merge=lfs -text\n",
    )
    .unwrap();
    git(top, &["add", ".gitattributes"]);
    git(top, &["commit", "--quiet", "-m", "attributes"]);
    let base = f.repo.resolve(&f.layout, "HEAD").unwrap();
    let f = Fixture { base, ..f };

    // Nothing touched: no commit, whatever the attributes say.
    let (ws, lock) = f.workspace("4a00");
    let saved = ws.save(&f.layout, &lock).unwrap();
    assert_eq!(saved.pending_commit, None, "untouched: {saved:?}");

    // Each change, and only it.
    let cases: [(&str, Change, &str); 7] = [
        (
            "4a01",
            &|ws: &Path| {
                std::fs::set_permissions(ws.join("README"), std::fs::Permissions::from_mode(0o755))
                    .unwrap();
            },
            "M\tREADME",
        ),
        (
            "4a02",
            &|ws: &Path| {
                std::fs::remove_file(ws.join("link")).unwrap();
                std::os::unix::fs::symlink("run.sh", ws.join("link")).unwrap();
            },
            "M\tlink",
        ),
        (
            "4a03",
            &|ws: &Path| std::fs::write(ws.join("kept.log"), "changed\n").unwrap(),
            "M\tkept.log",
        ),
        (
            "4a04",
            &|ws: &Path| std::fs::rename(ws.join("README"), ws.join("readme")).unwrap(),
            "D\tREADME\nA\treadme",
        ),
        (
            "4a05",
            &|ws: &Path| {
                // A sparse checkout: README leaves the work tree on purpose.
                git(ws, &["sparse-checkout", "set", "--no-cone", "/run.sh"]);
                assert!(!ws.join("README").exists());
                std::fs::write(ws.join("run.sh"), "#!/bin/sh\nexit 0\n").unwrap();
            },
            "M\trun.sh",
        ),
        (
            "4a06",
            &|ws: &Path| {
                // Marked unchanged: git inside would not take it.
                git(ws, &["update-index", "--assume-unchanged", "crlf.txt"]);
                std::fs::write(ws.join("crlf.txt"), "other\r\n").unwrap();
                std::fs::write(ws.join("new.txt"), "new\n").unwrap();
            },
            "A\tnew.txt",
        ),
        (
            "4a07",
            &|ws: &Path| std::fs::write(ws.join("crlf.txt"), "one\r\ntwo\r\nthree\r\n").unwrap(),
            "M\tcrlf.txt",
        ),
    ];
    for (id, change, wanted) in cases {
        let (ws, lock) = f.workspace(id);
        change(&ws.path);
        let saved = ws.save(&f.layout, &lock).unwrap();
        assert!(saved.pending_commit.is_some(), "{id}: {saved:?}");
        let diff = git(
            &f.repo.top,
            &[
                "diff",
                "--no-renames",
                "--name-status",
                &f.base,
                &format!("orch/{id}"),
            ],
        );
        assert_eq!(diff, wanted, "{id}");
    }
    let tree = tree(&f, "4a01");
    assert!(entry(&tree, "README").unwrap().starts_with("100755"));
    let tree_link = git(&f.repo.top, &["cat-file", "-p", "orch/4a02:link"]);
    assert_eq!(tree_link, "run.sh");
    let crlf = git(&f.repo.top, &["cat-file", "-p", "orch/4a07:crlf.txt"]);
    assert!(
        crlf.contains("one\r\ntwo\r\nthree"),
        "the line ends stay as they were: {crlf:?}"
    );
}

/// A line of the task's alternates that names another repository on the
/// host (here with a trailing space, which git keeps and a trimming reader
/// drops) never lets the save read from it: a blob only that repository
/// holds, named by the task's commit, does not reach the user's
/// repository.
#[test]
fn objects_the_task_names_in_another_repository_never_come_home() {
    let f = fixture();
    let other = f.tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    git(&other, &["init", "--quiet"]);
    std::fs::write(other.join("secret"), "the other repository's secret\n").unwrap();
    let secret = git(&other, &["hash-object", "-w", "secret"]);

    let (ws, lock) = f.workspace("0ccd");
    let objects = ws.path.join(".git/objects");
    std::os::unix::fs::symlink(f.repo.common_dir.join("objects"), ws.path.join("lnk")).unwrap();
    std::os::unix::fs::symlink(other.join(".git/objects"), ws.path.join("lnk ")).unwrap();
    let mut alternates = std::fs::read_to_string(objects.join("info/alternates")).unwrap();
    alternates.push_str("../../lnk \n");
    std::fs::write(objects.join("info/alternates"), alternates).unwrap();
    // The task's commit names the secret; git inside found it there.
    git(
        &ws.path,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("100644,{secret},stolen"),
        ],
    );
    git(&ws.path, &["commit", "--quiet", "-m", "steal"]);
    std::fs::write(ws.path.join("work.txt"), "work\n").unwrap();

    let saved = ws.save(&f.layout, &lock).unwrap();
    assert!(!saved.imported, "{saved:?}");
    assert!(
        saved
            .warning
            .as_deref()
            .is_some_and(|w| w.contains("could not be brought in") || w.contains("not used")),
        "{saved:?}"
    );
    let found = Command::new("git")
        .arg("-C")
        .arg(&f.repo.top)
        .args(["cat-file", "-e", &secret])
        .status()
        .unwrap();
    assert!(!found.success(), "the secret reached the user's repository");
    assert_eq!(git(&f.repo.top, &["show", "orch/0ccd:work.txt"]), "work");
    git(&f.repo.top, &["fsck", "--strict"]);
}

/// A task's object directory that is a link is not used (the files are
/// still saved).
#[test]
fn an_object_directory_that_is_a_link_is_not_used() {
    let f = fixture();
    let (ws, lock) = f.workspace("0ccc");
    let elsewhere = f.tmp.path().join("secret");
    std::fs::write(&elsewhere, "private").unwrap();
    std::fs::write(ws.path.join("work.txt"), "x\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, ws.path.join(".git/objects/ab")).unwrap();
    let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    assert!(
        removed
            .saved
            .warning
            .as_deref()
            .is_some_and(|w| w.contains("not a directory")),
        "{:?}",
        removed.saved
    );
    assert_eq!(git(&f.repo.top, &["show", "orch/0ccc:work.txt"]), "x");
}

/// Writes a tree bomb into the task's repository as its HEAD: `levels`
/// trees of `width` entries, each all the same tree below; returns the
/// commit.
fn commit_tree_bomb(ws: &Path, width: usize, levels: usize) -> String {
    let blob = git(ws, &["hash-object", "-w", "README"]);
    let mut mode_id = ("100644 blob".to_owned(), blob);
    for _ in 0..levels {
        let listing: String = (0..width)
            .map(|i| format!("{} {}\te{i}\n", mode_id.0, mode_id.1))
            .collect();
        let tmp = ws.join(".git/listing");
        std::fs::write(&tmp, listing).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "git -C {} mktree < {}",
                ws.display(),
                tmp.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success());
        mode_id = (
            "040000 tree".to_owned(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        );
        std::fs::remove_file(&tmp).unwrap();
    }
    let commit = git(ws, &["commit-tree", &mode_id.1, "-m", "bomb"]);
    git(ws, &["update-ref", "HEAD", &commit]);
    commit
}

/// Six objects that expand to 10^10 paths as the task's HEAD: measured
/// before anything expands them, not used; the files are saved.
#[test]
fn a_tree_that_expands_without_end_is_measured_not_expanded() {
    let f = fixture();
    let (ws, lock) = f.workspace("b0b0");
    commit_tree_bomb(&ws.path, 100, 5);
    std::fs::write(ws.path.join("work.txt"), "work\n").unwrap();
    let saved = ws.save(&f.layout, &lock).unwrap();
    assert!(!saved.imported, "{saved:?}");
    let warning = saved.warning.unwrap_or_default();
    assert!(warning.contains("paths"), "{warning}");
    assert_eq!(git(&f.repo.top, &["show", "orch/b0b0:work.txt"]), "work");
}

/// A host git has an address-space limit: even handed the bomb directly,
/// it fails instead of growing until the machine swaps.
#[test]
fn a_host_git_cannot_grow_without_end() {
    let f = fixture();
    let (ws, _lock) = f.workspace("b0b1");
    let commit = commit_tree_bomb(&ws.path, 100, 5);
    let index = f.tmp.path().join("bomb-index");
    let err = crate::git::Git::at(&f.layout, &ws.path.join(".git"))
        .memory(256 << 20)
        .index(&index)
        .timeout(std::time::Duration::from_secs(120))
        .run("expand the bomb", &["read-tree", &commit])
        .unwrap_err();
    assert!(matches!(err, Error::Git { .. }), "{err}");
}

/// One large blob committed under eight names exempts nothing: eight
/// sparse files of other content where they were are each read only if
/// the budget allows, and it does not.
#[test]
fn the_budget_holds_whatever_the_tree_says() {
    let f = fixture();
    let (ws, lock) = f.workspace("b5b5");
    let size = 150 << 20;
    for i in 0..8 {
        std::fs::File::create(ws.path.join(format!("big{i}.bin")))
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    git(&ws.path, &["add", "."]);
    git(
        &ws.path,
        &["commit", "--quiet", "-m", "one blob, eight names"],
    );
    let committed = git(&ws.path, &["rev-parse", "HEAD:big0.bin"]);
    for i in 0..8 {
        let path = ws.path.join(format!("big{i}.bin"));
        std::fs::remove_file(&path).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(size).unwrap();
        std::os::unix::fs::FileExt::write_at(&file, format!("{i}").as_bytes(), size - 1).unwrap();
    }
    let saved = ws.save(&f.layout, &lock).unwrap();
    assert_eq!(saved.left_out, 8, "{saved:?}");
    // The commit that holds the large blob is held to the same budget: it
    // does not come home either.
    assert!(!saved.imported, "{saved:?}");
    assert!(
        saved
            .warning
            .as_deref()
            .unwrap_or("")
            .contains("larger than"),
        "{saved:?}"
    );
    let found = std::process::Command::new("git")
        .arg("-C")
        .arg(&f.repo.top)
        .args(["cat-file", "-e", &committed])
        .status()
        .unwrap();
    assert!(
        !found.success(),
        "the large blob never reached the repository"
    );
}

/// Names git would open that are not regular files (a FIFO `.gitignore`
/// or `.gitattributes`, a nested repository git cannot be kept out of)
/// hand git none of the work tree: the save ends at once, the commits come
/// home, and the files stay in the kept workspace.
#[test]
fn files_git_would_block_on_are_never_handed_to_it() {
    let fifo = |path: &Path| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(path);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    };
    let cases: [(&str, Change); 3] = [
        ("f0f0", &|ws: &Path| fifo(&ws.join(".gitignore"))),
        ("f0f1", &|ws: &Path| {
            fifo(&ws.join("deep/er/.gitattributes"))
        }),
        ("f0f2", &|ws: &Path| {
            // A repository whose name holds a newline, its HEAD a FIFO.
            let nested = ws.join("a\nb");
            std::fs::create_dir_all(nested.join(".git/objects")).unwrap();
            std::fs::create_dir_all(nested.join(".git/refs")).unwrap();
            fifo(&nested.join(".git/HEAD"));
        }),
    ];
    for (id, make) in cases {
        let f = fixture();
        let (ws, lock) = f.workspace(id);
        std::fs::write(ws.path.join("committed.txt"), "c\n").unwrap();
        git(&ws.path, &["add", "committed.txt"]);
        git(&ws.path, &["commit", "--quiet", "-m", "committed"]);
        std::fs::write(ws.path.join("pending.txt"), "p\n").unwrap();
        make(&ws.path);
        let err = ws
            .remove(&f.layout, &lock, Unsaved::Keep, None)
            .unwrap_err();
        assert!(matches!(err, Error::NotSaved { .. }), "{id}: {err}");
        assert!(ws.path.join("pending.txt").exists(), "{id}: kept");
        let files = git(
            &f.repo.top,
            &["ls-tree", "-r", "--name-only", &format!("orch/{id}")],
        );
        assert!(files.contains("committed.txt"), "{id}: {files}");
        assert!(!files.contains("pending.txt"), "{id}: {files}");
    }
}

/// A kept workspace is handed back with a git directory of orch's making:
/// plain git there runs nothing the task wrote, and later saves still
/// read the task's own repository.
#[test]
fn a_kept_workspace_is_safe_to_use_with_plain_git() {
    let f = fixture();
    let (ws, lock) = f.workspace("ee01");
    std::fs::write(ws.path.join("committed.txt"), "c\n").unwrap();
    git(&ws.path, &["add", "committed.txt"]);
    git(
        &ws.path,
        &["commit", "--quiet", "-m", "committed by the task"],
    );
    let script = ws.path.join("evil.sh");
    hostile_script(&script, &f.marker);
    let config = ws.path.join(".git/config");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[core]\n\tfsmonitor = {s}\n\tpager = {s}\n[alias]\n\tst = !{s}\n",
        s = script.display()
    ));
    std::fs::write(&config, text).unwrap();
    hostile_script(&ws.path.join(".git/hooks/post-checkout"), &f.marker);
    let nested = ws.path.join("inner");
    std::fs::create_dir_all(&nested).unwrap();
    git(&nested, &["init", "--quiet"]);
    std::fs::write(
        nested.join(".git/config"),
        format!("[core]\n\tfsmonitor = {}\n", script.display()),
    )
    .unwrap();
    std::fs::write(ws.path.join("pending.txt"), "p\n").unwrap();

    let saved = ws.save(&f.layout, &lock).unwrap();
    ws.hand_back(&f.layout, &lock, saved.tip.as_deref().unwrap())
        .unwrap();
    for dir in [&ws.path, &nested] {
        // As a person would: plain git, their own config.
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["status", "--short"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !f.marker.exists(),
        "git in the kept workspace ran the task's code"
    );
    assert_eq!(
        git(&ws.path, &["log", "-1", "--format=%H"]),
        saved.tip.unwrap()
    );
    assert_eq!(git(&ws.path, &["status", "--porcelain"]), "");

    // Removal later still reads the task's own repository.
    std::fs::write(ws.path.join("later.txt"), "l\n").unwrap();
    let removed = ws.remove(&f.layout, &lock, Unsaved::Keep, None).unwrap();
    assert!(removed.saved.imported, "{:?}", removed.saved);
    let files = git(&f.repo.top, &["ls-tree", "-r", "--name-only", "orch/ee01"]);
    for wanted in [
        "committed.txt",
        "pending.txt",
        "later.txt",
        "inner/.git.orch-disabled/config",
    ] {
        assert_eq!(
            files.lines().any(|l| l == wanted),
            wanted != "inner/.git.orch-disabled/config",
            "{wanted} in {files}"
        );
    }
    assert!(!f.layout.kept_git_dir("p", "ee01").unwrap().exists());
    assert!(!f.marker.exists());
}
