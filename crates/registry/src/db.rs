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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use crate::{Error, State};

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
];

/// What becomes of a task's workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceState {
    /// It exists and its task may still use it.
    Present,
    /// Kept after the task ended (failed, timed out, lost, or asked).
    Kept,
    /// Removed.
    Removed,
}

impl WorkspaceState {
    fn as_str(self) -> &'static str {
        match self {
            WorkspaceState::Present => "present",
            WorkspaceState::Kept => "kept",
            WorkspaceState::Removed => "removed",
        }
    }

    fn parse(text: &str) -> Option<WorkspaceState> {
        match text {
            "present" => Some(WorkspaceState::Present),
            "kept" => Some(WorkspaceState::Kept),
            "removed" => Some(WorkspaceState::Removed),
            _ => None,
        }
    }
}

/// One task as recorded. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskRecord {
    /// UUID v7.
    pub id: Uuid,
    /// Project name.
    pub project: String,
    /// The task description.
    pub description: String,
    /// Lifecycle state.
    pub state: State,
    /// When the record was written.
    pub created_at: i64,
    /// When the container started.
    pub started_at: Option<i64>,
    /// When a terminal state was reached.
    pub finished_at: Option<i64>,
    /// The task's exit code, if it exited.
    pub exit_code: Option<i64>,
    /// Why it ended: exit code, signal, error text.
    pub reason: Option<String>,
    /// The container's (planned) name.
    pub container: String,
    /// The image.
    pub image: String,
    /// The workspace path, if it has one.
    pub workspace: Option<String>,
    /// The workspace branch.
    pub branch: Option<String>,
    /// The repository top the workspace belongs to.
    pub repo: Option<String>,
    /// What became of the workspace.
    pub workspace_state: Option<WorkspaceState>,
    /// Keep the workspace if the task fails, times out or is lost.
    pub keep_failed_workspace: bool,
    /// SIGTERM-to-SIGKILL grace.
    pub stop_grace_ms: i64,
    /// The owning session.
    pub session: String,
    /// Owner pid.
    pub owner_pid: i64,
    /// Owner start time (clock ticks since boot).
    pub owner_start: i64,
    /// Owner boot id.
    pub owner_boot: String,
    /// The owner renews this while the task runs.
    pub lease_until: Option<i64>,
    /// Last reported progress, 0-100.
    pub progress: Option<i64>,
    /// Its message.
    pub progress_message: Option<String>,
    /// When it was reported.
    pub progress_at: Option<i64>,
    /// `orch cancel` asked the owner to stop it.
    pub cancel_requested: bool,
    /// Runs under a background supervisor.
    pub detached: bool,
}

/// The few columns `orch ps` shows, read without the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskBrief {
    /// The task id, as stored (hyphenated).
    pub id: String,
    /// Project name.
    pub project: String,
    /// Lifecycle state.
    pub state: State,
    /// When the record was written.
    pub created_at: i64,
    /// Last reported progress.
    pub progress: Option<i64>,
    /// The workspace path, if it has one.
    pub workspace: Option<String>,
    /// What became of the workspace.
    pub workspace_state: Option<WorkspaceState>,
}

/// How a task ended, for [`Registry::finish`].
#[derive(Debug, Clone)]
pub struct Finish {
    /// The terminal state.
    pub state: State,
    /// Exit code, if it exited.
    pub exit_code: Option<i64>,
    /// Why, in words.
    pub reason: String,
    /// When.
    pub at: i64,
}

/// Which tasks [`Registry::list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Pending, creating and running.
    Live,
    /// Everything.
    All,
}

/// The registry of one orch home.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
    path: PathBuf,
}

const COLUMNS: &str = "id, project, description, state, created_at, started_at, finished_at, \
    exit_code, reason, container, image, workspace, branch, repo, workspace_state, \
    keep_failed_workspace, stop_grace_ms, session, owner_pid, owner_start, owner_boot, \
    lease_until, progress, progress_message, progress_at, cancel_requested, detached";

