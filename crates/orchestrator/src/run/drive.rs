//! The one task runner: `orch task` (a request) and the daemon (a record
//! it claimed from its queue) both drive every task through [`drive`].

use orch_registry::{Finish, State, TaskRecord, now_ms};

use crate::config::GlobalConfig;
use crate::context::Ctx;
use crate::events::EventSink;
use crate::run::task::TaskRun;
use crate::run::{Outcome, TaskRequest, interrupted, prepare};
use crate::supervisor::SubmitSpec;
use crate::{ConfigError, Error, Shutdown};

/// Where a run starts.
#[derive(Debug)]
pub(crate) enum Start {
    /// A request made here (`orch task`): nothing is recorded yet.
    Request(Box<TaskRequest>),
    /// A record a daemon claimed from its queue (`creating`, owned by the
    /// daemon's session), and the global config its submission is
    /// resolved against now.
    Claimed {
        /// The claimed record.
        record: Box<TaskRecord>,
        /// The global config, as read now (or why not).
        config: Box<Result<GlobalConfig, ConfigError>>,
    },
}

/// Runs a task from `start` to its end, every way it can end, and tears it
/// down: prepares it (while watching `shutdown`: a pull can take long),
/// runs it (`sink` hears everything as it happens), and ends its record
/// whatever happens. A claimed record that cannot be prepared ends
/// `failed` (or `cancelled`, if shutdown came first) with the reason.
pub(crate) async fn drive(
    ctx: &Ctx,
    start: Start,
    shutdown: Shutdown,
    sink: EventSink,
) -> Result<Outcome, Error> {
    let (request, claimed) = match start {
        Start::Request(request) => (Ok(*request), None),
        Start::Claimed { record, config } => {
            (submitted(ctx, &record, *config), Some(record.attempt()))
        }
    };
    let prepared = match request {
        Ok(request) => tokio::select! {
            prepared = prepare(ctx, request, &sink) => prepared,
            () = shutdown.stopping() => Err(interrupted(&shutdown)),
        },
        Err(e) => Err(e),
    };
    let mut prepared = match (prepared, claimed) {
        (Ok(prepared), _) => prepared,
        (Err(e), None) => return Err(e),
        (Err(e), Some(task)) => {
            // Nothing was made: the record alone ends.
            let finish = Finish {
                state: if matches!(e, Error::Interrupted { .. }) {
                    State::Cancelled
                } else {
                    State::Failed
                },
                exit_code: None,
                reason: format!("not started: {}", crate::runtime::display_chain(&e)),
                at: now_ms(),
            };
            ctx.store.call(move |r| r.finish(&task, &finish)).await?;
            return Err(e);
        }
    };
    if let Some(task) = claimed {
        prepared.claimed = true;
        prepared.attempt = task.number;
    }
    sink.send(crate::events::Event::Prepared {
        stuck_after: prepared.request.project.settings.stuck_after,
    });
    TaskRun::start(ctx, prepared, shutdown, sink).await
}

/// The request a claimed record's submission makes, resolved against
/// `config` as `orch task` would now.
fn submitted(
    ctx: &Ctx,
    record: &TaskRecord,
    config: Result<GlobalConfig, ConfigError>,
) -> Result<TaskRequest, Error> {
    let spec: SubmitSpec = record
        .queue
        .spec
        .as_deref()
        .ok_or_else(|| "it holds no submitted task".to_owned())
        .and_then(|s| serde_json::from_str(s).map_err(|e| e.to_string()))
        .map_err(|why| Error::Io {
            action: "read the queued task",
            path: ctx.home.registry_path(),
            source: std::io::Error::other(why),
        })?;
    Ok(crate::supervisor::request_of(
        &spec,
        &config?,
        Some(record.id),
    )?)
}
