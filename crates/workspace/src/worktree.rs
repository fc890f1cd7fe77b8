//! A walk of the task's work tree by orch itself, before any host git
//! looks at it.
//!
//! git opens some files of a work tree by their names: `.gitignore` in
//! every directory it lists, `.gitattributes` along every path it stages,
//! and the `.git` of a directory that looks like a repository. A task may
//! have made any of them a FIFO (git's `open` would block for ever), a
//! device, or a link (which git 2.32 and later never follow: with such a
//! git a link there is harmless). So orch walks the tree first (never following a
//! link, bounded), notes every such name that is not a regular file, finds
//! the repositories nested inside (which git must not enter; they are
//! staged on their own), and checks that each of those can be named in an
//! exclude pattern. If anything is off, the save hands git nothing of the
//! work tree: the task's commits still come home, its uncommitted files do
//! not, and the workspace is kept.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a nested repository's `.git` becomes in a kept workspace (see
/// `crate::kept`): still a nested repository's, to the walk.
pub(crate) const DISABLED: &str = ".git.orch-disabled";

/// The most entries walked before giving up on the work tree.
const MAX_ENTRIES: usize = 2_000_000;

/// What the walk found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Directories holding a `.git` of their own (outermost only), relative.
    pub(crate) nested: Vec<PathBuf>,
    /// Why git must not be handed this work tree, if it must not.
    pub(crate) hazard: Option<String>,
    /// Directories that could not be read (relative): neither orch nor git
    /// can save what they hold.
    pub(crate) unreadable: Vec<PathBuf>,
}

/// Names git opens as files when it meets them in a directory it lists or
/// stages in.
const OPENED_BY_GIT: [&str; 2] = [".gitignore", ".gitattributes"];

/// Walks `root` (the top `.git` never entered, directories in `skip` (its
/// submodules, relative, as bytes) neither entered nor taken for nested
/// repositories).
pub(crate) fn scan(root: &Path, skip: &HashSet<Vec<u8>>) -> Scan {
    let mut scan = Scan::default();
    let mut seen = 0usize;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = match std::fs::read_dir(root.join(&rel)) {
            Ok(entries) => entries,
            // git cannot list it either: what it holds cannot be saved.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                scan.unreadable.push(rel);
                continue;
            }
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                scan.hazard = Some(format!("the workspace holds more than {MAX_ENTRIES} files"));
                return scan;
            }
            let name = entry.file_name();
            if rel.as_os_str().is_empty() && name == ".git" {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = rel.join(&name);
            if OPENED_BY_GIT.iter().any(|n| name == *n) && !kind.is_file() {
                if kind.is_dir() {
                    // git reads nothing from a directory of that name.
                    stack.push(path);
                    continue;
                }
                if kind.is_symlink() && crate::git::ignores_linked_ignore_files() {
                    // This git never follows it.
                    continue;
                }
                scan.hazard = Some(format!(
                    "{:?} is {}, which git would open",
                    path.display().to_string(),
                    describe(&kind)
                ));
                return scan;
            }
            if !kind.is_dir() {
                continue;
            }
            if skip.contains(path.as_os_str().as_bytes()) {
                continue;
            }
            let dir = root.join(&path);
            let repository = [".git", DISABLED]
                .iter()
                .any(|git| dir.join(git).symlink_metadata().is_ok());
            if repository {
                if pattern(path.as_os_str().as_bytes()).is_none() {
                    scan.hazard = Some(format!(
                        "the repository at {:?} has a name no exclude pattern can hold",
                        path.display().to_string()
                    ));
                    return scan;
                }
                scan.nested.push(path);
            } else {
                stack.push(path);
            }
        }
    }
    scan.nested.sort();
    scan
}

/// What [`disarm`] did.
#[derive(Debug, Default)]
pub(crate) struct Disarmed {
    /// Setuid/setgid bits cleared.
    pub(crate) cleared: usize,
    /// Device nodes removed.
    pub(crate) removed: usize,
    /// What could not be done (files of another user, when orch is not
    /// root), for a note.
    pub(crate) failed: Vec<String>,
}

