//! Disk use of workspaces, counted as `du -sb` counts: the apparent size of
//! every file, directory and symlink (the link itself), each hard-linked file
//! once, never following a symlink.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::Error;

/// The size of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// Apparent bytes.
    pub bytes: u64,
    /// Entries that are not directories.
    pub files: u64,
}

impl std::ops::AddAssign for Size {
    fn add_assign(&mut self, other: Size) {
        self.bytes += other.bytes;
        self.files += other.files;
    }
}

/// Measures the tree at `path`; a missing path measures zero.
pub fn measure(path: &Path) -> Result<Size, Error> {
    let mut size = Size::default();
    let mut seen = HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match path.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("measure", &path, e)),
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        size.bytes += meta.len();
        if meta.is_dir() {
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                // Unreadable (another user's): count what we can see.
                Err(e) if e.kind() == ErrorKind::PermissionDenied => continue,
                Err(e) => return Err(Error::io("list", &path, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list", &path, e))?;
                stack.push(entry.path());
            }
        } else {
            size.files += 1;
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_du_sb() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/f"), vec![0u8; 1000]).unwrap();
        std::fs::write(root.join("a/b/g"), vec![0u8; 24]).unwrap();
        std::fs::hard_link(root.join("a/f"), root.join("hard")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let size = measure(&root).unwrap();
        assert_eq!(size.files, 3, "f, g and the link; the hard link once");
        let dirs: u64 = ["", "a", "a/b"]
            .iter()
            .map(|d| root.join(d).symlink_metadata().unwrap().len())
            .sum();
        assert_eq!(size.bytes, dirs + 1000 + 24 + 4);
        assert_eq!(measure(&tmp.path().join("none")).unwrap(), Size::default());
    }
}
