//! Every exit path of a task, fed its events against a fake runtime and a
//! real registry, and the teardown plan each one carried out.
//!
//! The Docker end-to-end suite (`tests/e2e`) runs the same paths against
//! the real engine; these pin down which plan each path builds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_registry::{Finish, State, TaskRecord, now_ms};
use uuid::Uuid;

use crate::config::{Project, Settings, WorkspaceMode};
use crate::events::{Event, Observer};
use crate::link::Registered;
use crate::reconcile::{CleanupOptions, Strategy, Thresholds};
use crate::runtime::fake::{Behaviour, FakeRuntime};
use crate::runtime::{ContainerSpec, ContainerState, Ownership};
use crate::store::Records;
use crate::teardown::{
    Cause, Ending, Fate, Found, RecordEnd, TaskFacts, Teardown, WorkspacePolicy, WorkspaceStep,
    WorkspaceTarget, plan,
};
use crate::watchdog::WatchdogLog;
use crate::{Home, Orchestrator, Owner, Shutdown, Status, TaskRequest};

struct Harness {
    _tmp: tempfile::TempDir,
    orch: Orchestrator,
    fake: Arc<FakeRuntime>,
}

async fn harness(behaviour: Behaviour) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::open(tmp.path().join("home")).unwrap();
    let store = Records::open(&home.registry_path()).await.unwrap();
    let fake = Arc::new(FakeRuntime::new(behaviour));
    let orch = Orchestrator::with_runtime(home, store, fake.clone());
    Harness {
        _tmp: tmp,
        orch,
        fake,
    }
}

fn request(timeout: Option<Duration>, grace: Duration) -> TaskRequest {
    TaskRequest {
        project: Project {
            name: "p".into(),
            path: "/nonexistent".into(),
            remote: None,
            settings: Settings {
                image: "img:1".into(),
                workspace: WorkspaceMode::None,
                stop_grace: grace,
                timeout,
                ..Settings::default()
            },
        },
        desc: "work".into(),
        name: None,
        stdin: false,
        tty: false,
        git_ref: None,
        keep_workspace: None,
        detached: false,
        task_id: None,
    }
}

/// Remembers every event, for the assertions.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Event>>>);