/// Makes what a task left in `root` harmless on the host before anything
/// else reads it: setuid and setgid bits are cleared (a root task can leave
/// a setuid-root binary; git never stores those bits anyway) and device
/// nodes are removed (they hold no data). Links are never followed; the
/// task is over, so nothing changes under the walk.
pub(crate) fn disarm(root: &Path) -> Disarmed {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let mut done = Disarmed::default();
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return done;
            }
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_block_device() || kind.is_char_device() {
                match std::fs::remove_file(&path) {
                    Ok(()) => done.removed += 1,
                    Err(e) => done.failed.push(format!("{}: {e}", path.display())),
                }
            } else if kind.is_file() && meta.mode() & 0o6000 != 0 {
                let cleared = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(
                        (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
                    )
                    .open(&path)
                    .and_then(|file| {
                        let mode = file.metadata()?.mode() & 0o7777 & !0o6000;
                        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                    });
                match cleared {
                    Ok(()) => done.cleared += 1,
                    Err(e) => done.failed.push(format!("{}: {e}", path.display())),
                }
            }
        }
    }
    done
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// An exclude pattern that matches the directory `path` (relative to the
/// top, `/`-separated bytes) and nothing else: anchored, every byte git's
/// patterns treat specially escaped. `None` if no pattern can: a newline
/// ends a pattern and cannot be escaped.
pub(crate) fn pattern(path: &[u8]) -> Option<Vec<u8>> {
    if path.is_empty() || path.contains(&b'\n') {
        return None;
    }
    let mut out = Vec::with_capacity(path.len() + 4);
    out.push(b'/');
    for &byte in path {
        // Wildcards and escapes anywhere; `!` and `#` only matter first and
        // trailing spaces only last, but escaping them anywhere is harmless.
        if matches!(
            byte,
            b'*' | b'?' | b'[' | b']' | b'\\' | b'!' | b'#' | b' ' | b'\r'
        ) {
            out.push(b'\\');
        }
        out.push(byte);
    }
    // A trailing slash: the directory only. The line ends in `/`, so git's
    // stripping of a trailing `\r` and of trailing spaces never applies.
    out.extend_from_slice(b"/\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_what_git_reads_specially_and_refuse_newlines() {
        assert_eq!(pattern(b"a/b").unwrap(), b"/a/b/\n");
        assert_eq!(pattern(b"!x*y").unwrap(), b"/\\!x\\*y/\n");
        assert_eq!(pattern(b"t ").unwrap(), b"/t\\ /\n");
        assert_eq!(pattern(b"\xff\xfe").unwrap(), b"/\xff\xfe/\n");
        assert!(pattern(b"a\nb").is_none());
        assert!(pattern(b"").is_none());
    }

    #[test]
    fn special_files_git_would_open_are_hazards() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("a/inner/.git")).unwrap();
        std::fs::create_dir_all(root.join("sub/.git")).unwrap();
        std::fs::write(root.join("a/.gitignore"), "x\n").unwrap();
        let skip: HashSet<Vec<u8>> = [b"sub".to_vec()].into();
        let scan = scan(root, &skip);
        assert_eq!(scan.nested, vec![PathBuf::from("a/inner")]);
        assert!(scan.hazard.is_none());
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("a/deeper/.gitattributes"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap_err();
        std::fs::create_dir_all(root.join("a/deeper")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("a/deeper/.gitattributes"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let found = super::scan(root, &skip).hazard.unwrap();
        assert!(found.contains("a FIFO"), "{found}");
        std::fs::remove_file(root.join("a/deeper/.gitattributes")).unwrap();
        std::fs::create_dir_all(root.join("b\nc/.git")).unwrap();
        let found = super::scan(root, &skip).hazard.unwrap();
        assert!(found.contains("no exclude pattern"), "{found}");
    }
}
