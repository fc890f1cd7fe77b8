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
//! - `task <json>`: before a task's container is created, the same facts
//!   the teardown policy is given (its keep/remove choice, grace,
//!   workspace, repository and base), so the watchdog builds the very plan
//!   the task's own run would, even if the registry cannot be read;
//! - `done <uuid>`: once that task is torn down;
//! - `fence <ms>` / `fence off` (in a cluster): if nothing newer comes
//!   within that many milliseconds, orch is frozen or cut off from the
//!   registry, and its tasks' leases are about to run out: the watchdog
//!   removes the session's containers (and touches no record: a rescuer
//!   owns them now);
//! - `exit`: orch is exiting cleanly.
//!
//! If the pipe closes without `exit` (orch died, however), the watchdog
//! reaps the session with its own runtime connection: a plan per task
//! (ended `lost`, containers stopped with their grace and removed,
//! workspace by the task's policy), carried out by the one executor; then
//! everything else labelled with the session, until the runtime has listed
//! none twice in a row. A runtime that does not answer is tried again with
//! backoff until a deadline. It acts on the pipe closing, never on time: a
//! stopped (SIGSTOP) orch loses nothing.

use orch_retry::Backoff;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

use uuid::Uuid;

use crate::context::Ctx;
use crate::link::Registered;
use crate::reconcile::{Item, Strategy, found_of};
use crate::teardown::{self, Cause, ExecOptions, TaskFacts};

/// How long the watchdog keeps trying to see the session's containers gone.
const REAP_DEADLINE: Duration = Duration::from_secs(300);
/// Two empty listings this far apart end the reaping: a create the dead
/// orch sent just before it died has had time to show up.
const SETTLE: Duration = Duration::from_millis(300);
/// The longest pause between two attempts while the runtime does not
/// answer.
const RETRY_MAX: Duration = Duration::from_secs(5);

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

/// What one message asks of the watchdog beyond being noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Nothing more.
    Noted,
    /// Fence the session if nothing newer comes within this (or, `None`,
    /// never).
    Fence(Option<Duration>),
    /// orch exits cleanly.
    Exit,
}

impl WatchdogLog {
    /// Reads messages until the pipe closes or orch says `exit`.
    pub fn read(input: impl BufRead) -> WatchdogLog {
        let mut log = WatchdogLog::default();
        for line in input.lines() {
            let Ok(line) = line else { break };
            if log.hear(&line) == Heard::Exit {
                break;
            }
        }
        log
    }

    /// Notes one message.
    pub fn hear(&mut self, line: &str) -> Heard {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb {
            "exit" => {
                self.clean_exit = true;
                return Heard::Exit;
            }
            "fence" => {
                return Heard::Fence(rest.trim().parse().ok().map(Duration::from_millis));
            }
            "session" => match rest.trim().parse() {
                Ok(id) => self.session = Some(id),
                Err(_) => tracing::warn!(line, "unreadable session"),
            },
            "done" => {
                if let Ok(id) = rest.trim().parse::<Uuid>() {
                    self.pending.remove(&id);
                }
            }
            "task" => match serde_json::from_str::<Registered>(rest) {
                Ok(task) => {
                    self.pending.insert(task.facts.id, task);
                }
                Err(e) => tracing::warn!(line, error = %e, "unreadable task registration"),
            },
            _ => tracing::warn!(line, "unknown watchdog message"),
        }
        Heard::Noted
    }
}

/// Removes the containers of `session` of the instance of `home` at once
/// (the watchdog's fence: orch is frozen or cut off from the registry and
/// its leases are about to run out). Touches no record and no workspace:
/// the registry may be out of reach, and a rescuer owns the records now.
/// Returns the containers removed.
pub async fn fence_session(home: &crate::Home, session: Uuid) -> Result<Vec<String>, crate::Error> {
    let runtime = crate::runtime::DockerRuntime::connect().await?;
    let selector = crate::runtime::Selector {
        instance: home.instance_id().to_owned(),
        session: Some(session),
        task: None,
    };
    let mut removed = Vec::new();
    for container in crate::runtime::Runtime::list(&runtime, &selector).await? {
        match crate::runtime::Runtime::remove(&runtime, &container.name).await {
            Ok(_) => removed.push(container.name),
            Err(e) => {
                tracing::warn!(container = %container.name, error = %e, "cannot remove a container while fencing")
            }
        }
    }
    Ok(removed)
}

/// What the watchdog did for a dead session.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Per task: the plan and what carrying it out did.
    pub items: Vec<Item>,
    /// Containers removed that no task's plan covered.
    pub stray_containers: Vec<String>,
    /// The runtime listed none of the session's containers at the end.
    pub clean: bool,
}

