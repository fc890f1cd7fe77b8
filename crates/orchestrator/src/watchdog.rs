//! The watchdog: cleanup that survives `kill -9` of orch (SPEC 8.2).
//!
//! Signal handlers and drop guards cannot run when orch is killed with
//! SIGKILL, OOM-killed, or aborts. So before orch creates its first
//! container, a small process (the `orch` binary in a hidden mode, started by
//! the `cli` crate in its own session) holds the read end of a pipe whose
//! only write end is orch's, close-on-exec. orch tells it over that pipe, one
//! line each:
//!
//! - `session <uuid>`: whose containers it guards;
//! - `task <uuid> <keep 0|1> <grace ms> <container> <workspace or ->`:
//!   before a task's container is created (the record holds the same; this
//!   copy serves if the registry cannot be read);
//! - `done <uuid>`: once that task is cleaned up;
//! - `exit`: orch is exiting cleanly.
//!
//! If the pipe closes without `exit` (orch died, however), the watchdog
//! reaps the session with its own Docker connection: it stops and removes
//! every container labelled with the session (so also those whose create
//! call never returned), marks the live tasks `lost`, applies the workspace
//! policy, and returns only once Docker has listed none of the session's
//! containers twice in a row, or its deadline passed. It acts on the pipe
//! closing, never on time: a stopped (SIGSTOP) orch loses nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use orch_registry::{State, TaskRecord};
use uuid::Uuid;

use crate::cleanup::{ContainerTarget, Item, Mark, Strategy};
use crate::remove::remove_containers;
use crate::{Error, Orchestrator};

/// How long the watchdog keeps trying to see the session's containers gone.
const REAP_DEADLINE: Duration = Duration::from_secs(60);
/// Two empty listings this far apart end the reaping: a create the dead
/// orch sent just before it died has had time to show up.
const SETTLE: Duration = Duration::from_millis(300);

/// orch's end of the pipe to its watchdog.
#[derive(Debug)]
pub struct WatchdogLink {
    pipe: Mutex<std::fs::File>,
}

impl WatchdogLink {
    /// Wraps the write end of the pipe (it must be close-on-exec, so no
    /// child of orch keeps the watchdog waiting).
    pub fn new(write_end: OwnedFd) -> WatchdogLink {
        WatchdogLink {
            pipe: Mutex::new(std::fs::File::from(write_end)),
        }
    }

    fn send(&self, line: &str) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(pipe, "{line}") {
            tracing::warn!(error = %e, "the watchdog is gone; only reconciliation is left if orch dies");
        }
    }

    /// orch is exiting cleanly: the watchdog exits at once, touching
    /// nothing.
    pub fn clean_exit(&self) {
        self.send("exit");
    }
}

/// A task as orch registered it with its watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Keep its workspace if it is lost.
    pub keep_failed_workspace: bool,
    /// SIGTERM-to-SIGKILL grace.
    pub stop_grace: Duration,
    /// Its planned container name.
    pub container: String,
    /// Its workspace, if it has one.
    pub workspace: Option<PathBuf>,
}

impl Registered {
    fn line(&self, task_id: &Uuid) -> String {
        format!(
            "task {task_id} {} {} {} {}",
            u8::from(self.keep_failed_workspace),
            self.stop_grace.as_millis(),
            self.container,
            self.workspace
                .as_ref()
                .map_or_else(|| "-".to_owned(), |w| w.display().to_string())
        )
    }

    fn parse(rest: &str) -> Option<(Uuid, Registered)> {
        let mut parts = rest.splitn(5, ' ');
        let id = parts.next()?.parse().ok()?;
        let keep = parts.next()? == "1";
        let grace = Duration::from_millis(parts.next()?.parse().ok()?);
        let container = parts.next()?.to_owned();
        let workspace = parts.next().filter(|w| *w != "-").map(PathBuf::from);
        Some((
            id,
            Registered {
                keep_failed_workspace: keep,
                stop_grace: grace,
                container,
                workspace,
            },
        ))
    }
}

