//! The registry database: `$ORCH_HOME/orch.db`, SQLite in WAL mode, shared
//! by every orch process of the instance.
//!
//! Rules that keep it safe under concurrency and crashes:
//! - every write is one `BEGIN IMMEDIATE` transaction, so a writer takes the
//!   lock up front and waits (busy timeout) instead of failing on upgrade;
//! - a new database is built under a private name and linked into place, so
//!   `orch.db` is never seen half-initialised, and an empty or damaged
//!   `orch.db` can only mean damage: it is refused, never replaced;
//! - the connection is opened without `CREATE`, so SQLite itself never makes
//!   a file at that path.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use crate::record::{BRANCHES, QUEUED_AGAIN, REQUEUE_WHEN, RETRY_WHEN, queue_again_sql};
use crate::{
    Attempt, Claimant, Error, Finish, KnownBranch, Listing, Node, NodeRecord, Renewal, Rescued,
    State, Store, TaskBrief, TaskOutcome, TaskOwner, TaskProgress, TaskQueue, TaskRecord,
    TaskWorkspace, WorkspaceState, now_ms,
};

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Schema migrations, applied in order; the schema version is how many have
/// been applied. Never edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    r"
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY NOT NULL,
        project TEXT NOT NULL,
        description TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        exit_code INTEGER,
        reason TEXT,
        container TEXT NOT NULL,
        image TEXT NOT NULL,
        workspace TEXT,
        branch TEXT,
        repo TEXT,
        workspace_state TEXT,
        keep_failed_workspace INTEGER NOT NULL,
        stop_grace_ms INTEGER NOT NULL,
        session TEXT NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_start INTEGER NOT NULL,
        owner_boot TEXT NOT NULL,
        lease_until INTEGER,
        progress INTEGER,
        progress_message TEXT,
        progress_at INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        detached INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX tasks_by_state ON tasks (state);
    CREATE TABLE repos (path TEXT PRIMARY KEY NOT NULL) STRICT;
",
    r"
    CREATE INDEX tasks_by_session ON tasks (session);
",
    // orch's own bookkeeping moves out of the user's git config: the base
    // commit of a task's branch and the task's own keep/remove choice live
    // here; a branch's base outlives the task's record, for `cleanup
    // --branches`. `pending` is now `queued`.
    r"
    ALTER TABLE tasks ADD COLUMN keep_workspace INTEGER;
    ALTER TABLE tasks ADD COLUMN base TEXT;
    ALTER TABLE tasks ADD COLUMN git_dir TEXT;
    UPDATE tasks SET state = 'queued' WHERE state = 'pending';
    CREATE TABLE branches (
        repo TEXT NOT NULL,
        name TEXT NOT NULL,
        base TEXT NOT NULL,
        PRIMARY KEY (repo, name)
    ) STRICT;
",
    // The daemon's durable queue: a queued task keeps what was submitted
    // (`spec`, JSON) until a daemon claims it, in priority then id (time)
    // order; `max_parallel` caps its project's share.
    r"
    ALTER TABLE tasks ADD COLUMN spec TEXT;
    ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN max_parallel INTEGER;
    CREATE INDEX tasks_queue ON tasks (state, priority, id);
",
    // Counters of the home that outlive records (metrics): how many tasks
    // of a dead owner each reaper ended.
    r"
    CREATE TABLE counters (
        name TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) STRICT;
",
    // `cleanup --branches` leaves the branches of tasks still using them:
    // found by branch name.
    r"
    CREATE INDEX tasks_by_branch ON tasks (branch);
",
    // Values given to a task (`--env`) are kept only while it can still
    // start: those of tasks that ended before this rule are wiped now.
    r"
    UPDATE tasks SET spec = json_remove(spec, '$.env')
    WHERE spec IS NOT NULL AND json_valid(spec)
      AND state NOT IN ('queued', 'creating', 'running');
",
    // What a user should know of a task's end that its state and reason do
    // not say: files left out of its save, why its workspace was kept.
    r"
    ALTER TABLE tasks ADD COLUMN notes TEXT;
",
    // Fencing and clusters: the attempt every write about a task carries
    // (claims count them), the node that runs it, how often it may run
    // again, the labels a node needs to run it; nodes with their leases;
    // the output of finished tasks kept for other nodes.
    r"
    ALTER TABLE tasks ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    UPDATE tasks SET attempt = 0 WHERE state = 'queued';
    ALTER TABLE tasks ADD COLUMN node_id TEXT;
    ALTER TABLE tasks ADD COLUMN node TEXT;
    ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN constraints TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX tasks_by_lease ON tasks (lease_until) WHERE state IN ('creating', 'running');
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        concurrency INTEGER NOT NULL,
        advertise TEXT,
        session TEXT NOT NULL,
        joined_at INTEGER NOT NULL,
        lease_until INTEGER NOT NULL,
        left INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE TABLE task_logs (
        id TEXT PRIMARY KEY NOT NULL,
        content BLOB NOT NULL
    ) STRICT;
",
    // Projects from a git server: where a task's branch is pushed, and
    // whether it got there.
    r"
    ALTER TABLE tasks ADD COLUMN remote TEXT;
    ALTER TABLE tasks ADD COLUMN delivered INTEGER;
",
    // Task names, unique among live tasks.
    r"
    ALTER TABLE tasks ADD COLUMN name TEXT;
    CREATE UNIQUE INDEX tasks_live_name ON tasks (name)
        WHERE name IS NOT NULL AND state IN ('queued', 'creating', 'running');
",
    // Frozen by Ctrl+Z (`docker pause`).
    r"
    ALTER TABLE tasks ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
",
    // A branch tells what its task was after the task's record is gone.
    r"
    ALTER TABLE branches ADD COLUMN description TEXT;
",
];

/// Records a task's repository and its branch's base and description
/// (for `cleanup --branches`, which outlives the task's record).
fn note_repo(tx: &rusqlite::Transaction<'_>, task: &TaskRecord) -> rusqlite::Result<()> {
    if let Some(repo) = &task.workspace.repo {
        tx.execute("INSERT OR IGNORE INTO repos (path) VALUES (?1)", [repo])?;
        if let (Some(branch), Some(base)) = (&task.workspace.branch, &task.workspace.base) {
            tx.execute(
                "INSERT OR REPLACE INTO branches (repo, name, base, description) \
                 VALUES (?1, ?2, ?3, ?4)",
                [repo, branch, base, &task.description],
            )?;
        }
    }
    Ok(())
}

