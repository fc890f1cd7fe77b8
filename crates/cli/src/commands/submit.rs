//! `orch submit`: queue a task with the daemon through its socket, and
//! print its id.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use orch_orchestrator::supervisor::SubmitSpec;
use orch_server::{Client, ClientError};

use crate::args::SubmitArgs;

pub(crate) async fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let task = &args.task;
    let socket = match args.socket {
        Some(socket) => socket,
        None => super::home_path()?.join("orch.sock"),
    };
    // A path means the same to the daemon as here: made absolute.
    let is_path = (task.project.contains('/') || task.project == "." || task.project == "..")
        && !orch_orchestrator::is_url(&task.project);
    let project = if is_path {
        std::path::absolute(&task.project)
            .with_context(|| format!("failed to resolve {}", task.project))?
            .display()
            .to_string()
    } else {
        task.project.clone()
    };
    let duration = |d: Option<Duration>| {
        d.map(|d| orch_orchestrator::supervisor::DurationText::Text(format!("{}ms", d.as_millis())))
    };
    let spec = SubmitSpec {
        project,
        desc: task.desc.clone(),
        image: task.image.clone(),
        timeout: duration(task.timeout),
        stop_grace: duration(task.stop_grace),
        env: task.environment()?.into_iter().collect(),
        git_ref: task.git_ref.clone(),
        keep_workspace: match (task.keep_workspace, task.rm_workspace) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        user: task.user.clone(),
        no_workspace: task.no_workspace,
        priority: args.priority,
        retries: args.retries,
        constraints: args.constraints.clone(),
    };
    let answer = Client::new(&socket)
        .submit(&spec)
        .await
        .map_err(|e| match e {
            ClientError::Refused { message, .. } => anyhow::anyhow!(message),
            other => anyhow::Error::new(other),
        })?;
    crate::outln!("{}", answer.id)?;
    Ok(ExitCode::SUCCESS)
}