/// What orch told its watchdog before the pipe closed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchdogLog {
    /// The session it guards, once told.
    pub session: Option<Uuid>,
    /// Tasks registered and not reported done.
    pub pending: BTreeMap<Uuid, Registered>,
    /// orch said `exit`.
    pub clean_exit: bool,
}

impl WatchdogLog {
    /// Reads messages until the pipe closes or orch says `exit`.
    pub fn read(input: impl BufRead) -> WatchdogLog {
        let mut log = WatchdogLog::default();
        for line in input.lines() {
            let Ok(line) = line else { break };
            let (verb, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let id = rest.trim().parse::<Uuid>().ok();
            match (verb, id) {
                ("exit", _) => {
                    log.clean_exit = true;
                    break;
                }
                ("session", Some(id)) => log.session = Some(id),
                ("done", Some(id)) => {
                    log.pending.remove(&id);
                }
                ("task", _) => match Registered::parse(rest) {
                    Some((id, task)) => {
                        log.pending.insert(id, task);
                    }
                    None => tracing::warn!(line, "unreadable task registration"),
                },
                _ => tracing::warn!(line, "unknown watchdog message"),
            }
        }
        log
    }
}

/// What the watchdog did for a dead session.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Per task: what was done.
    pub items: Vec<Item>,
    /// Containers removed that no task item covered.
    pub stray_containers: Vec<String>,
    /// Docker listed none of the session's containers at the end.
    pub clean: bool,
}

impl Orchestrator {
    /// Tells the watchdog which session it guards; from now on it reaps
    /// this session if the pipe closes without `exit`.
    pub fn with_watchdog(mut self, link: WatchdogLink) -> Orchestrator {
        link.send(&format!("session {}", self.session.id));
        self.watchdog = Some(link);
        self
    }

    /// Tells the watchdog, if any, that this process is exiting cleanly.
    pub fn watchdog_clean_exit(&self) {
        if let Some(link) = &self.watchdog {
            link.clean_exit();
        }
    }

    pub(crate) fn watchdog_task(&self, task_id: &Uuid, task: &Registered) {
        if let Some(link) = &self.watchdog {
            link.send(&task.line(task_id));
        }
    }

    pub(crate) fn watchdog_done(&self, task_id: &Uuid) {
        if let Some(link) = &self.watchdog {
            link.send(&format!("done {task_id}"));
        }
    }

