//! Before anything exists: everything about a request that can be checked
//! is checked, and the container's spec is made from its settings.

use orch_workspace::Repo;
use uuid::Uuid;

use crate::ConfigError;
use crate::Error;
use crate::config::WorkspaceMode;
use crate::context::Ctx;
use crate::events::{Event, EventSink};
use crate::run::{PreparedTask, TaskRequest};
use crate::runtime::{ContainerSpec, Machine, Mount, Ownership};
use crate::{session, workspace};

/// Checks everything a run needs before anything is created: the image
/// (its reference, then present or pulled), the network, the repository
/// and ref of a workspace. Bad input fails here, leaving no trace.
pub(crate) async fn prepare(
    ctx: &Ctx,
    mut request: TaskRequest,
    sink: &EventSink,
) -> Result<PreparedTask, Error> {
    workspace::fetch_remote(ctx, &mut request).await?;
    let settings = &request.project.settings;
    // A malformed reference fails before any pull.
    crate::runtime::validate_reference(&settings.image).map_err(|message| ConfigError::Flag {
        flag: "image".into(),
        message,
    })?;
    let task_id = request.task_id.unwrap_or_else(session::new_task_id);
    let progress = {
        let sink = sink.clone();
        move |line: String| sink.send(Event::Notice(line))
    };
    ctx.runtime.ensure_image(&settings.image, &progress).await?;
    let repo = check(ctx, &request, task_id, true).await?;
    if let (Some((repo, base)), None, None) = (&repo, &request.git_ref, &request.project.remote) {
        warn_uncommitted(ctx, repo, base, sink).await;
    }
    Ok(PreparedTask {
        request,
        task_id,
        repo,
        claimed: false,
        attempt: 1,
    })
}

/// Says so when the user's working tree holds changes a task starting
/// from HEAD will not see (a task never sees them: it gets a checkout).
async fn warn_uncommitted(ctx: &Ctx, repo: &Repo, base: &str, sink: &EventSink) {
    let layout = ctx.home.layout();
    let (repo, base) = (repo.clone(), base.to_owned());
    let warning =
        workspace::blocking(move || workspace::uncommitted_warning(&layout, &repo, &base)).await;
    match warning {
        Ok(None) => {}
        Ok(Some(line)) => sink.send(Event::Notice(line)),
        Err(e) => tracing::debug!(error = %e, "cannot look for uncommitted changes"),
    }
}

/// Everything about a request that can be checked without pulling an
/// image: the image reference, what the runtime can do, the network, the
/// repository and ref of a workspace (and the commit its branch starts
/// from). What a daemon checks before queueing a task. The repository is
/// left out when `repo` is false (a caller that has just checked it).
pub(crate) async fn check(
    ctx: &Ctx,
    request: &TaskRequest,
    task_id: Uuid,
    repo: bool,
) -> Result<Option<(Repo, String)>, Error> {
    let settings = &request.project.settings;
    if let Some(name) = &request.name {
        orch_registry::check_name(name).map_err(|message| ConfigError::Flag {
            flag: "name".into(),
            message,
        })?;
    }
    crate::runtime::validate_reference(&settings.image).map_err(|message| ConfigError::Flag {
        flag: "image".into(),
        message,
    })?;
    let wants_workspace = settings.workspace == WorkspaceMode::Worktree;
    if wants_workspace && !ctx.runtime.capabilities().host_mounts {
        return Err(ConfigError::Flag {
            flag: "workspace".into(),
            message: "this runtime cannot mount host directories: set workspace = \"none\"".into(),
        }
        .into());
    }
    let network = settings.network.as_str();
    if settings
        .sandbox
        .egress
        .as_ref()
        .is_some_and(|e| !e.is_empty())
        && (matches!(network, "none" | "host") || network.starts_with("container:"))
    {
        return Err(ConfigError::Flag {
            flag: "egress".into(),
            message: format!(
                "needs a network to go out through, and network = {network:?}; use a bridge or a network name"
            ),
        }
        .into());
    }
    let machine = ctx.runtime.machine().await?;
    ctx.runtime
        .preflight(&spec(ctx, request, task_id, None, &machine))
        .await?;
    if !wants_workspace || !repo {
        return Ok(None);
    }
    workspace::find_repo(
        ctx.home.layout(),
        request.project.path.clone(),
        request.git_ref.clone(),
        request.project.remote.is_some(),
    )
    .await
    .map(Some)
}

