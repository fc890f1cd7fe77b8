//! Running one task in a throwaway container, from its id to its removal.
//!
//! The shape of a run: check the image, arm the guard, create, attach, start,
//! then wait for whichever comes first of the container's exit, the task's
//! deadline and the shutdown trigger. Whatever happened, the run ends in the
//! same place: output drained, then the container removed on a deadline of
//! its own. Only if that place is never reached (the future was dropped, or a
//! panic unwound through it) does the guard act instead.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use tokio::task::JoinHandle;
use uuid::Uuid;

use orch_workspace::Workspace;

use crate::config::{Project, WorkspaceMode};
use crate::events::{Event, EventSink, Observer, ProgressParser, StopReason, Stream as OutStream};
use crate::guard::ContainerGuard;
use crate::remove::{Gone, remove_container};
use crate::workspace::{WorkspaceFate, keeps_workspace};
use crate::{Error, Orchestrator, Shutdown, docker, failpoint, labels};

/// How long create, attach and start may take.
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// How long output may keep arriving after the container ended.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the observer may take to show what is queued at the end.
const OBSERVER_DEADLINE: Duration = Duration::from_secs(10);

/// A task to run: a project and a description.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// The project, with its resolved settings.
    pub project: Project,
    /// The task description; replaces `{desc}` in the command.
    pub desc: String,
    /// Where the workspace branch starts (default: the project's HEAD).
    pub git_ref: Option<String>,
    /// Keep (`Some(true)`) or remove (`Some(false)`) the workspace whatever
    /// the outcome; `None` applies the policy.
    pub keep_workspace: Option<bool>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit code, or the command could not be invoked.
    Failed,
    /// Its timeout passed and it was stopped.
    TimedOut,
    /// Shutdown was requested and it was stopped.
    Cancelled,
}

/// The result of a run, once its container is gone.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The task id.
    pub task_id: Uuid,
    /// The container's name.
    pub container: String,
    /// How it ended.
    pub status: Status,
    /// The task's exit code, when it ended by itself (126/127 when the command
    /// could not be invoked).
    pub exit_code: Option<i64>,
    /// What became of its workspace, if it had one.
    pub workspace: Option<WorkspaceFate>,
}

/// How supervision ended, before cleanup.
enum Ending {
    Exited(i64),
    TimedOut,
    Cancelled,
}

impl Orchestrator {
    /// Runs one task to its end and removes its container, whichever way it
    /// ends. `shutdown` stops it from outside; `observer` is shown its id,
    /// output, progress and cleanup as they happen.
    pub async fn run_task(
        &self,
        request: TaskRequest,
        shutdown: Shutdown,
        observer: Box<dyn Observer>,
    ) -> Result<Outcome, Error> {
        let task_id = new_task_id();
        let (sink, observer_thread) = EventSink::spawn(observer);
        let result = self.run_observed(&request, task_id, &shutdown, &sink).await;
        drop(sink);
        if !observer_thread.join(OBSERVER_DEADLINE).await {
            tracing::warn!("the observer did not finish showing the task's output in time");
        }
        result
    }

