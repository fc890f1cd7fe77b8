//! Registry tests against real SQLite files.

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
    assert!(!reg.renew_lease(&task.id, 30).unwrap());
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
    assert!(reg.renew_lease(&task.id, 99).unwrap());
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
    drop(Registry::open(&path).unwrap());
    // Roll the version back as an older orch would have left it, with the
    // later migration's index missing.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP INDEX tasks_by_session; UPDATE schema_version SET version = 1;")
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
