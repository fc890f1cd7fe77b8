//! Many hosts (SPEC 12): which registry a process uses, and its node.
//!
//! With `ORCH_REGISTRY=postgres://...` (or `[registry] url` in the global
//! config) every process of a home uses that database, shared with other
//! nodes; else the home's own SQLite registry, as ever. In a cluster, leases
//! decide who is alive: a task's lease runs for the node lease
//! (`ORCH_NODE_LEASE`, default 30 s), and a task whose lease ran out is
//! rescued by a live node.

use std::path::Path;
use std::time::Duration;

use crate::config::{GlobalConfig, parse_duration};
use crate::{ConfigError, Home};

/// How long a node's (and its tasks') lease runs without renewal.
pub const NODE_LEASE: Duration = Duration::from_secs(30);

/// The shortest node lease accepted.
const SHORTEST_LEASE: Duration = Duration::from_secs(2);

/// The registry URL in effect: `ORCH_REGISTRY`, else `[registry] url` of
/// the global config; `None`: the home's own registry.
pub fn registry_url(config: &GlobalConfig) -> Result<Option<String>, ConfigError> {
    match std::env::var("ORCH_REGISTRY") {
        Ok(url) if !url.trim().is_empty() => {
            let url = url.trim().to_owned();
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                Ok(Some(url))
            } else {
                Err(ConfigError::Flag {
                    flag: "ORCH_REGISTRY".into(),
                    message: "expected a postgres://user:password@host:port/database URL".into(),
                })
            }
        }
        _ => Ok(config.registry_url.clone()),
    }
}

/// The node lease in effect: `ORCH_NODE_LEASE`, else [`NODE_LEASE`].
pub fn node_lease() -> Result<Duration, ConfigError> {
    let Ok(text) = std::env::var("ORCH_NODE_LEASE") else {
        return Ok(NODE_LEASE);
    };
    let lease = parse_duration(&text).map_err(|message| ConfigError::Flag {
        flag: "ORCH_NODE_LEASE".into(),
        message,
    })?;
    if lease < SHORTEST_LEASE {
        return Err(ConfigError::Flag {
            flag: "ORCH_NODE_LEASE".into(),
            message: format!(
                "{} is too short: at least {}s",
                text.trim(),
                SHORTEST_LEASE.as_secs()
            ),
        });
    }
    Ok(lease)
}

/// Who this process is in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The home's node id (`$ORCH_HOME/node-id`).
    pub id: String,
    /// Its name: `--node-name`, `ORCH_NODE_NAME`, or the host's name.
    pub name: String,
}

impl NodeIdentity {
    /// The node of `home`, named `name` if given.
    pub fn of(home: &Home, name: Option<&str>) -> Result<NodeIdentity, crate::Error> {
        let name = name
            .map(str::to_owned)
            .or_else(|| std::env::var("ORCH_NODE_NAME").ok())
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(host_name);
        Ok(NodeIdentity {
            id: home.node_id()?,
            name,
        })
    }
}

/// The host's name.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// How a process keeps its leases: for how long each renewal holds, and
/// whether others rely on them (a shared registry: then a process that
/// cannot renew stops its own tasks before its lease runs out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// How long a renewal holds.
    pub lease: Duration,
    /// Whether a rescuer acts when the lease runs out.
    pub fenced: bool,
}

impl LeasePolicy {
    /// How often the lease is renewed: a sixth of it (so that several
    /// renewals can fail before it runs out), at most every 5 s.
    pub fn renew_every(&self) -> Duration {
        (self.lease / 6).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// How long after the last renewal the process stops its tasks
    /// gracefully, having heard nothing from the registry: half the lease.
    pub fn stop_after(&self) -> Duration {
        self.lease / 2
    }

    /// How long after the last renewal it forces them: three quarters of
    /// the lease, leaving a quarter for their containers to go before a
    /// rescuer may act.
    pub fn force_after(&self) -> Duration {
        self.lease * 3 / 4
    }
}

/// Keeps a task's output in a shared registry when it ends, for the other
/// nodes: the last [`orch_registry::KEPT_LOG`] bytes of it, after a line
/// saying what was left out (the whole log stays in this node's home).
pub(crate) async fn keep_log(ctx: &crate::context::Ctx, id: uuid::Uuid) {
    let path = ctx.home.log_path(&id);
    let node = ctx
        .node
        .as_ref()
        .map_or_else(|| "its node".to_owned(), |n| format!("node {}", n.name));
    let log = tokio::task::spawn_blocking(move || log_tail(&path, &node)).await;
    let Ok(Some(log)) = log else {
        return;
    };
    if let Err(e) = ctx.store.call(move |r| r.keep_log(&id, &log)).await {
        tracing::warn!(task = %id, error = %format!("{e:#}"), "cannot keep the task's output in the registry");
    }
}

/// The end of the log at `path`, at most [`orch_registry::KEPT_LOG`]
/// bytes, after a line naming what was cut and where the rest is.
fn log_tail(path: &std::path::Path, node: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let keep = orch_registry::KEPT_LOG as u64;
    let mut out = Vec::new();
    if len > keep {
        out.extend_from_slice(
            format!(
                "[orch: the first {} bytes of this output are in {} on {node}]\n",
                len - keep,
                path.display()
            )
            .as_bytes(),
        );
        file.seek(SeekFrom::Start(len - keep)).ok()?;
    }
    file.take(keep).read_to_end(&mut out).ok()?;
    Some(out)
}

/// Where a task's output is to be read from, by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// This home's log file (it ran here, or nowhere yet).
    Local(std::path::PathBuf),
    /// Kept in the registry when it ended on another node.
    Kept(Vec<u8>),
    /// Still running on another node, which serves it at this URL.
    Remote {
        /// The owner's advertised API URL.
        url: String,
    },
    /// Running on another node that advertises no URL.
    Unreachable {
        /// That node's name.
        node: String,
    },
}

