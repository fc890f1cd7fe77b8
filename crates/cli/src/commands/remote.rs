//! The CLI against a remote daemon (`--host`, `ORCH_HOST`): `ps`, `show`,
//! `logs`, `cancel`, `submit`, `cleanup`, `du` and `task` go through the
//! daemon's API, with the same output, `--json` and exit codes as on the
//! daemon's own host. The token comes from `ORCH_TOKEN` or the file
//! `ORCH_TOKEN_FILE` names (never from the command line, which every user
//! of the machine can read); `https://` is verified against the system's
//! roots, or `ORCH_TLS_CA`, with a client certificate if
//! `ORCH_TLS_CERT`/`ORCH_TLS_KEY` are set.

use std::io::Write;
use std::process::ExitCode;

use http_body_util::BodyExt;
use orch_protocol::CleanupRequest;
use orch_server::{Client, ClientTls};

use crate::args::Command;
use crate::exit;

/// The client of the daemon at `host`.
pub(crate) fn client(host: &str) -> anyhow::Result<Client> {
    Ok(Client::remote(host, token()?, &ClientTls::from_env())?)
}

/// The token to present: `ORCH_TOKEN`, the file `ORCH_TOKEN_FILE` names,
/// else this home's own (a node of a cluster shares its token).
pub(crate) fn token() -> anyhow::Result<Option<String>> {
    if let Ok(token) = std::env::var("ORCH_TOKEN") {
        return Ok(Some(token.trim().to_owned()));
    }
    if let Some(token) = super::serve::token_file("ORCH_TOKEN_FILE")? {
        return Ok(Some(token));
    }
    let own = super::home_path()
        .ok()
        .and_then(|home| std::fs::read_to_string(home.join("api-token")).ok());
    Ok(own.map(|t| t.trim().to_owned()))
}

/// Runs `command` against the daemon at `host`.
pub(crate) async fn run(command: Command, host: &str) -> (anyhow::Result<ExitCode>, u8) {
    let client = match client(host) {
        Ok(client) => client,
        Err(e) => {
            let code = match command {
                Command::Task(_) | Command::Submit(_) => exit::ORCH_FAILED,
                _ => exit::FAILED,
            };
            return (Err(e), code);
        }
    };
    match command {
        Command::Ps(args) => (ps(&client, &args).await, exit::FAILED),
        Command::Show(args) => (show(&client, &args.id, args.json).await, exit::FAILED),
        Command::Logs(args) => (logs(&client, &args).await, exit::FAILED),
        Command::Cancel(args) => (cancel(&client, &args.ids).await, exit::FAILED),
        Command::Wait(args) => (wait(&client, &args.ids).await, exit::FAILED),
        Command::Submit(args) => (
            super::submit::run(args, Some(client)).await,
            exit::ORCH_FAILED,
        ),
        Command::Cleanup(args) => (cleanup(&client, &args).await, exit::FAILED),
        Command::Du(args) => (du(&client, args.json).await, exit::FAILED),
        Command::Task(command) => (task(&client, &command).await, exit::ORCH_FAILED),
        _ => (
            Err(anyhow::anyhow!(
                "--host (ORCH_HOST) is for ps, show, logs, wait, cancel, submit, cleanup, du and task; run this command on the daemon's own host"
            )),
            exit::USAGE,
        ),
    }
}

async fn ps(client: &Client, args: &crate::args::PsArgs) -> anyhow::Result<ExitCode> {
    let tasks = client
        .tasks(&args.query())
        .await
        .map_err(super::submit::refused)?;
    let nodes = tasks.iter().any(|t| t.owner.node.is_some());
    super::ps::print_listing(&tasks, args, nodes, &mut std::io::stdout().lock())
}

async fn show(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let task = client.task(id).await.map_err(super::submit::refused)?;
    let log = format!(
        "(on the daemon: {}/v1/tasks/{}/logs)",
        client.socket().display(),
        task.id
    );
    super::ps::print_show(&task, json, &log)
}

