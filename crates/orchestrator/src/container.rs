//! The Docker side of one run: the image, the create body, start, stop and
//! wait. Every call is bounded; none of them removes anything (that is
//! `remove`'s job alone).

use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use orch_workspace::Workspace;
use uuid::Uuid;

use crate::events::{Event, EventSink, StopReason};
use crate::run::TaskRequest;
use crate::{Error, Orchestrator, Shutdown, docker, labels};

/// How long create, attach and start may take.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// Bounds a Docker call by [`CALL_DEADLINE`].
pub(crate) async fn deadline<T>(
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

/// Whole seconds, rounded up, as Docker's stop timeout wants them.
pub(crate) fn grace_secs(grace: Duration) -> i64 {
    i64::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i64::MAX)
}

impl Orchestrator {
    /// Makes sure the image is present, pulling it if not.
    pub(crate) async fn ensure_image(&self, image: &str, sink: &EventSink) -> Result<(), Error> {
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

    /// Creates the container under `name`.
    pub(crate) async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<(), Error> {
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
    pub(crate) async fn stop_container(
        &self,
        name: &str,
        grace: Duration,
        reason: StopReason,
        shutdown: &Shutdown,
        sink: &EventSink,
    ) {
        sink.send(Event::Stopping { reason, grace });
        let secs = i32::try_from(grace_secs(grace)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        let stop = tokio::time::timeout(
            grace + CALL_DEADLINE,
            self.docker.stop_container(name, Some(options)),
        );
        tokio::select! {
            result = stop => match result {
                Ok(Err(e)) if docker::is_not_found(&e) || docker::status(&e) == Some(304) => {}
                Ok(Err(e)) => tracing::warn!(container = name, error = %e, "graceful stop failed"),
                Err(_) => tracing::warn!(container = name, "graceful stop did not finish in time"),
                Ok(Ok(())) => {}
            },
            () = shutdown.forced() => sink.send(Event::Forcing),
        }
    }

    /// The create call's body: image, command, user, limits, labels, mounts.
    pub(crate) fn container_body(
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
            stop_timeout: Some(grace_secs(settings.stop_grace)),
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

/// Waits until the container is not running and returns its exit code.
pub(crate) async fn wait_exit(docker: &Docker, name: &str) -> Result<i64, Error> {
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

/// `docker run`'s codes for a command that could not be invoked: 127 not
/// found, 126 not executable.
pub(crate) fn not_invoked_code(error: &DockerError) -> Option<i64> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn grace_rounds_up() {
        assert_eq!(grace_secs(Duration::from_secs(10)), 10);
        assert_eq!(grace_secs(Duration::from_millis(1500)), 2);
        assert_eq!(grace_secs(Duration::ZERO), 0);
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
