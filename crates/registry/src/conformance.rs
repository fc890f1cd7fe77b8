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
                if let Some(fresh) = $fresh {
                    crate::conformance::submitted_values_are_never_shown_and_wiped_at_the_end(&fresh);
                }
            }
            #[test]
            fn notes_and_saving_workspaces() {
                if let Some(fresh) = $fresh {
                    crate::conformance::notes_and_saving_workspaces(&fresh);
                }
            }
            #[test]
            fn lifecycle_through_the_database() {
                if let Some(fresh) = $fresh {
                    crate::conformance::lifecycle_through_the_database(&fresh);
                }
            }
            #[test]
            fn illegal_transitions_are_refused_and_change_nothing() {
                if let Some(fresh) = $fresh {
                    crate::conformance::illegal_transitions_are_refused_and_change_nothing(&fresh);
                }
            }
            #[test]
            fn cancel_requests_reach_the_owner() {
                if let Some(fresh) = $fresh {
                    crate::conformance::cancel_requests_reach_the_owner(&fresh);
                }
            }
            #[test]
            fn prefixes_resolve_with_or_without_hyphens() {
                if let Some(fresh) = $fresh {
                    crate::conformance::prefixes_resolve_with_or_without_hyphens(&fresh);
                }
            }
            #[test]
            fn listing_live_and_all() {
                if let Some(fresh) = $fresh {
                    crate::conformance::listing_live_and_all(&fresh);
                }
            }
            #[test]
            fn retention_reads_only_what_it_may_select() {
                if let Some(fresh) = $fresh {
                    crate::conformance::retention_reads_only_what_it_may_select(&fresh);
                }
            }
            #[test]
            fn a_session_lists_its_own_tasks() {
                if let Some(fresh) = $fresh {
                    crate::conformance::a_session_lists_its_own_tasks(&fresh);
                }
            }
            #[test]
            fn the_queue_is_claimed_by_priority_then_submission_and_per_project_caps() {
                if let Some(fresh) = $fresh {
                    crate::conformance::the_queue_is_claimed_by_priority_then_submission_and_per_project_caps(&fresh);
                }
            }
            #[test]
            fn two_claimants_never_get_one_task() {
                if let Some(fresh) = $fresh {
                    crate::conformance::two_claimants_never_get_one_task(&fresh);
                }
            }
            #[test]
            fn a_queued_task_is_cancelled_only_while_queued() {
                if let Some(fresh) = $fresh {
                    crate::conformance::a_queued_task_is_cancelled_only_while_queued(&fresh);
                }
            }
            #[test]
            fn branches_leave_out_those_still_in_use() {
                if let Some(fresh) = $fresh {
                    crate::conformance::branches_leave_out_those_still_in_use(&fresh);
                }
            }
            #[test]
            fn a_stale_attempt_can_never_write() {
                if let Some(fresh) = $fresh {
                    crate::conformance::a_stale_attempt_can_never_write(&fresh);
                }
            }
            #[test]
            fn a_rescue_takes_back_only_what_ran_out_once() {
                if let Some(fresh) = $fresh {
                    crate::conformance::a_rescue_takes_back_only_what_ran_out_once(&fresh);
                }
            }
            #[test]
            fn retries_run_a_task_again_as_often_as_allowed() {
                if let Some(fresh) = $fresh {
                    crate::conformance::retries_run_a_task_again_as_often_as_allowed(&fresh);
                }
            }
            #[test]
            fn constraints_are_matched_against_labels() {
                if let Some(fresh) = $fresh {
                    crate::conformance::constraints_are_matched_against_labels(&fresh);
                }
            }
            #[test]
            fn max_parallel_holds_across_claimants_at_once() {
                if let Some(fresh) = $fresh {
                    crate::conformance::max_parallel_holds_across_claimants_at_once(&fresh);
                }
            }
            #[test]
            fn nodes_join_renew_and_leave() {
                if let Some(fresh) = $fresh {
                    crate::conformance::nodes_join_renew_and_leave(&fresh);
                }
            }
            #[test]
            fn remote_work_is_in_use_until_delivered() {
                if let Some(fresh) = $fresh {
                    crate::conformance::remote_work_is_in_use_until_delivered(&fresh);
                }
            }
            #[test]
            fn a_claimed_task_never_started_goes_back_to_the_queue_once() {
                if let Some(fresh) = $fresh {
                    crate::conformance::a_claimed_task_never_started_goes_back_to_the_queue_once(&fresh);
                }
            }
            #[test]
            fn names_and_short_ids_resolve() {
                if let Some(fresh) = $fresh {
                    crate::conformance::names_and_short_ids_resolve(&fresh);
                }
            }
            #[test]
            fn output_is_kept_for_other_nodes() {
                if let Some(fresh) = $fresh {
                    crate::conformance::output_is_kept_for_other_nodes(&fresh);
                }
            }
        }
    };
}
pub(crate) use conformance;

