//! The Docker engine behind the [`Runtime`] seam.
//!
//! Ownership travels as labels (SPEC 2) and every list filters on this
//! instance's. Each call has a deadline of its own; calls that are safe to
//! repeat are retried with backoff while the engine refuses or drops
//! connections or answers 5xx, within that deadline. Stopping is a SIGTERM,
//! a bounded wait and a SIGKILL, so no single request lasts as long as a
//! task's grace.

use std::collections::HashMap;

use super::{StdinWriter, Stopped};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, HostConfig, MountType, NetworkConnectRequest,
    NetworkCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    InspectContainerOptions, InspectNetworkOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use orch_retry::Backoff;
use tokio::time::Instant;

use crate::owner::Owner;
use crate::runtime::{
    Capabilities, ContainerSpec, ContainerState, Gone, Machine, OutputStream, OwnedContainer,
    OwnedNetwork, Ownership, Runtime, RuntimeError, Selector, display_chain,
};

/// Labels every container orch creates carries (SPEC 2).
pub(crate) mod labels {
    /// `true` on everything orch creates.
    pub(crate) const MANAGED: &str = "orch.managed";
    /// The instance (orch home) id.
    pub(crate) const INSTANCE: &str = "orch.instance";
    /// The creating session (one orch process).
    pub(crate) const SESSION: &str = "orch.session";
    /// The task id.
    pub(crate) const TASK: &str = "orch.task";
    /// The project name.
    pub(crate) const PROJECT: &str = "orch.project";
    /// Owner pid.
    pub(crate) const OWNER_PID: &str = "orch.owner.pid";
    /// Owner start time (clock ticks since boot).
    pub(crate) const OWNER_START: &str = "orch.owner.start";
    /// Owner boot id.
    pub(crate) const OWNER_BOOT: &str = "orch.owner.boot";
}

/// How long connecting and negotiating the API version may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// Short calls: create, inspect, start, kill, list, pause.
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// Removal of one container, retries included.
const REMOVE_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGKILLed container may take to be reported down.
const KILL_SETTLE: Duration = Duration::from_secs(10);
/// How long one wait request may stay open before it is re-issued.
const WAIT_REQUEST: Duration = Duration::from_secs(3600);
/// A whole image pull.
const PULL_DEADLINE: Duration = Duration::from_secs(3600);
/// Backoff between retries of a transient failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A Docker engine (`DOCKER_HOST`, or the local socket), API version
/// negotiated so an older engine (API 1.41 and up) is spoken to in its own.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    machine: std::sync::Arc<tokio::sync::OnceCell<Machine>>,
}