/// The container's spec: image, command, user, limits (the machine's
/// defaults where the settings give none), confinement, mounts, ownership.
pub(super) fn spec(
    ctx: &Ctx,
    request: &TaskRequest,
    task_id: Uuid,
    workspace: Option<&orch_workspace::Workspace>,
    machine: &Machine,
) -> ContainerSpec {
    let settings = &request.project.settings;
    let reserved = ["ORCH_TASK_ID", "ORCH_TASK_DESC", "ORCH_WORKSPACE"];
    let mut env: Vec<(String, String)> = settings
        .env
        .iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("ORCH_TASK_ID".into(), task_id.to_string()));
    env.push(("ORCH_TASK_DESC".into(), request.desc.clone()));
    env.push((
        "ORCH_WORKSPACE".into(),
        workspace
            .map(|w| w.path.display().to_string())
            .unwrap_or_default(),
    ));
    let user = settings.user.docker_user();
    // A workspace opened to another uid is owned by orch's: git inside
    // would refuse it as of dubious ownership. Trusted for that task only.
    if settings.user.is_other()
        && workspace.is_some()
        && !settings.env.contains_key("GIT_CONFIG_COUNT")
    {
        env.extend([
            ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
            ("GIT_CONFIG_KEY_0".to_owned(), "safe.directory".to_owned()),
            ("GIT_CONFIG_VALUE_0".to_owned(), "*".to_owned()),
        ]);
    }
    // A private home the task's user owns, unless the project keeps the
    // image's (or sets HOME itself).
    let home = (settings.home == crate::config::HomeMode::Tmpfs
        && !settings.env.contains_key("HOME"))
    .then(|| {
        env.push(("HOME".into(), crate::config::TASK_HOME.into()));
        (crate::config::TASK_HOME.into(), home_options(&user))
    });
    let mounts = workspace.map_or_else(Vec::new, |w| {
        w.mounts()
            .into_iter()
            .map(|m| Mount {
                source: m.source,
                target: m.target,
                read_only: m.read_only,
            })
            .collect()
    });
    ContainerSpec {
        image: settings.image.clone(),
        command: settings
            .command
            .iter()
            .map(|arg| arg.replace("{desc}", &request.desc))
            .collect(),
        entrypoint: settings.entrypoint.clone(),
        user,
        env,
        workdir: workspace.map(|w| w.workdir.clone()),
        mounts,
        network: settings.network.clone(),
        memory: Some(settings.memory.unwrap_or_else(|| machine.default_memory())),
        cpus: Some(settings.cpus.unwrap_or_else(|| machine.default_cpus())),
        stop_grace: settings.stop_grace,
        capabilities: capabilities(settings),
        no_new_privileges: settings.sandbox.no_new_privileges,
        pids_limit: settings.sandbox.pids_limit,
        runtime: settings.sandbox.runtime.clone(),
        extra_hosts: Vec::new(),
        extra_networks: Vec::new(),
        tmpfs: home.into_iter().collect(),
        stdin: request.stdin,
        tty: request.tty,
        console: request
            .tty
            .then(|| rustix::termios::tcgetwinsize(std::io::stdout()).ok())
            .flatten()
            .map(|size| (size.ws_row, size.ws_col)),
        ownership: Ownership {
            instance: ctx.home.instance_id().to_owned(),
            session: ctx.session.id,
            task: task_id,
            project: request.project.name.clone(),
            owner: ctx.session.owner.clone(),
        },
    }
}

/// The mount options of the task's home: private to its user (its numeric
/// uid and gid, where the user is given as numbers), no devices or setuid
/// programs, 256 MiB at most (counted against the task's memory).
fn home_options(user: &str) -> String {
    let mut options = "rw,nosuid,nodev,size=256m".to_owned();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match user.split_once(':').unwrap_or((user, "")) {
        (uid, gid) if numeric(uid) => {
            options.push_str(&format!(",mode=0700,uid={uid}"));
            if numeric(gid) {
                options.push_str(&format!(",gid={gid}"));
            }
        }
        _ => options.push_str(",mode=1777"),
    }
    options
}

/// The capabilities a task keeps: its user's defaults, plus `cap_add`,
/// minus `cap_drop`.
fn capabilities(settings: &crate::config::Settings) -> Vec<String> {
    let mut caps: Vec<String> = crate::config::default_capabilities(&settings.user)
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    for cap in &settings.sandbox.cap_add {
        if !caps.contains(cap) {
            caps.push(cap.clone());
        }
    }
    caps.retain(|c| !settings.sandbox.cap_drop.contains(c));
    caps
}