pub(crate) fn lifecycle_through_the_database(db: &impl Fresh) {
    let reg = db.handle();
    let task = record(State::Creating);
    reg.insert(&task).unwrap();
    reg.mark_running(&task.attempt(), 10, LEASE).unwrap();
    assert_eq!(
        reg.renew_leases(&[task.attempt()], LEASE).unwrap(),
        Renewal::default()
    );
    reg.set_progress(&task.attempt(), 50, "half", 40).unwrap();
    let finish = Finish {
        state: State::Succeeded,
        exit_code: Some(0),
        reason: "exited 0".into(),
        at: 50,
    };
    assert_eq!(
        reg.finish(&task.attempt(), &finish).unwrap(),
        State::Running
    );
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
        &task.attempt(),
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
        reg.finish(&task.attempt(), &skip).is_err(),
        "finish needs a terminal state"
    );
    reg.finish(
        &task.attempt(),
        &Finish {
            state: State::Failed,
            ..skip
        },
    )
    .unwrap();
    assert!(matches!(
        reg.mark_running(&task.attempt(), 1, LEASE),
        Err(Error::IllegalTransition {
            from: State::Failed,
            to: State::Running,
            ..
        })
    ));
    assert_eq!(reg.get(&task.id).unwrap().unwrap().state, State::Failed);
    assert!(matches!(
        reg.mark_running(
            &Attempt {
                id: Uuid::now_v7(),
                number: 1
            },
            1,
            LEASE
        ),
        Err(Error::NotFound(_))
    ));
}

pub(crate) fn cancel_requests_reach_the_owner(db: &impl Fresh) {
    let reg = db.handle();
    let task = record(State::Running);
    reg.insert(&task).unwrap();
    assert!(reg.request_cancel(&task.id).unwrap());
    assert_eq!(
        reg.renew_leases(&[task.attempt()], LEASE).unwrap().cancel,
        vec![task.id]
    );
    reg.finish(
        &task.attempt(),
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
    assert!(matches!(reg.resolve("zz!z"), Err(Error::InvalidId(_))));
    assert!(matches!(reg.resolve("zzzz"), Err(Error::NotFound(_))));
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
    let order: Vec<Uuid> =
        std::iter::from_fn(|| reg.claim(&d, LEASE).unwrap().map(|r| r.id)).collect();
    assert_eq!(
        order,
        vec![urgent.id, a1.id, b1.id],
        "a2 waits: project a is at its cap"
    );
    let claimed = reg.get(&a1.id).unwrap().unwrap();
    assert_eq!(claimed.state, State::Creating);
    assert_eq!(claimed.owner.session, "d");
    reg.mark_running(&first(&a1), 1, LEASE).unwrap();
    reg.finish(
        &first(&a1),
        &Finish {
            state: State::Succeeded,
            exit_code: Some(0),
            reason: "ok".into(),
            at: 1,
        },
    )
    .unwrap();
    assert_eq!(reg.claim(&d, LEASE).unwrap().map(|r| r.id), Some(a2.id));
    assert!(reg.claim(&d, LEASE).unwrap().is_none());
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
                    std::iter::from_fn(|| reg.claim(&c, LEASE).unwrap().map(|r| r.id)).collect()
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

pub(crate) fn branches_leave_out_those_still_in_use(db: &impl Fresh) {
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
        task.description = format!("the {label} one");
        task.workspace.branch = Some(format!("orch/{}", task.id));
        task.workspace.base = Some("base".into());
        task.workspace.state = workspace;
        registry.insert(&task).unwrap();
        if label == "deleted" {
            registry.delete(&task.id).unwrap();
        }
        names.insert(label, task.workspace.branch.unwrap());
    }
    let known = registry.branches(std::path::Path::new("/repo")).unwrap();
    let offered: Vec<&str> = names
        .iter()
        .filter(|(_, branch)| known.contains_key(*branch))
        .map(|(label, _)| *label)
        .collect();
    assert_eq!(offered, ["deleted", "removed"]);
    // A branch tells what its task was after the record is gone.
    let deleted = &known[&names["deleted"]];
    assert_eq!(
        (
            deleted.base.as_str(),
            deleted.description.as_deref(),
            deleted.recorded
        ),
        ("base", Some("the deleted one"), false)
    );
    assert!(known[&names["removed"]].recorded);
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
        ..Claimant::default()
    }
}