/// Copies the task's output as the daemon sends it; with `follow`, until
/// it ends, then exits with the task's code (as `orch logs -f` does).
async fn logs(client: &Client, args: &crate::args::LogsArgs) -> anyhow::Result<ExitCode> {
    let follow = args.follow;
    let task = client
        .task(&args.id)
        .await
        .map_err(super::submit::refused)?;
    let mut body = client
        .open_logs(&task.id.to_string(), follow, args.from())
        .await
        .map_err(super::submit::refused)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("the output broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let ended = client
        .task(&task.id.to_string())
        .await
        .map_err(super::submit::refused)?;
    Ok(exit::for_record(&ended))
}

/// `orch wait` through the API.
async fn wait(client: &Client, ids: &[String]) -> anyhow::Result<ExitCode> {
    let mut last = 0;
    for given in ids {
        last = loop {
            let task = client.task(given).await.map_err(super::submit::refused)?;
            if task.state.is_terminal() {
                break exit::code_of(&task);
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        crate::outln!("{last}")?;
    }
    Ok(ExitCode::from(last))
}

async fn cancel(client: &Client, ids: &[String]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for given in ids {
        let before = match client.task(given).await {
            Ok(task) => task,
            Err(e) => {
                crate::output::say(&format!("orch: error: {}", super::submit::refused(e)));
                failed = true;
                continue;
            }
        };
        if before.state.is_terminal() {
            crate::outln!("{} had already ended ({})", before.id, before.state)?;
            continue;
        }
        match client.cancel(&before.id.to_string(), true).await {
            Ok(task) => crate::outln!("{} {}", task.id, task.state)?,
            Err(e) => {
                crate::output::say(&format!(
                    "orch: error: failed to cancel {}: {}",
                    before.id,
                    super::submit::refused(e)
                ));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

async fn cleanup(client: &Client, args: &crate::args::CleanupArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !args.branches,
        "--branches deletes branches in repositories on the daemon's host: run it there"
    );
    let strategy = if args.all {
        "all"
    } else {
        args.strategy.strategy().name()
    };
    let answer = client
        .cleanup(&CleanupRequest {
            strategy: Some(strategy.to_owned()),
            older_than: args.older_than.map(|d| format!("{}ms", d.as_millis())),
            status: args.status.map(|s| s.as_str().to_owned()),
            dry_run: args.dry_run,
        })
        .await
        .map_err(super::submit::refused)?;
    super::cleanup::print(&answer, args.json)
}

async fn du(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let answer = client.du().await.map_err(super::submit::refused)?;
    super::du::print(&answer, json)
}

/// `orch task` against a remote daemon: submitted, followed to its end;
/// the task's exit code becomes orch's. Ctrl+C asks the daemon to cancel
/// it (and goes on following it to its end).
async fn task(client: &Client, command: &crate::args::TaskCommand) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !command.detach,
        "-d with --host: use `orch submit`, which queues the task and prints its id"
    );
    let spec = super::submit::spec(client, &command.task, 0, 0, &[])?;
    let submitted = client.submit(&spec).await.map_err(super::submit::refused)?;
    let id = submitted.id.to_string();
    crate::output::say(&format!("task {id}"));
    let shutdown = orch_orchestrator::Shutdown::new();
    let signals = crate::signals::SignalWatch::start(
        &shutdown,
        crate::signals::CtrlZ::Default,
        crate::signals::Hangup::Stop,
    )?;
    let cancel = {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move {
            shutdown.stopping().await;
            crate::output::say(&format!("orch: cancelling task {id} on the daemon"));
            let _ = client.cancel(&id, false).await;
        })
    };
    let follow = crate::args::LogsArgs {
        id,
        follow: true,
        tail: None,
        since: None,
    };
    let code = logs(client, &follow).await;
    cancel.abort();
    drop(signals);
    code
}
