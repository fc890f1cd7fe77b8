//! One orch process: its session id, its identity as an owner, and the
//! names and ids it gives tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::owner::Owner;

/// One orch process: a random id plus the owner identity of the process.
#[derive(Debug, Clone)]
pub struct Session {
    /// Random per process.
    pub id: Uuid,
    /// This process.
    pub owner: Owner,
}

impl Session {
    /// A new session for the current process.
    pub fn new() -> Session {
        Session {
            id: Uuid::new_v4(),
            owner: Owner::current(),
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

/// The container name of a task: `orch-<first 12 hex of the task id>`.
pub fn container_name(task_id: &Uuid) -> String {
    let hex = task_id.simple().to_string();
    format!("orch-{}", &hex[..12])
}

/// A fresh UUID v7. Ids made by one process never share a millisecond, so
/// their container names (the first 12 hex digits, the timestamp) differ.
pub(crate) fn new_task_id() -> Uuid {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut last = LAST_MS.load(Ordering::Relaxed);
    let ms = loop {
        let next = now_ms.max(last + 1);
        match LAST_MS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    let ts = uuid::Timestamp::from_unix_time(ms / 1000, ((ms % 1000) * 1_000_000) as u32, 0, 0);
    Uuid::new_v7(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_of_one_process_have_distinct_names() {
        let names: std::collections::HashSet<String> =
            (0..1000).map(|_| container_name(&new_task_id())).collect();
        assert_eq!(names.len(), 1000);
        assert_eq!(new_task_id().get_version_num(), 7);
        let id: Uuid = "0192f0e4-7b3a-7c2d-9e1f-000000000001".parse().unwrap();
        assert_eq!(container_name(&id), "orch-0192f0e47b3a");
    }
}
