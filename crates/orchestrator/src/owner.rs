//! Who owns a container: a process, identified so that pid reuse and reboots
//! cannot fool a liveness check.
//!
//! A pid alone is not an identity: after the owner dies the kernel may give
//! its pid to another process, and after a reboot every pid is new. The owner
//! is the pid, the process start time (clock ticks since boot, field 22 of
//! `/proc/<pid>/stat`) and the boot id.

use std::path::Path;

/// The identity of an owning process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start: u64,
    /// `/proc/sys/kernel/random/boot_id` at the time.
    pub boot: String,
}

impl Owner {
    /// The current process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start: start_time(pid).unwrap_or(0),
            boot: boot_id(),
        }
    }

    /// True if this exact process is still running on this boot.
    pub fn is_alive(&self) -> bool {
        self.boot == boot_id() && start_time(self.pid).is_some_and(|start| start == self.start)
    }
}

impl From<&orch_registry::TaskRecord> for Owner {
    /// The owner a task's record names.
    fn from(task: &orch_registry::TaskRecord) -> Owner {
        Owner {
            pid: u32::try_from(task.owner.pid).unwrap_or(0),
            start: u64::try_from(task.owner.start).unwrap_or(0),
            boot: task.owner.boot.clone(),
        }
    }
}

/// Whether `row` is a task another node of a cluster owns (`node`: this
/// process's): its owner's liveness is its lease, never this host's
/// processes, and rescuers settle it when that runs out.
pub(crate) fn is_foreign(row: &orch_registry::TaskRecord, node: Option<&str>) -> bool {
    matches!((row.owner.node_id.as_deref(), node), (Some(theirs), Some(mine)) if theirs != mine)
}

/// Whether the owner of `row` still runs it, as far as this process can
/// tell: another node's task while its lease holds; this host's while its
/// process lives.
pub(crate) fn runs(row: &orch_registry::TaskRecord, node: Option<&str>) -> bool {
    if is_foreign(row, node) {
        return row
            .owner
            .lease_until
            .is_some_and(|until| until > orch_registry::now_ms());
    }
    Owner::from(row).is_alive()
}

/// The start time of `pid`, or `None` if there is no such process.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow; field 22 is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// This boot's id; empty if unreadable, which then matches only itself.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_past_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn current_process_is_alive_and_a_dead_one_is_not() {
        let me = Owner::current();
        assert!(me.start > 0);
        assert!(me.is_alive());
        let reused = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(!reused.is_alive(), "same pid, other start time");
        let rebooted = Owner {
            boot: "other-boot".into(),
            ..me.clone()
        };
        assert!(!rebooted.is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        child.wait().unwrap();
        let dead = Owner {
            pid,
            start: start.unwrap_or(1),
            boot: boot_id(),
        };
        assert!(!dead.is_alive());
    }
}