impl Observer for Seen {
    fn on_event(&mut self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Seen {
    fn has(&self, wanted: impl Fn(&Event) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(wanted)
    }
}

impl Harness {
    /// Starts a run in the background.
    fn spawn(
        &self,
        request: TaskRequest,
        shutdown: &Shutdown,
        seen: &Seen,
    ) -> tokio::task::JoinHandle<Result<crate::Outcome, crate::Error>> {
        let (orch, shutdown, seen) = (self.orch.clone(), shutdown.clone(), seen.clone());
        tokio::spawn(async move { orch.run_task(request, shutdown, Box::new(seen)).await })
    }

    /// Runs a task to its end, with no shutdown requested.
    async fn run(&self, request: TaskRequest, seen: &Seen) -> Result<crate::Outcome, crate::Error> {
        self.orch
            .run_task(request, Shutdown::new(), Box::new(seen.clone()))
            .await
    }

    fn executed(&self) -> Vec<Teardown> {
        self.orch.ctx_for_tests().executed.lock().unwrap().clone()
    }

    async fn record(&self, id: Uuid) -> TaskRecord {
        self.orch.task(&id).await.unwrap().unwrap()
    }

    /// The one plan executed, for a run with no workspace.
    fn only_plan(&self) -> Teardown {
        let plans = self.executed();
        assert_eq!(plans.len(), 1, "{plans:#?}");
        plans.into_iter().next().unwrap()
    }

    /// Waits until the fake has a running container; its name.
    async fn running(&self) -> String {
        for _ in 0..400 {
            let calls = self.fake.calls();
            if let Some(start) = calls.iter().find_map(|c| c.strip_prefix("start ")) {
                return start.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no container started: {:?}", self.fake.calls());
    }
}

fn finished_with(plan: &Teardown, ending: &Ending) {
    assert_eq!(plan.record, RecordEnd::Finish(ending.clone()), "{plan:#?}");
    assert_eq!(plan.containers.len(), 1, "{plan:#?}");
    assert_eq!(
        plan.containers[0].stop_grace, None,
        "the run stopped it itself"
    );
    assert!(!plan.delete_record && plan.log.is_none());
}

/// An engine connection that drops mid-task: the output the broken stream
/// did not deliver is read again from the engine's log, and the task's log
/// holds all of it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_a_broken_stream_lost_is_read_again_from_the_engine() {
    let h = harness(Behaviour {
        exits: Some((Duration::from_millis(50), 0)),
        output: vec!["one\n", "two\n", "::progress::70 three\n", "four\n"],
        attach_breaks_after: Some(2),
        ..Behaviour::default()
    })
    .await;
    let outcome = h
        .run(request(None, Duration::from_secs(1)), &Seen::default())
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    let log = std::fs::read_to_string(h.orch.home().log_path(&outcome.task_id)).unwrap();
    assert_eq!(log, "one\ntwo\n::progress::70 three\nfour\n");
    assert!(
        h.fake.calls().iter().any(|c| c.starts_with("logs")),
        "{:?}",
        h.fake.calls()
    );
    assert_eq!(h.record(outcome.task_id).await.progress.percent, Some(70));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_exits_ends_with_its_code_and_its_container_goes() {
    for code in [0, 3] {
        let h = harness(Behaviour {
            exits: Some((Duration::from_millis(20), code)),
            output: vec!["hello\n", "::progress::50 half\n"],
            ..Behaviour::default()
        })
        .await;
        let outcome = h
            .run(request(None, Duration::from_secs(1)), &Seen::default())
            .await
            .unwrap();
        let expected = if code == 0 {
            Status::Succeeded
        } else {
            Status::Failed
        };
        assert_eq!(outcome.status, expected);
        assert_eq!(outcome.exit_code, Some(code));
        finished_with(&h.only_plan(), &Ending::Exited(code));
        let record = h.record(outcome.task_id).await;
        assert_eq!(record.state, Ending::Exited(code).state());
        assert_eq!(
            record.progress.percent,
            Some(50),
            "the last progress is stored"
        );
        assert!(h.fake.names().is_empty(), "{:?}", h.fake.calls());
        assert!(h.orch.active().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_stops_the_task_gracefully_and_ends_it_timed_out() {
    let h = harness(Behaviour::default()).await;
    let timeout = Duration::from_millis(100);
    let outcome = h
        .run(
            request(Some(timeout), Duration::from_secs(1)),
            &Seen::default(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::TimedOut);
    finished_with(&h.only_plan(), &Ending::TimedOut(timeout, None));
    assert!(h.fake.calls().iter().any(|c| c.starts_with("stop ")));
    assert_eq!(h.record(outcome.task_id).await.state, State::TimedOut);
    assert!(h.fake.names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_signal_stops_gracefully_and_ends_it_cancelled() {
    let h = harness(Behaviour::default()).await;
    let shutdown = Shutdown::new();
    let seen = Seen::default();
    let run = h.spawn(request(None, Duration::from_secs(1)), &shutdown, &seen);
    h.running().await;
    shutdown.stop_because("SIGINT");
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.stopped_by.as_deref(), Some("SIGINT"));
    finished_with(&h.only_plan(), &Ending::Cancelled("SIGINT".into()));
    assert!(h.fake.calls().iter().any(|c| c.starts_with("stop ")));
    assert!(seen.has(|e| matches!(e, Event::Stopping { .. })));
    assert_eq!(h.record(outcome.task_id).await.state, State::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_forces_removal_without_waiting_out_the_grace() {
    let h = harness(Behaviour {
        traps_term: true,
        ..Behaviour::default()
    })
    .await;
    let shutdown = Shutdown::new();
    let seen = Seen::default();
    let run = h.spawn(request(None, Duration::from_secs(600)), &shutdown, &seen);
    h.running().await;
    shutdown.stop_because("SIGINT");
    for _ in 0..400 {
        if h.fake.calls().iter().any(|c| c.starts_with("stop ")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.force();
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    finished_with(&h.only_plan(), &Ending::Cancelled("SIGINT".into()));
    assert!(seen.has(|e| matches!(e, Event::Forcing)));
    assert!(h.fake.names().is_empty(), "removed, not left to its grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_reaches_the_run_through_the_registry() {
    let h = harness(Behaviour::default()).await;
    let run = h.spawn(
        request(None, Duration::from_secs(1)),
        &Shutdown::new(),
        &Seen::default(),
    );
    h.running().await;
    let id = h.fake_task_id().await;
    h.orch
        .ctx_for_tests()
        .store
        .call(move |r| r.request_cancel(&id))
        .await
        .unwrap();
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.stopped_by.as_deref(), Some("orch cancel"));
    finished_with(&h.only_plan(), &Ending::Cancelled("orch cancel".into()));
    assert_eq!(h.record(id).await.state, State::Cancelled);
}

impl Harness {
    /// The id of the one task recorded.
    async fn fake_task_id(&self) -> Uuid {
        let rows = self
            .orch
            .ctx_for_tests()
            .store
            .call(|r| r.list(orch_registry::Listing::All))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        rows[0].id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_refusal_at_create_unwinds_and_ends_the_record_failed() {
    let h = harness(Behaviour {
        failures: [("create", 1)].into(),
        ..Behaviour::default()
    })
    .await;
    let err = h
        .run(request(None, Duration::from_secs(1)), &Seen::default())
        .await
        .unwrap_err();
    let err = crate::runtime::display_chain(&err);
    assert!(err.contains("injected failure of create"), "{err}");
    let plan = h.only_plan();
    let RecordEnd::Finish(Ending::NotStarted(reason)) = &plan.record else {
        panic!("{plan:#?}");
    };
    assert!(
        reason.contains("injected failure of create"),
        "the engine's reason in full: {reason}"
    );
    let id = h.fake_task_id().await;
    let record = h.record(id).await;
    assert_eq!(record.state, State::Failed);
    assert!(
        record
            .outcome
            .reason
            .unwrap()
            .contains("injected failure of create")
    );
    assert!(h.fake.names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_removal_is_reported_and_the_guard_finishes_it() {
    let h = harness(Behaviour {
        exits: Some((Duration::from_millis(10), 0)),
        failures: [("remove", 1)].into(),
        ..Behaviour::default()
    })
    .await;
    let seen = Seen::default();
    let outcome = h
        .run(request(None, Duration::from_secs(1)), &seen)
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    finished_with(&h.only_plan(), &Ending::Exited(0));
    assert!(
        seen.has(|e| matches!(e, Event::Notice(n) if n.contains("failed to remove container")))
    );
    assert!(h.orch.wind_down(Duration::from_secs(10)).await);
    assert!(
        h.fake.names().is_empty(),
        "the guard removed it: {:?}",
        h.fake.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_run_leaves_the_record_live_and_the_guard_removes_the_container() {
    let h = harness(Behaviour {
        panics_on_wait: true,
        ..Behaviour::default()
    })
    .await;
    let joined = h
        .spawn(
            request(None, Duration::from_secs(1)),
            &Shutdown::new(),
            &Seen::default(),
        )
        .await;
    assert!(joined.unwrap_err().is_panic());
    assert!(h.executed().is_empty(), "no plan ran: the backstop acted");
    assert!(h.orch.wind_down(Duration::from_secs(10)).await);
    assert!(h.fake.names().is_empty(), "{:?}", h.fake.calls());
    let id = h.fake_task_id().await;
    assert!(
        h.record(id).await.state.is_live(),
        "left for reconciliation"
    );
}

/// A record of a task whose owner is dead, and its running container.
async fn dead_owners_task(h: &Harness, keep_workspace: Option<bool>) -> (Uuid, String) {
    let id = crate::session::new_task_id();
    let name = crate::session::container_name(&id);
    let dead = Owner {
        pid: u32::MAX - 1,
        start: 1,
        boot: "another boot".into(),
    };
    let mut record = TaskRecord::new(id, "p", "d", State::Running, &name, "img:1");
    record.created_at = now_ms() - 3_600_000;
    record.started_at = Some(now_ms() - 3_500_000);
    record.stop_grace_ms = 1500;
    record.workspace.keep_failed_workspace = true;
    record.workspace.keep_workspace = keep_workspace;
    record.owner = orch_registry::TaskOwner {
        session: Uuid::new_v4().to_string(),
        pid: i64::from(dead.pid),
        start: 1,
        boot: dead.boot.clone(),
        lease_until: Some(now_ms() - 3_500_000),
        attempt: 1,
        ..orch_registry::TaskOwner::default()
    };
    let store = h.orch.ctx_for_tests().store.clone();
    store.call(move |r| r.insert(&record)).await.unwrap();
    h.fake.insert(
        &name,
        ContainerSpec {
            image: "img:1".into(),
            command: Vec::new(),
            entrypoint: None,
            user: "0:0".into(),
            env: Vec::new(),
            workdir: None,
            mounts: Vec::new(),
            network: "none".into(),
            memory: None,
            cpus: None,
            stop_grace: Duration::from_millis(1500),
            capabilities: Vec::new(),
            no_new_privileges: true,
            pids_limit: None,
            runtime: None,
            extra_hosts: Vec::new(),
            extra_networks: Vec::new(),
            tmpfs: Vec::new(),
            stdin: false,
            tty: false,
            console: None,
            ownership: Ownership {
                instance: h.orch.home().instance_id().to_owned(),
                session: Uuid::new_v4(),
                task: id,
                project: "p".into(),
                owner: dead,
            },
        },
        ContainerState::Running,
        None,
    );
    (id, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_the_owner_dead_carries_out_the_owners_plan() {
    let h = harness(Behaviour::default()).await;
    let (id, name) = dead_owners_task(&h, Some(true)).await;
    let cancelled = h.orch.cancel(&id).await.unwrap();
    assert_eq!(cancelled, crate::Cancelled::Ended(State::Cancelled));
    let plan = h.only_plan();
    assert_eq!(
        plan.record,
        RecordEnd::Finish(Ending::Cancelled("orch cancel; its owner was gone".into()))
    );
    assert_eq!(plan.containers.len(), 1);
    assert_eq!(plan.containers[0].name, name);
    assert_eq!(
        plan.containers[0].stop_grace,
        Some(Duration::from_millis(1500)),
        "a running container gets its grace"
    );
    assert!(h.fake.names().is_empty());
    assert_eq!(h.record(id).await.state, State::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_ends_a_dead_owners_task_lost() {
    let h = harness(Behaviour::default()).await;
    let (id, name) = dead_owners_task(&h, None).await;
    let report = h.orch.reconcile(Duration::from_secs(30)).await.unwrap();
    assert_eq!(report.items.len(), 1, "{report:#?}");
    let plan = h.only_plan();
    assert!(
        matches!(&plan.record, RecordEnd::Finish(Ending::Lost(_))),
        "{plan:#?}"
    );
    assert_eq!(plan.containers[0].name, name);
    assert!(plan.containers[0].stop_grace.is_some());
    assert_eq!(h.record(id).await.state, State::Lost);
    assert!(h.fake.names().is_empty());
}

/// A queued task claimed by a daemon that died before its container
/// started goes back to the queue; one started by `orch task` (no queued
/// spec) ends lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_queues_again_a_claimed_task_that_never_started() {
    let h = harness(Behaviour::default()).await;
    let store = h.orch.ctx_for_tests().store.clone();
    let mut ids = Vec::new();
    for spec in [Some("{}".to_owned()), None] {
        let id = crate::session::new_task_id();
        let name = crate::session::container_name(&id);
        let mut record = TaskRecord::new(id, "p", "d", State::Creating, &name, "img:1");
        record.created_at = now_ms() - 3_600_000;
        record.queue.spec = spec;
        record.owner = orch_registry::TaskOwner {
            session: Uuid::new_v4().to_string(),
            pid: i64::from(u32::MAX - 1),
            start: 1,
            boot: "another boot".into(),
            lease_until: Some(now_ms() - 3_500_000),
            attempt: 1,
            ..orch_registry::TaskOwner::default()
        };
        store.call(move |r| r.insert(&record)).await.unwrap();
        ids.push(id);
    }
    h.orch.reconcile(Duration::from_secs(30)).await.unwrap();
    let queued = h.record(ids[0]).await;
    assert_eq!(queued.state, State::Queued, "{queued:#?}");
    assert!(
        queued
            .outcome
            .reason
            .as_deref()
            .unwrap_or_default()
            .ends_with("queued again before it started"),
        "{queued:#?}"
    );
    assert_eq!(h.record(ids[1]).await.state, State::Lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_builds_the_plan_from_the_registration_when_there_is_no_record() {
    let h = harness(Behaviour::default()).await;
    let (id, name) = dead_owners_task(&h, Some(false)).await;
    let facts = TaskFacts::from(&h.record(id).await);
    h.orch
        .ctx_for_tests()
        .store
        .call(move |r| r.delete(&id))
        .await
        .unwrap();
    let session = Uuid::new_v4();
    let log = WatchdogLog {
        session: Some(session),
        pending: [(
            id,
            Registered {
                facts: facts.clone(),
                container: name.clone(),
            },
        )]
        .into(),
        clean_exit: false,
    };
    let reaped = h.orch.reap_session(&log).await;
    assert_eq!(reaped.items.len(), 1);
    let plan = &reaped.items[0].plan;
    assert!(matches!(&plan.record, RecordEnd::Finish(Ending::Lost(_))));
    assert!(plan.containers.iter().any(|c| c.name == name));
    assert!(h.fake.names().is_empty(), "removed by its registered name");
    assert!(reaped.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_a_finished_task_whole() {
    let h = harness(Behaviour::default()).await;
    let (id, _) = dead_owners_task(&h, None).await;
    h.orch
        .ctx_for_tests()
        .store
        .call(move |r| {
            r.finish(
                &orch_registry::Attempt { id, number: 1 },
                &Finish {
                    state: State::Succeeded,
                    exit_code: Some(0),
                    reason: "done".into(),
                    at: now_ms() - 3_000_000,
                },
            )
            .map(drop)
        })
        .await
        .unwrap();
    std::fs::write(h.orch.home().log_path(&id), "output").unwrap();
    let options = CleanupOptions {
        strategy: Strategy::Completed,
        thresholds: Thresholds::all(Duration::from_secs(60)),
        ..CleanupOptions::default()
    };
    let report = h.orch.cleanup(&options).await.unwrap();
    assert_eq!(report.items.len(), 1, "{report:#?}");
    let plan = h.only_plan();
    assert_eq!(plan.record, RecordEnd::Leave);
    assert!(plan.delete_record);
    assert_eq!(plan.log.as_ref().map(|l| l.1), Some(6));
    assert!(h.orch.task(&id).await.unwrap().is_none());
    assert!(!h.orch.home().log_path(&id).exists());
    assert!(h.fake.names().is_empty());
}

/// Only a task whose container exited on its own, and whose workspace
/// goes, has its work saved while its container is being removed: a task
/// that may still run (stopped, cancelled, its owner gone) is saved only
/// once its containers are gone.
#[test]
fn work_is_saved_alongside_container_removal_only_after_a_plain_exit() {
    let facts = TaskFacts {
        attempt: 1,
        id: Uuid::now_v7(),
        project: "p".into(),
        state: Some(State::Running),
        started: true,
        image: "img".into(),
        stop_grace: Duration::from_secs(2),
        policy: WorkspacePolicy {
            keep_workspace: None,
            keep_failed_workspace: true,
        },
        workspace: None,
        workspace_settled: false,
        requeue: false,
    };
    let found = |state, repo: bool| Found {
        containers: vec![("c".into(), state)],
        workspace: Some(WorkspaceTarget {
            project: "p".into(),
            dir_name: "d".into(),
            path: "/h/workspaces/p/tasks/d".into(),
            bytes: 0,
            image: None,
            repo: repo.then(|| crate::teardown::RepoFacts {
                remote: None,
                description: None,
                taken_over: None,
                top: "/r".into(),
                git_dir: "/r/.git".into(),
                base: "0".repeat(40),
            }),
        }),
        log: None,
    };
    let exited = || Cause::Ended(Ending::Exited(0));
    let ahead = plan(&facts, exited(), found(ContainerState::Exited, true));
    assert!(ahead.saves_ahead().is_some(), "{ahead:#?}");
    // Not a repository's workspace: nothing to save.
    let plain = plan(&facts, exited(), found(ContainerState::Exited, false));
    assert!(plain.saves_ahead().is_none());
    // Kept (a failure, by the default policy): nothing to save.
    let failed = plan(
        &facts,
        Cause::Ended(Ending::Exited(1)),
        found(ContainerState::Exited, true),
    );
    assert!(failed.keeps_workspace() && failed.saves_ahead().is_none());
    let mut removing = facts.clone();
    removing.policy.keep_workspace = Some(false);
    for cause in [
        Cause::Ended(Ending::TimedOut(Duration::from_secs(1), None)),
        Cause::Ended(Ending::Cancelled("SIGINT".into())),
        Cause::Cancel("orch cancel".into()),
        Cause::OwnerGone("killed".into()),
        Cause::Retention,
        Cause::Everything,
    ] {
        let p = plan(
            &removing,
            cause.clone(),
            found(ContainerState::Running, true),
        );
        assert!(p.saves_ahead().is_none(), "{cause:?}: {p:#?}");
    }
}

/// The keep/remove choice of a task, as the one policy applies it on every
/// path.
#[test]
fn the_tasks_own_keep_or_remove_choice_holds_on_every_path() {
    let facts = |keep_workspace| TaskFacts {
        attempt: 1,
        id: Uuid::now_v7(),
        project: "p".into(),
        state: Some(State::Running),
        started: true,
        image: "img".into(),
        stop_grace: Duration::from_secs(2),
        policy: WorkspacePolicy {
            keep_workspace,
            keep_failed_workspace: true,
        },
        workspace: None,
        workspace_settled: false,
        requeue: false,
    };
    let found = || Found {
        containers: vec![("c".into(), ContainerState::Running)],
        workspace: Some(WorkspaceTarget {
            project: "p".into(),
            dir_name: "d".into(),
            path: "/h/workspaces/p/tasks/d".into(),
            bytes: 0,
            image: None,
            repo: None,
        }),
        log: None,
    };
    let causes = [
        Cause::Ended(Ending::Exited(0)),
        Cause::Ended(Ending::Exited(1)),
        Cause::Ended(Ending::TimedOut(Duration::from_secs(1), None)),
        Cause::Ended(Ending::Cancelled("SIGINT".into())),
        Cause::Cancel("orch cancel".into()),
        Cause::OwnerGone("killed".into()),
    ];
    for cause in causes {
        let keep = plan(&facts(Some(true)), cause.clone(), found());
        assert!(keep.keeps_workspace(), "--keep-workspace under {cause:?}");
        let remove = plan(&facts(Some(false)), cause.clone(), found());
        assert!(!remove.keeps_workspace(), "--rm-workspace under {cause:?}");
        assert!(remove.removed_workspace().is_some());
    }
    // The default policy: failures keep, successes and cancels do not.
    let default = |cause| plan(&facts(None), cause, found()).keeps_workspace();
    assert!(!default(Cause::Ended(Ending::Exited(0))));
    assert!(default(Cause::Ended(Ending::Exited(1))));
    assert!(default(Cause::OwnerGone("killed".into())));
    assert!(!default(Cause::Cancel("orch cancel".into())));
    // Retention and --all remove whatever the choice.
    for cause in [Cause::Retention, Cause::Everything] {
        let p = plan(&facts(Some(true)), cause, found());
        assert!(matches!(
            p.workspace,
            Some(WorkspaceStep {
                fate: Fate::Remove | Fate::Discard,
                ..
            })
        ));
        assert!(p.delete_record);
    }
    // A task that never started has its workspace unwound.
    let mut never = facts(Some(true));
    never.started = false;
    let mut nothing_ran = found();
    nothing_ran.containers = vec![("c".into(), ContainerState::Created)];
    let p = plan(&never, Cause::OwnerGone("killed".into()), nothing_ran);
    assert!(!p.workspace.as_ref().unwrap().started);
    assert!(p.removed_workspace().is_some());
    // A workspace the record names, unsettled, gone from disk (its owner
    // died between removing it and saying so): recorded removed.
    let mut unsettled = facts(None);
    unsettled.state = Some(State::Cancelled);
    unsettled.workspace = Some(crate::teardown::WorkspaceFacts {
        path: "/h/workspaces/p/tasks/d".into(),
        repo: None,
    });
    let mut gone = found();
    gone.workspace = None;
    let p = plan(&unsettled, Cause::OwnerGone("killed".into()), gone.clone());
    assert!(p.gone_workspace && p.workspace.is_none());
    unsettled.workspace_settled = true;
    assert!(!plan(&unsettled, Cause::OwnerGone("killed".into()), gone).gone_workspace);
}
