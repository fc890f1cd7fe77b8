//! What every part of one orch process shares: the runtime connection, the
//! home, the registry, the session, the containers not yet removed, the
//! tracker of spawned work, the lease loop and the watchdog link.
//!
//! One `Ctx` per process, behind an `Arc`; the modules that run, tear down,
//! reconcile and reap tasks take it by reference and own no state of their
//! own.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::active::ActiveSet;
use crate::cluster::{LeasePolicy, NodeIdentity};
use crate::home::Home;
use crate::leases::Leases;
use crate::link::WatchdogLink;
use crate::runtime::{Runtime, Selector};
use crate::session::Session;
use crate::store::Records;

/// The shared state of one orch process.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) home: Home,
    pub(crate) store: Records,
    pub(crate) session: Session,
    pub(crate) active: ActiveSet,
    /// Every task this process spawns, awaited with a bound at exit.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the process winds down: background loops stop.
    pub(crate) closing: CancellationToken,
    pub(crate) leases: Leases,
    pub(crate) watchdog: Option<Arc<WatchdogLink>>,
    /// This process's node, in a cluster.
    pub(crate) node: Option<NodeIdentity>,
    /// Every teardown plan executed, for the unit tests' assertions.
    #[cfg(test)]
    pub(crate) executed: std::sync::Mutex<Vec<crate::teardown::Teardown>>,
}

impl Ctx {
    pub(crate) fn new(runtime: Arc<dyn Runtime>, home: Home, store: Records) -> Ctx {
        let tracker = TaskTracker::new();
        let closing = CancellationToken::new();
        let policy = LeasePolicy {
            lease: crate::leases::LEASE,
            fenced: false,
        };
        Ctx {
            leases: Leases::new(store.clone(), tracker.clone(), closing.clone(), policy),
            runtime,
            home,
            store,
            session: Session::new(),
            active: ActiveSet::default(),
            tracker,
            closing,
            watchdog: None,
            node: None,
            #[cfg(test)]
            executed: std::sync::Mutex::default(),
        }
    }

    /// Makes this process `node` of a cluster: its tasks' leases run for
    /// the node lease, and it stops them itself if it cannot renew them.
    pub(crate) fn set_node(&mut self, node: Option<NodeIdentity>) -> Result<(), Error> {
        if node.is_some() {
            let policy = LeasePolicy {
                lease: crate::cluster::node_lease()?,
                fenced: true,
            };
            self.leases = Leases::new(
                self.store.clone(),
                self.tracker.clone(),
                self.closing.clone(),
                policy,
            );
        }
        self.node = node;
        Ok(())
    }

    /// This node's id, in a cluster.
    pub(crate) fn node_id(&self) -> Option<&str> {
        self.node.as_ref().map(|n| n.id.as_str())
    }

    /// This instance's containers, optionally one session's.
    pub(crate) fn selector(&self, session: Option<uuid::Uuid>) -> Selector {
        Selector {
            instance: self.home.instance_id().to_owned(),
            session,
            task: None,
        }
    }
}