/// The schema of the first release, for tests that start from it.
#[cfg(test)]
pub(crate) fn first_migration() -> &'static str {
    MIGRATIONS[0]
}

/// The registry of one orch home: SQLite, one connection, used by one
/// thread at a time.
#[derive(Debug)]
pub struct Registry {
    conn: std::sync::Mutex<Connection>,
    path: PathBuf,
}

/// The SQL that wipes the values of a record's submitted environment, for
/// a task that can no longer start: its keys go with them.
const WIPE_ENV: &str = "spec = CASE WHEN json_valid(spec) THEN json_remove(spec, '$.env') END";

/// Live tasks: those that may run, and those whose work is being saved
/// (their owner still holds a slot for them).
const LIVE: &str = "(state IN ('queued', 'creating', 'running') OR workspace_state = 'saving')";

/// Every column a record is read from.
const COLUMNS: &str = concat!(
    "id, project, description, state, created_at, started_at, finished_at, \
    exit_code, reason, container, image, workspace, branch, repo, workspace_state, \
    keep_failed_workspace, stop_grace_ms, session, owner_pid, owner_start, owner_boot, \
    lease_until, progress, progress_message, progress_at, cancel_requested, detached, \
    keep_workspace, base, git_dir, spec, priority, max_parallel",
    ", notes, attempt, node_id, node, retries, constraints, remote, delivered, name, paused"
);

/// The columns a new record is written with (notes come later).
const INSERTED: &str = "id, project, description, state, created_at, started_at, finished_at, \
    exit_code, reason, container, image, workspace, branch, repo, workspace_state, \
    keep_failed_workspace, stop_grace_ms, session, owner_pid, owner_start, owner_boot, \
    lease_until, progress, progress_message, progress_at, cancel_requested, detached, \
    keep_workspace, base, git_dir, spec, priority, max_parallel, attempt, node_id, node, \
    retries, constraints, remote, delivered, name";