/// A lease long enough for any test.
pub(crate) const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// `task` on its first attempt (as a claim leaves it).
pub(crate) fn first(task: &TaskRecord) -> Attempt {
    Attempt {
        id: task.id,
        number: 1,
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
    let claimed = reg.claim(&claimant("c"), LEASE).unwrap().unwrap();
    assert!(claimed.queue.spec.unwrap().contains("s3cret-v4lue"));
    reg.finish(
        &first(&task),
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
    reg.add_note(&task.attempt(), "first").unwrap();
    reg.add_note(&task.attempt(), "second").unwrap();
    let got = reg.get(&task.id).unwrap().unwrap();
    assert_eq!(got.outcome.notes.as_deref(), Some("first\nsecond"));
    reg.finish(
        &task.attempt(),
        &Finish {
            state: State::Succeeded,
            exit_code: Some(0),
            reason: "exited 0".into(),
            at: 1,
        },
    )
    .unwrap();
    assert!(reg.list(Listing::Live).unwrap().is_empty());
    reg.set_workspace_state(&task.attempt(), WorkspaceState::Saving)
        .unwrap();
    assert_eq!(reg.list(Listing::Live).unwrap().len(), 1, "saving is live");
    let counts = reg.count_by_state().unwrap();
    assert!(counts.contains(&("saving".to_owned(), 1)), "{counts:?}");
    assert!(!reg.get(&task.id).unwrap().unwrap().workspace_settled());
    reg.set_workspace_state(&task.attempt(), WorkspaceState::Removed)
        .unwrap();
    assert!(reg.list(Listing::Live).unwrap().is_empty());
}

/// Waits until a lease taken now with no length has run out by any clock.
fn lease_runs_out() {
    std::thread::sleep(std::time::Duration::from_millis(20));
}

pub(crate) fn a_stale_attempt_can_never_write(db: &impl Fresh) {
    let reg = db.handle();
    let mut task = queued("p", 0, None);
    task.queue.retries = 1;
    reg.insert(&task).unwrap();
    let gone = claimant("gone");
    let old = reg
        .claim(&gone, std::time::Duration::ZERO)
        .unwrap()
        .unwrap();
    assert_eq!(old.owner.attempt, 1, "a claim counts the attempt");
    reg.mark_running(&old.attempt(), 1, std::time::Duration::ZERO)
        .unwrap();
    lease_runs_out();
    let rescued = reg.rescue().unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(
        (rescued[0].from, rescued[0].to),
        (State::Running, State::Queued)
    );
    let new = reg.claim(&claimant("new"), LEASE).unwrap().unwrap();
    assert_eq!(new.owner.attempt, 2);
    // Every write the old attempt makes is refused, and changes nothing.
    let stale = old.attempt();
    let refused = |r: Result<(), Error>| {
        matches!(
            r,
            Err(Error::Fenced {
                attempt: 1,
                current: 2,
                ..
            })
        )
    };
    assert!(refused(reg.set_progress(&stale, 90, "late", 5)));
    assert!(refused(reg.add_note(&stale, "late")));
    assert!(refused(
        reg.set_workspace_state(&stale, WorkspaceState::Removed)
    ));
    assert!(refused(reg.set_container(&stale, "theirs")));
    assert!(refused(reg.update_planned(&old)));
    assert!(refused(
        reg.finish(
            &stale,
            &Finish {
                state: State::Succeeded,
                exit_code: Some(0),
                reason: "late".into(),
                at: 5,
            },
        )
        .map(drop)
    ));
    let renewal = reg.renew_leases(&[stale], LEASE).unwrap();
    assert_eq!(renewal.lost, vec![task.id]);
    let now = reg.get(&task.id).unwrap().unwrap();
    assert_eq!(
        (now.state, now.owner.session.as_str()),
        (State::Creating, "new")
    );
    assert_eq!(now.progress.percent, None);
    assert_eq!(now.outcome.notes, None);
    // The current attempt writes.
    reg.mark_running(&new.attempt(), 2, LEASE).unwrap();
    assert!(
        reg.renew_leases(&[new.attempt()], LEASE)
            .unwrap()
            .lost
            .is_empty()
    );
}

pub(crate) fn a_rescue_takes_back_only_what_ran_out_once(db: &impl Fresh) {
    let reg = db.handle();
    let mut dead = claimant("dead");
    dead.node = Some(("id-b".into(), "host-b".into()));
    let claim = |task: &TaskRecord, lease| {
        reg.insert(task).unwrap();
        let got = reg.claim(&dead, lease).unwrap().unwrap();
        assert_eq!(got.id, task.id);
        got
    };
    // Claimed, never started: queued again.
    let unstarted = claim(&queued("p", 9, None), std::time::Duration::ZERO);
    // Running, no retries: lost, naming the node.
    let running = claim(&queued("p", 8, None), std::time::Duration::ZERO);
    reg.mark_running(&running.attempt(), 1, std::time::Duration::ZERO)
        .unwrap();
    // Its lease holds: left alone.
    let healthy = claim(&queued("p", 7, None), LEASE);
    reg.mark_running(&healthy.attempt(), 1, LEASE).unwrap();
    // Ended by its owner before the rescue: its end stands.
    let ended = claim(&queued("p", 6, None), std::time::Duration::ZERO);
    reg.finish(
        &ended.attempt(),
        &Finish {
            state: State::Failed,
            exit_code: Some(1),
            reason: "exited 1".into(),
            at: 1,
        },
    )
    .unwrap();
    // Recorded by `orch task` (nothing to run it again from): lost.
    let mut foreground = record(State::Creating);
    foreground.owner.lease_until = Some(0);
    reg.insert(&foreground).unwrap();
    lease_runs_out();
    let mut rescued = reg.rescue().unwrap();
    rescued.sort_by_key(|r| r.id);
    let got: Vec<(Uuid, State, State)> = rescued.iter().map(|r| (r.id, r.from, r.to)).collect();
    let mut expected = vec![
        (unstarted.id, State::Creating, State::Queued),
        (running.id, State::Running, State::Lost),
        (foreground.id, State::Creating, State::Lost),
    ];
    expected.sort_by_key(|e| e.0);
    assert_eq!(got, expected);
    let lost = reg.get(&running.id).unwrap().unwrap();
    assert!(
        lost.outcome
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("node host-b"),
        "{:?}",
        lost.outcome.reason
    );
    assert!(lost.outcome.finished_at.is_some());
    let requeued = reg.get(&unstarted.id).unwrap().unwrap();
    assert_eq!(
        (
            requeued.owner.session.as_str(),
            requeued.owner.node.as_deref()
        ),
        ("", None)
    );
    assert_eq!(reg.get(&healthy.id).unwrap().unwrap().state, State::Running);
    assert_eq!(reg.get(&ended.id).unwrap().unwrap().state, State::Failed);
    // Once: a second rescue finds nothing.
    assert!(reg.rescue().unwrap().is_empty());
}

pub(crate) fn retries_run_a_task_again_as_often_as_allowed(db: &impl Fresh) {
    let reg = db.handle();
    let mut task = queued("p", 0, None);
    task.queue.retries = 1;
    reg.insert(&task).unwrap();
    let mut outcomes = Vec::new();
    for round in 1..=2 {
        let claimed = reg
            .claim(&claimant("n"), std::time::Duration::ZERO)
            .unwrap()
            .unwrap();
        assert_eq!(claimed.owner.attempt, round);
        reg.mark_running(&claimed.attempt(), 1, std::time::Duration::ZERO)
            .unwrap();
        lease_runs_out();
        outcomes.extend(reg.rescue().unwrap().into_iter().map(|r| r.to));
    }
    assert_eq!(
        outcomes,
        vec![State::Queued, State::Lost],
        "one retry, then lost"
    );
    // An owner that lost its task under it puts it back while it has
    // retries left.
    let mut task = queued("p", 0, None);
    task.queue.retries = 1;
    reg.insert(&task).unwrap();
    let first = reg
        .claim(&claimant("n"), std::time::Duration::from_secs(60))
        .unwrap()
        .unwrap();
    reg.mark_running(&first.attempt(), 1, std::time::Duration::from_secs(60))
        .unwrap();
    assert!(reg.retry(&first.attempt(), "fenced").unwrap());
    assert_eq!(reg.get(&task.id).unwrap().unwrap().state, State::Queued);
    assert!(
        !reg.retry(&first.attempt(), "again").unwrap(),
        "a stale attempt"
    );
    let second = reg
        .claim(&claimant("n"), std::time::Duration::from_secs(60))
        .unwrap()
        .unwrap();
    assert_eq!(second.owner.attempt, 2);
    assert!(
        !reg.retry(&second.attempt(), "fenced").unwrap(),
        "no retries left"
    );
    // A cancel asked for while the owner was gone: never run again.
    let mut task = queued("p", 0, None);
    task.queue.retries = 3;
    reg.insert(&task).unwrap();
    let claimed = reg
        .claim(&claimant("n"), std::time::Duration::ZERO)
        .unwrap()
        .unwrap();
    reg.mark_running(&claimed.attempt(), 1, std::time::Duration::ZERO)
        .unwrap();
    assert!(reg.request_cancel(&task.id).unwrap());
    lease_runs_out();
    let rescued = reg.rescue().unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].to, State::Cancelled, "{:?}", rescued[0]);
    assert_eq!(reg.get(&task.id).unwrap().unwrap().state, State::Cancelled);
}