impl Registry {
    /// Opens the registry at `path`, creating it if there is no file there.
    /// An existing file that is not a healthy orch registry is refused with
    /// [`Error::Corrupt`] and left exactly as it is.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        if !path.exists() {
            create_in_place(path)?;
        }
        check_header(path)?;
        let conn = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let registry = Registry {
            conn,
            path: path.to_path_buf(),
        };
        registry.migrate()?;
        Ok(registry)
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
    pub(crate) fn conn_for_tests(&self) -> &Connection {
        &self.conn
    }

    fn sql(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| classify(&self.path, action, source)
    }

    fn migrate(&self) -> Result<(), Error> {
        let known = MIGRATIONS.len() as i64;
        let version = self.version()?;
        if version > known {
            return Err(Error::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        if version == known {
            return Ok(());
        }
        let err = self.sql("migrate the schema");
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
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
        self.conn
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
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(&err)?;
        let value = work(&tx)?;
        tx.commit().map_err(&err)?;
        Ok(value)
    }

    /// Records a new task. Record first: this happens before any of its
    /// resources exist.
    pub fn insert(&self, task: &TaskRecord) -> Result<(), Error> {
        self.write("record a task", |tx| {
            let err = self.sql("record a task");
            tx.execute(
                &format!(
                    "INSERT INTO tasks ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                     ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, \
                     ?25, ?26, ?27)"
                ),
                params![
                    task.id.to_string(),
                    task.project,
                    task.description,
                    task.state.as_str(),
                    task.created_at,
                    task.started_at,
                    task.finished_at,
                    task.exit_code,
                    task.reason,
                    task.container,
                    task.image,
                    task.workspace,
                    task.branch,
                    task.repo,
                    task.workspace_state.map(WorkspaceState::as_str),
                    task.keep_failed_workspace,
                    task.stop_grace_ms,
                    task.session,
                    task.owner_pid,
                    task.owner_start,
                    task.owner_boot,
                    task.lease_until,
                    task.progress,
                    task.progress_message,
                    task.progress_at,
                    task.cancel_requested,
                    task.detached,
                ],
            )
            .map_err(&err)?;
            if let Some(repo) = &task.repo {
                tx.execute("INSERT OR IGNORE INTO repos (path) VALUES (?1)", [repo])
                    .map_err(&err)?;
            }
            Ok(())
        })
    }

    /// Moves a task to `to` if the lifecycle allows it, applying `extra`
    /// (an `UPDATE ... SET` fragment with its parameters) in the same
    /// transaction. Returns the state it left.
    fn transition(
        &self,
        id: &Uuid,
        to: State,
        extra: &str,
        extra_params: &[&dyn rusqlite::ToSql],
    ) -> Result<State, Error> {
        self.write("change a task's state", |tx| {
            let err = self.sql("change a task's state");
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

    /// `creating -> running`: the container started.
    pub fn mark_running(&self, id: &Uuid, at: i64, lease_until: i64) -> Result<(), Error> {
        self.transition(
            id,
            State::Running,
            "started_at = ?3, lease_until = ?4",
            &[&at, &lease_until],
        )
        .map(drop)
    }

    /// Moves a live task to a terminal state.
    pub fn finish(&self, id: &Uuid, finish: &Finish) -> Result<State, Error> {
        if !finish.state.is_terminal() {
            return Err(Error::IllegalTransition {
                id: *id,
                from: State::Running,
                to: finish.state,
            });
        }
        self.transition(
            id,
            finish.state,
            "finished_at = ?3, exit_code = ?4, reason = ?5, lease_until = NULL",
            &[&finish.at, &finish.exit_code, &finish.reason],
        )
    }

    /// Renews a live task's lease. Returns whether cancellation was
    /// requested meanwhile.
    pub fn renew_lease(&self, id: &Uuid, until: i64) -> Result<bool, Error> {
        let err = self.sql("renew a lease");
        self.conn
            .execute(
                "UPDATE tasks SET lease_until = ?1 WHERE id = ?2 AND state IN ('creating', 'running')",
                params![until, id.to_string()],
            )
            .map_err(&err)?;
        self.cancel_requested(id)
    }

    /// Whether `orch cancel` asked for this task to stop.
    pub fn cancel_requested(&self, id: &Uuid) -> Result<bool, Error> {
        self.conn
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
    pub fn request_cancel(&self, id: &Uuid) -> Result<bool, Error> {
        let changed = self
            .conn
            .execute(
                "UPDATE tasks SET cancel_requested = 1 WHERE id = ?1 AND state IN ('pending', 'creating', 'running')",
                [id.to_string()],
            )
            .map_err(self.sql("request a cancel"))?;
        Ok(changed > 0)
    }

    /// Stores a progress report.
    pub fn set_progress(
        &self,
        id: &Uuid,
        percent: u8,
        message: &str,
        at: i64,
    ) -> Result<(), Error> {
        self.conn
            .execute(
                "UPDATE tasks SET progress = ?1, progress_message = ?2, progress_at = ?3 WHERE id = ?4",
                params![percent, message, at, id.to_string()],
            )
            .map_err(self.sql("store progress"))
            .map(drop)
    }

    /// Records what became of a task's workspace.
    pub fn set_workspace_state(&self, id: &Uuid, state: WorkspaceState) -> Result<(), Error> {
        self.conn
            .execute(
                "UPDATE tasks SET workspace_state = ?1 WHERE id = ?2",
                params![state.as_str(), id.to_string()],
            )
            .map_err(self.sql("record a workspace's state"))
            .map(drop)
    }

    /// Records the name the task's container got (when the planned one was
    /// taken).
    pub fn set_container(&self, id: &Uuid, name: &str) -> Result<(), Error> {
        self.conn
            .execute(
                "UPDATE tasks SET container = ?1 WHERE id = ?2",
                params![name, id.to_string()],
            )
            .map_err(self.sql("record a container name"))
            .map(drop)
    }

    /// Deletes a task's record.
    pub fn delete(&self, id: &Uuid) -> Result<bool, Error> {
        self.conn
            .execute("DELETE FROM tasks WHERE id = ?1", [id.to_string()])
            .map_err(self.sql("delete a task"))
            .map(|n| n > 0)
    }

    /// One task by full id.
    pub fn get(&self, id: &Uuid) -> Result<Option<TaskRecord>, Error> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
                [id.to_string()],
                record_from_row,
            )
            .optional()
            .map_err(self.sql("read a task"))
    }

    /// Tasks, oldest first.
    pub fn list(&self, listing: Listing) -> Result<Vec<TaskRecord>, Error> {
        let sql = match listing {
            Listing::All => format!("SELECT {COLUMNS} FROM tasks ORDER BY id"),
            Listing::Live => format!(
                "SELECT {COLUMNS} FROM tasks WHERE state IN ('pending', 'creating', 'running') ORDER BY id"
            ),
        };
        let err = self.sql("list tasks");
        let mut statement = self.conn.prepare_cached(&sql).map_err(&err)?;
        let rows = statement.query_map([], record_from_row).map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// The tasks of one session (one orch process), oldest first.
    pub fn list_session(&self, session: &str) -> Result<Vec<TaskRecord>, Error> {
        let err = self.sql("list a session's tasks");
        let mut statement = self
            .conn
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
    pub fn for_each_brief(
        &self,
        listing: Listing,
        mut each: impl FnMut(TaskBrief),
    ) -> Result<(), Error> {
        let filter = match listing {
            Listing::All => "",
            Listing::Live => "WHERE state IN ('pending', 'creating', 'running')",
        };
        let sql = format!(
            "SELECT id, project, state, created_at, progress, workspace, workspace_state \
             FROM tasks {filter} ORDER BY id"
        );
        let err = self.sql("list tasks");
        let mut statement = self.conn.prepare_cached(&sql).map_err(&err)?;
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
            });
        }
        Ok(())
    }

    /// Every repository a task ever had a workspace in.
    pub fn repos(&self) -> Result<Vec<PathBuf>, Error> {
        let err = self.sql("list repositories");
        let mut statement = self
            .conn
            .prepare_cached("SELECT path FROM repos ORDER BY path")
            .map_err(&err)?;
        let rows = statement
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(&err)?;
        rows.map(|r| r.map(PathBuf::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)
    }

    /// The one task whose id starts with `prefix` (at least 4 hex digits,
    /// hyphens optional).
    pub fn resolve(&self, prefix: &str) -> Result<Uuid, Error> {
        let hex: String = prefix
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if hex.len() < 4 || hex.len() > 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidId(prefix.to_owned()));
        }
        // Stored ids are hyphenated: put the hyphens where they go.
        let mut pattern = String::new();
        for (i, c) in hex.chars().enumerate() {
            if matches!(i, 8 | 12 | 16 | 20) {
                pattern.push('-');
            }
            pattern.push(c);
        }
        let err = self.sql("look up a task id");
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id FROM tasks WHERE id >= ?1 AND id < ?1 || 'z' ORDER BY id LIMIT 11",
            )
            .map_err(&err)?;
        let ids: Vec<String> = statement
            .query_map([&pattern], |r| r.get(0))
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        match ids.as_slice() {
            [] => Err(Error::NotFound(prefix.to_owned())),
            [one] => one.parse().map_err(|_| Error::Corrupt {
                path: self.path.clone(),
                reason: format!("task id {one:?} is not a uuid"),
            }),
            many => Err(Error::Ambiguous {
                prefix: prefix.to_owned(),
                candidates: many.iter().take(10).cloned().collect(),
            }),
        }
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
        state: state
            .parse()
            .map_err(|e: crate::state::UnknownState| bad(3, e.to_string()))?,
        created_at: row.get(4)?,
        started_at: row.get(5)?,
        finished_at: row.get(6)?,
        exit_code: row.get(7)?,
        reason: row.get(8)?,
        container: text(9)?,
        image: text(10)?,
        workspace: row.get(11)?,
        branch: row.get(12)?,
        repo: row.get(13)?,
        workspace_state: row
            .get::<_, Option<String>>(14)?
            .as_deref()
            .and_then(WorkspaceState::parse),
        keep_failed_workspace: row.get(15)?,
        stop_grace_ms: row.get(16)?,
        session: text(17)?,
        owner_pid: row.get(18)?,
        owner_start: row.get(19)?,
        owner_boot: text(20)?,
        lease_until: row.get(21)?,
        progress: row.get(22)?,
        progress_message: row.get(23)?,
        progress_at: row.get(24)?,
        cancel_requested: row.get(25)?,
        detached: row.get(26)?,
    })
}

/// Opens a connection with the settings every orch process uses.
fn connect(path: &Path, flags: OpenFlags) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| classify(path, "open", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path, "configure", e))?;
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
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

/// Refuses, without writing, a file that cannot be a healthy database: too
/// short for a header, the wrong magic, or shorter than its header says.
fn check_header(path: &Path) -> Result<(), Error> {
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
        return Err(corrupt("truncated: shorter than its header says"));
    }
    Ok(())
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
    }
    Error::Sqlite {
        action,
        path: path.to_path_buf(),
        source,
    }
}