/// Whether the attempt a write is made under still holds the task, inside
/// the write's transaction.
fn holds(
    tx: &rusqlite::Transaction<'_>,
    task: &Attempt,
    err: &impl Fn(rusqlite::Error) -> Error,
) -> Result<(), Error> {
    let current: Option<i64> = tx
        .query_row(
            "SELECT attempt FROM tasks WHERE id = ?1",
            [task.id.to_string()],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    match current {
        Some(current) if current == task.number => Ok(()),
        Some(current) => Err(Error::Fenced {
            id: task.id,
            attempt: task.number,
            current,
        }),
        None => Err(Error::NotFound(task.id.to_string())),
    }
}

/// A live task whose lease ran out, as a rescuer found it.
struct Expired {
    id: String,
    project: String,
    state: String,
    attempt: i64,
    retries: i64,
    node: Option<String>,
    queued: bool,
    cancel_requested: bool,
}

impl Expired {
    /// What a rescuer makes of it: the state it was in, the one it gets,
    /// and why.
    fn fate(&self) -> Option<(State, State, String)> {
        let from: State = self.state.parse().ok()?;
        let owner = match &self.node {
            Some(node) => format!("node {node}"),
            None => "its owner".to_owned(),
        };
        let again = self.queued && (from == State::Creating || self.attempt <= self.retries);
        Some(crate::record::rescue_fate(
            from,
            again,
            self.cancel_requested,
            &owner,
        ))
    }
}

impl Registry {
    /// Puts a task back in the queue if it is still on `task`'s attempt
    /// and `condition` holds; whether it did.
    fn queue_again(
        &self,
        action: &'static str,
        task: &Attempt,
        reason: &str,
        condition: &str,
    ) -> Result<bool, Error> {
        let sql = queue_again_sql(condition);
        self.write(action, |tx| {
            tx.execute(&sql, params![reason, task.id.to_string(), task.number])
                .map_err(self.sql(action))
                .map(|n| n > 0)
        })
    }
}

/// Milliseconds of a lease.
fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

impl Registry {
    /// Opens the registry at `path`, creating it if there is no file there.
    /// An existing file that is not a healthy orch registry is refused with
    /// [`Error::Corrupt`] and left exactly as it is.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        if !path.exists() {
            create_in_place(path)?;
        }
        let header = check_header(path)?;
        let conn = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let registry = Registry {
            conn: std::sync::Mutex::new(conn),
            path: path.to_path_buf(),
        };
        if header == Header::ShortFile {
            // In WAL mode the newest pages may still be in the WAL: SQLite
            // judges, not the file's length.
            registry.check_integrity()?;
        }
        registry.migrate()?;
        Ok(registry)
    }

    /// Bytes of SQLite's page cache this connection holds.
    #[cfg(test)]
    pub(crate) fn cache_used(&self) -> i64 {
        let (mut current, mut highest) = (0, 0);
        // SAFETY: the handle is this live connection's, used on its thread;
        // the status call only reads counters into the two integers.
        unsafe {
            rusqlite::ffi::sqlite3_db_status(
                self.conn().handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
                &mut current,
                &mut highest,
                0,
            );
        }
        i64::from(current)
    }

    /// Opens an existing registry; `None` if there is none at `path`.
    pub fn open_existing(path: &Path) -> Result<Option<Registry>, Error> {
        if path.exists() {
            Registry::open(path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub(crate) fn conn_for_tests(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn()
    }

    /// The connection, for one call at a time.
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sql(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| classify(&self.path, action, source)
    }

    /// Lets SQLite check the whole database; refuses it only if SQLite
    /// finds it damaged.
    fn check_integrity(&self) -> Result<(), Error> {
        let verdict: String = self
            .conn()
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(self.sql("check"))?;
        if verdict == "ok" {
            Ok(())
        } else {
            Err(Error::Corrupt {
                path: self.path.clone(),
                reason: format!("SQLite's check failed: {verdict}"),
            })
        }
    }

    fn migrate(&self) -> Result<(), Error> {
        let known = MIGRATIONS.len() as i64;
        let version = self.version()?;
        if version > known {
            return Err(Error::TooNew {
                place: self.path.display().to_string(),
                found: version,
                known,
            });
        }
        if version == known {
            return Ok(());
        }
        let err = self.sql("migrate the schema");
        let conn = self.conn();
        let tx = rusqlite::Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)
            .map_err(&err)?;
        // Another process may have migrated while we waited for the lock.
        let version: i64 = tx
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .map_err(&err)?;
        for migration in MIGRATIONS
            .iter()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(migration).map_err(&err)?;
        }
        tx.execute("UPDATE schema_version SET version = ?1", [known])
            .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    fn version(&self) -> Result<i64, Error> {
        self.conn()
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .map_err(self.sql("read the schema version"))
    }

    /// Runs `work` in one immediate (write-locking) transaction.
    fn write<T>(
        &self,
        action: &'static str,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let err = self.sql(action);
        let conn = self.conn();
        let tx = rusqlite::Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)
            .map_err(&err)?;
        let value = work(&tx)?;
        tx.commit().map_err(&err)?;
        Ok(value)
    }

    /// Whether a task's submission holds values (of `env`) to wipe.
    fn has_values(&self, id: &Uuid) -> bool {
        self.conn()
            .query_row(
                "SELECT spec IS NOT NULL AND json_valid(spec) AND json_type(spec, '$.env') IS NOT NULL \
                 FROM tasks WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .unwrap_or(false)
    }

    /// Values wiped from a record still sit in the write-ahead log's older
    /// copies of its page until a checkpoint: one is made now, and the log
    /// truncated, if no reader holds it (briefly waited for; else the next
    /// checkpoint does it).
    fn forget_old_pages(&self) {
        let conn = self.conn();
        let _ = conn.busy_timeout(Duration::from_millis(200));
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
    }

    /// Runs one `UPDATE` about a task if `task`'s attempt still holds it.
    fn fenced_update(
        &self,
        action: &'static str,
        task: &Attempt,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), Error> {
        self.write(action, |tx| {
            let err = self.sql(action);
            match holds(tx, task, &err) {
                // Nothing to write about: a task whose record is gone.
                Err(Error::NotFound(_)) => return Ok(()),
                other => other?,
            }
            tx.execute(sql, params).map_err(&err).map(drop)
        })
    }

    /// Moves a task to `to` if the lifecycle allows it, applying `extra`
    /// (an `UPDATE ... SET` fragment with its parameters) in the same
    /// transaction. Returns the state it left.
    fn transition(
        &self,
        task: &Attempt,
        to: State,
        extra: &str,
        extra_params: &[&dyn rusqlite::ToSql],
    ) -> Result<State, Error> {
        let id = &task.id;
        self.write("change a task's state", |tx| {
            let err = self.sql("change a task's state");
            holds(tx, task, &err)?;
            let from: String = tx
                .query_row(
                    "SELECT state FROM tasks WHERE id = ?1",
                    [id.to_string()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&err)?
                .ok_or_else(|| Error::NotFound(id.to_string()))?;
            let from: State =
                from.parse()
                    .map_err(|e: crate::state::UnknownState| Error::Corrupt {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    })?;
            // Queued again, it is held by no attempt until its next claim:
            // this one's view is stale.
            if from == State::Queued {
                return Err(Error::Fenced {
                    id: *id,
                    attempt: task.number,
                    current: task.number + 1,
                });
            }
            if !from.can_become(to) {
                return Err(Error::IllegalTransition { id: *id, from, to });
            }
            let sql = if extra.is_empty() {
                "UPDATE tasks SET state = ?1 WHERE id = ?2".to_owned()
            } else {
                format!("UPDATE tasks SET state = ?1, {extra} WHERE id = ?2")
            };
            let id_text = id.to_string();
            let state = to.as_str();
            let mut all: Vec<&dyn rusqlite::ToSql> = vec![&state, &id_text];
            all.extend_from_slice(extra_params);
            tx.execute(&sql, all.as_slice()).map_err(&err)?;
            Ok(from)
        })
    }
}

impl Store for Registry {
    /// Records a new task. Record first: this happens before any of its
    /// resources exist.
    fn insert(&self, task: &TaskRecord) -> Result<(), Error> {
        self.write("record a task", |tx| {
            let err = self.sql("record a task");
            if let Some(name) = &task.name {
                let taken: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM tasks WHERE name = ?1 \
                         AND state IN ('queued', 'creating', 'running'))",
                        [name],
                        |r| r.get(0),
                    )
                    .map_err(&err)?;
                if taken {
                    return Err(Error::NameTaken(name.clone()));
                }
            }
            tx.execute(
                &format!(
                    "INSERT INTO tasks ({INSERTED}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                     ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, \
                     ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36, ?37, ?38, ?39, ?40, ?41)"
                ),
                params![
                    task.id.to_string(),
                    task.project,
                    task.description,
                    task.state.as_str(),
                    task.created_at,
                    task.started_at,
                    task.outcome.finished_at,
                    task.outcome.exit_code,
                    task.outcome.reason,
                    task.container,
                    task.image,
                    task.workspace.path,
                    task.workspace.branch,
                    task.workspace.repo,
                    task.workspace.state.map(WorkspaceState::as_str),
                    task.workspace.keep_failed_workspace,
                    task.stop_grace_ms,
                    task.owner.session,
                    task.owner.pid,
                    task.owner.start,
                    task.owner.boot,
                    task.owner.lease_until,
                    task.progress.percent,
                    task.progress.message,
                    task.progress.at,
                    task.cancel_requested,
                    task.owner.detached,
                    task.workspace.keep_workspace,
                    task.workspace.base,
                    task.workspace.git_dir,
                    task.queue.spec,
                    task.queue.priority,
                    task.queue.max_parallel,
                    task.owner.attempt,
                    task.owner.node_id,
                    task.owner.node,
                    task.queue.retries,
                    serde_json::to_string(&task.queue.constraints).unwrap_or_else(|_| "[]".into()),
                    task.workspace.remote,
                    task.workspace.delivered,
                    task.name,
                ],
            )
            .map_err(&err)?;
            note_repo(tx, task).map_err(&err)
        })
    }

    /// `creating -> running`: the container started.
    fn mark_running(&self, task: &Attempt, at: i64, lease: Duration) -> Result<(), Error> {
        let lease_until = now_ms().saturating_add(lease_ms(lease));
        self.transition(
            task,
            State::Running,
            "started_at = ?3, lease_until = ?4",
            &[&at, &lease_until],
        )
        .map(drop)
    }

    /// Moves a live task to a terminal state.
    fn finish(&self, task: &Attempt, finish: &Finish) -> Result<State, Error> {
        if !finish.state.is_terminal() {
            return Err(Error::IllegalTransition {
                id: task.id,
                from: State::Running,
                to: finish.state,
            });
        }
        let had_values = self.has_values(&task.id);
        let from = self.transition(
            task,
            finish.state,
            &format!(
                "finished_at = ?3, exit_code = ?4, reason = ?5, lease_until = NULL, paused = 0, \
                 {WIPE_ENV}"
            ),
            &[&finish.at, &finish.exit_code, &finish.reason],
        )?;
        if had_values {
            self.forget_old_pages();
        }
        Ok(from)
    }

    /// Whether `orch cancel` asked for this task to stop.
    fn cancel_requested(&self, id: &Uuid) -> Result<bool, Error> {
        self.conn()
            .query_row(
                "SELECT cancel_requested FROM tasks WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read a cancel request"))
            .map(|v| v.unwrap_or(false))
    }

    /// Asks the owner of a live task to stop it. Returns false if the task
    /// is already terminal.
    fn request_cancel(&self, id: &Uuid) -> Result<bool, Error> {
        let changed = self
            .conn()
            .execute(
                "UPDATE tasks SET cancel_requested = 1 WHERE id = ?1 AND state IN ('queued', 'creating', 'running')",
                [id.to_string()],
            )
            .map_err(self.sql("request a cancel"))?;
        Ok(changed > 0)
    }

    /// Stores a progress report.
    fn set_progress(
        &self,
        task: &Attempt,
        percent: u8,
        message: &str,
        at: i64,
    ) -> Result<(), Error> {
        self.fenced_update(
            "store progress",
            task,
            "UPDATE tasks SET progress = ?1, progress_message = ?2, progress_at = ?3 WHERE id = ?4",
            params![percent, message, at, task.id.to_string()],
        )
    }

    fn set_paused(&self, task: &Attempt, paused: bool) -> Result<(), Error> {
        self.fenced_update(
            "record a task frozen or thawed",
            task,
            "UPDATE tasks SET paused = ?1 WHERE id = ?2",
            params![paused, task.id.to_string()],
        )
    }

    /// Records what became of a task's workspace.
    fn set_workspace_state(&self, task: &Attempt, state: WorkspaceState) -> Result<(), Error> {
        self.fenced_update(
            "record a workspace's state",
            task,
            "UPDATE tasks SET workspace_state = ?1 WHERE id = ?2",
            params![state.as_str(), task.id.to_string()],
        )
    }

    /// Adds a note to a task's record (a line of its own).
    fn add_note(&self, task: &Attempt, note: &str) -> Result<(), Error> {
        self.fenced_update(
            "note something of a task",
            task,
            "UPDATE tasks SET notes = CASE WHEN notes IS NULL THEN ?1 \
             ELSE notes || char(10) || ?1 END WHERE id = ?2",
            params![note, task.id.to_string()],
        )
    }

    /// Records the name the task's container got (when the planned one was
    /// taken), while it is `creating`.
    fn set_container(&self, task: &Attempt, name: &str) -> Result<(), Error> {
        self.fenced_update(
            "record a container name",
            task,
            "UPDATE tasks SET container = ?1 WHERE id = ?2 AND state = 'creating'",
            params![name, task.id.to_string()],
        )
    }

    /// Deletes a task's record.
    fn delete(&self, id: &Uuid) -> Result<bool, Error> {
        self.conn()
            .execute("DELETE FROM tasks WHERE id = ?1", [id.to_string()])
            .map_err(self.sql("delete a task"))
            .map(|n| n > 0)
    }

    /// One task by full id.
    fn get(&self, id: &Uuid) -> Result<Option<TaskRecord>, Error> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
                [id.to_string()],
                record_from_row,
            )
            .optional()
            .map_err(self.sql("read a task"))
    }

    /// Tasks, oldest first.
    fn list(&self, listing: Listing) -> Result<Vec<TaskRecord>, Error> {
        let sql = match listing {
            Listing::All => format!("SELECT {COLUMNS} FROM tasks ORDER BY id"),
            Listing::Live => format!("SELECT {COLUMNS} FROM tasks WHERE {LIVE} ORDER BY id"),
        };
        let err = self.sql("list tasks");
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&sql).map_err(&err)?;
        let rows = statement.query_map([], record_from_row).map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// The records a retention cleanup may select, oldest first: the live
    /// ones, those that finished before `finished_before` and those created
    /// before `created_before` (Unix milliseconds). A cleanup reads these,
    /// never the whole registry: however many finished tasks it holds, a
    /// cleanup's memory follows what it may remove.
    fn list_retention(
        &self,
        finished_before: i64,
        created_before: i64,
    ) -> Result<Vec<TaskRecord>, Error> {
        let err = self.sql("list tasks for retention");
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE state IN ('queued', 'creating', 'running') \
                 OR finished_at <= ?1 OR created_at <= ?2 ORDER BY id"
            ))
            .map_err(&err)?;
        let rows = statement
            .query_map([finished_before, created_before], record_from_row)
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// The tasks of one session (one orch process), oldest first.
    fn list_session(&self, session: &str) -> Result<Vec<TaskRecord>, Error> {
        let err = self.sql("list a session's tasks");
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE session = ?1 ORDER BY id"
            ))
            .map_err(&err)?;
        let rows = statement
            .query_map([session], record_from_row)
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// Calls `each` with the brief of every task listed, oldest first,
    /// without collecting them: `orch ps` stays quick and small at any size.
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
        let err = self.sql("list tasks");
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&sql).map_err(&err)?;
        let mut rows = statement.query([]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let state: String = row.get(2).map_err(&err)?;
            each(TaskBrief {
                id: row.get(0).map_err(&err)?,
                project: row.get(1).map_err(&err)?,
                state: state
                    .parse()
                    .map_err(|e: crate::state::UnknownState| Error::Corrupt {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    })?,
                created_at: row.get(3).map_err(&err)?,
                progress: row.get(4).map_err(&err)?,
                workspace: row.get(5).map_err(&err)?,
                workspace_state: row
                    .get::<_, Option<String>>(6)
                    .map_err(&err)?
                    .as_deref()
                    .and_then(WorkspaceState::parse),
                name: row.get(7).map_err(&err)?,
                paused: row.get(8).map_err(&err)?,
            });
        }
        Ok(())
    }

    /// Every repository a task ever had a workspace in.
    fn repos(&self) -> Result<Vec<PathBuf>, Error> {
        let err = self.sql("list repositories");
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached("SELECT path FROM repos ORDER BY path")
            .map_err(&err)?;
        let rows = statement
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(&err)?;
        rows.map(|r| r.map(PathBuf::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)
    }

    fn branches(&self, repo: &Path) -> Result<BTreeMap<String, KnownBranch>, Error> {
        let err = self.sql("list branches");
        let conn = self.conn();
        let mut statement = conn.prepare_cached(BRANCHES).map_err(&err)?;
        let rows = statement
            .query_map([repo.to_string_lossy()], |r| {
                Ok((
                    r.get(0)?,
                    KnownBranch {
                        base: r.get(1)?,
                        description: r.get(2)?,
                        recorded: r.get(3)?,
                    },
                ))
            })
            .map_err(&err)?;
        rows.collect::<Result<BTreeMap<_, _>, _>>().map_err(&err)
    }

    /// Forgets a branch that is gone from `repo`.
    fn forget_branch(&self, repo: &Path, name: &str) -> Result<(), Error> {
        self.conn()
            .execute(
                "DELETE FROM branches WHERE repo = ?1 AND name = ?2",
                params![repo.to_string_lossy(), name],
            )
            .map_err(self.sql("forget a branch"))
            .map(drop)
    }

    /// Renews the leases of live tasks for `lease` from now, in one
    /// transaction: those of them whose cancellation was requested, and
    /// those the attempt no longer holds.
    fn renew_leases(&self, tasks: &[Attempt], lease: Duration) -> Result<Renewal, Error> {
        let until = now_ms().saturating_add(lease_ms(lease));
        let lost = self.write("renew leases", |tx| {
            let err = self.sql("renew leases");
            let mut renew = tx
                .prepare_cached(
                    "UPDATE tasks SET lease_until = ?1 WHERE id = ?2 AND attempt = ?3 \
                     AND state IN ('creating', 'running')",
                )
                .map_err(&err)?;
            let mut lost = Vec::new();
            for task in tasks {
                let renewed = renew
                    .execute(params![until, task.id.to_string(), task.number])
                    .map_err(&err)?;
                if renewed == 0 {
                    lost.push(task.id);
                }
            }
            Ok(lost)
        })?;
        let ids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
        Ok(Renewal {
            cancel: self.cancel_requests(&ids)?,
            lost,
        })
    }

    fn set_delivered(&self, id: &Uuid, delivered: bool) -> Result<(), Error> {
        self.write("record where a task's work is", |tx| {
            tx.execute(
                "UPDATE tasks SET delivered = ?1 WHERE id = ?2",
                params![delivered, id.to_string()],
            )
            .map_err(self.sql("record where a task's work is"))
            .map(drop)
        })
    }

    fn remotes_in_use(&self) -> Result<Vec<String>, Error> {
        let err = self.sql("list repositories in use");
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT DISTINCT remote FROM tasks WHERE remote IS NOT NULL \
                 AND ({LIVE} OR delivered = 0 OR delivered IS NULL)"
            ))
            .map_err(&err)?;
        let rows = statement.query_map([], |r| r.get(0)).map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// Those of `ids` whose cancellation was requested.
    fn cancel_requests(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, Error> {
        let err = self.sql("read cancel requests");
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached("SELECT cancel_requested FROM tasks WHERE id = ?1")
            .map_err(&err)?;
        let mut requested = Vec::new();
        for id in ids {
            let flag: Option<bool> = statement
                .query_row([id.to_string()], |r| r.get(0))
                .optional()
                .map_err(&err)?;
            if flag == Some(true) {
                requested.push(*id);
            }
        }
        Ok(requested)
    }

    /// Claims the next queued task for `claimant`, in one transaction: the
    /// highest priority, then the oldest, whose project has fewer live tasks
    /// than its `max_parallel`. It becomes `creating`, owned by the
    /// claimant. Two claimants never get the same task.
    fn claim(&self, claimant: &Claimant, lease: Duration) -> Result<Option<TaskRecord>, Error> {
        let lease_until = now_ms().saturating_add(lease_ms(lease));
        self.write("claim a queued task", |tx| {
            let err = self.sql("claim a queued task");
            let mut candidates = tx
                .prepare_cached(
                    "SELECT q.id, q.constraints FROM tasks q WHERE q.state = 'queued' \
                     AND (q.max_parallel IS NULL OR (SELECT count(*) FROM tasks r \
                         WHERE r.project = q.project AND r.state IN ('creating', 'running')) \
                         < q.max_parallel) \
                     ORDER BY q.priority DESC, q.id",
                )
                .map_err(&err)?;
            let mut rows = candidates.query([]).map_err(&err)?;
            let mut chosen = None;
            while let Some(row) = rows.next().map_err(&err)? {
                let constraints: String = row.get(1).map_err(&err)?;
                let constraints: Vec<String> =
                    serde_json::from_str(&constraints).unwrap_or_default();
                if constraints.iter().all(|c| claimant.labels.contains(c)) {
                    chosen = Some(row.get::<_, String>(0).map_err(&err)?);
                    break;
                }
            }
            drop(rows);
            let Some(id) = chosen else {
                return Ok(None);
            };
            let (node_id, node) = claimant.node.clone().unzip();
            tx.execute(
                "UPDATE tasks SET state = 'creating', session = ?1, owner_pid = ?2, owner_start = ?3, \
                 owner_boot = ?4, lease_until = ?5, attempt = attempt + 1, node_id = ?6, node = ?7 \
                 WHERE id = ?8 AND state = 'queued'",
                params![
                    claimant.session,
                    claimant.pid,
                    claimant.start,
                    claimant.boot,
                    lease_until,
                    node_id,
                    node,
                    id
                ],
            )
            .map_err(&err)?;
            tx.query_row(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
                [&id],
                record_from_row,
            )
            .optional()
            .map_err(&err)
        })
    }

    fn requeue(&self, task: &Attempt, reason: &str) -> Result<bool, Error> {
        self.queue_again("queue a task again", task, reason, REQUEUE_WHEN)
    }

    fn retry(&self, task: &Attempt, reason: &str) -> Result<bool, Error> {
        self.queue_again("queue a task again to retry", task, reason, RETRY_WHEN)
    }

    /// Ends a task that is still queued as cancelled; false if it is not
    /// queued (any more).
    fn cancel_queued(&self, id: &Uuid, reason: &str, at: i64) -> Result<bool, Error> {
        let had_values = self.has_values(id);
        let cancelled = self.write("cancel a queued task", |tx| {
            tx.execute(
                &format!(
                    "UPDATE tasks SET state = 'cancelled', finished_at = ?1, reason = ?2, \
                     lease_until = NULL, {WIPE_ENV} WHERE id = ?3 AND state = 'queued'"
                ),
                params![at, reason, id.to_string()],
            )
            .map_err(self.sql("cancel a queued task"))
            .map(|n| n > 0)
        })?;
        if cancelled && had_values {
            self.forget_old_pages();
        }
        Ok(cancelled)
    }

    /// Fills in what a claimed task's run planned (container, image,
    /// workspace, repository, policy), while it is `creating`.
    fn update_planned(&self, task: &TaskRecord) -> Result<(), Error> {
        self.write("record a claimed task's plan", |tx| {
            let err = self.sql("record a claimed task's plan");
            match holds(tx, &task.attempt(), &err) {
                Err(Error::NotFound(_)) => return Ok(()),
                other => other?,
            }
            tx.execute(
                "UPDATE tasks SET container = ?1, image = ?2, workspace = ?3, branch = ?4, repo = ?5, \
                 keep_failed_workspace = ?6, stop_grace_ms = ?7, keep_workspace = ?8, base = ?9, \
                 git_dir = ?10, project = ?11, remote = ?14 WHERE id = ?12 AND state = 'creating' \
                 AND attempt = ?13",
                params![
                    task.container,
                    task.image,
                    task.workspace.path,
                    task.workspace.branch,
                    task.workspace.repo,
                    task.workspace.keep_failed_workspace,
                    task.stop_grace_ms,
                    task.workspace.keep_workspace,
                    task.workspace.base,
                    task.workspace.git_dir,
                    task.project,
                    task.id.to_string(),
                    task.owner.attempt,
                    task.workspace.remote
                ],
            )
            .map_err(&err)?;
            note_repo(tx, task).map_err(&err)
        })
    }

    /// Tasks (`Listing`), narrowed to a state and a project if given,
    /// oldest first.
    fn list_where(
        &self,
        listing: Listing,
        state: Option<State>,
        project: Option<&str>,
    ) -> Result<Vec<TaskRecord>, Error> {
        let mut sql = format!("SELECT {COLUMNS} FROM tasks WHERE 1 = 1");
        if listing == Listing::Live {
            sql.push_str(" AND state IN ('queued', 'creating', 'running')");
        }
        if state.is_some() {
            sql.push_str(" AND state = ?1");
        }
        if project.is_some() {
            sql.push_str(" AND project = ?2");
        }
        sql.push_str(" ORDER BY id");
        let err = self.sql("list tasks");
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&sql).map_err(&err)?;
        let state = state.map(State::as_str);
        let mut bound: Vec<(&str, &dyn rusqlite::ToSql)> = Vec::new();
        if let Some(state) = &state {
            bound.push(("?1", state));
        }
        if let Some(project) = &project {
            bound.push(("?2", project));
        }
        let rows = statement
            .query_map(bound.as_slice(), record_from_row)
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// Adds `n` to the home's counter `name` (it starts at 0).
    fn bump(&self, name: &str, n: u64) -> Result<(), Error> {
        if n == 0 {
            return Ok(());
        }
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.write("count", |tx| {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                params![name, n],
            )
            .map_err(self.sql("count"))?;
            Ok(())
        })
    }

    /// The home's counters whose names start with `prefix`, without it.
    fn counters(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let err = self.sql("read the counters");
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached("SELECT name, value FROM counters ORDER BY name")
            .map_err(&err)?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(&err)?;
        let mut counters = Vec::new();
        for row in rows {
            let (name, value) = row.map_err(&err)?;
            if let Some(rest) = name.strip_prefix(prefix) {
                counters.push((rest.to_owned(), u64::try_from(value).unwrap_or(0)));
            }
        }
        Ok(counters)
    }

    /// How many tasks are in each state, and (as `"saving"`) how many
    /// ended ones have their work being saved.
    fn count_by_state(&self) -> Result<Vec<(String, i64)>, Error> {
        let err = self.sql("count tasks");
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT CASE WHEN workspace_state = 'saving' THEN 'saving' ELSE state END, \
                 count(*) FROM tasks GROUP BY 1",
            )
            .map_err(&err)?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// The one task `text` names: its name (the live task of that name,
    /// else the latest), or a prefix of its id or of its short id (at
    /// least 4 hex digits, hyphens optional).
    fn resolve(&self, text: &str) -> Result<Uuid, Error> {
        let err = self.sql("look up a task id");
        let conn = self.conn();
        let ids: Vec<String> = match crate::record::Lookup::of(text)? {
            crate::record::Lookup::Name(name) => {
                let mut statement = conn
                    .prepare_cached(
                        "SELECT id FROM tasks WHERE name = ?1 \
                         ORDER BY state IN ('queued', 'creating', 'running') DESC, id DESC LIMIT 1",
                    )
                    .map_err(&err)?;
                statement
                    .query_map([&name], |r| r.get(0))
                    .map_err(&err)?
                    .collect::<Result<_, _>>()
                    .map_err(&err)?
            }
            crate::record::Lookup::Id { pattern, short } => {
                let mut statement = conn
                    .prepare_cached(
                        "SELECT id FROM tasks WHERE (id >= ?1 AND id < ?1 || 'z') \
                         OR (?2 IS NOT NULL AND substr(id, 29, 8) >= ?2 AND substr(id, 29, 8) < ?2 || 'z') \
                         ORDER BY id LIMIT 11",
                    )
                    .map_err(&err)?;
                statement
                    .query_map(params![pattern, short], |r| r.get(0))
                    .map_err(&err)?
                    .collect::<Result<_, _>>()
                    .map_err(&err)?
            }
        };
        crate::record::one_id(text, &ids, &self.place())
    }

    fn place(&self) -> String {
        self.path.display().to_string()
    }

    fn join(&self, node: &Node, lease: Duration) -> Result<(), Error> {
        let now = now_ms();
        let labels = serde_json::to_string(&node.labels).unwrap_or_else(|_| "[]".into());
        self.write("record a node", |tx| {
            tx.execute(
                "INSERT INTO nodes (id, name, labels, concurrency, advertise, session, joined_at, \
                 lease_until, left) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, labels = excluded.labels, \
                 concurrency = excluded.concurrency, advertise = excluded.advertise, \
                 session = excluded.session, joined_at = excluded.joined_at, \
                 lease_until = excluded.lease_until, left = 0",
                params![
                    node.id,
                    node.name,
                    labels,
                    node.concurrency,
                    node.advertise,
                    node.session,
                    now,
                    now.saturating_add(lease_ms(lease))
                ],
            )
            .map_err(self.sql("record a node"))
            .map(drop)
        })
    }

    fn renew_node(&self, node: &Node, lease: Duration) -> Result<(), Error> {
        let renewed = self.write("renew a node's lease", |tx| {
            tx.execute(
                "UPDATE nodes SET lease_until = ?1, left = 0 WHERE id = ?2",
                params![now_ms().saturating_add(lease_ms(lease)), node.id],
            )
            .map_err(self.sql("renew a node's lease"))
        })?;
        if renewed == 0 {
            return self.join(node, lease);
        }
        Ok(())
    }

    fn leave(&self, id: &str) -> Result<(), Error> {
        self.write("record a node's leaving", |tx| {
            tx.execute(
                "UPDATE nodes SET left = 1, lease_until = min(lease_until, ?1) WHERE id = ?2",
                params![now_ms(), id],
            )
            .map_err(self.sql("record a node's leaving"))
            .map(drop)
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        let err = self.sql("list nodes");
        let now = now_ms();
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT id, name, labels, concurrency, advertise, session, joined_at, lease_until, \
                 left FROM nodes ORDER BY name, id",
            )
            .map_err(&err)?;
        let rows = statement
            .query_map([], |r| {
                let labels: String = r.get(2)?;
                let lease_until: i64 = r.get(7)?;
                Ok(NodeRecord {
                    node: Node {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        labels: serde_json::from_str(&labels).unwrap_or_default(),
                        concurrency: r.get(3)?,
                        advertise: r.get(4)?,
                        session: r.get(5)?,
                    },
                    joined_at: r.get(6)?,
                    lease_until,
                    alive: lease_until > now,
                    left: r.get(8)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    fn rescue(&self) -> Result<Vec<Rescued>, Error> {
        let now = now_ms();
        self.write("rescue tasks whose owner is gone", |tx| {
            let err = self.sql("rescue tasks whose owner is gone");
            let mut found = tx
                .prepare_cached(
                    "SELECT id, project, state, attempt, retries, node, spec IS NOT NULL, \
                     cancel_requested FROM tasks \
                     WHERE state IN ('creating', 'running') AND lease_until < ?1 ORDER BY id",
                )
                .map_err(&err)?;
            let expired = found
                .query_map([now], |r| {
                    Ok(Expired {
                        id: r.get(0)?,
                        project: r.get(1)?,
                        state: r.get(2)?,
                        attempt: r.get(3)?,
                        retries: r.get(4)?,
                        node: r.get(5)?,
                        queued: r.get(6)?,
                        cancel_requested: r.get(7)?,
                    })
                })
                .map_err(&err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            let mut rescued = Vec::new();
            for task in expired {
                let Some((from, to, reason)) = task.fate() else {
                    continue;
                };
                // Written only if the task is still as it was found: an
                // owner that came back and ended it first keeps its end.
                let changed = if to == State::Queued {
                    tx.execute(
                        &format!(
                            "UPDATE tasks SET {QUEUED_AGAIN}, reason = ?1 \
                             WHERE id = ?2 AND attempt = ?3 AND state = ?4 AND lease_until < ?5"
                        ),
                        params![reason, task.id, task.attempt, task.state, now],
                    )
                } else {
                    tx.execute(
                        &format!(
                            "UPDATE tasks SET state = ?7, finished_at = ?1, reason = ?2, \
                             lease_until = NULL, {WIPE_ENV} \
                             WHERE id = ?3 AND attempt = ?4 AND state = ?5 AND lease_until < ?6"
                        ),
                        params![
                            now,
                            reason,
                            task.id,
                            task.attempt,
                            task.state,
                            now,
                            to.as_str()
                        ],
                    )
                }
                .map_err(&err)?;
                if changed > 0 {
                    rescued.push(Rescued {
                        id: task.id.parse().map_err(|_| Error::Corrupt {
                            path: self.path.clone(),
                            reason: format!("bad task id {:?}", task.id),
                        })?,
                        project: task.project,
                        from,
                        to,
                        reason,
                    });
                }
            }
            Ok(rescued)
        })
    }

    fn keep_log(&self, id: &Uuid, log: &[u8]) -> Result<(), Error> {
        self.write("keep a task's output", |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO task_logs (id, content) VALUES (?1, ?2)",
                params![id.to_string(), log],
            )
            .map_err(self.sql("keep a task's output"))
            .map(drop)
        })
    }

    fn kept_log(&self, id: &Uuid) -> Result<Option<Vec<u8>>, Error> {
        self.conn()
            .query_row(
                "SELECT content FROM task_logs WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read a task's kept output"))
    }
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let text = |i: usize| row.get::<_, String>(i);
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let id = text(0)?;
    let state = text(3)?;
    Ok(TaskRecord {
        id: id
            .parse()
            .map_err(|_| bad(0, format!("bad task id {id:?}")))?,
        project: text(1)?,
        description: text(2)?,
        name: row.get(41)?,
        paused: row.get(42)?,
        state: state
            .parse()
            .map_err(|e: crate::state::UnknownState| bad(3, e.to_string()))?,
        created_at: row.get(4)?,
        started_at: row.get(5)?,
        container: text(9)?,
        image: text(10)?,
        stop_grace_ms: row.get(16)?,
        cancel_requested: row.get(25)?,
        owner: TaskOwner {
            session: text(17)?,
            pid: row.get(18)?,
            start: row.get(19)?,
            boot: text(20)?,
            lease_until: row.get(21)?,
            detached: row.get(26)?,
            attempt: row.get(34)?,
            node_id: row.get(35)?,
            node: row.get(36)?,
        },
        workspace: TaskWorkspace {
            path: row.get(11)?,
            branch: row.get(12)?,
            repo: row.get(13)?,
            state: row
                .get::<_, Option<String>>(14)?
                .as_deref()
                .and_then(WorkspaceState::parse),
            keep_failed_workspace: row.get(15)?,
            keep_workspace: row.get(27)?,
            base: row.get(28)?,
            git_dir: row.get(29)?,
            remote: row.get(39)?,
            delivered: row.get(40)?,
        },
        progress: TaskProgress {
            percent: row.get(22)?,
            message: row.get(23)?,
            at: row.get(24)?,
        },
        outcome: TaskOutcome {
            finished_at: row.get(6)?,
            exit_code: row.get(7)?,
            reason: row.get(8)?,
            notes: row.get(33)?,
        },
        queue: TaskQueue {
            spec: row.get(30)?,
            priority: row.get(31)?,
            max_parallel: row.get(32)?,
            retries: row.get(37)?,
            constraints: serde_json::from_str(&text(38)?)
                .map_err(|e| bad(38, format!("bad constraints: {e}")))?,
        },
    })
}

/// True if the filesystem holding `path` has no room left for this user.
fn disk_full(path: &Path) -> bool {
    let dir = path.parent().unwrap_or(path);
    rustix::fs::statvfs(dir).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) < 64 * 1024)
}

/// Opens a connection with the settings every orch process uses.
fn connect(path: &Path, flags: OpenFlags) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| classify(path, "open", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path, "configure", e))?;
    // SQLite's own page cache (2 MiB by default) would fill as the
    // registry grows and stay full in a long-running daemon; the kernel
    // caches the file anyway, so it is kept small.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -512; \
         PRAGMA secure_delete = ON;",
    )
    .map_err(|e| classify(path, "configure", e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| classify(path, "read the journal mode of", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("journal mode is {mode}, not wal: not made by orch"),
        });
    }
    Ok(conn)
}

