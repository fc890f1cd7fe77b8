//! The registry of a cluster: one PostgreSQL database shared by every node.
//!
//! PostgreSQL is the distributed engine here; orch adds no consensus of its
//! own. What keeps the cluster safe:
//! - a claim is one transaction that locks the rows it looks at `FOR UPDATE
//!   SKIP LOCKED` (two nodes never take one task, and never wait on each
//!   other's candidates), counts a project's live tasks under a lock of that
//!   project (so `max_parallel` holds across nodes), and counts the attempt;
//! - every write about a task carries the attempt it was made under and
//!   holds only if that is still the task's (fencing): a node that lost a
//!   task cannot write over whoever has it now;
//! - a rescue writes only where the task is still on the attempt and in the
//!   state it found, with its lease still run out (an owner that came back
//!   in between keeps its task);
//! - leases are the database's clock, never a node's.
//!
//! Calls are synchronous, made on the caller's thread through a pool of at
//! most [`POOL_SIZE`] connections ([`pool`]); one more connection listens
//! for wake-ups (`LISTEN`), when a daemon asks for them.

mod pool;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use postgres::{Row, Transaction};
use uuid::Uuid;

use crate::record::{BRANCHES, QUEUED_AGAIN, REQUEUE_WHEN, RETRY_WHEN, queue_again_sql};
use crate::store::{OnWake, Wake};
use crate::{
    ALL_STATES, Attempt, Claimant, Error, Finish, KnownBranch, Listing, Node, NodeRecord, Renewal,
    Rescued, State, Store, TaskBrief, TaskOutcome, TaskOwner, TaskProgress, TaskQueue, TaskRecord,
    TaskWorkspace, WorkspaceState,
};
pub use pool::POOL_SIZE;
use pool::{Conn, Failure, Pool};

/// Now, in Unix milliseconds, by the database's clock.
macro_rules! now {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}
const NOW: &str = now!();

/// Live tasks: those that may run, and those whose work is being saved.
const LIVE: &str = "(state IN ('queued', 'creating', 'running') OR workspace_state = 'saving')";

/// Every column a record is read from, in [`record_from_row`]'s order.
const COLUMNS: &str = "id, project, description, state, created_at, started_at, finished_at, \
    exit_code, reason, container, image, workspace, branch, repo, workspace_state, \
    keep_failed_workspace, stop_grace_ms, session, owner_pid, owner_start, owner_boot, \
    lease_until, progress, progress_message, progress_at, cancel_requested, detached, \
    keep_workspace, base, git_dir, spec, priority, max_parallel, notes, attempt, node_id, node, \
    retries, constraints, remote, delivered, name, paused";

/// A record written whole; an id already there is left as it is.
const INSERT: &str = "INSERT INTO tasks (id, project, description, state, created_at, started_at, \
    finished_at, exit_code, reason, container, image, workspace, branch, repo, workspace_state, \
    keep_failed_workspace, stop_grace_ms, session, owner_pid, owner_start, owner_boot, \
    lease_until, progress, progress_message, progress_at, cancel_requested, detached, \
    keep_workspace, base, git_dir, spec, priority, max_parallel, attempt, node_id, node, retries, \
    constraints, remote, delivered, name) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
    $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, \
    $37, $38, $39, $40, $41) ON CONFLICT (id) DO NOTHING";

/// How many columns [`COLUMNS`] names.
const COLUMN_COUNT: usize = 43;

/// What a claim writes: the claimant (`$2` to `$5`, `$7`, `$8`), its lease
/// (`$6`), and the next attempt. `$1` is the claimant's labels.
const CLAIMED: &str = concat!(
    "state = 'creating', session = $2, owner_pid = $3, owner_start = $4, owner_boot = $5, \
     lease_until = ",
    now!(),
    " + $6, attempt = attempt + 1, node_id = $7, node = $8"
);

/// The channels wake-ups go on.
const QUEUE_CHANNEL: &str = "orch_queue";
const CANCEL_CHANNEL: &str = "orch_cancel";

/// How many queued tasks one claim looks at.
const CLAIM_WINDOW: i64 = 64;

/// A registry in a PostgreSQL database.
#[derive(Debug)]
pub struct Postgres {
    pool: Pool,
}

