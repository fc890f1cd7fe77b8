//! An in-memory runtime for unit tests: containers that exit when told,
//! trap SIGTERM when told, and calls that fail when told, with every call
//! recorded. It lets each exit path be fed its events without an engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::events::Stream as OutStream;
use crate::runtime::{
    Capabilities, ContainerSpec, ContainerState, Gone, OutputStream, OwnedContainer, Runtime,
    RuntimeError, Selector, StdinWriter, Stopped,
};

/// How the fake's containers behave.
#[derive(Debug, Clone, Default)]
pub(crate) struct Behaviour {
    /// The task exits by itself after this long, with this code; `None`
    /// runs until stopped.
    pub(crate) exits: Option<(Duration, i64)>,
    /// SIGTERM is ignored: a stop waits out the grace, then kills (137).
    pub(crate) traps_term: bool,
    /// What the task writes on stdout.
    pub(crate) output: Vec<&'static str>,
    /// Calls that fail with an engine error, by operation name ("create",
    /// "start", "remove", "list", "wait"), and how many times.
    pub(crate) failures: HashMap<&'static str, usize>,
    /// `wait` panics: a bug in orch while the task runs.
    pub(crate) panics_on_wait: bool,
    /// The attached stream breaks (an engine connection dropped) after
    /// this many chunks; the engine's log still has them all.
    pub(crate) attach_breaks_after: Option<usize>,
}

#[derive(Debug)]
struct Container {
    spec: ContainerSpec,
    state: ContainerState,
    exit: watch::Sender<Option<i64>>,
}

#[derive(Debug, Default)]
struct Inner {
    containers: BTreeMap<String, Container>,
    calls: Vec<String>,
    behaviour: Behaviour,
}

/// The fake engine.
#[derive(Debug, Default)]
pub(crate) struct FakeRuntime {
    inner: Mutex<Inner>,
}

