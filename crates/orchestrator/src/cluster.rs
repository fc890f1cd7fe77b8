//! Many hosts (SPEC 12): which registry a process uses, and its node.
//!
//! With `ORCH_REGISTRY=postgres://...` (or `[registry] url` in the global
//! config) every process of a home uses that database, shared with other
//! nodes; else the home's own SQLite registry, as ever. In a cluster, leases
//! decide who is alive: a task's lease runs for the node lease
//! (`ORCH_NODE_LEASE`, default 30 s), and a task whose lease ran out is
//! rescued by a live node.

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