    async fn run_observed(
        &self,
        request: &TaskRequest,
        task_id: Uuid,
        shutdown: &Shutdown,
        sink: &EventSink,
    ) -> Result<Outcome, Error> {
        let settings = &request.project.settings;
        // Bad input is found out before the task exists: a missing image, a
        // project that cannot have a worktree, a ref that names no commit.
        self.ensure_image(&settings.image, sink).await?;
        let repo = match settings.workspace {
            WorkspaceMode::Worktree => Some(
                self.find_repo(&request.project.path, request.git_ref.as_deref())
                    .await?,
            ),
            WorkspaceMode::None => None,
        };
        let mut name = labels::container_name(&task_id);
        sink.send(Event::Planned {
            task_id,
            container: name.clone(),
        });
        let mut outcome = Outcome {
            task_id,
            container: name.clone(),
            status: Status::Cancelled,
            exit_code: None,
            workspace: None,
        };
        if shutdown.is_stopping() {
            return Ok(outcome);
        }
        let held = match &repo {
            Some(repo) => Some(
                self.create_workspace(
                    repo,
                    &request.project.name,
                    &task_id,
                    request.git_ref.as_deref(),
                )
                .await?,
            ),
            None => None,
        };

        // From here on a container may exist: every path below ends in the
        // removal after `supervise`, and the guard covers the rest.
        let mut guard = ContainerGuard::arm(&self.active, &name, task_id);
        let mut pump = None;
        let workspace = held.as_ref().map(|h| &h.workspace);
        let ending = self
            .supervise(
                request, task_id, workspace, &mut name, &mut guard, &mut pump, shutdown, sink,
            )
            .await;

        // Output first (unless forced), then the container.
        let ended = Instant::now();
        if let Some(running) = &mut pump {
            if !shutdown.is_forced() {
                tokio::select! {
                    drained = tokio::time::timeout(DRAIN_DEADLINE, running) => {
                        if drained.is_ok() {
                            pump = None;
                        }
                    }
                    () = shutdown.forced() => sink.send(Event::Forcing),
                }
            }
        }
        let removal = remove_container(&self.docker, &name).await;
        if let Some(pump) = pump {
            finish_pump(pump).await;
        }
        match removal {
            Ok(gone) => {
                guard.disarm();
                sink.send(Event::Cleaned {
                    container: (gone == Gone::Removed).then(|| name.clone()),
                    elapsed: ended.elapsed(),
                });
            }
            // The guard tries once more as it drops, with a fresh connection.
            Err(e) => sink.send(Event::Notice(format!("{e:#}"))),
        }

        let ended = ending.map(|ending| match ending {
            Ending::Exited(0) => (Status::Succeeded, Some(0)),
            Ending::Exited(code) => (Status::Failed, Some(code)),
            Ending::TimedOut => (Status::TimedOut, None),
            Ending::Cancelled => (Status::Cancelled, None),
        });
        if let Some(held) = held {
            let status = ended.as_ref().ok().map(|(status, _)| *status);
            let keep = keeps_workspace(
                status,
                settings.keep_failed_workspace,
                request.keep_workspace,
            );
            match self.settle_workspace(held, keep, &settings.image).await {
                Ok(fate) => {
                    sink.send(Event::Workspace(fate.clone()));
                    outcome.workspace = Some(fate);
                }
                Err(e) => sink.send(Event::Notice(format!("workspace kept: {e:#}"))),
            }
        }
        let (status, exit_code) = ended?;
        outcome.status = status;
        outcome.exit_code = exit_code;
        outcome.container = name;
        Ok(outcome)
    }

    /// Creates, attaches and starts the container, then waits for its end.
    #[expect(clippy::too_many_arguments)]
    async fn supervise(
        &self,
        request: &TaskRequest,
        task_id: Uuid,
        workspace: Option<&Workspace>,
        name: &mut String,
        guard: &mut ContainerGuard,
        pump: &mut Option<JoinHandle<()>>,
        shutdown: &Shutdown,
        sink: &EventSink,
    ) -> Result<Ending, Error> {
        let settings = &request.project.settings;
        let body = self.container_body(request, task_id, workspace);
        match self.create(name, body.clone()).await {
            Err(Error::Docker { source, .. }) if docker::status(&source) == Some(409) => {
                // Another task started in the same millisecond (on this engine,
                // maybe in another instance) took the short name.
                *name = format!("orch-{}", task_id.simple());
                guard.rename(name);
                self.create(name, body).await?;
            }
            other => other?,
        }
        failpoint::hit("after-create");

        let attach = AttachContainerOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = deadline(
            "attach to container",
            name,
            self.docker.attach_container(name, Some(attach)),
        )
        .await?;
        *pump = Some(tokio::spawn(pump_output(attached.output, sink.clone())));

        if shutdown.is_stopping() {
            return Ok(Ending::Cancelled);
        }
        if let Err(e) = deadline(
            "start container",
            name,
            self.docker.start_container(name, None),
        )
        .await
        {
            if let Error::Docker { source, .. } = &e {
                if let Some(code) = not_invoked_code(source) {
                    sink.send(Event::Notice(docker::one_line(source)));
                    return Ok(Ending::Exited(code));
                }
            }
            return Err(e);
        }
        failpoint::hit("after-start");
        sink.send(Event::Started);

        let timeout = async {
            match settings.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shutdown.forced() => {
                sink.send(Event::Forcing);
                Ok(Ending::Cancelled)
            }
            () = shutdown.stopping() => {
                self.stop(name, settings.stop_grace, StopReason::Shutdown, shutdown, sink).await;
                Ok(Ending::Cancelled)
            }
            () = timeout => {
                self.stop(name, settings.stop_grace, StopReason::Timeout, shutdown, sink).await;
                Ok(Ending::TimedOut)
            }
            code = wait_exit(&self.docker, name) => code.map(Ending::Exited),
        }
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<(), Error> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let image = body.image.clone().unwrap_or_default();
        let created = deadline(
            "create container",
            name,
            self.docker.create_container(Some(options), body),
        )
        .await;
        match created {
            Err(Error::Docker { source, .. }) if docker::is_not_found(&source) => {
                Err(Error::ImageMissing {
                    image,
                    reason: docker::one_line(&source),
                })
            }
            other => other.map(drop),
        }
    }