/// Where the output of `task` is, for a process of `home` that is `node`
/// (none on one host): here, in the registry, or on its owner. Reads the
/// registry: call it on the blocking pool.
pub fn log_source(
    store: &dyn orch_registry::Store,
    home: &std::path::Path,
    node: Option<&str>,
    task: &orch_registry::TaskRecord,
) -> Result<LogSource, orch_registry::Error> {
    let local = home.join("logs").join(format!("{}.log", task.id));
    if local.exists() || !crate::owner::is_foreign(task, node) {
        return Ok(LogSource::Local(local));
    }
    if task.state.is_terminal() {
        return Ok(match store.kept_log(&task.id)? {
            Some(bytes) => LogSource::Kept(bytes),
            None => LogSource::Local(local),
        });
    }
    let owner = store
        .nodes()?
        .into_iter()
        .find(|n| Some(n.node.id.as_str()) == task.owner.node_id.as_deref());
    Ok(match owner {
        Some(owner) => match owner.node.advertise {
            Some(url) => LogSource::Remote { url },
            None => LogSource::Unreachable {
                node: owner.node.name,
            },
        },
        None => LogSource::Unreachable {
            node: task.owner.node.clone().unwrap_or_default(),
        },
    })
}

/// Whether the owner of `task` still runs it, as far as a process that is
/// `node` (none on one host) can tell: another node's task while its lease
/// holds; this host's while its process lives.
pub fn runs(task: &orch_registry::TaskRecord, node: Option<&str>) -> bool {
    crate::owner::runs(task, node)
}

/// Where the last `lines` lines of `bytes` start (a last line without its
/// newline counts as one).
pub fn tail_start(bytes: &[u8], lines: usize) -> usize {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if lines == 0 {
        return bytes.len();
    }
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines - 1)
        .map_or(0, |(at, _)| at + 1)
}

/// Where the last `lines` lines of the file at `path` start, read backwards
/// in blocks (a log may be large); 0 if it does not exist.
pub fn tail_offset(path: &Path, lines: usize) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCK: u64 = 64 * 1024;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if lines == 0 {
        return Ok(len);
    }
    // Newlines still to pass, the last byte's own not counted.
    let mut wanted = lines;
    let mut end = len;
    let mut block = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (i, byte) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            if *byte == b'\n' && at + 1 != len {
                wanted -= 1;
                if wanted == 0 {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_count_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        for (text, lines, from) in [
            ("a\nb\nc\n", 2, 2),
            ("a\nb\nc\n", 1, 4),
            ("a\nb\nc", 2, 2),
            ("a\nb\nc\n", 5, 0),
            ("a\nb\nc\n", 0, 6),
            ("", 3, 0),
            ("\n\n\n", 1, 2),
        ] {
            assert_eq!(tail_start(text.as_bytes(), lines), from, "{text:?} {lines}");
            std::fs::write(&path, text).unwrap();
            assert_eq!(
                tail_offset(&path, lines).unwrap(),
                from as u64,
                "{text:?} {lines}"
            );
        }
        // Across blocks.
        let long: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &long).unwrap();
        let at = tail_offset(&path, 3).unwrap() as usize;
        assert_eq!(&long[at..], "line 19997\nline 19998\nline 19999\n");
        assert_eq!(at, tail_start(long.as_bytes(), 3));
        assert_eq!(tail_offset(&dir.path().join("none"), 3).unwrap(), 0);
    }
}
