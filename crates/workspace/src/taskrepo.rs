//! A task's own repository, read as data.
//!
//! The task could write anything in its workspace, `.git` included, so
//! nothing there is ever handed to git as a repository: git never reads its
//! config, hooks, index, `commondir` or `gitdir` pointers. orch reads two
//! things itself, without following a single symbolic link:
//!
//! - which commit HEAD names: `.git/HEAD`, then the branch file it points at
//!   or its line in `packed-refs` (regular files, size-bounded, names
//!   checked);
//! - where its objects are: `.git/objects`, a real directory with no
//!   symbolic link anywhere below it and no alternates but the ones orch's
//!   clone wrote. orch's own git directory then borrows those objects; the
//!   receiving side re-hashes everything it takes, so an object can never
//!   land under a false name.
//!
//! If any of that does not hold, the task's git directory is not used at
//! all; its files are still saved, on top of its branch as orch last knew
//! it.

use std::fs::Metadata;
use std::io::Read;
use std::path::{Path, PathBuf};

/// How many entries under `.git/objects` are looked at before giving up on
/// the task's objects (its own ones only: the user's are borrowed).
const MAX_OBJECT_ENTRIES: usize = 2_000_000;
/// The largest `HEAD` or branch file read.
const MAX_REF_FILE: u64 = 4096;
/// The largest `packed-refs` read.
const MAX_PACKED_REFS: u64 = 64 << 20;

/// What the task's repository offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskRepo {
    /// Its objects can be borrowed, and its HEAD names this commit (or is
    /// unborn: `None`).
    Usable {
        /// The object directory.
        objects: PathBuf,
        /// The commit HEAD names, as a hex object id.
        head: Option<String>,
    },
    /// It cannot be used, and why.
    Unusable(String),
}

/// Reads the repository of the workspace at `workspace` as data.
/// `allowed_alternates` are the object directories its alternates file may
/// name (canonical).
pub(crate) fn inspect(workspace: &Path, allowed_alternates: &[PathBuf]) -> TaskRepo {
    match inspect_inner(workspace, allowed_alternates) {
        Ok(repo) => repo,
        Err(why) => TaskRepo::Unusable(why),
    }
}

fn inspect_inner(workspace: &Path, allowed: &[PathBuf]) -> Result<TaskRepo, String> {
    let git = workspace.join(".git");
    real_dir(&git, ".git")?;
    let objects = git.join("objects");
    real_dir(&objects, ".git/objects")?;
    no_links_below(&objects)?;
    if lstat(&objects.join("info/http-alternates")).is_some() {
        return Err(".git/objects/info/http-alternates exists".into());
    }
    let alternates = objects.join("info/alternates");
    if let Some(meta) = lstat(&alternates) {
        if !meta.is_file() || meta.len() > MAX_REF_FILE {
            return Err(".git/objects/info/alternates is not a small regular file".into());
        }
        let text = read_bounded(&alternates, MAX_REF_FILE)?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let named = objects.join(line).canonicalize().map_err(|_| {
                format!(".git/objects/info/alternates names {line:?}, which does not exist")
            })?;
            if !allowed.contains(&named) {
                return Err(format!(
                    ".git/objects/info/alternates names {line:?}, not the project's objects"
                ));
            }
        }
    }
    Ok(TaskRepo::Usable {
        head: head(&git)?,
        objects,
    })
}

/// The commit HEAD names: `None` if HEAD names a branch with no commit yet.
fn head(git: &Path) -> Result<Option<String>, String> {
    let head_file = git.join("HEAD");
    regular(&head_file, "HEAD")?;
    let text = read_bounded(&head_file, MAX_REF_FILE)?;
    let text = text.trim();
    if let Some(target) = text.strip_prefix("ref:") {
        let target = target.trim();
        check_ref_name(target)?;
        // The loose ref: every directory on its way a real one.
        let mut path = git.to_path_buf();
        let parts: Vec<&str> = target.split('/').collect();
        let mut loose = true;
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            match lstat(&path) {
                Some(meta) if i + 1 < parts.len() && meta.is_dir() => {}
                Some(meta) if i + 1 == parts.len() && meta.is_file() => {}
                Some(_) => return Err(format!("{target} is not a plain file")),
                None => {
                    loose = false;
                    break;
                }
            }
        }
        if loose {
            let id = read_bounded(&path, MAX_REF_FILE)?;
            return object_id(id.trim()).map(Some);
        }
        let packed = git.join("packed-refs");
        if lstat(&packed).is_none() {
            return Ok(None);
        }
        regular(&packed, "packed-refs")?;
        let text = read_bounded(&packed, MAX_PACKED_REFS)?;
        for line in text.lines() {
            if let Some((id, name)) = line.split_once(' ') {
                if name == target {
                    return object_id(id).map(Some);
                }
            }
        }
        return Ok(None);
    }
    object_id(text).map(Some)
}

/// A hex object id (SHA-1 or SHA-256), or why not.
fn object_id(text: &str) -> Result<String, String> {
    let ok = matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!("{:?} is not an object id", truncate(text)))
    }
}

