//! `orch task`: run one task in the foreground, or detached under a
//! background supervisor; and `orch __supervise`, that supervisor.

use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use orch_orchestrator::{
    Discard, GlobalConfig, Observer, Orchestrator, Overrides, Shutdown, TaskRequest, WatchdogLink,
};
use uuid::Uuid;

use crate::args::{SuperviseArgs, TaskArgs, TaskCommand};
use crate::exit;
use crate::output::Terminal;
use crate::signals::{CtrlZ, Hangup, SignalWatch};

/// How long reconciliation may run beside a new task.
const RECONCILE_LIMIT: Duration = Duration::from_secs(30);
/// How long a finished task waits for that reconciliation before exiting.
const RECONCILE_WAIT: Duration = Duration::from_secs(5);
/// How long the process waits for its spawned work to finish at exit.
const WIND_DOWN: Duration = Duration::from_secs(30);
/// How long `-d` waits for the supervisor to record the task.
const DETACH_WAIT: Duration = Duration::from_secs(30);

/// Resolves the project and settings of `args` (its environment: `env`);
/// nothing is created (but the commit `--from-worktree` starts from).
pub(crate) fn request(
    args: &TaskArgs,
    env: Vec<(String, String)>,
    task_id: Option<Uuid>,
) -> anyhow::Result<TaskRequest> {
    let config = GlobalConfig::load(GlobalConfig::default_path().as_deref())?;
    let overrides = Overrides {
        image: args.image.clone(),
        timeout: args.timeout,
        stop_grace: args.stop_grace,
        user: args.user.clone(),
        env,
        no_workspace: args.no_workspace,
        memory: args.memory.clone(),
        cpus: args.cpus,
        network: args.network.clone(),
    };
    let project = config.resolve_project(&args.project, &overrides)?;
    let git_ref = match args.from_worktree {
        true => Some(orch_orchestrator::snapshot_worktree(
            &super::open_home()?,
            &project,
            &args.desc,
        )?),
        false => args.git_ref.clone(),
    };
    Ok(TaskRequest {
        project,
        desc: args.desc.clone(),
        name: args.name.clone(),
        // A detached task has no terminal of its caller's to read.
        stdin: args.interactive && task_id.is_none(),
        tty: args.tty,
        git_ref,
        keep_workspace: match (args.keep_workspace, args.rm_workspace) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        detached: task_id.is_some(),
        task_id,
    })
}

/// Connects, handing the watchdog (if any) this session.
async fn connect(watchdog: Option<WatchdogLink>) -> anyhow::Result<Orchestrator> {
    let home = super::open_home()?;
    super::note_tightened(&home);
    let orch = Orchestrator::connect(home).await?;
    Ok(match watchdog {
        Some(link) => orch.with_watchdog(link),
        None => orch,
    })
}

pub(crate) async fn run(
    command: TaskCommand,
    verbose: bool,
    watchdog: Option<WatchdogLink>,
) -> anyhow::Result<ExitCode> {
    let args = command.task;
    if command.detach {
        anyhow::ensure!(
            !args.interactive && !args.tty,
            "-i and -t need the task in the foreground: a task run with -d has no input or terminal of yours"
        );
        return detach(args).await;
    }
    // Signals are ours from the first moment: nothing can be created before
    // a Ctrl+C would reach the cleanup path.
    let shutdown = Shutdown::new();
    crate::signals::force_on_panic(&shutdown);
    let signals = SignalWatch::start(&shutdown, CtrlZ::Freeze, Hangup::Stop)
        .context("failed to install signal handlers")?;
    let lend = args.tty && args.interactive;
    if lend && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!(
            "the input is not a terminal: -it gives the task orch's terminal (use -i alone to pipe input)"
        );
    }
    let request = request(&args, args.environment()?, None)?;
    let orch = connect(watchdog).await?;
    supervise(
        orch,
        request,
        shutdown,
        &signals,
        Box::new(Terminal::new(verbose).lending_the_terminal(lend)),
    )
    .await
}

/// `orch __supervise`: runs the task `orch task -d` announced, in its own
/// session, with output going to the task's log only.
pub(crate) async fn run_supervisor(
    args: SuperviseArgs,
    watchdog: Option<WatchdogLink>,
) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::new();
    crate::signals::force_on_panic(&shutdown);
    let signals = SignalWatch::start(&shutdown, CtrlZ::Freeze, Hangup::Stop)
        .context("failed to install signal handlers")?;
    // The environment comes on stdin, never on the command line (which
    // anyone on the machine can read).
    let env = read_env_from_stdin().context("failed to read the task's environment")?;
    let request = request(&args.task, env, Some(args.task_id))?;
    let orch = connect(watchdog).await?;
    supervise(orch, request, shutdown, &signals, Box::new(Discard)).await
}

