//! How much a tree a task committed would cost to check out, measured
//! before anything expands it.
//!
//! A handful of tree objects can name more paths than any machine can
//! hold: a tree of 100 entries that are all the same tree of 100 entries,
//! five deep, is six objects and 10^10 paths, and `git read-tree` of it
//! grows until the kernel kills something. So before a host git reads a
//! task's tree into an index, orch walks its distinct tree objects (each
//! read once, through one `cat-file --batch`) and computes how many paths
//! and how deep it would expand to, without expanding it; past the limits
//! the task's HEAD is not used.

use std::collections::HashMap;

use crate::git::Git;

/// What a tree may expand to before orch refuses to check it out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeLimits {
    /// Paths (files, links, submodules) in all: an index entry each.
    pub(crate) paths: u64,
    /// Directories deep.
    pub(crate) depth: usize,
    /// Distinct tree objects read.
    pub(crate) trees: usize,
    /// Bytes of tree objects read, in all.
    pub(crate) bytes: u64,
}

/// Far beyond any real repository (the largest have a few million paths
/// and depths in the tens), far below what would hurt the host.
pub(crate) const TREE_LIMITS: TreeLimits = TreeLimits {
    paths: 5_000_000,
    depth: 1024,
    trees: 2_000_000,
    bytes: 1 << 30,
};

/// The largest single tree object read.
const MAX_TREE_OBJECT: u64 = 64 << 20;

/// What a tree would expand to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Expanded {
    paths: u64,
    depth: usize,
}

/// Checks that `tree` (a hex id the batch can read) stays within `limits`
/// once expanded; `Err` says why not, in words for the user.
pub(crate) fn check(git: &Git, tree: &str, limits: TreeLimits) -> Result<(), String> {
    let mut batch = git
        .batch()
        .map_err(|e| format!("its tree could not be read: {e}"))?;
    let mut known: HashMap<Vec<u8>, Expanded> = HashMap::new();
    let mut read = 0usize;
    let mut bytes = 0u64;
    // Depth-first, children before parents: each frame is a tree whose
    // subtrees are still being measured.
    struct Frame {
        id: Vec<u8>,
        subtrees: Vec<Vec<u8>>,
        next: usize,
        leaves: u64,
    }
    let root = hex_decode(tree).ok_or_else(|| format!("{tree:?} is not an object id"))?;
    let open = |batch: &mut crate::git::Batch,
                id: &[u8],
                read: &mut usize,
                bytes: &mut u64|
     -> Result<Frame, String> {
        *read += 1;
        if *read > limits.trees {
            return Err(format!(
                "its tree holds more than {} distinct directories",
                limits.trees
            ));
        }
        let hex = hex_encode(id);
        let body = match batch.read(&hex, MAX_TREE_OBJECT) {
            Ok(Some((kind, body))) if kind == "tree" => body,
            Ok(Some((kind, _))) => return Err(format!("{hex} is a {kind}, not a tree")),
            Ok(None) => return Err(format!("its tree {hex} is missing")),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err("its tree could not be measured in time".to_owned());
            }
            Err(e) => return Err(format!("its tree could not be read: {e}")),
        };
        *bytes += body.len() as u64;
        if *bytes > limits.bytes {
            return Err(format!(
                "its directories take more than {} MiB",
                limits.bytes >> 20
            ));
        }
        let (subtrees, leaves) =
            entries(&body, id.len()).ok_or_else(|| format!("its tree {hex} is malformed"))?;
        Ok(Frame {
            id: id.to_vec(),
            subtrees,
            next: 0,
            leaves,
        })
    };
    let mut stack = vec![open(&mut batch, &root, &mut read, &mut bytes)?];
    while let Some(top) = stack.last_mut() {
        if top.next < top.subtrees.len() {
            let child = top.subtrees[top.next].clone();
            top.next += 1;
            if known.contains_key(&child) {
                continue;
            }
            if stack.len() >= limits.depth {
                return Err(format!(
                    "its tree is more than {} directories deep",
                    limits.depth
                ));
            }
            let frame = open(&mut batch, &child, &mut read, &mut bytes)?;
            stack.push(frame);
            continue;
        }
        let Some(done) = stack.pop() else { break };
        let mut expanded = Expanded {
            paths: done.leaves,
            depth: 0,
        };
        for sub in &done.subtrees {
            let below = known.get(sub).copied().unwrap_or_default();
            expanded.paths = expanded.paths.saturating_add(below.paths);
            expanded.depth = expanded.depth.max(below.depth + 1);
        }
        if expanded.paths > limits.paths {
            return Err(format!("its tree names more than {} paths", limits.paths));
        }
        if expanded.depth > limits.depth {
            return Err(format!(
                "its tree is more than {} directories deep",
                limits.depth
            ));
        }
        known.insert(done.id, expanded);
    }
    Ok(())
}