impl Postgres {
    /// Connects to the database at `url` (`postgres://user:password@host:
    /// port/database`) and brings its schema up to this orch's, refusing a
    /// newer one. Fails at once, naming the database (never its password),
    /// if it cannot be reached or used.
    pub fn open(url: &str) -> Result<Postgres, Error> {
        let mut config = postgres::Config::from_str(url).map_err(|e| {
            Error::Setting(format!(
                "the registry URL {} is not a PostgreSQL URL ({e})",
                schema::shown_url(url)
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(pool::CONNECT_TIMEOUT);
        }
        config.application_name("orch");
        let place = schema::place_of(&config);
        let pool = Pool::new(config, place.clone());
        let mut client = pool.connect().map_err(|source| Error::Postgres {
            action: "connect",
            place: place.clone(),
            source,
        })?;
        schema::migrate(&mut client, &place)?;
        Ok(Postgres { pool })
    }

    /// Runs `work` on a pooled connection (see [`Pool::with`]).
    fn with<T>(
        &self,
        action: &'static str,
        work: impl FnMut(&mut Conn) -> Result<T, Failure>,
    ) -> Result<T, Error> {
        self.pool.with(action, work)
    }

    /// Runs `work` in one transaction on a pooled connection.
    fn transaction<T>(
        &self,
        action: &'static str,
        mut work: impl FnMut(&mut Transaction<'_>) -> Result<T, Failure>,
    ) -> Result<T, Error> {
        self.pool.with(action, |client| {
            let mut tx = client.transaction()?;
            let value = work(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// Records read by `sql` with `params`.
    fn records(
        &self,
        action: &'static str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<TaskRecord>, Error> {
        self.with(action, |c| {
            c.query(sql, params)?
                .iter()
                .map(|row| record_from_row(row).map_err(Failure::from))
                .collect()
        })
    }

    /// Runs one `UPDATE` about a task (its id `$1`, further parameters
    /// after) if `task`'s attempt still holds it.
    fn fenced_update(
        &self,
        action: &'static str,
        task: &Attempt,
        set: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<(), Error> {
        let id = task.id.to_string();
        let sql = format!("UPDATE tasks SET {set} WHERE id = $1 AND attempt = $2");
        self.transaction(action, |tx| {
            let mut all: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&id, &task.number];
            all.extend_from_slice(params);
            if tx.execute(&sql, &all)? == 0 {
                match refusal(tx, task)? {
                    // Nothing to write about: a task whose record is gone.
                    Error::NotFound(_) => {}
                    refused => return Err(refused.into()),
                }
            }
            Ok(())
        })
    }

    /// Moves a task to `to` if its attempt holds it and the lifecycle
    /// allows it, applying `extra` (a `SET` fragment whose parameters start
    /// at `$3`). Returns the state it left (or, where a broken connection
    /// hid that its own change landed, the state it found).
    ///
    /// One statement, one round trip: the row is locked and its state read
    /// (`held`), then changed only where the attempt and a state that may
    /// become `to` still hold. Only when nothing changed is the row read
    /// again, to say why.
    fn transition(
        &self,
        task: &Attempt,
        to: State,
        extra: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<State, Error> {
        let id = task.id.to_string();
        let state = to.as_str();
        // Queued again, a task is held by no attempt until its next claim.
        let from: Vec<&str> = ALL_STATES
            .iter()
            .filter(|s| **s != State::Queued && s.can_become(to))
            .map(|s| s.as_str())
            .collect();
        let set = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        let sql = format!(
            "WITH held AS MATERIALIZED (SELECT state AS held_state FROM tasks WHERE id = $1 FOR UPDATE) \
             UPDATE tasks SET state = $2{set} FROM held \
             WHERE id = $1 AND attempt = ${} AND state = ANY(${}) RETURNING held_state",
            params.len() + 3,
            params.len() + 4,
        );
        let mut all: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&id, &state];
        all.extend_from_slice(params);
        all.push(&task.number);
        all.push(&from);
        let mut sent = false;
        self.with("change a task's state", |c| {
            // A connection that broke may have taken the change with it, or
            // after it: only on the first call is a task already in `to`
            // someone else's doing.
            let again = std::mem::replace(&mut sent, true);
            loop {
                let statement = c.prepared(&sql)?;
                if let Some(row) = c.query_opt(&statement, &all)? {
                    return Ok(parse_state(row.get(0))?);
                }
                let why = c.prepared("SELECT state, attempt FROM tasks WHERE id = $1")?;
                let Some(row) = c.query_opt(&why, &[&id])? else {
                    return Err(Error::NotFound(id.clone()).into());
                };
                let now = parse_state(row.get(0))?;
                let current: i64 = row.get(1);
                if current != task.number || now == State::Queued {
                    return Err(fenced(task, current.max(task.number + 1)).into());
                }
                if again && now == to {
                    // This attempt's own change, made before its connection
                    // broke (the state it left is not known any more).
                    return Ok(now);
                }
                if !now.can_become(to) {
                    return Err(Error::IllegalTransition {
                        id: task.id,
                        from: now,
                        to,
                    }
                    .into());
                }
                // It changed between the two reads into a state that may
                // become `to`: try again.
            }
        })
    }

    /// Puts a task back in the queue if it is still on `task`'s attempt
    /// and `condition` holds, waking the queue; whether it did.
    fn queue_again(
        &self,
        action: &'static str,
        task: &Attempt,
        reason: &str,
        condition: &str,
    ) -> Result<bool, Error> {
        let id = task.id.to_string();
        let sql = queue_again_sql(condition);
        self.transaction(action, |tx| {
            let changed = tx.execute(&sql, &[&reason, &id, &task.number])?;
            if changed > 0 {
                tx.execute(&format!("NOTIFY {QUEUE_CHANNEL}"), &[])?;
            }
            Ok(changed > 0)
        })
    }
}

/// Why a fenced write changed nothing: the task is gone, or on another
/// attempt.
fn refusal(tx: &mut Transaction<'_>, task: &Attempt) -> Result<Error, postgres::Error> {
    let current = tx.query_opt(
        "SELECT attempt FROM tasks WHERE id = $1",
        &[&task.id.to_string()],
    )?;
    Ok(match current {
        Some(row) => fenced(task, row.get(0)),
        None => Error::NotFound(task.id.to_string()),
    })
}

fn fenced(task: &Attempt, current: i64) -> Error {
    Error::Fenced {
        id: task.id,
        attempt: task.number,
        current,
    }
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

fn parse_state(text: &str) -> Result<State, Error> {
    text.parse()
        .map_err(|e: crate::state::UnknownState| Error::Corrupt {
            path: PathBuf::from("postgres"),
            reason: e.to_string(),
        })
}

fn parse_id(text: &str) -> Result<Uuid, Error> {
    text.parse().map_err(|_| Error::Corrupt {
        path: PathBuf::from("postgres"),
        reason: format!("task id {text:?} is not a uuid"),
    })
}

fn record_from_row(row: &Row) -> Result<TaskRecord, Error> {
    Ok(TaskRecord {
        id: parse_id(row.get(0))?,
        project: row.get(1),
        description: row.get(2),
        name: row.get(41),
        paused: row.get(42),
        state: parse_state(row.get(3))?,
        created_at: row.get(4),
        started_at: row.get(5),
        container: row.get(9),
        image: row.get(10),
        stop_grace_ms: row.get(16),
        cancel_requested: row.get(25),
        owner: TaskOwner {
            session: row.get(17),
            pid: row.get(18),
            start: row.get(19),
            boot: row.get(20),
            lease_until: row.get(21),
            detached: row.get(26),
            attempt: row.get(34),
            node_id: row.get(35),
            node: row.get(36),
        },
        workspace: TaskWorkspace {
            path: row.get(11),
            branch: row.get(12),
            repo: row.get(13),
            state: row
                .get::<_, Option<&str>>(14)
                .and_then(WorkspaceState::parse),
            keep_failed_workspace: row.get(15),
            keep_workspace: row.get(27),
            base: row.get(28),
            git_dir: row.get(29),
            remote: row.get(39),
            delivered: row.get(40),
        },
        progress: TaskProgress {
            percent: row.get(22),
            message: row.get(23),
            at: row.get(24),
        },
        outcome: TaskOutcome {
            finished_at: row.get(6),
            exit_code: row.get(7),
            reason: row.get(8),
            notes: row.get(33),
        },
        queue: TaskQueue {
            spec: row.get(30),
            priority: row.get(31),
            max_parallel: row.get(32),
            retries: row.get(37),
            constraints: row.get(38),
        },
    })
}

/// Records a task's repository and its branch's base and description
/// (for `cleanup --branches`, which outlives the task's record).
fn note_repo(tx: &mut Transaction<'_>, task: &TaskRecord) -> Result<(), postgres::Error> {
    if let Some(repo) = &task.workspace.repo {
        tx.execute(
            "INSERT INTO repos (path) VALUES ($1) ON CONFLICT DO NOTHING",
            &[repo],
        )?;
        if let (Some(branch), Some(base)) = (&task.workspace.branch, &task.workspace.base) {
            tx.execute(
                "INSERT INTO branches (repo, name, base, description) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repo, name) DO UPDATE \
                 SET base = excluded.base, description = excluded.description",
                &[repo, branch, base, &task.description],
            )?;
        }
    }
    Ok(())
}

/// The SQL that wipes the values of a record's submitted environment, for
/// a task that can no longer start.
const WIPE_ENV: &str = "spec = CASE WHEN spec IS NULL THEN NULL \
    ELSE (spec::jsonb - 'env')::text END";

impl Store for Postgres {
    fn insert(&self, task: &TaskRecord) -> Result<(), Error> {
        let id = task.id.to_string();
        let state = task.state.as_str();
        let workspace_state = task.workspace.state.map(WorkspaceState::as_str);
        let params: [&(dyn postgres::types::ToSql + Sync); 41] = [
            &id,
            &task.project,
            &task.description,
            &state,
            &task.created_at,
            &task.started_at,
            &task.outcome.finished_at,
            &task.outcome.exit_code,
            &task.outcome.reason,
            &task.container,
            &task.image,
            &task.workspace.path,
            &task.workspace.branch,
            &task.workspace.repo,
            &workspace_state,
            &task.workspace.keep_failed_workspace,
            &task.stop_grace_ms,
            &task.owner.session,
            &task.owner.pid,
            &task.owner.start,
            &task.owner.boot,
            &task.owner.lease_until,
            &task.progress.percent,
            &task.progress.message,
            &task.progress.at,
            &task.cancel_requested,
            &task.owner.detached,
            &task.workspace.keep_workspace,
            &task.workspace.base,
            &task.workspace.git_dir,
            &task.queue.spec,
            &task.queue.priority,
            &task.queue.max_parallel,
            &task.owner.attempt,
            &task.owner.node_id,
            &task.owner.node,
            &task.queue.retries,
            &task.queue.constraints,
            &task.workspace.remote,
            &task.workspace.delivered,
            &task.name,
        ];
        // The unique index holds a live name against any race; its
        // refusal names it.
        let taken = |e: postgres::Error| match (&task.name, e.as_db_error()) {
            (Some(name), Some(db)) if db.constraint() == Some("tasks_live_name") => {
                Failure::Orch(Error::NameTaken(name.clone()))
            }
            _ => Failure::Db(e),
        };
        if task.workspace.repo.is_none() {
            // A submission: one statement, one round trip.
            static SUBMIT: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "WITH inserted AS ({INSERT} RETURNING state) \
                     SELECT pg_notify('{QUEUE_CHANNEL}', '') FROM inserted WHERE state = 'queued'"
                )
            });
            return self.with("record a task", |c| {
                let statement = c.prepared(&SUBMIT)?;
                c.query(&statement, &params).map_err(taken)?;
                Ok(())
            });
        }
        self.transaction("record a task", |tx| {
            tx.execute(INSERT, &params).map_err(taken)?;
            note_repo(tx, task)?;
            if task.state == State::Queued {
                tx.execute(&format!("NOTIFY {QUEUE_CHANNEL}"), &[])?;
            }
            Ok(())
        })
    }

    fn mark_running(&self, task: &Attempt, at: i64, lease: Duration) -> Result<(), Error> {
        let lease = lease_ms(lease);
        self.transition(
            task,
            State::Running,
            &format!("started_at = $3, lease_until = {NOW} + $4"),
            &[&at, &lease],
        )
        .map(drop)
    }

    fn finish(&self, task: &Attempt, finish: &Finish) -> Result<State, Error> {
        if !finish.state.is_terminal() {
            return Err(Error::IllegalTransition {
                id: task.id,
                from: State::Running,
                to: finish.state,
            });
        }
        self.transition(
            task,
            finish.state,
            &format!(
                "finished_at = $3, exit_code = $4, reason = $5, lease_until = NULL, paused = false, \
                 {WIPE_ENV}"
            ),
            &[&finish.at, &finish.exit_code, &finish.reason],
        )
    }

    fn cancel_requested(&self, id: &Uuid) -> Result<bool, Error> {
        let id = id.to_string();
        self.with("read a cancel request", |c| {
            Ok(
                c.query_opt("SELECT cancel_requested FROM tasks WHERE id = $1", &[&id])?
                    .is_some_and(|r| r.get(0)),
            )
        })
    }

    fn request_cancel(&self, id: &Uuid) -> Result<bool, Error> {
        let id = id.to_string();
        self.transaction("request a cancel", |tx| {
            let changed = tx.execute(
                "UPDATE tasks SET cancel_requested = true WHERE id = $1 \
                 AND state IN ('queued', 'creating', 'running')",
                &[&id],
            )?;
            if changed > 0 {
                tx.execute(&format!("NOTIFY {CANCEL_CHANNEL}"), &[])?;
            }
            Ok(changed > 0)
        })
    }

    fn set_progress(
        &self,
        task: &Attempt,
        percent: u8,
        message: &str,
        at: i64,
    ) -> Result<(), Error> {
        let percent = i64::from(percent);
        self.fenced_update(
            "store progress",
            task,
            "progress = $3, progress_message = $4, progress_at = $5",
            &[&percent, &message, &at],
        )
    }

    fn set_paused(&self, task: &Attempt, paused: bool) -> Result<(), Error> {
        self.fenced_update(
            "record a task frozen or thawed",
            task,
            "paused = $3",
            &[&paused],
        )
    }

    fn set_workspace_state(&self, task: &Attempt, state: WorkspaceState) -> Result<(), Error> {
        self.fenced_update(
            "record a workspace's state",
            task,
            "workspace_state = $3",
            &[&state.as_str()],
        )
    }

    fn add_note(&self, task: &Attempt, note: &str) -> Result<(), Error> {
        self.fenced_update(
            "note something of a task",
            task,
            "notes = CASE WHEN notes IS NULL THEN $3 ELSE notes || chr(10) || $3 END",
            &[&note],
        )
    }

    fn set_container(&self, task: &Attempt, name: &str) -> Result<(), Error> {
        let id = task.id.to_string();
        self.transaction("record a container name", |tx| {
            let changed = tx.execute(
                "UPDATE tasks SET container = $3 WHERE id = $1 AND attempt = $2 \
                 AND state = 'creating'",
                &[&id, &task.number, &name],
            )?;
            if changed == 0 {
                let refused = refusal(tx, task)?;
                let holds =
                    matches!(refused, Error::Fenced { current, .. } if current == task.number);
                if !holds && !matches!(refused, Error::NotFound(_)) {
                    return Err(refused.into());
                }
            }
            Ok(())
        })
    }

    fn delete(&self, id: &Uuid) -> Result<bool, Error> {
        let id = id.to_string();
        self.transaction("delete a task", |tx| {
            tx.execute("DELETE FROM task_logs WHERE id = $1", &[&id])?;
            Ok(tx.execute("DELETE FROM tasks WHERE id = $1", &[&id])? > 0)
        })
    }

    fn get(&self, id: &Uuid) -> Result<Option<TaskRecord>, Error> {
        let id = id.to_string();
        self.with("read a task", |c| {
            c.query_opt(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
                &[&id],
            )?
            .map(|row| record_from_row(&row).map_err(Failure::from))
            .transpose()
        })
    }

    fn list(&self, listing: Listing) -> Result<Vec<TaskRecord>, Error> {
        let sql = match listing {
            Listing::All => format!("SELECT {COLUMNS} FROM tasks ORDER BY id"),
            Listing::Live => format!("SELECT {COLUMNS} FROM tasks WHERE {LIVE} ORDER BY id"),
        };
        self.records("list tasks", &sql, &[])
    }

    fn list_retention(
        &self,
        finished_before: i64,
        created_before: i64,
    ) -> Result<Vec<TaskRecord>, Error> {
        self.records(
            "list tasks for retention",
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE state IN ('queued', 'creating', 'running') \
                 OR finished_at <= $1 OR created_at <= $2 ORDER BY id"
            ),
            &[&finished_before, &created_before],
        )
    }

    fn list_session(&self, session: &str) -> Result<Vec<TaskRecord>, Error> {
        self.records(
            "list a session's tasks",
            &format!("SELECT {COLUMNS} FROM tasks WHERE session = $1 ORDER BY id"),
            &[&session],
        )
    }

    fn for_each_brief(
        &self,
        listing: Listing,
        each: &mut dyn FnMut(TaskBrief),
    ) -> Result<(), Error> {
        let filter = match listing {
            Listing::All => String::new(),
            Listing::Live => format!("WHERE {LIVE}"),
        };
        let sql = format!(
            "SELECT id, project, state, created_at, progress, workspace, workspace_state, name, \
             paused FROM tasks {filter} ORDER BY id"
        );
        self.with("list tasks", |c| {
            // Streamed, never collected: `orch ps` stays small at any size.
            let mut rows = c.query_raw(&sql, std::iter::empty::<i64>())?;
            while let Some(row) = postgres::fallible_iterator::FallibleIterator::next(&mut rows)? {
                each(TaskBrief {
                    id: row.get(0),
                    project: row.get(1),
                    state: parse_state(row.get(2))?,
                    created_at: row.get(3),
                    progress: row.get(4),
                    workspace: row.get(5),
                    workspace_state: row
                        .get::<_, Option<&str>>(6)
                        .and_then(WorkspaceState::parse),
                    name: row.get(7),
                    paused: row.get(8),
                });
            }
            Ok(())
        })
    }

    fn repos(&self) -> Result<Vec<PathBuf>, Error> {
        self.with("list repositories", |c| {
            Ok(c.query("SELECT path FROM repos ORDER BY path", &[])?
                .iter()
                .map(|r| PathBuf::from(r.get::<_, String>(0)))
                .collect())
        })
    }

    fn branches(&self, repo: &Path) -> Result<BTreeMap<String, KnownBranch>, Error> {
        let repo = repo.to_string_lossy().into_owned();
        self.with("list branches", |c| {
            Ok(c.query(BRANCHES, &[&repo])?
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        KnownBranch {
                            base: r.get(1),
                            description: r.get(2),
                            recorded: r.get(3),
                        },
                    )
                })
                .collect())
        })
    }

    fn forget_branch(&self, repo: &Path, name: &str) -> Result<(), Error> {
        let repo = repo.to_string_lossy().into_owned();
        self.with("forget a branch", |c| {
            c.execute(
                "DELETE FROM branches WHERE repo = $1 AND name = $2",
                &[&repo, &name],
            )?;
            Ok(())
        })
    }

    fn renew_leases(&self, tasks: &[Attempt], lease: Duration) -> Result<Renewal, Error> {
        if tasks.is_empty() {
            return Ok(Renewal::default());
        }
        let ids: Vec<String> = tasks.iter().map(|t| t.id.to_string()).collect();
        let attempts: Vec<i64> = tasks.iter().map(|t| t.number).collect();
        let lease = lease_ms(lease);
        let renewed = self.with("renew leases", |c| {
            Ok(c.query(
                &format!(
                    "UPDATE tasks t SET lease_until = {NOW} + $3 \
                     FROM unnest($1::text[], $2::bigint[]) AS h(id, attempt) \
                     WHERE t.id = h.id AND t.attempt = h.attempt \
                     AND t.state IN ('creating', 'running') \
                     RETURNING t.id, t.cancel_requested"
                ),
                &[&ids, &attempts, &lease],
            )?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
            .collect::<Vec<_>>())
        })?;
        let mut renewal = Renewal::default();
        for task in tasks {
            let id = task.id.to_string();
            match renewed.iter().find(|(renewed, _)| *renewed == id) {
                Some((_, true)) => renewal.cancel.push(task.id),
                Some((_, false)) => {}
                None => renewal.lost.push(task.id),
            }
        }
        // A task that left `creating`/`running` may still be asked to stop
        // (a cancel is read for it as before).
        let lost: Vec<Uuid> = renewal.lost.clone();
        for id in self.cancel_requests(&lost)? {
            renewal.cancel.push(id);
        }
        Ok(renewal)
    }

    fn set_delivered(&self, id: &Uuid, delivered: bool) -> Result<(), Error> {
        let id = id.to_string();
        self.with("record where a task's work is", |c| {
            c.execute(
                "UPDATE tasks SET delivered = $1 WHERE id = $2",
                &[&delivered, &id],
            )?;
            Ok(())
        })
    }

    fn remotes_in_use(&self) -> Result<Vec<String>, Error> {
        self.with("list repositories in use", |c| {
            Ok(c.query(
                &format!(
                    "SELECT DISTINCT remote FROM tasks WHERE remote IS NOT NULL \
                     AND ({LIVE} OR delivered IS NOT TRUE)"
                ),
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn cancel_requests(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let requested: Vec<String> = self.with("read cancel requests", |c| {
            Ok(c.query(
                "SELECT id FROM tasks WHERE id = ANY($1) AND cancel_requested",
                &[&texts],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })?;
        Ok(ids
            .iter()
            .filter(|id| requested.contains(&id.to_string()))
            .copied()
            .collect())
    }

    fn claim(&self, claimant: &Claimant, lease: Duration) -> Result<Option<TaskRecord>, Error> {
        let lease = lease_ms(lease);
        let (node_id, node) = claimant.node.clone().unzip();
        let params: [&(dyn postgres::types::ToSql + Sync); 8] = [
            &claimant.labels,
            &claimant.session,
            &claimant.pid,
            &claimant.start,
            &claimant.boot,
            &lease,
            &node_id,
            &node,
        ];
        // The common case in one statement: the first task in queue order
        // that this claim can lock, taken if its project has no cap. It
        // says how many it looked at: none means nothing to take; one it
        // did not take is capped, for the whole claim below.
        static NEXT: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH next AS MATERIALIZED (SELECT head_id AS next_id, head_cap AS cap \
                 FROM orch_queue_head($1, 1)), \
                 claimed AS (UPDATE tasks SET {CLAIMED} FROM next \
                 WHERE id = next_id AND cap IS NULL RETURNING {COLUMNS}) \
                 SELECT claimed.*, (SELECT count(*) FROM next) FROM (SELECT 1) one \
                 LEFT JOIN claimed ON true"
            )
        });
        let taken = self.with("claim a queued task", |c| {
            let statement = c.prepared(&NEXT)?;
            let row = c.query_one(&statement, &params)?;
            if row.get::<_, Option<&str>>(0).is_some() {
                return Ok(Some(Some(record_from_row(&row)?)));
            }
            let seen: i64 = row.get(COLUMN_COUNT);
            Ok((seen == 0).then_some(None))
        })?;
        if let Some(taken) = taken {
            return Ok(taken);
        }
        static TAKE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "UPDATE tasks SET {CLAIMED} WHERE id = $9 AND constraints <@ $1::text[] \
                 RETURNING {COLUMNS}"
            )
        });
        self.transaction("claim a queued task", |tx| {
            // The first candidates in queue order, locked for this claim;
            // those another claim holds are skipped, not waited for.
            let candidates = tx.query(
                "SELECT head_id, head_project, head_cap FROM orch_queue_head($1, $2)",
                &[&claimant.labels, &CLAIM_WINDOW],
            )?;
            for candidate in &candidates {
                let id: String = candidate.get(0);
                let project: String = candidate.get(1);
                if let Some(cap) = candidate.get::<_, Option<i64>>(2) {
                    // A project's count is taken under its lock, held to
                    // the end of this transaction: two nodes never both
                    // see room for one more.
                    tx.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended('orch.project.' || $1, 0))",
                        &[&project],
                    )?;
                    let live: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM tasks WHERE project = $1 \
                             AND state IN ('creating', 'running')",
                            &[&project],
                        )?
                        .get(0);
                    if live >= cap {
                        continue;
                    }
                }
                let mut all = params.to_vec();
                all.push(&id);
                let row = tx.query_one(TAKE.as_str(), &all)?;
                return Ok(Some(record_from_row(&row)?));
            }
            Ok(None)
        })
    }

