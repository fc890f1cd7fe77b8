//! Starting the watchdog process, and being it (`orch __watchdog`).
//!
//! The process is started from the main thread before the async runtime
//! exists, in a session of its own (setsid), so neither Ctrl+C nor a closing
//! terminal reaches it. Its stdin is the read end of a pipe whose only write
//! end stays in orch, close-on-exec, so no child of orch (git, a detached
//! supervisor) can hold it open. See `orch_orchestrator::watchdog` for the
//! protocol and what it does.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use orch_orchestrator::{Heard, Home, Orchestrator, WatchdogLink, WatchdogLog};
use rustix::pipe::{PipeFlags, pipe_with};

/// How long the watchdog keeps trying to reach the engine and the registry.
const CONNECT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// Starts a watchdog unless `ORCH_NO_WATCHDOG=1`; returns orch's end.
pub(crate) fn start() -> std::io::Result<Option<WatchdogLink>> {
    if std::env::var("ORCH_NO_WATCHDOG").as_deref() == Ok("1") {
        return Ok(None);
    }
    let (read_end, write_end): (OwnedFd, OwnedFd) = pipe_with(PipeFlags::CLOEXEC)?;
    let mut watchdog = Command::new(std::env::current_exe()?);
    watchdog
        .arg("__watchdog")
        .stdin(Stdio::from(read_end))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        watchdog.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    // The child is never waited for: it outlives us by design, and is
    // reparented when we exit.
    watchdog.spawn()?;
    Ok(Some(WatchdogLink::new(write_end)))
}

/// `orch __watchdog`: waits for the pipe to close; if orch did not say
/// `exit`, reaps its session. Logs to `$ORCH_HOME/logs/watchdog-<session>.log`.
pub(crate) fn run() -> ExitCode {
    // A signal for a whole process group or cgroup (a terminal closing,
    // `systemctl stop`, `kill -- -PGID`) must not take the watchdog with
    // orch: it outlives orch by design, and ends by itself.
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        // SAFETY: the handler does nothing, so nothing unsafe runs in it.
        if let Err(e) = unsafe { signal_hook::low_level::register(signal, || {}) } {
            tracing::warn!(signal, error = %e, "failed to ignore a signal");
        }
    }
    let log = listen();
    if log.clean_exit {
        return ExitCode::SUCCESS;
    }
    let (Some(session), Some(home)) = (log.session, Home::default_path()) else {
        return ExitCode::SUCCESS; // orch died before it could create anything
    };
    let Ok(Some(home)) = Home::open_existing(&home) else {
        return ExitCode::SUCCESS;
    };
    let file = home
        .path()
        .join("logs")
        .join(format!("watchdog-{session}.log"));
    // Private, as every file orch makes: whatever the umask.
    if let Ok(file) = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().create(true).append(true),
        0o600,
    )
    .open(&file)
    {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    }
    tracing::info!(%session, pending = log.pending.len(), "orch ended without a clean exit; reaping its session");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        return ExitCode::FAILURE;
    };
    let reaped = runtime.block_on(async {
        // The engine may be down for a moment (it may be why orch died):
        // keep trying, within a bound.
        let mut backoff = orch_retry::Backoff::new(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(5),
        )
        .within(CONNECT_DEADLINE);
        let orch = loop {
            match Orchestrator::connect(home.clone()).await {
                Ok(orch) => break orch,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot connect yet; retrying");
                    if !backoff.wait().await {
                        return Err(e);
                    }
                }
            }
        };
        Ok::<_, orch_orchestrator::Error>(orch.reap_session(&log).await)
    });
    match reaped {
        Ok(reaped) => {
            for item in &reaped.items {
                let done: Vec<String> =
                    item.steps.iter().map(orch_orchestrator::describe).collect();
                tracing::info!(task = ?item.task_id(), done = ?done, errors = ?item.errors, "reaped task");
            }
            tracing::info!(stray = ?reaped.stray_containers, clean = reaped.clean, "reaping done");
            if reaped.clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "reaping failed");
            ExitCode::FAILURE
        }
    }
}

/// Reads orch's messages until the pipe closes or orch says `exit`; in a
/// cluster, fences the session when orch's last word on its leases runs out
/// with nothing newer (orch frozen, or cut off from the registry).
fn listen() -> WatchdogLog {
    let (lines, heard) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::Builder::new()
        .name("watchdog-pipe".into())
        .spawn(move || {
            use std::io::BufRead;
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
    if reader.is_err() {
        return WatchdogLog::read(std::io::stdin().lock());
    }
    let mut log = WatchdogLog::default();
    let mut fence_at: Option<std::time::Instant> = None;
    loop {
        let wait = fence_at.map_or(std::time::Duration::from_secs(3600), |at| {
            at.saturating_duration_since(std::time::Instant::now())
        });
        match heard.recv_timeout(wait) {
            Ok(line) => match log.hear(&line) {
                Heard::Exit => break,
                Heard::Fence(within) => {
                    fence_at = within.map(|w| std::time::Instant::now() + w);
                }
                Heard::Noted => {}
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if fence_at.is_some_and(|at| at <= std::time::Instant::now()) {
                    fence_at = None;
                    fence(&log);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    log
}

/// Removes the session's containers at once: its leases are about to run
/// out and orch has not renewed them.
fn fence(log: &WatchdogLog) {
    let (Some(session), Some(path)) = (log.session, Home::default_path()) else {
        return;
    };
    let Ok(Some(home)) = Home::open_existing(&path) else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    match runtime.block_on(orch_orchestrator::fence_session(&home, session)) {
        Ok(removed) => eprintln!(
            "orch watchdog: orch did not renew its leases in time; removed {} container(s) of session {session}",
            removed.len()
        ),
        Err(e) => eprintln!("orch watchdog: fencing session {session} failed: {e}"),
    }
}
