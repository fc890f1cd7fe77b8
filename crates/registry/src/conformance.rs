//! The registry's behaviour, whatever holds it: every test here runs
//! through [`Store`] alone, so a second backend runs all of them by
//! implementing the trait and a [`Fresh`] of its own
//! (`conformance!(name, fresh)`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use uuid::Uuid;

use crate::tests::record;
use crate::*;

/// A fresh, empty registry of one backend; each handle is another
/// connection to that same registry (as another process would have).
pub(crate) trait Fresh {
    fn handle(&self) -> Box<dyn Store>;
}

/// Every conformance test, as `#[test]`s of a backend.
macro_rules! conformance {
    ($backend:ident, $fresh:expr) => {
        mod $backend {
            use super::*;
            #[test]
            fn submitted_values_are_never_shown_and_wiped_at_the_end() {
                crate::conformance::submitted_values_are_never_shown_and_wiped_at_the_end(&$fresh);
            }
            #[test]
            fn notes_and_saving_workspaces() {
                crate::conformance::notes_and_saving_workspaces(&$fresh);
            }
            #[test]
            fn lifecycle_through_the_database() {
                crate::conformance::lifecycle_through_the_database(&$fresh);
            }
            #[test]
            fn illegal_transitions_are_refused_and_change_nothing() {
                crate::conformance::illegal_transitions_are_refused_and_change_nothing(&$fresh);
            }
            #[test]
            fn cancel_requests_reach_the_owner() {
                crate::conformance::cancel_requests_reach_the_owner(&$fresh);
            }
            #[test]
            fn prefixes_resolve_with_or_without_hyphens() {
                crate::conformance::prefixes_resolve_with_or_without_hyphens(&$fresh);
            }
            #[test]
            fn listing_live_and_all() {
                crate::conformance::listing_live_and_all(&$fresh);
            }
            #[test]
            fn retention_reads_only_what_it_may_select() {
                crate::conformance::retention_reads_only_what_it_may_select(&$fresh);
            }
            #[test]
            fn a_session_lists_its_own_tasks() {
                crate::conformance::a_session_lists_its_own_tasks(&$fresh);
            }
            #[test]
            fn the_queue_is_claimed_by_priority_then_submission_and_per_project_caps() {
                crate::conformance::the_queue_is_claimed_by_priority_then_submission_and_per_project_caps(&$fresh);
            }
            #[test]
            fn two_claimants_never_get_one_task() {
                crate::conformance::two_claimants_never_get_one_task(&$fresh);
            }
            #[test]
            fn a_queued_task_is_cancelled_only_while_queued() {
                crate::conformance::a_queued_task_is_cancelled_only_while_queued(&$fresh);
            }
            #[test]
            fn branch_bases_leave_out_branches_still_in_use() {
                crate::conformance::branch_bases_leave_out_branches_still_in_use(&$fresh);
            }
        }
    };
}
pub(crate) use conformance;