/// Runs the task beside a bounded reconciliation, and maps its end to an
/// exit code. The run is a task of its own so that a panic inside it comes
/// back here, and this session's containers can still be swept.
async fn supervise(
    orch: Orchestrator,
    request: TaskRequest,
    shutdown: Shutdown,
    signals: &SignalWatch,
    observer: Box<dyn Observer>,
) -> anyhow::Result<ExitCode> {
    let reconcile = tokio::spawn({
        let orch = orch.clone();
        async move {
            match orch.reconcile(RECONCILE_LIMIT).await {
                Ok(report) => {
                    for item in &report.items {
                        tracing::info!(task = ?item.task_id(), reason = %item.reason, "reconciled");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
            }
        }
    });
    let run = tokio::spawn({
        let orch = orch.clone();
        async move { orch.run_task(request, shutdown, observer).await }
    });
    let result = run.await;
    // Reconciliation stops between items; whatever it is in the middle of
    // (a git call, a removal) finishes first.
    if !orch.wind_down(WIND_DOWN).await {
        tracing::warn!("background work did not finish in time");
    }
    let _ = tokio::time::timeout(RECONCILE_WAIT, reconcile).await;
    match result {
        Ok(Ok(outcome)) => {
            exit_cleanly(&orch).await;
            Ok(exit::for_outcome(&outcome, signals.first()))
        }
        Ok(Err(orch_orchestrator::Error::Interrupted { reason })) => {
            exit_cleanly(&orch).await;
            crate::output::say(&format!(
                "orch: interrupted ({reason}) before the task started; nothing was created"
            ));
            Ok(exit::for_signal(signals.first()))
        }
        Ok(Err(error)) => {
            exit_cleanly(&orch).await;
            Err(error.into())
        }
        Err(join) => {
            // No clean exit for the watchdog: the record is still live, and
            // the watchdog ends it and settles the workspace.
            tracing::error!(error = %join, "the task's run ended abnormally");
            sweep(&orch).await;
            Ok(ExitCode::from(exit::ORCH_FAILED))
        }
    }
}

/// Sweeps whatever the run could not remove (a removal that failed twice),
/// and tells the watchdog to stand down only if nothing is left for it.
async fn exit_cleanly(orch: &Orchestrator) {
    if !orch.active().is_empty() {
        sweep(orch).await;
    }
    if orch.active().is_empty() {
        orch.watchdog_clean_exit();
    }
}

/// Removes whatever this session still has in Docker, reporting each.
async fn sweep(orch: &Orchestrator) {
    match orch.sweep_session().await {
        Ok(results) => {
            for (name, result) in &results {
                match result {
                    Ok(_) => crate::output::say(&format!("orch: removed container {name}")),
                    Err(e) => crate::output::say(&format!(
                        "orch: failed to remove container {name}: {}",
                        crate::output::safe(&format!("{e:#}"))
                    )),
                }
            }
        }
        Err(e) => crate::output::say(&format!(
            "orch: failed to sweep this session's containers: {e:#}"
        )),
    }
}

/// `orch task -d`: checks the inputs here (bad input fails here, with
/// nothing created), then starts a supervisor in its own session, waits
/// until it has recorded the task, prints the id and returns.
async fn detach(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let env = args.environment()?;
    let request = request(&args, env.clone(), None)?;
    let home = super::open_home()?;
    let orch = Orchestrator::connect(home.clone()).await?;
    // The supervisor starts from the same commit (a snapshot of the
    // working tree is made once, here).
    let request_ref = request.git_ref.clone();
    let prepared = orch.prepare(request).await?;
    let task_id = prepared.task_id();

    let log_path = home.log_path(&task_id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("failed to create {}", log_path.display()))?;
    let mut supervisor = std::process::Command::new(std::env::current_exe()?);
    supervisor
        .arg("__supervise")
        .arg("--task-id")
        .arg(task_id.to_string())
        .args(task_argv(&args, request_ref))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours; it
    // takes the supervisor out of this terminal's session, so neither
    // Ctrl+C nor the terminal closing reaches it.
    unsafe {
        supervisor.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    let mut child = supervisor
        .spawn()
        .context("failed to start the supervisor")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let text = serde_json::to_vec(&env).context("failed to encode the environment")?;
        stdin
            .write_all(&text)
            .context("failed to hand the supervisor its environment")?;
    }

    let started = Instant::now();
    loop {
        if orch.task(&task_id).await?.is_some() {
            crate::outln!("{task_id}")?;
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            let said = said.lines().last().unwrap_or("no message").trim();
            // Its own one-line error (a name taken, a bad image) is the
            // answer, as `orch task` without -d would have given it.
            if let Some(error) = said.strip_prefix("orch: error: ") {
                anyhow::bail!("{error}");
            }
            anyhow::bail!("the supervisor exited ({status}) before starting the task: {said}");
        }
        if started.elapsed() > DETACH_WAIT {
            anyhow::bail!("the supervisor did not record task {task_id} within {DETACH_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `args` as command-line arguments again, without `--detach`, starting
/// from `git_ref`: what the supervisor is started with.
fn task_argv(args: &TaskArgs, git_ref: Option<String>) -> Vec<String> {
    let mut argv = Vec::new();
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            argv.push(name.to_owned());
            argv.push(value);
        }
    };
    let duration = |d: Option<Duration>| d.map(|d| format!("{}ms", d.as_millis()));
    flag("--image", args.image.clone());
    flag("--timeout", duration(args.timeout));
    flag("--stop-grace", duration(args.stop_grace));
    flag("--user", args.user.clone());
    flag("--ref", git_ref);
    flag("--name", args.name.clone());
    flag("--memory", args.memory.clone());
    flag("--cpus", args.cpus.map(|c| c.to_string()));
    flag("--network", args.network.clone());
    for (set, name) in [
        (args.no_workspace, "--no-workspace"),
        (args.keep_workspace, "--keep-workspace"),
        (args.rm_workspace, "--rm-workspace"),
    ] {
        if set {
            argv.push(name.to_owned());
        }
    }
    argv.push("--".to_owned());
    argv.push(args.project.clone());
    argv.push(args.desc.clone());
    argv
}

/// The environment `orch task -d` hands its supervisor on stdin: JSON
/// pairs, at most 16 MiB.
fn read_env_from_stdin() -> anyhow::Result<Vec<(String, String)>> {
    use std::io::Read;
    let mut text = Vec::new();
    std::io::stdin().take(16 << 20).read_to_end(&mut text)?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(&text)?)
}