impl DockerRuntime {
    /// Connects to the engine named by `DOCKER_HOST`.
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let unreachable = |reason: String| RuntimeError::Unreachable {
            engine: format!("Docker engine at {host}"),
            reason,
        };
        let docker = Docker::connect_with_defaults()
            .map_err(|e| unreachable(one_line(&e)))?
            .with_timeout(CONNECT_DEADLINE);
        let docker = tokio::time::timeout(CONNECT_DEADLINE, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_DEADLINE:?}")))?
            .map_err(|e| match e {
                DockerError::RequestTimeoutError => {
                    unreachable(format!("no answer within {CONNECT_DEADLINE:?}"))
                }
                other => unreachable(one_line(&other)),
            })?;
        // A backstop only: every call below carries its own deadline.
        let docker = docker.with_timeout(CALL_DEADLINE * 2);
        Ok(DockerRuntime {
            docker,
            host,
            machine: std::sync::Arc::default(),
        })
    }

    /// Runs `call` until it succeeds, fails for good, or `deadline` passes;
    /// transient failures are retried with backoff. Only for calls that are
    /// safe to repeat.
    async fn retrying<T, F, Fut>(
        &self,
        action: &'static str,
        target: &str,
        deadline: Duration,
        mut call: F,
    ) -> Result<T, RuntimeError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, DockerError>> + Send,
        T: Send,
    {
        let end = Instant::now() + deadline;
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX).within(deadline);
        loop {
            let attempt = tokio::time::timeout_at(end, call()).await;
            let error = match attempt {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => classify(action, target, e),
                Err(_) => {
                    return Err(RuntimeError::Timeout {
                        action,
                        target: target.to_owned(),
                        after: deadline,
                    });
                }
            };
            if !error.is_transient() {
                return Err(error);
            }
            tracing::debug!(action, target, error = %display_chain(&error), "engine call failed; retrying");
            if !backoff.wait().await {
                return Err(error);
            }
        }
    }

    /// For calls that must not be repeated blindly (create, start): one
    /// `attempt` at a time within `deadline`; after a transient failure,
    /// `landed` says whether the call took effect anyway (its answer lost
    /// on the way back) before it is tried again.
    async fn until_landed<T, A, AF, L, LF>(
        &self,
        deadline: Duration,
        mut attempt: A,
        mut landed: L,
    ) -> Result<T, RuntimeError>
    where
        A: FnMut(Duration) -> AF + Send,
        AF: Future<Output = Result<T, RuntimeError>> + Send,
        L: FnMut() -> LF + Send,
        LF: Future<Output = Result<Option<T>, RuntimeError>> + Send,
        T: Send,
    {
        let end = Instant::now() + deadline;
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX).within(deadline);
        loop {
            let error = match attempt(end.saturating_duration_since(Instant::now())).await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if !error.is_transient() {
                return Err(error);
            }
            if let Some(value) = landed().await? {
                return Ok(value);
            }
            tracing::debug!(error = %display_chain(&error), "engine call failed; retrying");
            if !backoff.wait().await {
                return Err(error);
            }
        }
    }

    /// One attempt within a deadline, for calls that must not be repeated
    /// blindly.
    async fn once<T>(
        action: &'static str,
        target: &str,
        deadline: Duration,
        call: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result.map_err(|e| classify(action, target, e)),
            Err(_) => Err(RuntimeError::Timeout {
                action,
                target: target.to_owned(),
                after: deadline,
            }),
        }
    }

    /// The container's state, `None` if it does not exist.
    async fn state_of(
        &self,
        name: &str,
    ) -> Result<Option<(ContainerState, Option<i64>)>, RuntimeError> {
        let inspected = self
            .retrying("inspect container", name, CALL_DEADLINE, || {
                self.docker
                    .inspect_container(name, None::<InspectContainerOptions>)
            })
            .await;
        match inspected {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                let status = state.status.map(|s| s.to_string()).unwrap_or_default();
                Ok(Some((container_state(&status), state.exit_code)))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until the container is not running, at most `limit`; true if
    /// it is down (or gone).
    async fn down_within(&self, name: &str, limit: Duration) -> Result<bool, RuntimeError> {
        let end = Instant::now() + limit;
        loop {
            match self.state_of(name).await? {
                None => return Ok(true),
                Some((state, _)) if state != ContainerState::Running => return Ok(true),
                Some(_) => {}
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            let options = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut wait = self.docker.wait_container(name, Some(options));
            // Any answer (an exit, an error, a dropped connection) sends us
            // back to look at the state again.
            let _ = tokio::time::timeout_at(end, wait.next()).await;
        }
    }

    /// Connects a created container to its extra networks.
    async fn join_networks(&self, name: &str, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        for network in &spec.extra_networks {
            let request = NetworkConnectRequest {
                container: name.to_owned(),
                ..NetworkConnectRequest::default()
            };
            let joined = self
                .retrying("connect to network", network, CALL_DEADLINE, || {
                    self.docker.connect_network(network, request.clone())
                })
                .await;
            match joined {
                Ok(()) => {}
                // Joined already (a retried call that had landed).
                Err(RuntimeError::Refused {
                    status: Some(403 | 409),
                    ref message,
                    ..
                }) if message.contains("already") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn kill(&self, name: &str, signal: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        let killed = self
            .retrying("signal container", name, CALL_DEADLINE, || {
                self.docker.kill_container(name, Some(options.clone()))
            })
            .await;
        match killed {
            Ok(()) => Ok(()),
            // Not running, or gone: nothing to signal.
            Err(RuntimeError::Refused {
                status: Some(404 | 409),
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            host_mounts: true,
            owner_identity: true,
        }
    }

    async fn ensure_image(
        &self,
        image: &str,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), RuntimeError> {
        let inspected = self
            .retrying("inspect image", image, CALL_DEADLINE, || {
                self.docker.inspect_image(image)
            })
            .await;
        match inspected {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let reference = with_default_tag(image);
        progress(format!("pulling image {reference}"));
        let options = CreateImageOptionsBuilder::default()
            .from_image(&reference)
            .build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        let mut last_status = String::new();
        let end = Instant::now() + PULL_DEADLINE;
        loop {
            let Ok(next) = tokio::time::timeout_at(end, pull.next()).await else {
                return Err(RuntimeError::Timeout {
                    action: "pull image",
                    target: reference,
                    after: PULL_DEADLINE,
                });
            };
            let Some(item) = next else { break };
            match item {
                Ok(info) => {
                    let status = info.status.unwrap_or_default();
                    let noisy =
                        status.starts_with("Downloading") || status.starts_with("Extracting");
                    if !noisy && !status.is_empty() && status != last_status {
                        progress(format!("pull {reference}: {status}"));
                        last_status = status;
                    }
                }
                Err(e) => {
                    return Err(RuntimeError::ImageMissing {
                        image: image.to_owned(),
                        reason: one_line(&e),
                        hint: offline_hint(image),
                    });
                }
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.retrying("reach", "the Docker engine", Duration::from_secs(5), || {
            self.docker.ping()
        })
        .await
        .map(drop)
        .map_err(|e| RuntimeError::Unreachable {
            engine: format!("Docker engine at {}", self.host),
            reason: display_chain(&e),
        })
    }

    async fn machine(&self) -> Result<Machine, RuntimeError> {
        self.machine
            .get_or_try_init(|| async {
                let info = self
                    .retrying("ask about", "the Docker engine", CALL_DEADLINE, || {
                        self.docker.info()
                    })
                    .await?;
                let mut runtimes: Vec<String> = info
                    .runtimes
                    .map(|r| r.into_keys().collect())
                    .unwrap_or_default();
                runtimes.sort();
                Ok(Machine {
                    memory: info.mem_total.unwrap_or(0),
                    cpus: info.ncpu.unwrap_or(1) as f64,
                    runtimes,
                })
            })
            .await
            .cloned()
    }

    async fn preflight(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        if let Some(runtime) = &spec.runtime {
            let machine = self.machine().await?;
            if !machine.runtimes.contains(runtime) {
                return Err(RuntimeError::Refused {
                    action: "use runtime",
                    target: runtime.clone(),
                    status: None,
                    message: format!(
                        "the engine has no OCI runtime {runtime:?} (it has {}); install and register it with the engine, or remove runtime from the project's settings",
                        machine.runtimes.join(", ")
                    ),
                });
            }
        }
        let network = spec.network.as_str();
        let builtin = matches!(network, "bridge" | "none" | "host" | "default")
            || network.starts_with("container:");
        if builtin {
            return Ok(());
        }
        let found = self
            .retrying("inspect network", network, CALL_DEADLINE, || {
                self.docker
                    .inspect_network(network, None::<InspectNetworkOptions>)
            })
            .await;
        match found {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Err(RuntimeError::Refused {
                action: "use network",
                target: network.to_owned(),
                status: Some(404),
                message: format!(
                    "no network {network:?} on this engine (create it with `docker network create {network}`, or set network = \"bridge\")"
                ),
            }),
            Err(e) => Err(e),
        }
    }

    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let body = create_body(spec);
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let attempt = |left: Duration| {
            let call = self
                .docker
                .create_container(Some(options.clone()), body.clone());
            async move {
                match Self::once("create container", name, left, call).await {
                    Ok(_) => self.join_networks(name, spec).await,
                    Err(e) if e.is_not_found() => Err(RuntimeError::ImageMissing {
                        image: spec.image.clone(),
                        reason: display_chain(&e),
                        hint: offline_hint(&spec.image),
                    }),
                    Err(e) => Err(e),
                }
            }
        };
        // The request may have reached the engine before the connection
        // dropped: if the container exists and is ours, it was created.
        let landed = || async {
            if let Ok(Some(_)) = self.state_of(name).await {
                let ours = self
                    .list(&Selector {
                        instance: spec.ownership.instance.clone(),
                        session: Some(spec.ownership.session),
                        task: Some(spec.ownership.task),
                    })
                    .await?
                    .iter()
                    .any(|c| c.name == name);
                if ours {
                    return self.join_networks(name, spec).await.map(Some);
                }
            }
            Ok(None)
        };
        self.until_landed(CALL_DEADLINE, attempt, landed).await
    }

    async fn attach(&self, name: &str) -> Result<OutputStream, RuntimeError> {
        let options = AttachContainerOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = Self::once(
            "attach to container",
            name,
            CALL_DEADLINE,
            self.docker.attach_container(name, Some(options)),
        )
        .await?;
        Ok(output_stream(attached.output, name))
    }

    async fn attach_stdin(&self, name: &str) -> Result<StdinWriter, RuntimeError> {
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stream(true)
            .build();
        let attached = Self::once(
            "attach to the input of container",
            name,
            CALL_DEADLINE,
            self.docker.attach_container(name, Some(options)),
        )
        .await?;
        Ok(attached.input)
    }

    async fn resize_tty(&self, name: &str, rows: u16, columns: u16) -> Result<(), RuntimeError> {
        let options = bollard::query_parameters::ResizeContainerTTYOptionsBuilder::new()
            .h(i32::from(rows))
            .w(i32::from(columns))
            .build();
        Self::once(
            "resize the terminal of container",
            name,
            CALL_DEADLINE,
            self.docker.resize_container_tty(name, options),
        )
        .await
    }

    async fn logs(&self, name: &str) -> Result<OutputStream, RuntimeError> {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs = self.docker.logs(name, Some(options)).peekable();
        // The first item (or the end) says whether the engine can read its
        // log of the container at all.
        let first = tokio::time::timeout(CALL_DEADLINE, std::pin::Pin::new(&mut logs).peek()).await;
        match first {
            Err(_) => Err(RuntimeError::Timeout {
                action: "read the output of",
                target: name.to_owned(),
                after: CALL_DEADLINE,
            }),
            Ok(Some(Err(_))) => match logs.next().await {
                Some(Err(e)) => Err(classify("read the output of", name, e)),
                _ => Ok(output_stream(logs, name)),
            },
            Ok(_) => Ok(output_stream(logs, name)),
        }
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let attempt = |left: Duration| async move {
            match Self::once(
                "start container",
                name,
                left,
                self.docker.start_container(name, None),
            )
            .await
            {
                Err(RuntimeError::Refused { message, .. })
                    if not_invoked_code(&message).is_some() =>
                {
                    Err(RuntimeError::NotInvoked {
                        code: not_invoked_code(&message).unwrap_or(127),
                        message,
                    })
                }
                // Already started.
                Err(RuntimeError::Refused {
                    status: Some(304), ..
                }) => Ok(()),
                other => other,
            }
        };
        // It may have started before the answer was lost.
        let landed = || async {
            Ok(match self.state_of(name).await {
                Ok(Some((state, _))) if state != ContainerState::Created => Some(()),
                _ => None,
            })
        };
        self.until_landed(CALL_DEADLINE, attempt, landed).await
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<Stopped, RuntimeError> {
        self.kill(name, "SIGTERM").await?;
        if self.down_within(name, grace).await? {
            return Ok(Stopped::OnTerm);
        }
        self.kill(name, "SIGKILL").await?;
        if self.down_within(name, KILL_SETTLE).await? {
            Ok(Stopped::Killed)
        } else {
            Err(RuntimeError::Timeout {
                action: "stop container",
                target: name.to_owned(),
                after: grace + KILL_SETTLE,
            })
        }
    }

    async fn pause(&self, name: &str) -> Result<(), RuntimeError> {
        self.retrying("pause container", name, CALL_DEADLINE, || {
            self.docker.pause_container(name)
        })
        .await
    }

    async fn unpause(&self, name: &str) -> Result<(), RuntimeError> {
        self.retrying("unpause container", name, CALL_DEADLINE, || {
            self.docker.unpause_container(name)
        })
        .await
    }

    async fn wait(&self, name: &str) -> Result<i64, RuntimeError> {
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        loop {
            let options = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut wait = self.docker.wait_container(name, Some(options));
            let answer = tokio::time::timeout(WAIT_REQUEST, wait.next()).await;
            let error = match answer {
                Ok(Some(Ok(response))) => return Ok(response.status_code),
                Ok(Some(Err(DockerError::DockerContainerWaitError { code, .. }))) => {
                    return Ok(code);
                }
                Ok(Some(Err(e))) => classify("wait for container", name, e),
                Ok(None) | Err(_) => RuntimeError::Engine {
                    action: "wait for container",
                    target: name.to_owned(),
                    source: "the engine closed the wait without an exit code".into(),
                },
            };
            if !error.is_transient() {
                return Err(error);
            }
            // A dropped connection is not the task's end: look again. A
            // container that exited meanwhile answers at once.
            tracing::debug!(container = name, error = %display_chain(&error), "wait interrupted; waiting again");
            match self.state_of(name).await {
                Ok(None) => {
                    return Err(RuntimeError::Refused {
                        action: "wait for container",
                        target: name.to_owned(),
                        status: Some(404),
                        message: "the container is gone".into(),
                    });
                }
                Ok(Some((ContainerState::Exited, Some(code)))) => return Ok(code),
                _ => {}
            }
            backoff.wait().await;
        }
    }

    async fn exit_code(&self, name: &str) -> Result<Option<i64>, RuntimeError> {
        Ok(match self.state_of(name).await? {
            Some((ContainerState::Exited, code)) => code,
            _ => None,
        })
    }

    async fn remove(&self, name: &str) -> Result<Gone, RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        // A request that failed on its way back may have removed the
        // container already: then the retry's "no such container" is ours.
        let interrupted = std::sync::atomic::AtomicBool::new(false);
        let removed = self
            .retrying("remove container", name, REMOVE_DEADLINE, || {
                let attempt = self.docker.remove_container(name, Some(options.clone()));
                let interrupted = &interrupted;
                async move {
                    let result = attempt.await;
                    if result.as_ref().is_err_and(transient) {
                        interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    result
                }
            })
            .await;
        let removed = match removed {
            Ok(()) => Ok(Gone::Removed),
            Err(e) if e.is_not_found() => {
                if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(Gone::Removed)
                } else {
                    Ok(Gone::AlreadyGone)
                }
            }
            other => other.map(|()| Gone::Removed),
        };
        // A task's egress forwarder owns the network of its name: it goes
        // with the forwarder, whoever removes that (the task's container,
        // removed first, has left it).
        if removed.is_ok() && crate::runtime::is_egress(name) {
            self.remove_network(name).await?;
        }
        match removed {
            Ok(gone) => Ok(gone),
            // Someone else (another orch, the watchdog) is removing it: done
            // once it is gone.
            Err(RuntimeError::Refused {
                status: Some(409),
                ref message,
                ..
            }) if message.contains("in progress") => {
                let end = Instant::now() + REMOVE_DEADLINE;
                while Instant::now() < end {
                    if self.state_of(name).await?.is_none() {
                        return Ok(Gone::Removed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(RuntimeError::Timeout {
                    action: "see removed",
                    target: name.to_owned(),
                    after: REMOVE_DEADLINE,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn create_isolated_network(
        &self,
        name: &str,
        ownership: &Ownership,
    ) -> Result<(), RuntimeError> {
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            internal: Some(true),
            // No address of the host on the bridge: a container on it
            // reaches the other containers on it and nothing else.
            options: Some(HashMap::from([(
                "com.docker.network.bridge.inhibit_ipv4".to_owned(),
                "true".to_owned(),
            )])),
            labels: Some(ownership_labels(ownership)),
            ..NetworkCreateRequest::default()
        };
        let created = Self::once(
            "create network",
            name,
            CALL_DEADLINE,
            self.docker.create_network(request),
        )
        .await;
        match created {
            Ok(_) => Ok(()),
            Err(RuntimeError::Refused {
                status: Some(409), ..
            }) => {
                // There already: ours only if it carries our task's labels.
                let ours = self
                    .list_networks(&Selector {
                        instance: ownership.instance.clone(),
                        session: None,
                        task: Some(ownership.task),
                    })
                    .await?
                    .iter()
                    .any(|n| n.name == name);
                if ours {
                    Ok(())
                } else {
                    Err(RuntimeError::Refused {
                        action: "create network",
                        target: name.to_owned(),
                        status: Some(409),
                        message: "a network of that name exists and is not this task's".into(),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<Gone, RuntimeError> {
        let end = Instant::now() + REMOVE_DEADLINE;
        loop {
            let removed = self
                .retrying("remove network", name, REMOVE_DEADLINE, || {
                    self.docker.remove_network(name)
                })
                .await;
            match removed {
                Ok(()) => return Ok(Gone::Removed),
                Err(e) if e.is_not_found() => return Ok(Gone::AlreadyGone),
                // A container being removed still holds an endpoint.
                Err(RuntimeError::Refused {
                    status: Some(403 | 409),
                    ..
                }) if Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn list_networks(&self, selector: &Selector) -> Result<Vec<OwnedNetwork>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), wanted_labels(selector))]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let networks = self
            .retrying(
                "list networks of instance",
                &selector.instance,
                CALL_DEADLINE,
                || self.docker.list_networks(Some(options.clone())),
            )
            .await?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                let labels = n.labels.unwrap_or_default();
                Some(OwnedNetwork {
                    name: n.name?,
                    task_id: labels.get(labels::TASK).and_then(|t| t.parse().ok()),
                    session: labels.get(labels::SESSION).and_then(|s| s.parse().ok()),
                })
            })
            .collect())
    }

    async fn address(&self, name: &str, network: &str) -> Result<Option<String>, RuntimeError> {
        let info = self
            .retrying("inspect container", name, CALL_DEADLINE, || {
                self.docker
                    .inspect_container(name, None::<InspectContainerOptions>)
            })
            .await?;
        Ok(info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty()))
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<OwnedContainer>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), wanted_labels(selector))]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .retrying(
                "list containers of instance",
                &selector.instance,
                CALL_DEADLINE,
                || self.docker.list_containers(Some(options.clone())),
            )
            .await?;
        Ok(summaries.iter().filter_map(owned_container).collect())
    }
}

impl std::fmt::Display for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Docker engine at {}", self.host)
    }
}

/// Ownership as labels (SPEC 2).
fn ownership_labels(o: &Ownership) -> HashMap<String, String> {
    [
        (labels::MANAGED, "true".to_owned()),
        (labels::INSTANCE, o.instance.clone()),
        (labels::SESSION, o.session.to_string()),
        (labels::TASK, o.task.to_string()),
        (labels::PROJECT, o.project.clone()),
        (labels::OWNER_PID, o.owner.pid.to_string()),
        (labels::OWNER_START, o.owner.start.to_string()),
        (labels::OWNER_BOOT, o.owner.boot.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The label filters of a selector: this instance's, narrowed.
fn wanted_labels(selector: &Selector) -> Vec<String> {
    let mut wanted = vec![
        format!("{}=true", labels::MANAGED),
        format!("{}={}", labels::INSTANCE, selector.instance),
    ];
    if let Some(session) = selector.session {
        wanted.push(format!("{}={session}", labels::SESSION));
    }
    if let Some(task) = selector.task {
        wanted.push(format!("{}={task}", labels::TASK));
    }
    wanted
}

/// The create call's body: everything of the spec, ownership as labels.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let labels = ownership_labels(&spec.ownership);
    let mounts = spec
        .mounts
        .iter()
        .map(|m| bollard::models::Mount {
            target: Some(m.target.display().to_string()),
            source: Some(m.source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..bollard::models::Mount::default()
        })
        .collect::<Vec<_>>();
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.command.clone()),
        entrypoint: spec.entrypoint.clone(),
        user: Some(spec.user.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        attach_stdin: Some(spec.stdin),
        open_stdin: Some(spec.stdin),
        tty: Some(spec.tty),
        stdin_once: Some(spec.stdin),
        stop_timeout: Some(grace_secs(spec.stop_grace)),
        working_dir: spec.workdir.as_ref().map(|w| w.display().to_string()),
        host_config: Some(HostConfig {
            init: Some(true),
            console_size: spec
                .console
                .map(|(rows, columns)| vec![usize::from(rows), usize::from(columns)]),
            mounts: (!mounts.is_empty()).then_some(mounts),
            network_mode: Some(spec.network.clone()),
            memory: spec.memory,
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: (!spec.capabilities.is_empty()).then(|| spec.capabilities.clone()),
            security_opt: spec
                .no_new_privileges
                .then(|| vec!["no-new-privileges".to_owned()]),
            pids_limit: spec.pids_limit,
            runtime: spec.runtime.clone(),
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
            tmpfs: (!spec.tmpfs.is_empty()).then(|| {
                spec.tmpfs
                    .iter()
                    .map(|(target, options)| (target.display().to_string(), options.clone()))
                    .collect()
            }),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

fn container_state(status: &str) -> ContainerState {
    match status {
        "created" => ContainerState::Created,
        "running" | "paused" => ContainerState::Running,
        "exited" => ContainerState::Exited,
        _ => ContainerState::Other,
    }
}

/// A listed container of this instance, its ownership read back from the
/// labels. Missing or malformed owner labels: owned by nobody alive.
fn owned_container(summary: &ContainerSummary) -> Option<OwnedContainer> {
    let labels = summary.labels.as_ref()?;
    let name = summary
        .names
        .as_ref()
        .and_then(|names| names.first())
        .map(|n| n.trim_start_matches('/').to_owned())
        .or_else(|| summary.id.clone())?;
    let label = |key: &str| labels.get(key).map(String::as_str);
    let owner = match (label(labels::OWNER_PID), label(labels::OWNER_START)) {
        (Some(pid), Some(start)) => match (pid.parse(), start.parse()) {
            (Ok(pid), Ok(start)) => Some(Owner {
                pid,
                start,
                boot: label(labels::OWNER_BOOT).unwrap_or_default().to_owned(),
            }),
            _ => None,
        },
        _ => None,
    };
    let status = summary
        .state
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    Some(OwnedContainer {
        name,
        task_id: label(labels::TASK).and_then(|t| t.parse().ok()),
        session: label(labels::SESSION).and_then(|s| s.parse().ok()),
        owner,
        state: container_state(&status),
    })
}

/// A container's output as the engine sends it, stdin echoes left out.
fn output_stream(
    output: impl futures_util::Stream<Item = Result<LogOutput, DockerError>> + Send + 'static,
    name: &str,
) -> OutputStream {
    let target = name.to_owned();
    let output = output
        .try_filter_map(|item| async move {
            Ok(match item {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    Some((crate::runtime::Stream::Stdout, message))
                }
                LogOutput::StdErr { message } => Some((crate::runtime::Stream::Stderr, message)),
                LogOutput::StdIn { .. } => None,
            })
        })
        .map_err(move |e| classify("read the output of", &target, e));
    Box::pin(output)
}

/// A bollard error as a runtime error: the engine's refusals keep their
/// status and full message; everything else keeps its cause chain.
fn classify(action: &'static str, target: &str, error: DockerError) -> RuntimeError {
    match error {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Refused {
            action,
            target: target.to_owned(),
            status: Some(status_code),
            message: if message.trim().is_empty() {
                format!("the engine answered HTTP {status_code} with no message")
            } else {
                message.replace(['\n', '\r'], " ")
            },
        },
        other => RuntimeError::Engine {
            action,
            target: target.to_owned(),
            source: Box::new(other),
        },
    }
}

/// The engine's or the connection's failure, not the request's: what
/// [`RuntimeError::is_transient`] says of its [`classify`]d form.
fn transient(error: &DockerError) -> bool {
    match error {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => classify(
            "",
            "",
            DockerError::DockerResponseServerError {
                status_code: *status_code,
                message: message.clone(),
            },
        )
        .is_transient(),
        _ => true,
    }
}

/// `docker run`'s codes for a command that could not be invoked: 127 not
/// found, 126 not executable.
fn not_invoked_code(message: &str) -> Option<i64> {
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

/// For the images orch builds itself, where to get them offline.
fn offline_hint(image: &str) -> String {
    let name = image.split(':').next().unwrap_or(image);
    if name == "orch-agent" || name == "orch-agent-git" {
        "; for the offline image orch-agent:dev run `just image` (scripts/build-image)".to_owned()
    } else {
        String::new()
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

/// Whole seconds, rounded up, as Docker's stop timeout wants them.
fn grace_secs(grace: Duration) -> i64 {
    i64::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i64::MAX)
}

/// A bollard error on one line.
fn one_line(error: &DockerError) -> String {
    let mut text = match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => display_chain(other),
    };
    text.retain(|c| c != '\n' && c != '\r');
    text
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
        assert_eq!(
            not_invoked_code("exec: \"nope\": executable file not found in $PATH"),
            Some(127)
        );
        assert_eq!(not_invoked_code("exec: permission denied"), Some(126));
        assert_eq!(not_invoked_code("port is already allocated"), None);
    }

    #[test]
    fn the_offline_hint_is_only_for_orchs_own_images() {
        assert!(offline_hint("orch-agent:dev").contains("just image"));
        assert!(offline_hint("orch-agent-git:dev").contains("just image"));
        assert_eq!(offline_hint("alpine:3"), "");
        assert_eq!(offline_hint("my-orch-agent:dev"), "");
    }

    #[test]
    fn refusals_keep_their_status_and_say_something() {
        let e = classify(
            "inspect image",
            "x",
            DockerError::DockerResponseServerError {
                status_code: 301,
                message: String::new(),
            },
        );
        assert!(e.to_string().contains("HTTP 301"), "{e}");
        assert!(!e.is_transient());
        let e = classify(
            "list",
            "x",
            DockerError::DockerResponseServerError {
                status_code: 503,
                message: "busy".into(),
            },
        );
        assert!(e.is_transient());
        let e = classify(
            "start container",
            "x",
            DockerError::DockerResponseServerError {
                status_code: 500,
                message: "OCI runtime create failed: bad mount".into(),
            },
        );
        assert!(!e.is_transient(), "the same answer next time");
    }

    #[test]
    fn labels_carry_ownership_and_read_back() {
        let task = uuid::Uuid::now_v7();
        let session = uuid::Uuid::new_v4();
        let spec = ContainerSpec {
            image: "i".into(),
            command: vec![],
            entrypoint: None,
            user: "1:1".into(),
            env: vec![],
            workdir: None,
            mounts: vec![],
            network: "none".into(),
            memory: None,
            cpus: None,
            stop_grace: Duration::from_secs(1),
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
            ownership: crate::runtime::Ownership {
                instance: "abc".into(),
                session,
                task,
                project: "demo".into(),
                owner: Owner::current(),
            },
        };
        let body = create_body(&spec);
        let summary = ContainerSummary {
            names: Some(vec!["/orch-x".into()]),
            labels: body.labels.clone(),
            state: None,
            ..Default::default()
        };
        let owned = owned_container(&summary).unwrap();
        assert_eq!(owned.task_id, Some(task));
        assert_eq!(owned.session, Some(session));
        assert!(owned.owner_alive());
        let mut broken = summary.clone();
        if let Some(labels) = broken.labels.as_mut() {
            labels.insert(labels::OWNER_PID.into(), "not-a-pid".into());
        }
        assert!(!owned_container(&broken).unwrap().owner_alive());
    }
}
