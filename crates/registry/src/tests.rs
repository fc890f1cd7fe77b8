//! Registry tests against real SQLite files.

use std::path::PathBuf;

use uuid::Uuid;

use crate::*;

pub(crate) fn record(state: State) -> TaskRecord {
    let mut r = TaskRecord::new(Uuid::now_v7(), "p", "d", state, "orch-x", "img");
    r.workspace.repo = Some("/repo".into());
    r.workspace.keep_failed_workspace = true;
    r.owner = TaskOwner {
        session: "s".into(),
        pid: 1,
        start: 2,
        boot: "b".into(),
        attempt: r.owner.attempt,
        ..TaskOwner::default()
    };
    r
}

/// A fresh SQLite registry in a directory of its own.
pub(crate) struct Sqlite {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Sqlite {
    pub(crate) fn new() -> Sqlite {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("orch.db");
        Registry::open(&path).unwrap();
        Sqlite { _tmp: tmp, path }
    }
}

impl crate::conformance::Fresh for Sqlite {
    fn handle(&self) -> Box<dyn Store> {
        Box::new(Registry::open(&self.path).unwrap())
    }
}

crate::conformance::conformance!(sqlite, Some(Sqlite::new()));

/// A fresh database on the test process's PostgreSQL server.
pub(crate) struct Pg {
    url: String,
}

impl Pg {
    /// `None` where PostgreSQL is not installed (said loudly).
    pub(crate) fn new() -> Option<Pg> {
        orch_testkit::postgres::server().map(|server| Pg {
            url: server.database(),
        })
    }
}

impl crate::conformance::Fresh for Pg {
    fn handle(&self) -> Box<dyn Store> {
        Box::new(Postgres::open(&self.url).unwrap())
    }
}

crate::conformance::conformance!(postgres, Pg::new());

fn fresh() -> (tempfile::TempDir, PathBuf, Registry) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("orch.db");
    let registry = Registry::open(&path).unwrap();
    (tmp, path, registry)
}

#[test]
fn migrations_bring_an_old_schema_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("orch.db");
    // A registry as the first release left it, holding a `pending` task.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT; INSERT INTO schema_version VALUES (1);")
        .unwrap();
    conn.execute_batch(crate::db::first_migration()).unwrap();
    let old = record(State::Running);
    conn.execute(
        "INSERT INTO tasks (id, project, description, state, created_at, container, image, \
         keep_failed_workspace, stop_grace_ms, session, owner_pid, owner_start, owner_boot) \
         VALUES (?1, 'p', 'd', 'pending', 1, 'c', 'i', 1, 10, 's', 1, 2, 'b')",
        [old.id.to_string()],
    )
    .unwrap();
    drop(conn);
    let reg = Registry::open(&path).unwrap();
    let index: i64 = reg
        .conn_for_tests()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'tasks_by_session'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1);
    let migrated = reg.get(&old.id).unwrap().unwrap();
    assert_eq!(migrated.state, State::Queued);
    assert_eq!(migrated.workspace.keep_workspace, None);
}

#[test]
fn a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("orch.db");
    drop(Registry::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("UPDATE schema_version SET version = 99;")
        .unwrap();
    drop(conn);
    assert!(matches!(
        Registry::open(&path),
        Err(Error::TooNew { found: 99, .. })
    ));
}

#[test]
fn reopening_keeps_data_and_version() {
    let (_tmp, path, reg) = fresh();
    let task = record(State::Running);
    reg.insert(&task).unwrap();
    drop(reg);
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.get(&task.id).unwrap().unwrap(), task);
}

#[test]
fn damaged_files_are_refused_and_left_untouched() {
    let (tmp, path, reg) = fresh();
    for i in 0..200 {
        let mut r = record(State::Succeeded);
        r.description = format!("task {i} {}", "x".repeat(200));
        reg.insert(&r).unwrap();
    }
    drop(reg);
    let healthy = std::fs::read(&path).unwrap();
    let garbage = b"this is not a database at all, just some bytes ".repeat(100);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", garbage),
        ("header only", healthy[..100].to_vec()),
        ("truncated", healthy[..healthy.len() / 2].to_vec()),
    ];
    for (name, bytes) in cases {
        let bad = tmp.path().join(format!("{}.db", name.replace(' ', "-")));
        std::fs::write(&bad, &bytes).unwrap();
        let err = Registry::open(&bad).expect_err(name);
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
        assert!(
            err.to_string().contains(&bad.display().to_string()),
            "{name}: names the file"
        );
        assert_eq!(std::fs::read(&bad).unwrap(), bytes, "{name}: unchanged");
        assert!(
            !PathBuf::from(format!("{}-wal", bad.display())).exists(),
            "{name}: no wal"
        );
    }
}