pub(crate) fn lifecycle_through_the_database(db: &impl Fresh) {
    let reg = db.handle();
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
        (
            got.started_at,
            got.outcome.finished_at,
            got.owner.lease_until
        ),
        (Some(10), Some(50), None)
    );
    assert_eq!(
        (got.progress.percent, got.progress.message.as_deref()),
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

pub(crate) fn illegal_transitions_are_refused_and_change_nothing(db: &impl Fresh) {
    let reg = db.handle();
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

pub(crate) fn cancel_requests_reach_the_owner(db: &impl Fresh) {
    let reg = db.handle();
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

pub(crate) fn prefixes_resolve_with_or_without_hyphens(db: &impl Fresh) {
    let reg = db.handle();
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

pub(crate) fn listing_live_and_all(db: &impl Fresh) {
    let reg = db.handle();
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

pub(crate) fn retention_reads_only_what_it_may_select(db: &impl Fresh) {
    let reg = db.handle();
    let at = |state: State, created_at: i64, finished_at: Option<i64>| {
        let mut r = record(state);
        r.created_at = created_at;
        r.outcome.finished_at = finished_at;
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

pub(crate) fn a_session_lists_its_own_tasks(db: &impl Fresh) {
    let reg = db.handle();
    let mut mine = record(State::Running);
    mine.owner.session = "me".into();
    reg.insert(&mine).unwrap();
    reg.insert(&record(State::Running)).unwrap();
    let listed = reg.list_session("me").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, mine.id);
}

pub(crate) fn the_queue_is_claimed_by_priority_then_submission_and_per_project_caps(
    db: &impl Fresh,
) {
    let reg = db.handle();
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
    assert_eq!(claimed.owner.session, "d");
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

pub(crate) fn two_claimants_never_get_one_task(db: &(impl Fresh + Sync)) {
    let reg = db.handle();
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
                let reg = db.handle();
                s.spawn(move || {
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

pub(crate) fn a_queued_task_is_cancelled_only_while_queued(db: &impl Fresh) {
    let reg = db.handle();
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

pub(crate) fn branch_bases_leave_out_branches_still_in_use(db: &impl Fresh) {
    let registry = db.handle();
    let mut names = BTreeMap::new();
    for (label, state, workspace) in [
        ("live", State::Running, None),
        ("kept", State::Succeeded, Some(WorkspaceState::Kept)),
        ("unsettled", State::Failed, None),
        ("removed", State::Succeeded, Some(WorkspaceState::Removed)),
        ("deleted", State::Succeeded, Some(WorkspaceState::Removed)),
    ] {
        let mut task = record(state);
        task.workspace.branch = Some(format!("orch/{}", task.id));
        task.workspace.base = Some("base".into());
        task.workspace.state = workspace;
        registry.insert(&task).unwrap();
        if label == "deleted" {
            registry.delete(&task.id).unwrap();
        }
        names.insert(label, task.workspace.branch.unwrap());
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

pub(crate) fn queued(project: &str, priority: i64, max_parallel: Option<i64>) -> TaskRecord {
    let mut r = record(State::Queued);
    r.project = project.into();
    r.queue.priority = priority;
    r.queue.max_parallel = max_parallel;
    r.queue.spec = Some("{}".into());
    r.owner.session = String::new();
    r
}

pub(crate) fn claimant(name: &str) -> Claimant {
    Claimant {
        session: name.into(),
        pid: 1,
        start: 1,
        boot: "b".into(),
    }
}

pub(crate) fn submitted_values_are_never_shown_and_wiped_at_the_end(db: &impl Fresh) {
    let reg = db.handle();
    let mut task = queued("p", 0, None);
    task.queue.spec = Some(r#"{"project":"/p","desc":"d","env":{"TOKEN":"s3cret-v4lue"}}"#.into());
    reg.insert(&task).unwrap();
    let shown = serde_json::to_string(&reg.get(&task.id).unwrap().unwrap()).unwrap();
    assert!(!shown.contains("s3cret-v4lue"), "{shown}");
    assert!(shown.contains("TOKEN"), "keys may be shown: {shown}");
    // Kept while it can still start: the one who claims it needs them.
    let claimed = reg.claim(&claimant("c"), 0).unwrap().unwrap();
    assert!(claimed.queue.spec.unwrap().contains("s3cret-v4lue"));
    reg.finish(
        &task.id,
        &Finish {
            state: State::Failed,
            exit_code: None,
            reason: "x".into(),
            at: 1,
        },
    )
    .unwrap();
    let ended = reg.get(&task.id).unwrap().unwrap();
    let spec = ended.queue.spec.unwrap_or_default();
    assert!(
        !spec.contains("s3cret-v4lue") && !spec.contains("TOKEN"),
        "{spec}"
    );
    // A queued one cancelled: the same.
    let other = queued("p", 0, None);
    let mut other = other;
    other.queue.spec = Some(r#"{"env":{"K":"v4lue-2"}}"#.into());
    reg.insert(&other).unwrap();
    assert!(reg.cancel_queued(&other.id, "cancelled", 2).unwrap());
    let spec = reg
        .get(&other.id)
        .unwrap()
        .unwrap()
        .queue
        .spec
        .unwrap_or_default();
    assert!(!spec.contains("v4lue-2"), "{spec}");
    // A record read back from its JSON is the record.
    let text = serde_json::to_string(&ended_record(&*reg, &task.id)).unwrap();
    let back: TaskRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back.id, task.id);
}

fn ended_record(reg: &dyn Store, id: &Uuid) -> TaskRecord {
    reg.get(id).unwrap().unwrap()
}

pub(crate) fn notes_and_saving_workspaces(db: &impl Fresh) {
    let reg = db.handle();
    let mut task = record(State::Running);
    task.workspace.path = Some("/w".into());
    reg.insert(&task).unwrap();
    reg.add_note(&task.id, "first").unwrap();
    reg.add_note(&task.id, "second").unwrap();
    let got = reg.get(&task.id).unwrap().unwrap();
    assert_eq!(got.outcome.notes.as_deref(), Some("first\nsecond"));
    reg.finish(
        &task.id,
        &Finish {
            state: State::Succeeded,
            exit_code: Some(0),
            reason: "exited 0".into(),
            at: 1,
        },
    )
    .unwrap();
    assert!(reg.list(Listing::Live).unwrap().is_empty());
    reg.set_workspace_state(&task.id, WorkspaceState::Saving)
        .unwrap();
    assert_eq!(reg.list(Listing::Live).unwrap().len(), 1, "saving is live");
    let counts = reg.count_by_state().unwrap();
    assert!(counts.contains(&("saving".to_owned(), 1)), "{counts:?}");
    assert!(!reg.get(&task.id).unwrap().unwrap().workspace_settled());
    reg.set_workspace_state(&task.id, WorkspaceState::Removed)
        .unwrap();
    assert!(reg.list(Listing::Live).unwrap().is_empty());
}
