//! Registry tests against real SQLite files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use uuid::Uuid;

use crate::*;

fn record(state: State) -> TaskRecord {
    TaskRecord {
        id: Uuid::now_v7(),
        project: "p".into(),
        description: "d".into(),
        state,
        created_at: now_ms(),
        started_at: None,
        finished_at: None,
        exit_code: None,
        reason: None,
        container: "orch-x".into(),
        image: "img".into(),
        workspace: None,
        branch: None,
        repo: Some("/repo".into()),
        workspace_state: None,
        keep_failed_workspace: true,
        stop_grace_ms: 10_000,
        session: "s".into(),
        owner_pid: 1,
        owner_start: 2,
        owner_boot: "b".into(),
        lease_until: None,
        progress: None,
        progress_message: None,
        progress_at: None,
        cancel_requested: false,
        detached: false,
        keep_workspace: None,
        base: None,
        git_dir: None,
        spec: None,
        priority: 0,
        max_parallel: None,
        notes: None,
    }
}

fn fresh() -> (tempfile::TempDir, PathBuf, Registry) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("orch.db");
    let registry = Registry::open(&path).unwrap();
    (tmp, path, registry)
}

#[test]
fn lifecycle_through_the_database() {
    let (_tmp, _path, reg) = fresh();
    let task = record(State::Creating);
    reg.insert(&task).unwrap();
    reg.mark_running(&task.id, 10, 20).unwrap();
    assert!(reg.renew_leases(&[task.id], 30).unwrap().is_empty());
    reg.set_progress(&task.id, 50, "half", 40).unwrap();
    let finish = Finish {
        state: State::Succeeded,
        exit_code: Some(0),
        reason: "exited 0".into(),
        at: 50,
    };
    assert_eq!(reg.finish(&task.id, &finish).unwrap(), State::Running);
    let got = reg.get(&task.id).unwrap().unwrap();
    assert_eq!(got.state, State::Succeeded);
    assert_eq!(
        (got.started_at, got.finished_at, got.lease_until),
        (Some(10), Some(50), None)
    );
    assert_eq!(
        (got.progress, got.progress_message.as_deref()),
        (Some(50), Some("half"))
    );
    // Terminal is final.
    let again = reg.finish(
        &task.id,
        &Finish {
            state: State::Lost,
            ..finish
        },
    );
    assert!(matches!(
        again,
        Err(Error::IllegalTransition {
            from: State::Succeeded,
            to: State::Lost,
            ..
        })
    ));
    assert_eq!(reg.repos().unwrap(), vec![PathBuf::from("/repo")]);
}