impl FakeRuntime {
    pub(crate) fn new(behaviour: Behaviour) -> FakeRuntime {
        FakeRuntime {
            inner: Mutex::new(Inner {
                behaviour,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, as "op name".
    pub(crate) fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Names of the containers that exist.
    pub(crate) fn names(&self) -> Vec<String> {
        self.lock().containers.keys().cloned().collect()
    }

    /// Adds a container as another process would have left it.
    pub(crate) fn insert(
        &self,
        name: &str,
        spec: ContainerSpec,
        state: ContainerState,
        code: Option<i64>,
    ) {
        let (exit, _) = watch::channel(code);
        self.lock()
            .containers
            .insert(name.to_owned(), Container { spec, state, exit });
    }

    /// Records the call; fails it if the behaviour says so.
    fn call(&self, op: &'static str, name: &str) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(format!("{op} {name}"));
        if let Some(left) = inner.behaviour.failures.get_mut(op) {
            if *left > 0 {
                *left -= 1;
                return Err(RuntimeError::Engine {
                    action: "talk to the fake engine",
                    target: name.to_owned(),
                    source: format!("injected failure of {op}").into(),
                });
            }
        }
        Ok(())
    }

    /// The scripted output and the exit of container `name`.
    fn output_of(
        &self,
        action: &'static str,
        name: &str,
    ) -> Result<(Vec<&'static str>, watch::Receiver<Option<i64>>), RuntimeError> {
        let inner = self.lock();
        let container = inner
            .containers
            .get(name)
            .ok_or_else(|| Self::missing(action, name))?;
        Ok((inner.behaviour.output.clone(), container.exit.subscribe()))
    }

    fn missing(action: &'static str, name: &str) -> RuntimeError {
        RuntimeError::Refused {
            action,
            target: name.to_owned(),
            status: Some(404),
            message: format!("No such container: {name}"),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            host_mounts: true,
            owner_identity: true,
        }
    }

    async fn ensure_image(
        &self,
        image: &str,
        _progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), RuntimeError> {
        self.call("image", image)
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.call("ping", "engine")
    }

    async fn machine(&self) -> Result<crate::runtime::Machine, RuntimeError> {
        Ok(crate::runtime::Machine {
            memory: 8 << 30,
            cpus: 4.0,
            runtimes: vec!["runc".into()],
        })
    }

    async fn preflight(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.call("preflight", &spec.image)
    }

    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.call("create", name)?;
        let mut inner = self.lock();
        if inner.containers.contains_key(name) {
            return Err(RuntimeError::Refused {
                action: "create container",
                target: name.to_owned(),
                status: Some(409),
                message: "name in use".into(),
            });
        }
        let (exit, _) = watch::channel(None);
        inner.containers.insert(
            name.to_owned(),
            Container {
                spec: spec.clone(),
                state: ContainerState::Created,
                exit,
            },
        );
        Ok(())
    }

    async fn attach_stdin(&self, name: &str) -> Result<StdinWriter, RuntimeError> {
        self.call("attach_stdin", name)?;
        Ok(Box::pin(tokio::io::sink()))
    }

    async fn resize_tty(&self, name: &str, _rows: u16, _columns: u16) -> Result<(), RuntimeError> {
        self.call("resize_tty", name)
    }

    async fn attach(&self, name: &str) -> Result<OutputStream, RuntimeError> {
        self.call("attach", name)?;
        let (output, exit) = self.output_of("attach to container", name)?;
        if let Some(after) = self.lock().behaviour.attach_breaks_after {
            let delivered = futures_util::stream::iter(
                output
                    .into_iter()
                    .take(after)
                    .map(|text| Ok((OutStream::Stdout, Bytes::from(text)))),
            );
            let broken = futures_util::stream::once(async {
                Err(RuntimeError::Engine {
                    action: "read the output of",
                    target: "the container".into(),
                    source: "connection reset by peer".into(),
                })
            });
            return Ok(Box::pin(delivered.chain(broken)));
        }
        Ok(until_exit(output, exit))
    }

    async fn logs(&self, name: &str) -> Result<OutputStream, RuntimeError> {
        self.call("logs", name)?;
        let (output, exit) = self.output_of("read the output of", name)?;
        Ok(until_exit(output, exit))
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.call("start", name)?;
        let (exits, sender) = {
            let mut inner = self.lock();
            let exits = inner.behaviour.exits;
            let container = inner
                .containers
                .get_mut(name)
                .ok_or_else(|| Self::missing("start container", name))?;
            container.state = ContainerState::Running;
            (exits, container.exit.clone())
        };
        if let Some((after, code)) = exits {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                sender.send_if_modified(|exit| {
                    let first = exit.is_none();
                    if first {
                        *exit = Some(code);
                    }
                    first
                });
            });
        }
        Ok(())
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<Stopped, RuntimeError> {
        self.call("stop", name)?;
        let traps = self.lock().behaviour.traps_term;
        if traps {
            tokio::time::sleep(grace).await;
        }
        let mut inner = self.lock();
        if let Some(c) = inner.containers.get_mut(name) {
            if c.state == ContainerState::Running {
                c.state = ContainerState::Exited;
                c.exit.send_replace(Some(if traps { 137 } else { 143 }));
            }
        }
        Ok(if traps {
            Stopped::Killed
        } else {
            Stopped::OnTerm
        })
    }

    async fn pause(&self, name: &str) -> Result<(), RuntimeError> {
        self.call("pause", name)
    }

    async fn unpause(&self, name: &str) -> Result<(), RuntimeError> {
        self.call("unpause", name)
    }

    async fn wait(&self, name: &str) -> Result<i64, RuntimeError> {
        self.call("wait", name)?;
        if self.lock().behaviour.panics_on_wait {
            panic!("injected panic while waiting for {name}");
        }
        let mut exit = {
            let inner = self.lock();
            inner
                .containers
                .get(name)
                .ok_or_else(|| Self::missing("wait for container", name))?
                .exit
                .subscribe()
        };
        let code = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Self::missing("wait for container", name))?;
        Ok(code.unwrap_or(-1))
    }

    async fn exit_code(&self, name: &str) -> Result<Option<i64>, RuntimeError> {
        self.call("inspect", name)?;
        let inner = self.lock();
        Ok(inner.containers.get(name).and_then(|c| *c.exit.borrow()))
    }

    async fn remove(&self, name: &str) -> Result<Gone, RuntimeError> {
        self.call("remove", name)?;
        let mut inner = self.lock();
        Ok(match inner.containers.remove(name) {
            Some(c) => {
                c.exit.send_if_modified(|exit| {
                    let first = exit.is_none();
                    if first {
                        *exit = Some(137);
                    }
                    first
                });
                Gone::Removed
            }
            None => Gone::AlreadyGone,
        })
    }

    async fn create_isolated_network(
        &self,
        name: &str,
        _ownership: &crate::runtime::Ownership,
    ) -> Result<(), RuntimeError> {
        self.call("network", name)
    }

    async fn remove_network(&self, name: &str) -> Result<Gone, RuntimeError> {
        self.call("network", name)?;
        Ok(Gone::AlreadyGone)
    }

    async fn list_networks(
        &self,
        selector: &Selector,
    ) -> Result<Vec<crate::runtime::OwnedNetwork>, RuntimeError> {
        self.call("list", &selector.instance)?;
        Ok(Vec::new())
    }

    async fn address(&self, name: &str, _network: &str) -> Result<Option<String>, RuntimeError> {
        self.call("inspect", name)?;
        Ok(Some("10.0.0.2".into()))
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<OwnedContainer>, RuntimeError> {
        self.call("list", &selector.instance)?;
        let inner = self.lock();
        Ok(inner
            .containers
            .iter()
            .filter(|(_, c)| {
                let o = &c.spec.ownership;
                o.instance == selector.instance
                    && selector.session.is_none_or(|s| s == o.session)
                    && selector.task.is_none_or(|t| t == o.task)
            })
            .map(|(name, c)| OwnedContainer {
                name: name.clone(),
                task_id: Some(c.spec.ownership.task),
                session: Some(c.spec.ownership.session),
                owner: Some(c.spec.ownership.owner.clone()),
                state: c.state,
            })
            .collect())
    }
}

/// The scripted output, then the end of the stream once the container
/// has exited.
fn until_exit(output: Vec<&'static str>, mut exit: watch::Receiver<Option<i64>>) -> OutputStream {
    let ended = async move {
        let _ = exit.wait_for(Option::is_some).await;
    };
    let chunks = futures_util::stream::iter(
        output
            .into_iter()
            .map(|text| Ok((OutStream::Stdout, Bytes::from(text)))),
    );
    let end = futures_util::stream::once(ended).filter_map(|()| async { None });
    Box::pin(futures_util::StreamExt::chain(chunks, end))
}

use futures_util::StreamExt as _;