/// Builds a fresh registry under a private name, then links it into place;
/// if another process got there first, theirs wins and ours is discarded.
fn create_in_place(path: &Path) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let tmp = dir.join(format!(".orch.db.new-{}", Uuid::new_v4().simple()));
    let built = (|| {
        // Private from the first byte: SQLite gives the WAL and its index
        // the database file's mode.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| Error::Io {
                action: "create",
                path: tmp.clone(),
                source,
            })?;
        let conn = Connection::open(&tmp).map_err(|e| classify(&tmp, "create", e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;
             INSERT INTO schema_version (version) VALUES (0);",
        )
        .map_err(|e| classify(&tmp, "initialise", e))?;
        conn.close().map_err(|(_, e)| classify(&tmp, "close", e))
    })();
    let linked = built.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::Io {
            action: "create",
            path: path.to_path_buf(),
            source,
        }),
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    linked
}

/// What the header of an existing file says before SQLite opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// Consistent with the file.
    Plausible,
    /// Shorter than its header says, with a WAL beside it: normal when a
    /// checkpoint could not finish (a full disk), so SQLite is asked to check
    /// it once it is open.
    ShortFile,
}

/// Refuses, without writing, a file that cannot be an SQLite database at
/// all: too short for a header, or the wrong magic.
fn check_header(path: &Path) -> Result<Header, Error> {
    let corrupt = |reason: &str| Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let mut file = std::fs::File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| Error::Io {
            action: "inspect",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut header = [0u8; 100];
    if len < 100 || file.read_exact(&mut header).is_err() {
        return Err(corrupt("too short to be a database"));
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err(corrupt("not an SQLite database"));
    }
    let page_size = match u32::from(u16::from_be_bytes([header[16], header[17]])) {
        1 => 65536,
        n => n,
    };
    let pages = u32::from_be_bytes([header[28], header[29], header[30], header[31]]);
    let counter_valid = header[24..28] == header[92..96];
    if counter_valid && u64::from(pages) * u64::from(page_size) > len {
        // Only a WAL can hold the pages the file lacks.
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        return if wal.metadata().is_ok_and(|m| m.len() > 0) {
            Ok(Header::ShortFile)
        } else {
            Err(corrupt(
                "truncated: shorter than its header says, and no WAL holds the rest",
            ))
        };
    }
    Ok(Header::Plausible)
}

/// Maps "not a database" and "malformed" to [`Error::Corrupt`]; anything
/// else stays an SQLite error.
fn classify(path: &Path, action: &'static str, source: rusqlite::Error) -> Error {
    use rusqlite::ffi::ErrorCode;
    if let rusqlite::Error::SqliteFailure(failure, _) = &source {
        if matches!(
            failure.code,
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt
        ) {
            return Error::Corrupt {
                path: path.to_path_buf(),
                reason: source.to_string(),
            };
        }
        // SQLite says "disk I/O error" when it cannot grow its shared
        // memory file: say what is wrong.
        if matches!(
            failure.code,
            ErrorCode::DiskFull | ErrorCode::SystemIoFailure
        ) && disk_full(path)
        {
            return Error::DiskFull {
                action,
                path: path.to_path_buf(),
            };
        }
    }
    Error::Sqlite {
        action,
        path: path.to_path_buf(),
        source,
    }
}