#[test]
fn a_short_file_whose_pages_are_in_the_wal_is_not_called_damaged() {
    let (tmp, path, reg) = fresh();
    reg.conn_for_tests()
        .execute_batch("PRAGMA wal_autocheckpoint = 0")
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..300 {
        let mut r = record(State::Succeeded);
        r.description = format!("task {i} {}", "x".repeat(300));
        reg.insert(&r).unwrap();
        ids.push(r.id);
    }
    // A copy taken while the pages are still in the WAL, whose main file
    // says it is longer than it is: what a checkpoint cut short by a full
    // disk leaves.
    let copy = tmp.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::copy(
        format!("{}-wal", path.display()),
        format!("{}-wal", copy.display()),
    )
    .unwrap();
    drop(reg);
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[28..32].copy_from_slice(&100_000u32.to_be_bytes());
    let counter = bytes[24..28].to_vec();
    bytes[92..96].copy_from_slice(&counter);
    std::fs::write(&copy, &bytes).unwrap();
    let reg = Registry::open(&copy).expect("SQLite reads it: not damaged");
    assert_eq!(reg.list(Listing::All).unwrap().len(), ids.len());
    // Without its WAL the same file is refused.
    drop(reg);
    let lone = tmp.path().join("lone.db");
    std::fs::write(&lone, &bytes).unwrap();
    assert!(matches!(Registry::open(&lone), Err(Error::Corrupt { .. })));
}

#[test]
fn the_database_and_its_wal_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let (_tmp, path, reg) = fresh();
    reg.insert(&record(State::Running)).unwrap();
    rustix::process::umask(old);
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
}

#[test]
fn concurrent_writers_do_not_see_locked_errors() {
    let (_tmp, path, reg) = fresh();
    drop(reg);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let reg = Registry::open(&path).unwrap();
                for _ in 0..50 {
                    let task = record(State::Creating);
                    reg.insert(&task).unwrap();
                    reg.mark_running(&task.attempt(), 1, crate::conformance::LEASE)
                        .unwrap();
                    reg.finish(
                        &task.attempt(),
                        &Finish {
                            state: State::Succeeded,
                            exit_code: Some(0),
                            reason: "ok".into(),
                            at: 3,
                        },
                    )
                    .unwrap();
                }
            });
        }
    });
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.list(Listing::All).unwrap().len(), 400);
}

#[test]
fn concurrent_first_opens_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("orch.db");
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let reg = Registry::open(&path).unwrap();
                reg.insert(&record(State::Running)).unwrap();
            });
        }
    });
    assert_eq!(
        Registry::open(&path)
            .unwrap()
            .list(Listing::All)
            .unwrap()
            .len(),
        8
    );
}

/// SQLite's page cache stays at its cap however large the registry grows:
/// a long-running daemon reading a registry of many finished tasks keeps
/// its memory.
#[test]
fn the_page_cache_stays_small_whatever_the_registry_holds() {
    let (_tmp, path, registry) = fresh();
    let padding = "x".repeat(1000);
    for _ in 0..6000 {
        let mut task = record(State::Succeeded);
        task.description = padding.clone();
        registry.insert(&task).unwrap();
    }
    assert_eq!(registry.list(Listing::All).unwrap().len(), 6000);
    let size = std::fs::metadata(&path).unwrap().len()
        + std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    assert!(
        size > 4 << 20,
        "a registry larger than the default cache: {size}"
    );
    let used = registry.cache_used();
    assert!(
        (1..1 << 20).contains(&used),
        "{used} bytes of page cache for a {size}-byte registry"
    );
}

/// Values wiped from a record are gone from every file of the registry,
/// the write-ahead log's older pages included.
#[test]
fn wiped_values_leave_no_copy_in_the_files() {
    let (tmp, _path, reg) = fresh();
    let secret = "s3cret-in-the-wal-9f2";
    for ending in ["finish", "cancel"] {
        let mut task = crate::conformance::queued("p", 0, None);
        task.queue.spec = Some(format!(r#"{{"env":{{"TOKEN":"{secret}"}}}}"#));
        reg.insert(&task).unwrap();
        if ending == "finish" {
            let claimed = reg
                .claim(
                    &crate::conformance::claimant("c"),
                    crate::conformance::LEASE,
                )
                .unwrap()
                .unwrap();
            reg.finish(
                &claimed.attempt(),
                &Finish {
                    state: State::Failed,
                    exit_code: None,
                    reason: "x".into(),
                    at: 1,
                },
            )
            .unwrap();
        } else {
            assert!(reg.cancel_queued(&task.id, "cancelled", 1).unwrap());
        }
    }
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{} still holds the value", path.display());
    }
}

#[test]
fn json_gives_times_as_rfc3339_too_and_reads_back_the_same() {
    let mut r = record(State::Succeeded);
    r.created_at = 1_796_608_633_157;
    r.started_at = Some(1_796_608_633_236);
    r.outcome.finished_at = Some(1_796_608_633_606);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["created_at"], 1_796_608_633_157_i64);
    assert_eq!(json["created"], "2026-12-07T01:57:13.157Z");
    assert_eq!(json["started"], "2026-12-07T01:57:13.236Z");
    assert_eq!(json["finished"], "2026-12-07T01:57:13.606Z");
    assert!(json["progress_time"].is_null());
    let back: TaskRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
}
