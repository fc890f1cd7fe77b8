//! The task's own index (`.git/index`), read by orch as data.
//!
//! git decides that a file is unchanged by comparing what `lstat` says of
//! it with what the index recorded when the file was last written or
//! added: times, inode, size, type. orch asks the same question of the
//! task's index, so that a save reads only the files the task changed (and
//! counts only those against its budget), and keeps what git inside the
//! task would keep: submodules as recorded, files outside a sparse
//! checkout, files marked assume-unchanged.
//!
//! The index is the task's: it may lie. A lie can only make orch keep, for
//! one of the task's own paths, the blob that the tree the work goes on
//! already holds at that path (orch trusts an entry only when its blob is
//! the tree's), so a task can fool orch only about its own work, and never
//! into reading more than its budget. The file is opened without following
//! links and without blocking, must be a regular file, and is parsed with
//! every length checked; anything unexpected means no index at all (every
//! file is then read, within the budget).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The largest index read.
const MAX_INDEX: u64 = 512 << 20;
/// The most entries taken from it.
const MAX_ENTRIES: u32 = 2_000_000;
/// The most bytes of path names taken from it, all entries together: a
/// version 4 index names each path by what it shares with the previous
/// one, so a small file can name far more bytes than it holds.
const MAX_NAME_BYTES: usize = 128 << 20;

/// What `lstat` said of a file when the index recorded it; seconds and
/// nanoseconds as git keeps them (32 bits each; nanoseconds are 0 where
/// git was built without them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) ctime: (u32, u32),
    pub(crate) mtime: (u32, u32),
    pub(crate) ino: u32,
    pub(crate) size: u32,
}

impl Stat {
    /// True if `meta` is what this stat data recorded, as git compares
    /// them (`ce_match_stat_basic`: times, inode, size; nanoseconds only
    /// where they were recorded).
    pub(crate) fn matches(&self, meta: &std::fs::Metadata) -> bool {
        let nanos = self.ctime.1 != 0 || self.mtime.1 != 0;
        let time = |(sec, nsec): (u32, u32), s: i64, ns: i64| {
            sec == s as u32 && (!nanos || nsec == ns as u32)
        };
        time(self.mtime, meta.mtime(), meta.mtime_nsec())
            && time(self.ctime, meta.ctime(), meta.ctime_nsec())
            && self.ino == meta.ino() as u32
            && self.size == meta.size() as u32
    }
}

/// One entry of the task's index (stage 0 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The mode: 0o100644, 0o100755, 0o120000, 0o160000.
    pub(crate) mode: u32,
    /// The object id, hex.
    pub(crate) id: String,
    pub(crate) stat: Stat,
    /// `assume-unchanged`: git does not look at the file.
    pub(crate) assume_valid: bool,
    /// `skip-worktree` (sparse checkout): the file is not in the work tree
    /// on purpose.
    pub(crate) skip_worktree: bool,
}

/// The task's index as orch uses it.
#[derive(Debug, Default)]
pub(crate) struct TaskIndex {
    /// Entries by path (bytes, `/`-separated).
    pub(crate) entries: HashMap<Vec<u8>, Entry>,
    /// Directories a sparse index keeps whole (`skip-worktree` directory
    /// entries), with their trailing `/`.
    pub(crate) sparse_dirs: Vec<Vec<u8>>,
    /// When the index file was last written: an entry whose file changed in
    /// that same instant may look unchanged ("racily clean"), so git, and
    /// orch, look at its contents.
    pub(crate) written: (i64, i64),
}

impl TaskIndex {
    /// True if the file `meta` describes is, by its stat data, what `entry`
    /// recorded, and not racily so.
    pub(crate) fn unchanged(&self, entry: &Entry, meta: &std::fs::Metadata) -> bool {
        if !entry.stat.matches(meta) {
            return false;
        }
        // Racily clean: modified in the very instant the index was written.
        let written = (self.written.0 as u32, self.written.1 as u32);
        let nanos = entry.stat.mtime.1 != 0;
        let racy = if nanos {
            entry.stat.mtime >= written
        } else {
            entry.stat.mtime.0 >= written.0
        };
        !racy
    }

