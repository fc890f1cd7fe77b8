//! A task's own repository, read as data.
//!
//! The task could write anything in its workspace, `.git` included, so
//! nothing there is ever handed to git as a repository: git never reads its
//! config, hooks, index, `commondir`, `gitdir` pointers or alternates. orch
//! reads these things itself, without following a single symbolic link:
//!
//! - which commit HEAD names: `.git/HEAD`, then the branch file it points at
//!   or its line in `packed-refs` (regular files, size-bounded, names
//!   checked);
//! - where its objects are: the loose-object directories (`.git/objects/xx`)
//!   and `.git/objects/pack`, real directories of regular files only, within
//!   bounds of count and size. orch's own git directory reaches them through
//!   links orch makes to exactly those directories ([`link_objects`]), never
//!   through `.git/objects` itself: git would read the task's
//!   `objects/info/alternates` there (and follow it to any repository on the
//!   host), so that file is never seen by any git orch runs. The receiving
//!   side re-hashes everything it takes, so an object can never land under
//!   a false name.
//!
//! If any of that does not hold, the task's git directory is not used at
//! all; its files are still saved, on top of its branch as orch last knew
//! it.

use std::ffi::OsString;
use std::fs::Metadata;
use std::io::Read;
use std::path::{Path, PathBuf};

/// How many entries of the task's object directories are looked at before
/// giving up on its objects (its own ones only: the user's are borrowed).
const MAX_OBJECT_ENTRIES: usize = 2_000_000;
/// How many bytes of objects of its own a task's repository may hold.
const MAX_OBJECT_BYTES: u64 = 4 << 30;
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
        /// Its object directory.
        objects: PathBuf,
        /// The directories of it that hold objects (`xx` and `pack`).
        parts: Vec<OsString>,
        /// The commit HEAD names, as a hex object id.
        head: Option<String>,
    },
    /// It cannot be used, and why.
    Unusable(String),
}

/// Reads the task's git directory `git` (normally `<workspace>/.git`) as
/// data.
pub(crate) fn inspect(git: &Path) -> TaskRepo {
    match inspect_inner(git) {
        Ok(repo) => repo,
        Err(why) => TaskRepo::Unusable(why),
    }
}

fn inspect_inner(git: &Path) -> Result<TaskRepo, String> {
    real_dir(git, ".git")?;
    let objects = git.join("objects");
    real_dir(&objects, ".git/objects")?;
    let parts = object_parts(&objects)?;
    Ok(TaskRepo::Usable {
        head: head(git)?,
        objects,
        parts,
    })
}

/// The directories under `objects` that hold objects, each checked: real
/// directories of regular files, within the bounds. Nothing else there is
/// looked at (in particular not `info/`).
fn object_parts(objects: &Path) -> Result<Vec<OsString>, String> {
    let entries =
        std::fs::read_dir(objects).map_err(|e| format!("cannot list .git/objects: {e}"))?;
    let mut parts = Vec::new();
    let mut seen = 0usize;
    let mut bytes = 0u64;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list .git/objects: {e}"))?;
        let name = entry.file_name();
        let text = name.to_string_lossy();
        let holds_objects = text == "pack"
            || (text.len() == 2
                && text
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        if !holds_objects {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot inspect .git/objects/{text}: {e}"))?;
        if !kind.is_dir() {
            return Err(format!(".git/objects/{text} is not a directory"));
        }
        let dir = entry.path();
        let files =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list .git/objects/{text}: {e}"))?;
        for file in files {
            let file = file.map_err(|e| format!("cannot list .git/objects/{text}: {e}"))?;
            seen += 1;
            if seen > MAX_OBJECT_ENTRIES {
                return Err(".git/objects holds too many entries".into());
            }
            let meta = file
                .metadata()
                .map_err(|e| format!("cannot inspect {}: {e}", file.path().display()))?;
            let shown = || format!(".git/objects/{text}/{}", file.file_name().to_string_lossy());
            if meta.file_type().is_symlink() {
                return Err(format!("{} is a symbolic link", shown()));
            }
            if !meta.is_file() {
                return Err(format!("{} is not a plain file", shown()));
            }
            bytes += meta.len();
            if bytes > MAX_OBJECT_BYTES {
                return Err(format!(
                    ".git/objects holds more than {} MiB",
                    MAX_OBJECT_BYTES >> 20
                ));
            }
        }
        parts.push(name);
    }
    parts.sort();
    Ok(parts)
}

/// Makes `view` an object directory of orch's own whose object-holding
/// directories are links to the task's (`parts` of `objects`, as
/// [`inspect`] checked them). `view` has no `info/` (no alternates, nothing
/// else) for git to read.
pub(crate) fn link_objects(
    objects: &Path,
    parts: &[OsString],
    view: &Path,
) -> Result<(), crate::Error> {
    crate::layout::private_dir(view)?;
    for part in parts {
        let link = view.join(part);
        std::os::unix::fs::symlink(objects.join(part), &link)
            .map_err(|e| crate::Error::io("link", &link, e))?;
    }
    Ok(())
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
        std::fs::write(git.join("HEAD"), "ref: refs/heads/orch/x\n").unwrap();
        assert_eq!(
            inspect(&git),
            TaskRepo::Usable {
                objects: git.join("objects"),
                parts: Vec::new(),
                head: None
            },
            "unborn"
        );
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack\n{ID} refs/heads/orch/x\n"),
        )
        .unwrap();
        assert!(matches!(inspect(&git), TaskRepo::Usable { head: Some(h), .. } if h == ID));
        let other = ID.replace('0', "f");
        std::fs::write(git.join("refs/heads/orch/x"), format!("{other}\n")).unwrap();
        assert!(matches!(inspect(&git), TaskRepo::Usable { head: Some(h), .. } if h == other));
        std::fs::write(git.join("HEAD"), format!("{ID}\n")).unwrap();
        assert!(matches!(inspect(&git), TaskRepo::Usable { head: Some(h), .. } if h == ID));
    }

    #[test]
    fn refuses_what_could_steer_a_reader() {
        let (tmp, git) = repo_dir();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("secret"), ID).unwrap();
        let unusable = |why: &str| {
            let got = inspect(&git);
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
        // An object directory that is a link, or holds one.
        std::os::unix::fs::symlink(&elsewhere, git.join("objects/ab")).unwrap();
        unusable("not a directory");
        std::fs::remove_file(git.join("objects/ab")).unwrap();
        std::fs::create_dir(git.join("objects/ab")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("secret"), git.join("objects/ab/cd")).unwrap();
        unusable("symbolic link");
        std::fs::remove_file(git.join("objects/ab/cd")).unwrap();
        // Alternates, http-alternates and anything else under info/ are
        // never read: the view orch links holds no info/ at all.
        std::fs::write(
            git.join("objects/info/alternates"),
            format!("{}\n", elsewhere.display()),
        )
        .unwrap();
        std::fs::write(git.join("objects/info/http-alternates"), "http://x").unwrap();
        let TaskRepo::Usable { objects, parts, .. } = inspect(&git) else {
            panic!("usable");
        };
        assert_eq!(parts, vec![OsString::from("ab")]);
        let view = tmp.path().join("view");
        link_objects(&objects, &parts, &view).unwrap();
        assert!(view.join("ab").is_dir());
        assert!(!view.join("info").exists());
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