    fn requeue(&self, task: &Attempt, reason: &str) -> Result<bool, Error> {
        self.queue_again("queue a task again", task, reason, REQUEUE_WHEN)
    }

    fn retry(&self, task: &Attempt, reason: &str) -> Result<bool, Error> {
        self.queue_again("queue a task again to retry", task, reason, RETRY_WHEN)
    }

    fn cancel_queued(&self, id: &Uuid, reason: &str, at: i64) -> Result<bool, Error> {
        let id = id.to_string();
        self.with("cancel a queued task", |c| {
            Ok(c.execute(
                &format!(
                    "UPDATE tasks SET state = 'cancelled', finished_at = $1, reason = $2, \
                     lease_until = NULL, {WIPE_ENV} WHERE id = $3 AND state = 'queued'"
                ),
                &[&at, &reason, &id],
            )? > 0)
        })
    }

    fn update_planned(&self, task: &TaskRecord) -> Result<(), Error> {
        let id = task.id.to_string();
        self.transaction("record a claimed task's plan", |tx| {
            let changed = tx.execute(
                "UPDATE tasks SET container = $3, image = $4, workspace = $5, branch = $6, \
                 repo = $7, keep_failed_workspace = $8, stop_grace_ms = $9, keep_workspace = $10, \
                 base = $11, git_dir = $12, project = $13, remote = $14 \
                 WHERE id = $1 AND attempt = $2 AND state = 'creating'",
                &[
                    &id,
                    &task.owner.attempt,
                    &task.container,
                    &task.image,
                    &task.workspace.path,
                    &task.workspace.branch,
                    &task.workspace.repo,
                    &task.workspace.keep_failed_workspace,
                    &task.stop_grace_ms,
                    &task.workspace.keep_workspace,
                    &task.workspace.base,
                    &task.workspace.git_dir,
                    &task.project,
                    &task.workspace.remote,
                ],
            )?;
            if changed == 0 {
                let refused = refusal(tx, &task.attempt())?;
                let holds =
                    matches!(refused, Error::Fenced { current, .. } if current == task.owner.attempt);
                if !holds && !matches!(refused, Error::NotFound(_)) {
                    return Err(refused.into());
                }
            }
            note_repo(tx, task)?;
            Ok(())
        })
    }

