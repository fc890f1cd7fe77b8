//! `orch submit`: queue a task with the daemon through its socket, and
//! print its id.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use orch_orchestrator::supervisor::SubmitSpec;
use orch_server::{Client, ClientError};

use crate::args::{SubmitArgs, TaskArgs};

pub(crate) async fn run(args: SubmitArgs, remote: Option<Client>) -> anyhow::Result<ExitCode> {
    let client = match remote {
        Some(client) => client,
        None => Client::new(match &args.socket {
            Some(socket) => socket.clone(),
            None => super::home_path()?.join("orch.sock"),
        }),
    };
    let spec = spec(
        &client,
        &args.task,
        args.priority,
        args.retries,
        &args.constraints,
    )?;
    let answer = client.submit(&spec).await.map_err(refused)?;
    for warning in &answer.warnings {
        crate::output::say(&crate::output::safe(warning));
    }
    crate::outln!("{}", answer.id)?;
    Ok(ExitCode::SUCCESS)
}

/// A daemon's refusal as its own one line; anything else as it is.
pub(crate) fn refused(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused { message, .. } => anyhow::anyhow!(message),
        other => anyhow::Error::new(other),
    }
}

/// The warning `orch task` gives when the project's tree holds changes
/// the task will not see, said here: the daemon is on this machine, and
/// its own notice reaches only its log. Best effort: what cannot be looked
/// at is the daemon's to refuse.
fn warn_uncommitted(task: &TaskArgs) {
    use orch_orchestrator::WorkspaceMode;
    let warning = || -> anyhow::Result<Option<String>> {
        // The project as `orch task` would settle it, its flags included.
        let project = super::task::request(task, Vec::new(), None)?.project;
        if project.remote.is_some() || project.settings.workspace == WorkspaceMode::None {
            return Ok(None);
        }
        let layout = super::open_home()?.layout();
        let repo = orch_workspace::Repo::discover(&project.path, &layout)?;
        let base = repo.resolve(&layout, "HEAD")?;
        Ok(orch_orchestrator::uncommitted_warning(
            &layout, &repo, &base,
        )?)
    };
    if let Ok(Some(line)) = warning() {
        crate::output::say(&line);
    }
}

/// What `task` asks of the daemon `client` reaches.
pub(crate) fn spec(
    client: &Client,
    task: &TaskArgs,
    priority: i64,
    retries: u32,
    constraints: &[String],
) -> anyhow::Result<SubmitSpec> {
    anyhow::ensure!(
        !task.interactive && !task.tty,
        "-i and -t need the task to run here (orch task without --host): a task the daemon runs has no input or terminal of yours"
    );
    // A path means the same to the daemon as here: made absolute.
    let project = if orch_orchestrator::is_project_path(&task.project) {
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
    if !task.from_worktree && task.git_ref.is_none() && !client.is_tcp() {
        warn_uncommitted(task);
    }
    Ok(SubmitSpec {
        project,
        desc: task.desc.clone(),
        name: task.name.clone(),
        image: task.image.clone(),
        timeout: duration(task.timeout),
        stop_grace: duration(task.stop_grace),
        env: task.environment()?.into_iter().collect(),
        git_ref: match task.from_worktree {
            true if client.is_tcp() => anyhow::bail!(
                "--from-worktree needs a daemon on this machine: one reached over the network cannot see this working tree"
            ),
            // As `orch task` makes it, here: the daemon is on this machine.
            true => super::task::request(task, Vec::new(), None)?.git_ref,
            false => task.git_ref.clone(),
        },
        keep_workspace: match (task.keep_workspace, task.rm_workspace) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        user: task.user.clone(),
        no_workspace: task.no_workspace,
        memory: task.memory.clone(),
        cpus: task.cpus,
        network: task.network.clone(),
        priority,
        retries,
        constraints: constraints.to_vec(),
    })
}