    /// Reaps a session whose orch died: the watchdog's work.
    pub async fn reap_session(&self, log: &WatchdogLog) -> Result<Reaped, Error> {
        let Some(session) = log.session else {
            return Ok(Reaped {
                clean: true,
                ..Reaped::default()
            });
        };
        let key = session.to_string();
        // The registry says the most; if it cannot be read, what orch
        // registered still lets the containers and workspaces be dealt with.
        let rows: Vec<TaskRecord> = match self.db(move |r| r.list_session(&key)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the registry; using what orch registered");
                Vec::new()
            }
        };
        // A failed listing is not the end: the loop below retries until the
        // deadline, and registered names are removed by name too.
        let containers = self
            .list_containers(Some(&session))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot list the session's containers yet");
                Vec::new()
            });
        let dirs = self.task_dirs().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list task directories");
            Vec::new()
        });
        let workspace_of = |id: &Uuid, image: Option<&str>| {
            dirs.iter()
                .find(|d| d.task_id == id.to_string())
                .map(|d| crate::cleanup::WorkspaceTarget::of(d, image))
        };
        let containers_of = |id: &Uuid, grace: Duration| -> Vec<ContainerTarget> {
            containers
                .iter()
                .filter(|c| c.task_id == Some(*id))
                .map(|c| ContainerTarget {
                    name: c.name.clone(),
                    stop_grace: (c.state == "running").then_some(grace),
                })
                .collect()
        };

        let mut items = Vec::new();
        for row in &rows {
            let unsettled = row.workspace_state == Some(orch_registry::WorkspaceState::Present);
            if !(row.state.is_live() || unsettled || log.pending.contains_key(&row.id)) {
                continue;
            }
            let mut item = Item::new(Strategy::Orphans, Some(row.id), "its orch process died");
            let grace = Duration::from_millis(u64::try_from(row.stop_grace_ms).unwrap_or(0));
            item.containers = containers_of(&row.id, grace);
            let end_state = if row.state.is_live() {
                item.mark = Some(Mark::Lost(
                    "its orch process died; cleaned by the watchdog".into(),
                ));
                State::Lost
            } else {
                row.state
            };
            item.workspace = workspace_of(&row.id, Some(&row.image));
            item.keep_workspace =
                item.workspace.is_some() && !end_state.is_completed() && row.keep_failed_workspace;
            items.push(item);
        }
        for (id, task) in &log.pending {
            if rows.iter().any(|r| r.id == *id) {
                continue;
            }
            let mut item = Item::new(
                Strategy::Orphans,
                Some(*id),
                "its orch process died (no record)",
            );
            item.containers = containers_of(id, task.stop_grace);
            item.workspace = workspace_of(id, None);
            item.keep_workspace = item.workspace.is_some() && task.keep_failed_workspace;
            items.push(item);
        }
        // Tasks in parallel: a graceful stop waits out its grace.
        let executed =
            futures_util::future::join_all(items.into_iter().map(|mut item| async move {
                self.execute_item(&mut item).await;
                item
            }))
            .await;

        // Everything else labelled with the session, until none shows up.
        let mut stray = Vec::new();
        let deadline = tokio::time::Instant::now() + REAP_DEADLINE;
        let mut empty_in_a_row = 0;
        while empty_in_a_row < 2 && tokio::time::Instant::now() < deadline {
            let left: Vec<String> = match self.list_containers(Some(&session)).await {
                Ok(left) => left.into_iter().map(|c| c.name).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "listing failed; retrying");
                    empty_in_a_row = 0;
                    tokio::time::sleep(SETTLE).await;
                    continue;
                }
            };
            if left.is_empty() {
                empty_in_a_row += 1;
            } else {
                empty_in_a_row = 0;
                for (name, result) in remove_containers(&self.docker, left).await {
                    match result {
                        Ok(_) => stray.push(name),
                        Err(e) => {
                            tracing::warn!(container = %name, error = %e, "removal failed; retrying")
                        }
                    }
                }
            }
            tokio::time::sleep(SETTLE).await;
        }
        Ok(Reaped {
            items: executed,
            stray_containers: stray,
            clean: empty_in_a_row >= 2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_protocol() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let s = Uuid::new_v4();
        let task = Registered {
            keep_failed_workspace: true,
            stop_grace: Duration::from_millis(2500),
            container: "orch-0123".into(),
            workspace: Some(PathBuf::from("/h/workspaces/p/tasks/with space")),
        };
        let bare = Registered {
            workspace: None,
            keep_failed_workspace: false,
            ..task.clone()
        };
        let (ta, tb) = (task.line(&a), bare.line(&b));
        let text = format!("session {s}\n{ta}\n{tb}\ndone {a}\nnonsense\n");
        let log = WatchdogLog::read(text.as_bytes());
        assert_eq!(log.session, Some(s));
        assert_eq!(log.pending, BTreeMap::from([(b, bare)]));
        assert!(!log.clean_exit, "the pipe closed without exit");
        let clean = WatchdogLog::read(format!("session {s}\n{ta}\nexit\n{tb}\n").as_bytes());
        assert!(clean.clean_exit);
        assert_eq!(
            clean.pending,
            BTreeMap::from([(a, task)]),
            "nothing after exit is read"
        );
    }
}
