//! The nodes of a cluster: daemons on several hosts sharing one registry.
//! Plain data; a node's lease is renewed through the [`crate::Store`].

use serde::{Deserialize, Serialize};

/// A node as it joins: who it is and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its stable id (made once, `$ORCH_HOME/node-id`).
    pub id: String,
    /// Its name (the host's, or `--node-name`).
    pub name: String,
    /// Its labels, `key=value`.
    pub labels: Vec<String>,
    /// How many tasks it runs at once.
    pub concurrency: i64,
    /// The URL other nodes reach its API at, if it has one.
    pub advertise: Option<String>,
    /// The session of the daemon that is the node now.
    pub session: String,
}

/// A node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node.
    #[serde(flatten)]
    pub node: Node,
    /// When it joined last (Unix milliseconds).
    pub joined_at: i64,
    /// Until when its lease holds (Unix milliseconds, the registry's clock).
    pub lease_until: i64,
    /// Whether that lease holds now, by the registry's clock.
    pub alive: bool,
    /// It left cleanly (its daemon stopped).
    pub left: bool,
}

impl NodeRecord {
    /// `live`, `dead` or `left`.
    pub fn state(&self) -> &'static str {
        match (self.alive, self.left) {
            (_, true) => "left",
            (true, false) => "live",
            (false, false) => "dead",
        }
    }
}
