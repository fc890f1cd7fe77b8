//! Container removal: the one way orch gets rid of a container, used by every
//! exit path, by `orch cleanup`, and by the drop backstop.
//!
//! Removal is idempotent ("no such container" means done), forced (a running
//! container is killed), and bounded by a deadline of its own that no
//! cancellation can cut short.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{InspectContainerOptions, RemoveContainerOptionsBuilder};
use futures_util::StreamExt;

use crate::{Error, docker};

/// How long one container's removal may take before it is reported failed.
pub(crate) const REMOVE_DEADLINE: Duration = Duration::from_secs(30);

/// How many removals run at once in a sweep.
const PARALLEL_REMOVALS: usize = 32;

/// What a removal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// It existed and was removed now.
    Removed,
    /// It did not exist (any more).
    AlreadyGone,
}

/// Force-removes one container (and its anonymous volumes).
pub(crate) async fn remove_container(docker: &Docker, name: &str) -> Result<Gone, Error> {
    let attempt = async {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(Gone::Removed),
            Err(e) if docker::is_not_found(&e) => Ok(Gone::AlreadyGone),
            // Someone else (another orch, the watchdog) is removing it: done
            // once it is gone.
            Err(e)
                if docker::status(&e) == Some(409)
                    && docker::one_line(&e).contains("in progress") =>
            {
                wait_gone(docker, name).await.map(|()| Gone::Removed)
            }
            Err(e) => Err(Error::docker("remove container", name, e)),
        }
    };
    tokio::time::timeout(REMOVE_DEADLINE, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(Error::DockerTimeout {
                action: "remove container",
                target: name.to_owned(),
                after: REMOVE_DEADLINE,
            })
        })
}

async fn wait_gone(docker: &Docker, name: &str) -> Result<(), Error> {
    loop {
        match docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Err(e) if docker::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Error::docker("inspect container", name, e)),
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Removes many containers in parallel; returns each one's result.
pub(crate) async fn remove_containers(
    docker: &Docker,
    names: Vec<String>,
) -> Vec<(String, Result<Gone, Error>)> {
    futures_util::stream::iter(names)
        .map(|name| async move {
            let result = remove_container(docker, &name).await;
            (name, result)
        })
        .buffer_unordered(PARALLEL_REMOVALS)
        .collect()
        .await
}

/// Removes one container from a context that cannot await: a `Drop`, or a
/// thread that is unwinding. It runs on a thread of its own with its own
/// runtime and Docker connection (the caller's runtime may be the thing
/// shutting down), and waits at most the removal deadline.
pub(crate) fn remove_container_blocking(name: &str) -> Result<Gone, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = name.to_owned();
    let spawned = std::thread::Builder::new()
        .name("orch-remove".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("start a runtime to remove", &owned, e));
            let result = runtime.and_then(|rt| {
                rt.block_on(async {
                    let docker = docker::connect(REMOVE_DEADLINE).await?;
                    remove_container(&docker, &owned).await
                })
            });
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(Error::io("start a thread to remove", name, e));
    }
    rx.recv_timeout(REMOVE_DEADLINE + Duration::from_secs(15))
        .unwrap_or_else(|_| {
            Err(Error::DockerTimeout {
                action: "remove container",
                target: name.to_owned(),
                after: REMOVE_DEADLINE,
            })
        })
}