/// Reaps a session whose orch died: the watchdog's work.
pub(crate) async fn reap(ctx: &Ctx, log: &WatchdogLog) -> Reaped {
    let Some(session) = log.session else {
        return Reaped {
            clean: true,
            ..Reaped::default()
        };
    };
    let deadline = tokio::time::Instant::now() + REAP_DEADLINE;
    let key = session.to_string();
    // The registry says the most; if it cannot be read, what orch
    // registered still lets the same plans be made.
    let rows = match ctx.store.call(move |r| r.list_session(&key)).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the registry; using what orch registered");
            Vec::new()
        }
    };
    let mut facts: BTreeMap<Uuid, TaskFacts> = BTreeMap::new();
    for row in &rows {
        let unsettled = !row.workspace_settled();
        if row.state.is_live() || unsettled || log.pending.contains_key(&row.id) {
            facts.insert(row.id, TaskFacts::from(row));
        }
    }
    for (id, registered) in &log.pending {
        facts.entry(*id).or_insert_with(|| registered.facts.clone());
    }

    // The runtime may be down for a moment: list until it answers.
    let mut backoff = Backoff::new(Duration::from_millis(100), RETRY_MAX)
        .within(deadline.saturating_duration_since(tokio::time::Instant::now()));
    let containers = loop {
        match ctx.runtime.list(&ctx.selector(Some(session))).await {
            Ok(containers) => break containers,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot list the session's containers yet; retrying");
                if !backoff.wait().await {
                    tracing::error!(error = %format!("{e:#}"), "gave up listing the session's containers");
                    break Vec::new();
                }
            }
        }
    };
    let layout = ctx.home.layout();
    let dirs = crate::workspace::blocking(move || layout.task_dirs())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list task directories");
            Vec::new()
        });
    let plans: Vec<Item> = facts
        .values()
        .map(|facts| {
            let mut found = found_of(facts, &containers, &dirs, None);
            // Registered names are removed by name too, listed or not.
            if let Some(registered) = log.pending.get(&facts.id) {
                if !found
                    .containers
                    .iter()
                    .any(|(n, _)| *n == registered.container)
                {
                    found.containers.push((
                        registered.container.clone(),
                        crate::runtime::ContainerState::Other,
                    ));
                }
            }
            let plan = teardown::plan(
                facts,
                Cause::OwnerGone("its orch process died; cleaned by the watchdog".into()),
                found,
            );
            Item::new(Strategy::Orphans, "its orch process died", plan)
        })
        .collect();
    // Tasks in parallel: a graceful stop waits out its grace.
    let items = futures_util::future::join_all(plans.into_iter().map(|mut item| async move {
        let mut attempt = 0;
        loop {
            let executed =
                teardown::execute(ctx, &item.plan, ExecOptions::default(), &mut |_| {}).await;
            let failed = !executed.errors.is_empty();
            item.record(executed);
            // A runtime that drops out is tried again, within the deadline.
            if !failed || tokio::time::Instant::now() >= deadline || attempt >= 20 {
                return item;
            }
            attempt += 1;
            tracing::warn!(task = ?item.plan.task, errors = ?item.errors, "teardown incomplete; retrying");
            tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            item.errors.clear();
        }
    }))
    .await;

    crate::reconcile::count_reaped(ctx, "watchdog", crate::reconcile::reaped(items.iter())).await;

    // Everything else labelled with the session, until none shows up.
    let mut stray = Vec::new();
    let mut empty_in_a_row = 0;
    let mut backoff = Backoff::new(SETTLE, RETRY_MAX);
    while empty_in_a_row < 2 && tokio::time::Instant::now() < deadline {
        let left: Vec<String> = match ctx.runtime.list(&ctx.selector(Some(session))).await {
            Ok(left) => left.into_iter().map(|c| c.name).collect(),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "listing failed; retrying");
                empty_in_a_row = 0;
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset(SETTLE);
        if left.is_empty() {
            empty_in_a_row += 1;
        } else {
            empty_in_a_row = 0;
            for name in left {
                match ctx.runtime.remove(&name).await {
                    Ok(_) => stray.push(name),
                    Err(e) => {
                        tracing::warn!(container = %name, error = %format!("{e:#}"), "removal failed; retrying")
                    }
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
    }
    // Networks the session made whose forwarder never came (or is gone).
    if let Err(e) = crate::egress::sweep_networks(ctx, &ctx.selector(Some(session)), false).await {
        tracing::warn!(error = %format!("{e:#}"), "cannot sweep the session's networks");
    }
    Reaped {
        items,
        stray_containers: stray,
        clean: empty_in_a_row >= 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teardown::WorkspacePolicy;

    #[test]
    fn reads_the_protocol() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let s = Uuid::new_v4();
        let facts = |id| TaskFacts {
            attempt: 1,
            id,
            project: "p".into(),
            state: None,
            started: false,
            image: "img".into(),
            stop_grace: Duration::from_millis(2500),
            policy: WorkspacePolicy {
                keep_workspace: Some(false),
                keep_failed_workspace: true,
            },
            workspace: None,
            workspace_settled: false,
            requeue: false,
        };
        let line = |id| {
            format!(
                "task {}",
                serde_json::to_string(&Registered {
                    facts: facts(id),
                    container: "orch-0123".into(),
                })
                .unwrap()
            )
        };
        let text = format!(
            "session {s}\n{}\n{}\ndone {a}\nnonsense\n",
            line(a),
            line(b)
        );
        let log = WatchdogLog::read(text.as_bytes());
        assert_eq!(log.session, Some(s));
        assert_eq!(log.pending.len(), 1);
        assert_eq!(log.pending[&b].facts, facts(b));
        assert!(!log.clean_exit, "the pipe closed without exit");
        let clean =
            WatchdogLog::read(format!("session {s}\n{}\nexit\n{}\n", line(a), line(b)).as_bytes());
        assert!(clean.clean_exit);
        assert_eq!(clean.pending.len(), 1, "nothing after exit is read");
    }
}