    fn list_where(
        &self,
        listing: Listing,
        state: Option<State>,
        project: Option<&str>,
    ) -> Result<Vec<TaskRecord>, Error> {
        let live = listing == Listing::Live;
        let state = state.map(State::as_str);
        self.records(
            "list tasks",
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE \
                 (NOT $1 OR state IN ('queued', 'creating', 'running')) \
                 AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR project = $3) \
                 ORDER BY id"
            ),
            &[&live, &state, &project],
        )
    }

    fn bump(&self, name: &str, n: u64) -> Result<(), Error> {
        if n == 0 {
            return Ok(());
        }
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.with("count", |c| {
            c.execute(
                "INSERT INTO counters (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                &[&name, &n],
            )?;
            Ok(())
        })
    }

    fn counters(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        self.with("read the counters", |c| {
            Ok(
                c.query("SELECT name, value FROM counters ORDER BY name", &[])?
                    .iter()
                    .filter_map(|r| {
                        let name: String = r.get(0);
                        let value: i64 = r.get(1);
                        name.strip_prefix(prefix)
                            .map(|rest| (rest.to_owned(), u64::try_from(value).unwrap_or(0)))
                    })
                    .collect(),
            )
        })
    }

    fn count_by_state(&self) -> Result<Vec<(String, i64)>, Error> {
        self.with("count tasks", |c| {
            Ok(c.query(
                "SELECT CASE WHEN workspace_state = 'saving' THEN 'saving' ELSE state END, \
                 count(*) FROM tasks GROUP BY 1",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
    }

    fn resolve(&self, text: &str) -> Result<Uuid, Error> {
        let lookup = crate::record::Lookup::of(text)?;
        let ids: Vec<String> = self.with("look up a task id", |c| {
            let rows = match &lookup {
                crate::record::Lookup::Name(name) => c.query(
                    "SELECT id FROM tasks WHERE name = $1 \
                     ORDER BY state IN ('queued', 'creating', 'running') DESC, id DESC LIMIT 1",
                    &[name],
                )?,
                crate::record::Lookup::Id { pattern, short } => {
                    let upper = format!("{pattern}z");
                    c.query(
                        "SELECT id FROM tasks WHERE (id >= $1 AND id < $2) \
                         OR ($3::text IS NOT NULL AND substr(id, 29, 8) >= $3 \
                             AND substr(id, 29, 8) < $3 || 'z') \
                         ORDER BY id LIMIT 11",
                        &[pattern, &upper, short],
                    )?
                }
            };
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })?;
        crate::record::one_id(text, &ids, self.pool.place())
    }

    fn shared(&self) -> bool {
        true
    }

    fn place(&self) -> String {
        self.pool.place().to_owned()
    }

    fn join(&self, node: &Node, lease: Duration) -> Result<(), Error> {
        let lease = lease_ms(lease);
        self.with("record a node", |c| {
            c.execute(
                &format!(
                    "INSERT INTO nodes (id, name, labels, concurrency, advertise, session, \
                     joined_at, lease_until, left_cleanly) \
                     VALUES ($1, $2, $3, $4, $5, $6, {NOW}, {NOW} + $7, false) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                     labels = excluded.labels, concurrency = excluded.concurrency, \
                     advertise = excluded.advertise, session = excluded.session, \
                     joined_at = excluded.joined_at, lease_until = excluded.lease_until, \
                     left_cleanly = false"
                ),
                &[
                    &node.id,
                    &node.name,
                    &node.labels,
                    &node.concurrency,
                    &node.advertise,
                    &node.session,
                    &lease,
                ],
            )?;
            Ok(())
        })
    }

    fn renew_node(&self, node: &Node, lease: Duration) -> Result<(), Error> {
        let ms = lease_ms(lease);
        let renewed = self.with("renew a node's lease", |c| {
            Ok(c.execute(
                &format!(
                    "UPDATE nodes SET lease_until = {NOW} + $2, left_cleanly = false \
                     WHERE id = $1"
                ),
                &[&node.id, &ms],
            )?)
        })?;
        if renewed == 0 {
            return self.join(node, lease);
        }
        Ok(())
    }

    fn leave(&self, id: &str) -> Result<(), Error> {
        self.with("record a node's leaving", |c| {
            c.execute(
                &format!(
                    "UPDATE nodes SET left_cleanly = true, lease_until = least(lease_until, {NOW}) \
                     WHERE id = $1"
                ),
                &[&id],
            )?;
            Ok(())
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        self.with("list nodes", |c| {
            Ok(c.query(
                &format!(
                    "SELECT id, name, labels, concurrency, advertise, session, joined_at, \
                     lease_until, lease_until > {NOW}, left_cleanly FROM nodes ORDER BY name, id"
                ),
                &[],
            )?
            .iter()
            .map(|r| NodeRecord {
                node: Node {
                    id: r.get(0),
                    name: r.get(1),
                    labels: r.get(2),
                    concurrency: r.get(3),
                    advertise: r.get(4),
                    session: r.get(5),
                },
                joined_at: r.get(6),
                lease_until: r.get(7),
                alive: r.get(8),
                left: r.get(9),
            })
            .collect())
        })
    }

    fn rescue(&self) -> Result<Vec<Rescued>, Error> {
        self.transaction("rescue tasks whose owner is gone", |tx| {
            // Rows another rescuer holds are its to rescue.
            let expired = tx.query(
                &format!(
                    "SELECT id, project, state, attempt, retries, node, spec IS NOT NULL, \
                     cancel_requested \
                     FROM tasks WHERE state IN ('creating', 'running') AND lease_until < {NOW} \
                     ORDER BY id FOR UPDATE SKIP LOCKED"
                ),
                &[],
            )?;
            let mut rescued = Vec::new();
            let mut queued_again = false;
            for row in &expired {
                let id: String = row.get(0);
                let from = parse_state(row.get(2))?;
                let attempt: i64 = row.get(3);
                let retries: i64 = row.get(4);
                let owner = match row.get::<_, Option<String>>(5) {
                    Some(node) => format!("node {node}"),
                    None => "its owner".to_owned(),
                };
                let again: bool =
                    row.get::<_, bool>(6) && (from == State::Creating || attempt <= retries);
                let cancelled: bool = row.get(7);
                let (from, to, reason) = crate::record::rescue_fate(from, again, cancelled, &owner);
                let guard = format!(
                    "WHERE id = $1 AND attempt = $2 AND state = $3 AND lease_until < {NOW}"
                );
                let changed = if to == State::Queued {
                    tx.execute(
                        &format!("UPDATE tasks SET {QUEUED_AGAIN}, reason = $4 {guard}"),
                        &[&id, &attempt, &from.as_str(), &reason],
                    )?
                } else {
                    tx.execute(
                        &format!(
                            "UPDATE tasks SET state = $5, finished_at = {NOW}, reason = $4, \
                             lease_until = NULL, {WIPE_ENV} {guard}"
                        ),
                        &[&id, &attempt, &from.as_str(), &reason, &to.as_str()],
                    )?
                };
                if changed > 0 {
                    queued_again |= to == State::Queued;
                    rescued.push(Rescued {
                        id: parse_id(&id)?,
                        project: row.get(1),
                        from,
                        to,
                        reason,
                    });
                }
            }
            if queued_again {
                tx.execute(&format!("NOTIFY {QUEUE_CHANNEL}"), &[])?;
            }
            Ok(rescued)
        })
    }

    fn keep_log(&self, id: &Uuid, log: &[u8]) -> Result<(), Error> {
        let id = id.to_string();
        self.with("keep a task's output", |c| {
            c.execute(
                "INSERT INTO task_logs (id, content) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET content = excluded.content",
                &[&id, &log],
            )?;
            Ok(())
        })
    }

    fn kept_log(&self, id: &Uuid) -> Result<Option<Vec<u8>>, Error> {
        let id = id.to_string();
        self.with("read a task's kept output", |c| {
            Ok(
                c.query_opt("SELECT content FROM task_logs WHERE id = $1", &[&id])?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn listen(&self, on: OnWake) -> Result<(), Error> {
        let mut client = self.pool.connect().map_err(|source| Error::Postgres {
            action: "listen for wake-ups",
            place: self.place(),
            source,
        })?;
        let listen = format!("LISTEN {QUEUE_CHANNEL}; LISTEN {CANCEL_CHANNEL}");
        client
            .batch_execute(&listen)
            .map_err(|source| Error::Postgres {
                action: "listen for wake-ups",
                place: self.place(),
                source,
            })?;
        let pool_place = self.place();
        let config = self.pool_config();
        std::thread::Builder::new()
            .name("orch-listen".into())
            .spawn(move || schema::listen_forever(client, &config, &listen, &pool_place, &on))
            .map_err(|e| Error::Setting(format!("cannot start the registry's listener: {e}")))?;
        Ok(())
    }
}

impl Postgres {
    fn pool_config(&self) -> postgres::Config {
        self.pool.config().clone()
    }
}

/// The wake-up a notification on `channel` is.
fn wake_of(channel: &str) -> Option<Wake> {
    match channel {
        QUEUE_CHANNEL => Some(Wake::Queued),
        CANCEL_CHANNEL => Some(Wake::Cancel),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_column_count_is_that_of_the_columns() {
        assert_eq!(super::COLUMNS.split(',').count(), super::COLUMN_COUNT);
    }
}