    /// True if `path` lies in a directory a sparse index keeps whole.
    pub(crate) fn in_sparse_dir(&self, path: &[u8]) -> bool {
        self.sparse_dirs.iter().any(|d| path.starts_with(d))
    }
}

/// Reads the index at `path` (the task's `.git/index`); `None` if there is
/// none, or it is anything but a well-formed index of `id_len`-byte ids.
pub(crate) fn read(path: &Path, id_len: usize) -> Option<TaskIndex> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_INDEX {
        return None;
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_INDEX).read_to_end(&mut data).ok()?;
    let mut index = parse(&data, id_len)?;
    index.written = (meta.mtime(), meta.mtime_nsec());
    Some(index)
}

fn be32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// git's variable-length integer of index version 4.
fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut byte = *data.get(*at)?;
    *at += 1;
    let mut value = u64::from(byte & 0x7f);
    while byte & 0x80 != 0 {
        value = value.checked_add(1)?;
        if value >> 57 != 0 {
            return None;
        }
        byte = *data.get(*at)?;
        *at += 1;
        value = (value << 7) + u64::from(byte & 0x7f);
    }
    Some(value)
}

fn parse(data: &[u8], id_len: usize) -> Option<TaskIndex> {
    if data.get(..4)? != b"DIRC" {
        return None;
    }
    let version = be32(data, 4)?;
    if !(2..=4).contains(&version) {
        return None;
    }
    let count = be32(data, 8)?;
    if count > MAX_ENTRIES {
        return None;
    }
    let mut index = TaskIndex::default();
    let mut at = 12usize;
    let mut previous: Vec<u8> = Vec::new();
    let mut named = 0usize;
    for _ in 0..count {
        let start = at;
        let word = |i: usize| be32(data, start + 4 * i);
        let stat = Stat {
            ctime: (word(0)?, word(1)?),
            mtime: (word(2)?, word(3)?),
            ino: word(5)?,
            size: word(9)?,
        };
        let mode = word(6)?;
        let id = data.get(start + 40..start + 40 + id_len)?;
        let flags = be16(data, start + 40 + id_len)?;
        at = start + 40 + id_len + 2;
        let extended = flags & 0x4000 != 0;
        let mut skip_worktree = false;
        if extended {
            if version < 3 {
                return None;
            }
            let more = be16(data, at)?;
            at += 2;
            skip_worktree = more & 0x4000 != 0;
        }
        let name = if version == 4 {
            let strip = usize::try_from(varint(data, &mut at)?).ok()?;
            let keep = previous.len().checked_sub(strip)?;
            let end = at + data.get(at..)?.iter().position(|b| *b == 0)?;
            let mut name = previous[..keep].to_vec();
            name.extend_from_slice(&data[at..end]);
            at = end + 1;
            name
        } else {
            let end = at + data.get(at..)?.iter().position(|b| *b == 0)?;
            let name = data[at..end].to_vec();
            // Padded with NULs to a multiple of 8 bytes, the name's NUL
            // included.
            let len = end + 1 - start;
            at = start + len.div_ceil(8) * 8;
            name
        };
        named += name.len();
        if at > data.len() || named > MAX_NAME_BYTES {
            return None;
        }
        previous.clone_from(&name);
        let stage = (flags >> 12) & 0x3;
        if stage != 0 || name.is_empty() {
            continue;
        }
        let entry = Entry {
            mode,
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            stat,
            assume_valid: flags & 0x8000 != 0,
            skip_worktree,
        };
        if mode == 0o40000 {
            // A sparse index's directory entry: the whole directory is as
            // the tree has it.
            if skip_worktree {
                let mut dir = name;
                if !dir.ends_with(b"/") {
                    dir.push(b'/');
                }
                index.sparse_dirs.push(dir);
            }
            continue;
        }
        index.entries.insert(name, entry);
    }
    // A split index keeps most of its entries in another file: then this
    // one says too little to rely on.
    let mut ext = at;
    while ext + 8 <= data.len().saturating_sub(id_len) {
        let signature = data.get(ext..ext + 4)?;
        let size = usize::try_from(be32(data, ext + 4)?).ok()?;
        if signature == b"link" {
            return None;
        }
        ext = ext.checked_add(8 + size)?;
    }
    Some(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn reads_what_git_writes_in_every_index_version() {
        for version in ["2", "3", "4"] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            git(dir, &["init", "--quiet"]);
            std::fs::create_dir(dir.join("sub")).unwrap();
            std::fs::write(dir.join("sub/a.txt"), "a\n").unwrap();
            std::fs::write(dir.join("sub/ab.txt"), "ab\n").unwrap();
            std::fs::write(dir.join("b"), "b\n").unwrap();
            git(dir, &["add", "."]);
            git(dir, &["update-index", "--index-version", version]);
            git(dir, &["update-index", "--skip-worktree", "sub/ab.txt"]);
            git(dir, &["update-index", "--assume-unchanged", "b"]);
            let index = read(&dir.join(".git/index"), 20).unwrap();
            assert_eq!(index.entries.len(), 3, "version {version}");
            let a = &index.entries[&b"sub/a.txt".to_vec()];
            assert_eq!(a.mode, 0o100644);
            let meta = std::fs::symlink_metadata(dir.join("sub/a.txt")).unwrap();
            assert!(a.stat.matches(&meta), "version {version}: {a:?}");
            let ab = &index.entries[&b"sub/ab.txt".to_vec()];
            assert!(ab.skip_worktree && !ab.assume_valid, "version {version}");
            let b = &index.entries[&b"b".to_vec()];
            assert!(b.assume_valid && !b.skip_worktree, "version {version}");
            std::fs::write(dir.join("sub/a.txt"), "changed\n").unwrap();
            let meta = std::fs::symlink_metadata(dir.join("sub/a.txt")).unwrap();
            assert!(!a.stat.matches(&meta), "version {version}");
        }
    }

    #[test]
    fn names_that_expand_past_the_bound_are_no_index() {
        // Version 4: each name keeps all of the previous one and adds two
        // bytes, so 20,000 entries of a few bytes name 400 MB in all.
        let count: u32 = 20_000;
        let mut data = b"DIRC".to_vec();
        data.extend_from_slice(&4u32.to_be_bytes());
        data.extend_from_slice(&count.to_be_bytes());
        for _ in 0..count {
            data.extend_from_slice(&[0; 24]);
            data.extend_from_slice(&0o100644u32.to_be_bytes());
            data.extend_from_slice(&[0; 12]);
            data.extend_from_slice(&[7; 20]);
            data.extend_from_slice(&0u16.to_be_bytes());
            data.extend_from_slice(&[0, b'a', b'b', 0]);
        }
        assert!(parse(&data, 20).is_none());
        // The same, few enough, is read.
        let small = count_entries(&data, 1_000);
        assert_eq!(parse(&small, 20).map(|i| i.entries.len()), Some(1_000));
    }

    /// `data` (a version 4 index) cut to its first `n` entries.
    fn count_entries(data: &[u8], n: u32) -> Vec<u8> {
        let mut cut = data[..8].to_vec();
        cut.extend_from_slice(&n.to_be_bytes());
        let entry = 24 + 4 + 12 + 20 + 2 + 4;
        cut.extend_from_slice(&data[12..12 + entry * n as usize]);
        cut
    }

    #[test]
    fn garbage_is_no_index() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("index");
        for bytes in [
            &b""[..],
            b"DIRC",
            b"DIRC\0\0\0\x02\xff\xff\xff\xff",
            b"DIRC\0\0\0\x09\0\0\0\0",
        ] {
            std::fs::write(&path, bytes).unwrap();
            assert!(read(&path, 20).is_none(), "{bytes:?}");
        }
        // A FIFO is never opened for reading (it would block).
        std::fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(read(&path, 20).is_none());
        // Truncated entries of a real index.
        let dir = tmp.path().join("repo");
        std::fs::create_dir(&dir).unwrap();
        git(&dir, &["init", "--quiet"]);
        std::fs::write(dir.join("f"), "f").unwrap();
        git(&dir, &["add", "."]);
        let data = std::fs::read(dir.join(".git/index")).unwrap();
        for cut in [20, 50, 70] {
            assert!(parse(&data[..cut], 20).is_none(), "cut at {cut}");
        }
    }
}