/// The subtrees (ids, in order) and the number of other entries of a raw
/// tree object; `None` if it is malformed.
fn entries(body: &[u8], id_len: usize) -> Option<(Vec<Vec<u8>>, u64)> {
    let mut subtrees = Vec::new();
    let mut leaves = 0u64;
    let mut rest = body;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let mode = &rest[..space];
        let nul = space + 1 + rest[space + 1..].iter().position(|b| *b == 0)?;
        let id = rest.get(nul + 1..nul + 1 + id_len)?;
        // Directories are mode 40000 (some old writers: 040000).
        if mode == b"40000" || mode == b"040000" {
            subtrees.push(id.to_vec());
        } else {
            leaves += 1;
        }
        rest = &rest[nul + 1 + id_len..];
    }
    Some((subtrees, leaves))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !matches!(text.len(), 40 | 64) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that the files `tip`'s commits bring (what `base` lacks) stay
/// within what the save takes of uncommitted work: no file larger than
/// `MAX_SAVED_FILE`, and not more than `MAX_SAVED_BYTES` in all. Their
/// sizes are asked of git (the objects are never expanded); `Err` says
/// why not, in words for the user. `shadow` holds the list of objects.
pub(crate) fn check_files(
    git: &Git,
    tip: &str,
    base: &str,
    shadow: &std::path::Path,
) -> Result<(), String> {
    use crate::outcome::{MAX_SAVED_BYTES, MAX_SAVED_FILE};
    let limit = format!("--filter=blob:limit={}", MAX_SAVED_FILE + 1);
    let listed = git
        .clone()
        .timeout(std::time::Duration::from_secs(120))
        .run_bytes(
            "list the objects the task's commits bring",
            &[
                "rev-list",
                "--objects",
                "--no-object-names",
                &limit,
                "--filter-print-omitted",
                tip,
                &format!("^{base}"),
            ],
        )
        .map_err(|e| {
            format!(
                "its commits could not be listed: {}",
                crate::error::one_line(&e)
            )
        })?;
    let mut ids = Vec::new();
    for line in listed.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if line.first() == Some(&b'~') {
            return Err(format!(
                "its commits hold a file larger than {} MiB",
                MAX_SAVED_FILE >> 20
            ));
        }
        ids.extend_from_slice(line);
        ids.push(b'\n');
    }
    let list = shadow.join("brought");
    std::fs::write(&list, &ids).map_err(|e| format!("{}: {e}", list.display()))?;
    let sizes = git
        .clone()
        .stdin_file(&list)
        .timeout(std::time::Duration::from_secs(120))
        .run_bytes(
            "measure the files the task's commits bring",
            &["cat-file", "--batch-check=%(objecttype) %(objectsize)"],
        )
        .map_err(|e| {
            format!(
                "its commits could not be measured: {}",
                crate::error::one_line(&e)
            )
        })?;
    let _ = std::fs::remove_file(&list);
    let mut total = 0u64;
    for line in sizes.split(|b| *b == b'\n') {
        let text = String::from_utf8_lossy(line);
        if let Some(size) = text.strip_prefix("blob ") {
            total = total.saturating_add(size.trim().parse::<u64>().unwrap_or(u64::MAX));
        }
    }
    if total > MAX_SAVED_BYTES {
        return Err(format!(
            "its commits hold more than {} MiB of files",
            MAX_SAVED_BYTES >> 20
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_entries_are_split_into_subtrees_and_leaves() {
        let id = [7u8; 20];
        let mut body = Vec::new();
        for (mode, name) in [
            ("100644", "a"),
            ("40000", "dir"),
            ("160000", "sub"),
            ("120000", "l"),
        ] {
            body.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            body.extend_from_slice(&id);
        }
        let (subtrees, leaves) = entries(&body, 20).unwrap();
        assert_eq!(subtrees, vec![id.to_vec()]);
        assert_eq!(leaves, 3);
        assert!(entries(&body[..body.len() - 1], 20).is_none(), "truncated");
        assert_eq!(
            hex_encode(&hex_decode(&"ab".repeat(20)).unwrap()),
            "ab".repeat(20)
        );
    }
}