#[test]
fn illegal_transitions_are_refused_and_change_nothing() {
    let (_tmp, _path, reg) = fresh();
    let task = record(State::Creating);
    reg.insert(&task).unwrap();
    let skip = Finish {
        state: State::Running,
        exit_code: None,
        reason: String::new(),
        at: 1,
    };
    assert!(
        reg.finish(&task.id, &skip).is_err(),
        "finish needs a terminal state"
    );
    reg.finish(
        &task.id,
        &Finish {
            state: State::Failed,
            ..skip
        },
    )
    .unwrap();
    assert!(matches!(
        reg.mark_running(&task.id, 1, 2),
        Err(Error::IllegalTransition {
            from: State::Failed,
            to: State::Running,
            ..
        })
    ));
    assert_eq!(reg.get(&task.id).unwrap().unwrap().state, State::Failed);
    assert!(matches!(
        reg.mark_running(&Uuid::now_v7(), 1, 2),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn cancel_requests_reach_the_owner() {
    let (_tmp, _path, reg) = fresh();
    let task = record(State::Running);
    reg.insert(&task).unwrap();
    assert!(reg.request_cancel(&task.id).unwrap());
    assert_eq!(reg.renew_leases(&[task.id], 99).unwrap(), vec![task.id]);
    reg.finish(
        &task.id,
        &Finish {
            state: State::Cancelled,
            exit_code: None,
            reason: "cancelled".into(),
            at: 1,
        },
    )
    .unwrap();
    assert!(
        !reg.request_cancel(&task.id).unwrap(),
        "nothing to cancel once terminal"
    );
}

#[test]
fn prefixes_resolve_with_or_without_hyphens() {
    let (_tmp, _path, reg) = fresh();
    let a = record(State::Running);
    reg.insert(&a).unwrap();
    let full = a.id.to_string();
    assert_eq!(reg.resolve(&full).unwrap(), a.id);
    assert_eq!(reg.resolve(&full[..4]).unwrap(), a.id);
    let simple = a.id.simple().to_string();
    assert_eq!(reg.resolve(&simple[..12]).unwrap(), a.id);
    assert_eq!(reg.resolve(&full[..13].to_uppercase()).unwrap(), a.id);
    assert!(matches!(reg.resolve("abc"), Err(Error::InvalidId(_))));
    assert!(matches!(reg.resolve("zzzz"), Err(Error::InvalidId(_))));
    assert!(matches!(reg.resolve("ffff"), Err(Error::NotFound(_))));
    let mut b = record(State::Running);
    b.id = Uuid::parse_str(&format!("{}0000-0000-7000-8000-000000000000", &full[..4])).unwrap();
    reg.insert(&b).unwrap();
    match reg.resolve(&full[..4]) {
        Err(Error::Ambiguous { candidates, .. }) => assert_eq!(candidates.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn listing_live_and_all() {
    let (_tmp, _path, reg) = fresh();
    for state in [
        State::Creating,
        State::Running,
        State::Failed,
        State::Succeeded,
    ] {
        reg.insert(&record(state)).unwrap();
    }
    assert_eq!(reg.list(Listing::Live).unwrap().len(), 2);
    let all = reg.list(Listing::All).unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    assert!(reg.delete(&all[0].id).unwrap());
    assert_eq!(reg.list(Listing::All).unwrap().len(), 3);
}

#[test]
fn retention_reads_only_what_it_may_select() {
    let (_tmp, _path, reg) = fresh();
    let at = |state: State, created_at: i64, finished_at: Option<i64>| {
        let mut r = record(state);
        r.created_at = created_at;
        r.finished_at = finished_at;
        reg.insert(&r).unwrap();
        r.id
    };
    let live = at(State::Running, 0, None);
    let finished_long_ago = at(State::Succeeded, 900, Some(1_000));
    let created_long_ago = at(State::Failed, 100, Some(5_000));
    let recent = at(State::Succeeded, 4_000, Some(5_000));
    let listed: Vec<Uuid> = reg
        .list_retention(2_000, 200)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![live, finished_long_ago, created_long_ago]);
    assert!(!listed.contains(&recent));
}

#[test]
fn a_session_lists_its_own_tasks() {
    let (_tmp, _path, reg) = fresh();
    let mut mine = record(State::Running);
    mine.session = "me".into();
    reg.insert(&mine).unwrap();
    reg.insert(&record(State::Running)).unwrap();
    let listed = reg.list_session("me").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, mine.id);
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
    assert_eq!(migrated.keep_workspace, None);
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
                    reg.mark_running(&task.id, 1, 2).unwrap();
                    reg.finish(
                        &task.id,
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

fn queued(project: &str, priority: i64, max_parallel: Option<i64>) -> TaskRecord {
    let mut r = record(State::Queued);
    r.project = project.into();
    r.priority = priority;
    r.max_parallel = max_parallel;
    r.spec = Some("{}".into());
    r.session = String::new();
    r
}

fn claimant(name: &str) -> Claimant {
    Claimant {
        session: name.into(),
        pid: 1,
        start: 1,
        boot: "b".into(),
    }
}

#[test]
fn the_queue_is_claimed_by_priority_then_submission_and_per_project_caps() {
    let (_tmp, _path, reg) = fresh();
    let a1 = queued("a", 0, Some(1));
    let a2 = queued("a", 0, Some(1));
    let b1 = queued("b", 0, None);
    let urgent = queued("c", 5, None);
    for r in [&a1, &a2, &b1, &urgent] {
        reg.insert(r).unwrap();
    }
    let d = claimant("d");
    let order: Vec<Uuid> = std::iter::from_fn(|| reg.claim(&d, 0).unwrap().map(|r| r.id)).collect();
    assert_eq!(
        order,
        vec![urgent.id, a1.id, b1.id],
        "a2 waits: project a is at its cap"
    );
    let claimed = reg.get(&a1.id).unwrap().unwrap();
    assert_eq!(claimed.state, State::Creating);
    assert_eq!(claimed.session, "d");
    reg.mark_running(&a1.id, 1, 2).unwrap();
    reg.finish(
        &a1.id,
        &Finish {
            state: State::Succeeded,
            exit_code: Some(0),
            reason: "ok".into(),
            at: 1,
        },
    )
    .unwrap();
    assert_eq!(reg.claim(&d, 0).unwrap().map(|r| r.id), Some(a2.id));
    assert!(reg.claim(&d, 0).unwrap().is_none());
}

#[test]
fn two_claimants_never_get_one_task() {
    let (_tmp, path, reg) = fresh();
    let ids: Vec<Uuid> = (0..60)
        .map(|_| {
            let r = queued("p", 0, None);
            reg.insert(&r).unwrap();
            r.id
        })
        .collect();
    drop(reg);
    let got: Vec<Vec<Uuid>> = std::thread::scope(|s| {
        let handles: Vec<_> = ["x", "y", "z"]
            .iter()
            .map(|name| {
                let path = &path;
                s.spawn(move || {
                    let reg = Registry::open(path).unwrap();
                    let c = claimant(name);
                    std::iter::from_fn(|| reg.claim(&c, 0).unwrap().map(|r| r.id)).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<Uuid> = got.concat();
    all.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(all, expected, "each task claimed exactly once");
}

#[test]
fn a_queued_task_is_cancelled_only_while_queued() {
    let (_tmp, _path, reg) = fresh();
    let q = queued("p", 0, None);
    reg.insert(&q).unwrap();
    assert!(
        reg.cancel_queued(&q.id, "cancelled (orch cancel)", 5)
            .unwrap()
    );
    assert_eq!(reg.get(&q.id).unwrap().unwrap().state, State::Cancelled);
    assert!(!reg.cancel_queued(&q.id, "again", 6).unwrap());
    let listed = reg
        .list_where(Listing::All, Some(State::Cancelled), Some("p"))
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        reg.list_where(Listing::Live, None, None)
            .unwrap()
            .is_empty()
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

/// `cleanup --branches` is offered only the branches no task still uses:
/// not a live task's, nor one whose workspace is kept or not yet settled
/// (its work may still come home to it).
#[test]
fn branch_bases_leave_out_branches_still_in_use() {
    let (_tmp, _path, registry) = fresh();
    let mut names = BTreeMap::new();
    for (label, state, workspace) in [
        ("live", State::Running, None),
        ("kept", State::Succeeded, Some(WorkspaceState::Kept)),
        ("unsettled", State::Failed, None),
        ("removed", State::Succeeded, Some(WorkspaceState::Removed)),
        ("deleted", State::Succeeded, Some(WorkspaceState::Removed)),
    ] {
        let mut task = record(state);
        task.branch = Some(format!("orch/{}", task.id));
        task.base = Some("base".into());
        task.workspace_state = workspace;
        registry.insert(&task).unwrap();
        if label == "deleted" {
            registry.delete(&task.id).unwrap();
        }
        names.insert(label, task.branch.unwrap());
    }
    let bases = registry
        .branch_bases(std::path::Path::new("/repo"))
        .unwrap();
    let offered: Vec<&str> = names
        .iter()
        .filter(|(_, branch)| bases.contains_key(*branch))
        .map(|(label, _)| *label)
        .collect();
    assert_eq!(offered, ["deleted", "removed"]);
}