    /// SIGTERM now, SIGKILL after the grace, unless forced sooner.
    async fn stop(
        &self,
        name: &str,
        grace: Duration,
        reason: StopReason,
        shutdown: &Shutdown,
        sink: &EventSink,
    ) {
        sink.send(Event::Stopping { reason, grace });
        let secs = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
            .unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        let stop = deadline(
            "stop container",
            name,
            self.docker.stop_container(name, Some(options)),
        );
        tokio::select! {
            result = stop => match result {
                Err(Error::Docker { source, .. })
                    if docker::is_not_found(&source) || docker::status(&source) == Some(304) => {}
                Err(e) => tracing::warn!(container = name, error = %e, "graceful stop failed"),
                Ok(()) => {}
            },
            () = shutdown.forced() => sink.send(Event::Forcing),
        }
    }

    /// Makes sure the image is present, pulling it if not.
    async fn ensure_image(&self, image: &str, sink: &EventSink) -> Result<(), Error> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if docker::is_not_found(&e) => {}
            Err(e) => return Err(Error::docker("inspect image", image, e)),
        }
        let reference = with_default_tag(image);
        sink.send(Event::Pulling {
            image: reference.clone(),
        });
        let options = CreateImageOptionsBuilder::default()
            .from_image(&reference)
            .build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        let mut last_status = String::new();
        while let Some(item) = pull.next().await {
            match item {
                Ok(info) => {
                    let status = info.status.unwrap_or_default();
                    let noisy =
                        status.starts_with("Downloading") || status.starts_with("Extracting");
                    if !noisy && !status.is_empty() && status != last_status {
                        sink.send(Event::Notice(format!("pull {reference}: {status}")));
                        last_status = status;
                    }
                }
                Err(e) => {
                    return Err(Error::ImageMissing {
                        image: image.to_owned(),
                        reason: docker::one_line(&e),
                    });
                }
            }
        }
        Ok(())
    }

    fn container_body(
        &self,
        request: &TaskRequest,
        task_id: Uuid,
        workspace: Option<&Workspace>,
    ) -> ContainerCreateBody {
        let settings = &request.project.settings;
        let command = settings
            .command
            .iter()
            .map(|arg| arg.replace("{desc}", &request.desc))
            .collect();
        let reserved = ["ORCH_TASK_ID", "ORCH_TASK_DESC", "ORCH_WORKSPACE"];
        let mut env: Vec<String> = settings
            .env
            .iter()
            .filter(|(k, _)| !reserved.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("ORCH_TASK_ID={task_id}"));
        env.push(format!("ORCH_TASK_DESC={}", request.desc));
        env.push(format!(
            "ORCH_WORKSPACE={}",
            workspace
                .map(|w| w.path.display().to_string())
                .unwrap_or_default()
        ));
        // The worktree and the repository's git directory at the same
        // absolute paths, so git inside the task works on the real branch.
        let mounts = workspace.map(|w| {
            [&w.path, &w.repo.common_dir]
                .into_iter()
                .map(|path| Mount {
                    target: Some(path.display().to_string()),
                    source: Some(path.display().to_string()),
                    typ: Some(MountType::BIND),
                    ..Mount::default()
                })
                .collect()
        });
        let grace_secs =
            settings.stop_grace.as_secs() + u64::from(settings.stop_grace.subsec_nanos() > 0);
        ContainerCreateBody {
            image: Some(settings.image.clone()),
            cmd: Some(command),
            entrypoint: settings.entrypoint.clone(),
            user: Some(settings.user.docker_user()),
            env: Some(env),
            labels: Some(labels::for_task(
                self.home.instance_id(),
                &self.session,
                &task_id,
                &request.project.name,
            )),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            stop_timeout: Some(i64::try_from(grace_secs).unwrap_or(i64::MAX)),
            working_dir: workspace.map(|w| w.workdir.display().to_string()),
            host_config: Some(HostConfig {
                init: Some(true),
                mounts,
                network_mode: Some(settings.network.clone()),
                memory: settings.memory,
                nano_cpus: settings.cpus.map(|c| (c * 1e9) as i64),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }
}

/// Bounds a Docker call by [`CALL_DEADLINE`].
async fn deadline<T>(
    action: &'static str,
    target: &str,
    call: impl Future<Output = Result<T, DockerError>>,
) -> Result<T, Error> {
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Ok(result) => result.map_err(|e| Error::docker(action, target, e)),
        Err(_) => Err(Error::DockerTimeout {
            action,
            target: target.to_owned(),
            after: CALL_DEADLINE,
        }),
    }
}

/// Waits until the container is not running and returns its exit code.
async fn wait_exit(docker: &Docker, name: &str) -> Result<i64, Error> {
    let options = WaitContainerOptionsBuilder::default()
        .condition("not-running")
        .build();
    let mut wait = docker.wait_container(name, Some(options));
    match wait.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(Error::docker("wait for container", name, e)),
        None => Err(Error::docker(
            "wait for container",
            name,
            DockerError::DockerStreamError {
                error: "the engine closed the wait without an exit code".into(),
            },
        )),
    }
}