pub(crate) fn constraints_are_matched_against_labels(db: &impl Fresh) {
    let reg = db.handle();
    let mut gpu = queued("p", 5, None);
    gpu.queue.constraints = vec!["gpu=true".into()];
    let plain = queued("p", 0, None);
    reg.insert(&gpu).unwrap();
    reg.insert(&plain).unwrap();
    let cpu_node = claimant("cpu");
    assert_eq!(
        reg.claim(&cpu_node, LEASE).unwrap().map(|r| r.id),
        Some(plain.id)
    );
    assert!(
        reg.claim(&cpu_node, LEASE).unwrap().is_none(),
        "not for this node"
    );
    let mut gpu_node = claimant("gpu");
    gpu_node.labels = vec!["zone=a".into(), "gpu=true".into()];
    let got = reg.claim(&gpu_node, LEASE).unwrap().unwrap();
    assert_eq!(
        (got.id, got.queue.constraints),
        (gpu.id, vec!["gpu=true".to_owned()])
    );
}

pub(crate) fn max_parallel_holds_across_claimants_at_once(db: &(impl Fresh + Sync)) {
    let reg = db.handle();
    for _ in 0..30 {
        reg.insert(&queued("capped", 0, Some(2))).unwrap();
    }
    drop(reg);
    let claimed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = ["x", "y", "z"]
            .iter()
            .map(|name| {
                let reg = db.handle();
                s.spawn(move || {
                    let c = claimant(name);
                    std::iter::from_fn(|| reg.claim(&c, LEASE).unwrap()).count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(claimed, 2, "two at most live at once, whoever claims");
}

pub(crate) fn nodes_join_renew_and_leave(db: &impl Fresh) {
    let reg = db.handle();
    let node = |id: &str, name: &str| Node {
        id: id.into(),
        name: name.into(),
        labels: vec!["gpu=true".into()],
        concurrency: 4,
        advertise: Some(format!("http://{name}:7070")),
        session: "s".into(),
    };
    reg.join(&node("a", "alpha"), LEASE).unwrap();
    reg.join(&node("b", "beta"), std::time::Duration::ZERO)
        .unwrap();
    reg.join(&node("c", "gamma"), LEASE).unwrap();
    reg.leave("c").unwrap();
    lease_runs_out();
    let states: Vec<(String, &str)> = reg
        .nodes()
        .unwrap()
        .iter()
        .map(|n| (n.node.name.clone(), n.state()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("alpha".into(), "live"),
            ("beta".into(), "dead"),
            ("gamma".into(), "left")
        ]
    );
    // Renewed, a dead node lives again; one the registry forgot joins.
    reg.renew_node(&node("b", "beta"), LEASE).unwrap();
    reg.renew_node(&node("d", "delta"), LEASE).unwrap();
    let listed = reg.nodes().unwrap();
    assert!(listed.iter().filter(|n| n.alive).count() == 3, "{listed:?}");
    assert_eq!(listed[0].node.labels, vec!["gpu=true".to_owned()]);
}

pub(crate) fn output_is_kept_for_other_nodes(db: &impl Fresh) {
    let reg = db.handle();
    let task = record(State::Succeeded);
    reg.insert(&task).unwrap();
    assert_eq!(reg.kept_log(&task.id).unwrap(), None);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    reg.keep_log(&task.id, &bytes).unwrap();
    assert_eq!(reg.kept_log(&task.id).unwrap(), Some(bytes));
    reg.delete(&task.id).unwrap();
}

/// A project from a git server is in use while a task of it lives, and
/// after, until its work reached the server.
pub(crate) fn remote_work_is_in_use_until_delivered(db: &impl Fresh) {
    let reg = db.handle();
    let from = |url: &str, state: State| {
        let mut task = record(state);
        task.workspace.remote = Some(url.into());
        reg.insert(&task).unwrap();
        task
    };
    let running = from("git://a/live.git", State::Running);
    let pushed = from("git://a/pushed.git", State::Succeeded);
    let waiting = from("git://a/waiting.git", State::Failed);
    let unknown = from("git://a/unknown.git", State::Succeeded);
    reg.insert(&record(State::Succeeded)).unwrap();
    reg.set_delivered(&pushed.id, true).unwrap();
    reg.set_delivered(&waiting.id, false).unwrap();
    let in_use = |reg: &dyn Store| {
        let mut urls = reg.remotes_in_use().unwrap();
        urls.sort();
        urls
    };
    // Not known to have arrived (never tried, or tried and failed): in use.
    assert_eq!(
        in_use(&*reg),
        vec![
            "git://a/live.git",
            "git://a/unknown.git",
            "git://a/waiting.git"
        ]
    );
    let got = reg.get(&waiting.id).unwrap().unwrap();
    assert_eq!(
        (got.workspace.remote.as_deref(), got.workspace.delivered),
        (Some("git://a/waiting.git"), Some(false))
    );
    // `orch push` delivered it; the running one ended and was pushed.
    reg.set_delivered(&waiting.id, true).unwrap();
    reg.set_delivered(&unknown.id, true).unwrap();
    reg.finish(
        &running.attempt(),
        &Finish {
            state: State::Succeeded,
            exit_code: Some(0),
            reason: "exited 0".into(),
            at: 60,
        },
    )
    .unwrap();
    reg.set_delivered(&running.id, true).unwrap();
    // Seen from another handle (another node) too.
    assert!(in_use(&*db.handle()).is_empty());
    assert_eq!(
        reg.get(&pushed.id).unwrap().unwrap().workspace.delivered,
        Some(true)
    );
}

/// A claimed task whose owner died before its container started goes back
/// to the queue, once, only from its own attempt, and never once it runs.
pub(crate) fn a_claimed_task_never_started_goes_back_to_the_queue_once(db: &impl Fresh) {
    let reg = db.handle();
    let task = queued("p", 0, None);
    reg.insert(&task).unwrap();
    let d = claimant("d");
    assert_eq!(reg.claim(&d, LEASE).unwrap().map(|r| r.id), Some(task.id));
    let stale = Attempt {
        id: task.id,
        number: 0,
    };
    assert!(!reg.requeue(&stale, "no").unwrap(), "another attempt's");
    assert!(
        reg.requeue(&first(&task), "owner gone; queued again")
            .unwrap()
    );
    assert!(!reg.requeue(&first(&task), "twice").unwrap(), "once");
    let got = reg.get(&task.id).unwrap().unwrap();
    assert_eq!(got.state, State::Queued);
    assert_eq!(
        got.outcome.reason.as_deref(),
        Some("owner gone; queued again")
    );
    assert_eq!(got.owner.session, "");
    // Claimed again: its next attempt, which may not be requeued as the
    // first, and a running one is not requeued at all.
    let again = reg.claim(&claimant("e"), LEASE).unwrap().unwrap();
    assert_eq!((again.id, again.owner.attempt), (task.id, 2));
    assert!(!reg.requeue(&first(&task), "late").unwrap());
    reg.mark_running(&again.attempt(), 5, LEASE).unwrap();
    assert!(!reg.requeue(&again.attempt(), "running").unwrap());
    assert_eq!(reg.get(&task.id).unwrap().unwrap().state, State::Running);
}

/// A task is found by its short id (the last 8 hex digits, or a prefix of
/// at least 4) as by a prefix of its id, and by its name: the live task of
/// that name, else the latest. A name is taken only while its task is live.
pub(crate) fn names_and_short_ids_resolve(db: &impl Fresh) {
    let reg = db.handle();
    let a = record(State::Running);
    reg.insert(&a).unwrap();
    let short = crate::short_id(&a.id);
    assert_eq!(short.len(), 8);
    assert!(a.id.to_string().ends_with(&short));
    assert_eq!(reg.resolve(&short).unwrap(), a.id);
    assert_eq!(reg.resolve(&short[..5].to_uppercase()).unwrap(), a.id);

    let mut named = record(State::Running);
    named.name = Some("fix-login".into());
    reg.insert(&named).unwrap();
    assert_eq!(reg.resolve("fix-login").unwrap(), named.id);
    assert_eq!(
        reg.get(&named.id).unwrap().unwrap().name.as_deref(),
        Some("fix-login")
    );
    let mut twin = record(State::Queued);
    twin.name = Some("fix-login".into());
    assert!(matches!(reg.insert(&twin), Err(Error::NameTaken(_))));
    assert!(
        reg.get(&twin.id).unwrap().is_none(),
        "nothing half-recorded"
    );
    let done = Finish {
        state: State::Succeeded,
        exit_code: Some(0),
        reason: "done".into(),
        at: crate::now_ms(),
    };
    reg.finish(&named.attempt(), &done).unwrap();
    assert_eq!(
        reg.resolve("fix-login").unwrap(),
        named.id,
        "the latest, ended"
    );
    reg.insert(&twin).unwrap();
    assert_eq!(
        reg.resolve("fix-login").unwrap(),
        twin.id,
        "the live one first"
    );
    assert!(matches!(
        reg.resolve("no-such-task"),
        Err(Error::NotFound(_))
    ));
}
