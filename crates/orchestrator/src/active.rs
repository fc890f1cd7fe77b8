//! The active set: containers this process has (or may have) created and not
//! yet removed.
//!
//! It has one owner, the process's context, and changes one container
//! at a time: an entry is added before the create call is sent (so a create
//! that never answers is still covered) and removed only once Docker says the
//! container is gone. The final sweep of a dying session and the panic path
//! read it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

/// Live containers of this session, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct ActiveSet {
    inner: Arc<Mutex<BTreeMap<String, Uuid>>>,
}

impl ActiveSet {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Uuid>> {
        // A panic while holding this lock cannot leave the map half-changed
        // (each operation is one insert or remove), so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn insert(&self, name: &str, task_id: Uuid) {
        self.lock().insert(name.to_owned(), task_id);
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Uuid> {
        self.lock().remove(name)
    }

    /// Names of the containers still active.
    pub(crate) fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unit_at_a_time() {
        let set = ActiveSet::default();
        let id = Uuid::now_v7();
        set.insert("a", id);
        set.insert("b", id);
        set.remove("a");
        set.remove("zzz");
        assert_eq!(set.names(), vec!["b".to_owned()]);
    }
}
