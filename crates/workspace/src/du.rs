//! Disk use of workspaces, counted as `du -s --block-size=1` counts: the
//! blocks allocated to every file, directory and symlink (the link
//! itself), each hard-linked file once, never following a symlink. Not
//! apparent sizes: a sparse file of 1 TiB takes a few blocks, and 20,000
//! tiny files take 20,000 blocks, whatever their lengths add up to.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::Error;

pub use crate::outcome::Size;

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
        size.bytes += meta.blocks() * 512;
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
    fn counts_allocated_blocks_like_du() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/f"), vec![0u8; 1000]).unwrap();
        std::fs::write(root.join("a/b/g"), vec![0u8; 24]).unwrap();
        std::fs::hard_link(root.join("a/f"), root.join("hard")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let sparse = std::fs::File::create(root.join("sparse")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        let size = measure(&root).unwrap();
        assert_eq!(
            size.files, 4,
            "f, g, sparse and the link; the hard link once"
        );
        let blocks: u64 = ["", "a", "a/b", "a/f", "a/b/g", "link", "sparse"]
            .iter()
            .map(|d| root.join(d).symlink_metadata().unwrap().blocks() * 512)
            .sum();
        assert_eq!(size.bytes, blocks);
        assert!(
            size.bytes < 1 << 20,
            "a sparse TiB takes no room: {}",
            size.bytes
        );
        assert_eq!(measure(&tmp.path().join("none")).unwrap(), Size::default());
    }
}
