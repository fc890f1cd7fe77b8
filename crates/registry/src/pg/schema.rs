//! The cluster registry's schema, its versioned migrations, how the
//! database is named in messages, and the listener of wake-ups.

use std::time::Duration;

use orch_retry::Backoff;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::Error;
use crate::store::{OnWake, Wake};

/// Migrations, applied in order; the schema version is how many have been
/// applied. Never edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    r"
    CREATE TABLE tasks (
        id text PRIMARY KEY,
        project text NOT NULL,
        description text NOT NULL,
        state text NOT NULL,
        created_at bigint NOT NULL,
        started_at bigint,
        finished_at bigint,
        exit_code bigint,
        reason text,
        container text NOT NULL,
        image text NOT NULL,
        workspace text,
        branch text,
        repo text,
        workspace_state text,
        keep_failed_workspace boolean NOT NULL,
        stop_grace_ms bigint NOT NULL,
        session text NOT NULL,
        owner_pid bigint NOT NULL,
        owner_start bigint NOT NULL,
        owner_boot text NOT NULL,
        lease_until bigint,
        progress bigint,
        progress_message text,
        progress_at bigint,
        cancel_requested boolean NOT NULL DEFAULT false,
        detached boolean NOT NULL DEFAULT false,
        keep_workspace boolean,
        base text,
        git_dir text,
        spec text,
        priority bigint NOT NULL DEFAULT 0,
        max_parallel bigint,
        notes text,
        attempt bigint NOT NULL DEFAULT 0,
        node_id text,
        node text,
        retries bigint NOT NULL DEFAULT 0,
        constraints text[] NOT NULL DEFAULT '{}'
    );
    CREATE INDEX tasks_queue ON tasks (priority DESC, id) WHERE state = 'queued';
    CREATE INDEX tasks_live ON tasks (project) WHERE state IN ('creating', 'running');
    CREATE INDEX tasks_by_lease ON tasks (lease_until) WHERE state IN ('creating', 'running');
    CREATE INDEX tasks_by_state ON tasks (state);
    CREATE INDEX tasks_by_session ON tasks (session);
    CREATE INDEX tasks_by_branch ON tasks (branch);
    CREATE INDEX tasks_finished ON tasks (finished_at);
    CREATE INDEX tasks_created ON tasks (created_at);
    CREATE TABLE repos (path text PRIMARY KEY);
    CREATE TABLE branches (
        repo text NOT NULL,
        name text NOT NULL,
        base text NOT NULL,
        PRIMARY KEY (repo, name)
    );
    CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);
    CREATE TABLE nodes (
        id text PRIMARY KEY,
        name text NOT NULL,
        labels text[] NOT NULL,
        concurrency bigint NOT NULL,
        advertise text,
        session text NOT NULL,
        joined_at bigint NOT NULL,
        lease_until bigint NOT NULL,
        left_cleanly boolean NOT NULL DEFAULT false
    );
    CREATE TABLE task_logs (id text PRIMARY KEY, content bytea NOT NULL);
",
    r"
    ALTER TABLE tasks ADD COLUMN remote text;
    ALTER TABLE tasks ADD COLUMN delivered boolean;
",
    r"
    ALTER TABLE tasks ADD COLUMN name text;
    CREATE UNIQUE INDEX tasks_live_name ON tasks (name)
        WHERE name IS NOT NULL AND state IN ('queued', 'creating', 'running');
",
    r"
    ALTER TABLE tasks ADD COLUMN paused boolean NOT NULL DEFAULT false;
",
    // The head of the queue, always read in the order of its index. The
    // planner's other choice, every queued row read and sorted, looks
    // cheapest whenever the table's statistics were taken while the queue
    // was short, and costs milliseconds per claim once thousands wait.
    r"
    CREATE FUNCTION orch_queue_head(labels text[], n bigint)
        RETURNS TABLE (head_id text, head_project text, head_cap bigint)
        LANGUAGE plpgsql SET enable_sort = off AS $$
    BEGIN
        RETURN QUERY SELECT id, project, max_parallel FROM tasks
            WHERE state = 'queued' AND constraints <@ labels
            ORDER BY priority DESC, id LIMIT n FOR UPDATE SKIP LOCKED;
    END
    $$;
",
    // A branch tells what its task was after the task's record is gone.
    r"
    ALTER TABLE branches ADD COLUMN description text;
",
];

/// The advisory lock migrations take, so that nodes starting together
/// migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6f72_6368_6d69_6772; // "orchmigr"

/// Brings the schema up to this orch's; refuses a newer one.
pub(super) fn migrate(client: &mut Client, place: &str) -> Result<(), Error> {
    let err = |action: &'static str| {
        move |source| Error::Postgres {
            action,
            place: place.to_owned(),
            source,
        }
    };
    let known = MIGRATIONS.len() as i64;
    let mut tx = client.transaction().map_err(err("migrate the schema"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(err("migrate the schema"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS orch_schema (version bigint NOT NULL)")
        .map_err(err("migrate the schema"))?;
    let version: i64 = match tx
        .query_opt("SELECT version FROM orch_schema", &[])
        .map_err(err("read the schema version"))?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO orch_schema (version) VALUES (0)", &[])
                .map_err(err("migrate the schema"))?;
            0
        }
    };
    if version > known {
        return Err(Error::TooNew {
            place: place.to_owned(),
            found: version,
            known,
        });
    }
    for migration in MIGRATIONS
        .iter()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.batch_execute(migration)
            .map_err(err("migrate the schema"))?;
    }
    tx.execute("UPDATE orch_schema SET version = $1", &[&known])
        .map_err(err("migrate the schema"))?;
    tx.commit().map_err(err("migrate the schema"))
}

/// The database as messages name it: `postgres://user@host:port/database`,
/// never with its password.
pub(super) fn place_of(config: &postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    let at = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    format!("postgres://{at}{host}:{port}/{db}")
}

/// A URL as shown when it cannot even be read: its password hidden.
pub(super) fn shown_url(url: &str) -> String {
    // scheme://user:password@rest
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

/// Listens on `client` until the process ends, calling `on` for each
/// wake-up; a broken connection is made again (with backoff), and `on` is
/// then called once as if for a submission, for what was missed meanwhile.
pub(super) fn listen_forever(
    mut client: Client,
    config: &postgres::Config,
    listen: &str,
    place: &str,
    on: &OnWake,
) {
    loop {
        let mut notifications = client.notifications();
        let mut iter = notifications.blocking_iter();
        loop {
            match iter.next() {
                Ok(Some(note)) => {
                    if let Some(wake) = super::wake_of(note.channel()) {
                        on(wake);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(registry = %place, error = %e, "the registry's listener lost its connection");
                    break;
                }
            }
        }
        drop(iter);
        drop(notifications);
        let mut backoff =
            Backoff::new(Duration::from_millis(200), Duration::from_secs(5)).jittered();
        client = loop {
            match config
                .connect(NoTls)
                .and_then(|mut c| c.batch_execute(listen).map(|()| c))
            {
                Ok(c) => break c,
                Err(_) => {
                    backoff.sleep();
                }
            }
        };
        on(Wake::Queued);
    }
}