/// A branch name git itself would accept under `refs/heads/`, and no more.
fn check_ref_name(name: &str) -> Result<(), String> {
    let Some(rest) = name.strip_prefix("refs/heads/") else {
        return Err(format!("HEAD names {:?}, not a branch", truncate(name)));
    };
    let bad = rest.is_empty()
        || rest.len() > 1024
        || rest.contains("..")
        || rest.contains("@{")
        || rest.ends_with('/')
        || rest.ends_with('.')
        || rest
            .split('/')
            .any(|c| c.is_empty() || c.starts_with('.') || c.ends_with(".lock"))
        || rest
            .bytes()
            .any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b));
    if bad {
        Err(format!(
            "HEAD names {:?}, not a valid branch",
            truncate(name)
        ))
    } else {
        Ok(())
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

fn lstat(path: &Path) -> Option<Metadata> {
    std::fs::symlink_metadata(path).ok()
}

fn real_dir(path: &Path, what: &str) -> Result<(), String> {
    match lstat(path) {
        Some(meta) if meta.is_dir() => Ok(()),
        Some(meta) if meta.file_type().is_symlink() => Err(format!("{what} is a symbolic link")),
        Some(_) => Err(format!("{what} is not a directory")),
        None => Err(format!("{what} is missing")),
    }
}

fn regular(path: &Path, what: &str) -> Result<(), String> {
    match lstat(path) {
        Some(meta) if meta.is_file() => Ok(()),
        Some(_) => Err(format!("{what} is not a plain file")),
        None => Err(format!("{what} is missing")),
    }
}

/// Reads at most `limit` bytes of a file, refusing to follow a symbolic
/// link at its last component (the others are checked by the caller).
fn read_bounded(path: &Path, limit: u64) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text)
}

/// No symbolic link anywhere under `dir` (bounded walk).
fn no_links_below(dir: &Path) -> Result<(), String> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            seen += 1;
            if seen > MAX_OBJECT_ENTRIES {
                return Err(".git/objects holds too many entries".into());
            }
            let kind = entry
                .file_type()
                .map_err(|e| format!("cannot inspect {}: {e}", entry.path().display()))?;
            if kind.is_symlink() {
                return Err(format!(
                    "{} is a symbolic link",
                    entry
                        .path()
                        .strip_prefix(dir.parent().unwrap_or(&dir))
                        .unwrap_or(&entry.path())
                        .display()
                ));
            }
            if kind.is_dir() {
                stack.push(entry.path());
            } else if !kind.is_file() {
                return Err(format!("{} is not a plain file", entry.path().display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let git = tmp.path().join("ws/.git");
        std::fs::create_dir_all(git.join("objects/info")).unwrap();
        std::fs::create_dir_all(git.join("refs/heads/orch")).unwrap();
        (tmp, git)
    }

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn reads_head_through_a_loose_or_packed_branch() {
        let (_tmp, git) = repo_dir();
        let ws = git.parent().unwrap();
        std::fs::write(git.join("HEAD"), "ref: refs/heads/orch/x\n").unwrap();
        assert_eq!(
            inspect(ws, &[]),
            TaskRepo::Usable {
                objects: git.join("objects"),
                head: None
            },
            "unborn"
        );
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack\n{ID} refs/heads/orch/x\n"),
        )
        .unwrap();
        assert!(matches!(inspect(ws, &[]), TaskRepo::Usable { head: Some(h), .. } if h == ID));
        let other = ID.replace('0', "f");
        std::fs::write(git.join("refs/heads/orch/x"), format!("{other}\n")).unwrap();
        assert!(matches!(inspect(ws, &[]), TaskRepo::Usable { head: Some(h), .. } if h == other));
        std::fs::write(git.join("HEAD"), format!("{ID}\n")).unwrap();
        assert!(matches!(inspect(ws, &[]), TaskRepo::Usable { head: Some(h), .. } if h == ID));
    }

    #[test]
    fn refuses_what_could_steer_a_reader() {
        let (tmp, git) = repo_dir();
        let ws = git.parent().unwrap().to_path_buf();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("secret"), ID).unwrap();
        let unusable = |why: &str| {
            let got = inspect(&ws, &[]);
            assert!(
                matches!(&got, TaskRepo::Unusable(w) if w.contains(why)),
                "{why}: {got:?}"
            );
        };
        std::fs::write(
            git.join("HEAD"),
            "ref: refs/heads/../../../elsewhere/secret",
        )
        .unwrap();
        unusable("not a valid branch");
        std::fs::write(git.join("HEAD"), "ref: refs/tags/v1").unwrap();
        unusable("not a branch");
        std::fs::write(git.join("HEAD"), "garbage\u{1b}[2J").unwrap();
        unusable("not an object id");
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main").unwrap();
        std::os::unix::fs::symlink(&elsewhere, git.join("refs/heads/sub")).unwrap();
        std::fs::write(git.join("HEAD"), "ref: refs/heads/sub/secret").unwrap();
        unusable("not a plain file");
        std::fs::remove_file(git.join("refs/heads/sub")).unwrap();
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("secret"), git.join("objects/ab")).unwrap();
        unusable("symbolic link");
        std::fs::remove_file(git.join("objects/ab")).unwrap();
        std::fs::write(
            git.join("objects/info/alternates"),
            elsewhere.display().to_string(),
        )
        .unwrap();
        unusable("not the project's objects");
        assert!(matches!(
            inspect(&ws, &[elsewhere.canonicalize().unwrap()]),
            TaskRepo::Usable { .. }
        ));
        std::fs::remove_file(git.join("objects/info/alternates")).unwrap();
        std::fs::write(git.join("objects/info/http-alternates"), "http://x").unwrap();
        unusable("http-alternates");
        std::fs::remove_file(git.join("objects/info/http-alternates")).unwrap();
        // .git itself replaced by a pointer file, or a link.
        std::fs::rename(&git, tmp.path().join("moved")).unwrap();
        std::fs::write(&git, "gitdir: /elsewhere").unwrap();
        unusable(".git is not a directory");
        std::fs::remove_file(&git).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("moved"), &git).unwrap();
        unusable(".git is a symbolic link");
        std::fs::remove_file(&git).unwrap();
        unusable(".git is missing");
    }
}