/// Copies the container's output to the observer until the container's
/// streams close, picking out progress lines on the way.
async fn pump_output(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>,
    sink: EventSink,
) {
    let mut progress = ProgressParser::default();
    while let Some(item) = output.next().await {
        let (stream, data) = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                (OutStream::Stdout, message)
            }
            Ok(LogOutput::StdErr { message }) => (OutStream::Stderr, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "output stream ended with an error");
                break;
            }
        };
        let found = if stream == OutStream::Stdout {
            progress.feed(&data)
        } else {
            Vec::new()
        };
        sink.output(stream, data).await;
        for (percent, message) in found {
            sink.send(Event::Progress { percent, message });
        }
    }
}

/// Lets the output pump finish what the removed container's stream still
/// holds, then stops it.
async fn finish_pump(mut pump: JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(2), &mut pump)
        .await
        .is_err()
    {
        pump.abort();
    }
}

/// `docker run`'s codes for a command that could not be invoked: 127 not
/// found, 126 not executable.
fn not_invoked_code(error: &DockerError) -> Option<i64> {
    let message = docker::one_line(error);
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
    {
        Some(127)
    } else if message.contains("permission denied") {
        Some(126)
    } else {
        None
    }
}

/// `image` with `:latest` if it names no tag or digest, as `docker pull`
/// does (the API would otherwise pull every tag).
fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// A fresh UUID v7. Ids made by one process never share a millisecond, so
/// their container names (the first 12 hex digits, the timestamp) differ.
pub(crate) fn new_task_id() -> Uuid {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut last = LAST_MS.load(Ordering::Relaxed);
    let ms = loop {
        let next = now_ms.max(last + 1);
        match LAST_MS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    let ts = uuid::Timestamp::from_unix_time(ms / 1000, ((ms % 1000) * 1_000_000) as u32, 0, 0);
    Uuid::new_v7(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_of_one_process_have_distinct_names() {
        let names: std::collections::HashSet<String> = (0..1000)
            .map(|_| labels::container_name(&new_task_id()))
            .collect();
        assert_eq!(names.len(), 1000);
        let id = new_task_id();
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn default_tags() {
        assert_eq!(with_default_tag("alpine"), "alpine:latest");
        assert_eq!(with_default_tag("orch-agent:dev"), "orch-agent:dev");
        assert_eq!(
            with_default_tag("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(with_default_tag("x@sha256:ab"), "x@sha256:ab");
    }

    #[test]
    fn not_invoked_codes() {
        let err = |message: &str| DockerError::DockerResponseServerError {
            status_code: 400,
            message: message.into(),
        };
        assert_eq!(
            not_invoked_code(&err("exec: \"nope\": executable file not found in $PATH")),
            Some(127)
        );
        assert_eq!(not_invoked_code(&err("exec: permission denied")), Some(126));
        assert_eq!(not_invoked_code(&err("port is already allocated")), None);
    }
}
