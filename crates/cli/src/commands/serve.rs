//! `orch serve`: the daemon. One process runs many tasks from the durable
//! queue, behind the API on the home's socket (and on TCP with a token),
//! with cleanup at start, on a schedule and after submissions.
//!
//! SIGTERM, SIGINT or SIGHUP (with TLS, SIGHUP reads the certificate and
//! key again instead): stop taking tasks, stop the running ones
//! gracefully (recorded `cancelled (daemon shutdown)`, torn down by their
//! policy), leave the queued ones queued, exit 0. A second such signal
//! forces the running ones. SIGKILL: the watchdog reaps the running ones.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use orch_orchestrator::supervisor::{Supervisor, SupervisorConfig};
use orch_orchestrator::{
    GlobalConfig, Home, Orchestrator, Shutdown, Thresholds, WatchdogLink, parse_duration,
};
use tokio_util::sync::CancellationToken;

use crate::args::ServeArgs;
use crate::output::say;
use crate::signals::{CtrlZ, Hangup, SignalWatch};

/// The cleanup schedule's default period.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// A task silent this long is stuck, by default.
const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(1800);
/// How long the process waits for its spawned work at exit.
const WIND_DOWN: Duration = Duration::from_secs(30);

/// A duration from the environment, else the config, else the default.
fn setting(var: &str, configured: Option<Duration>, default: Duration) -> anyhow::Result<Duration> {
    match std::env::var(var) {
        Ok(text) => parse_duration(&text).map_err(|m| anyhow::anyhow!("invalid {var}: {m}")),
        Err(_) => Ok(configured.unwrap_or(default)),
    }
}

/// The TCP listener's token: `ORCH_TOKEN`, else the file
/// `ORCH_TOKEN_FILE` names, else `$ORCH_HOME/api-token`, made (0600) on
/// first use.
fn token(home: &Home) -> anyhow::Result<String> {
    // It travels in a header, a cookie and a URL: no character that any of
    // them would need to escape, and long enough not to be guessed.
    let check = |token: &str, from: &str| {
        anyhow::ensure!(
            token.len() >= 16
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)),
            "{from} must be at least 16 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'"
        );
        Ok(token.to_owned())
    };
    if let Ok(token) = std::env::var("ORCH_TOKEN") {
        return check(token.trim(), "ORCH_TOKEN");
    }
    if let Some(token) = token_file("ORCH_TOKEN_FILE")? {
        return check(&token, "the token in ORCH_TOKEN_FILE");
    }
    let path = home.path().join("api-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            return check(token.trim(), &format!("the token in {}", path.display()));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
    let fresh = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    writeln!(file, "{fresh}").with_context(|| format!("failed to write {}", path.display()))?;
    Ok(fresh)
}

/// The token in the file the environment variable `var` names, if set.
pub(crate) fn token_file(var: &str) -> anyhow::Result<Option<String>> {
    let Some(path) = std::env::var_os(var) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read {var} ({})", path.to_string_lossy()))?;
    anyhow::ensure!(
        !text.trim().is_empty(),
        "{var} ({}) holds no token",
        path.to_string_lossy()
    );
    Ok(Some(text.trim().to_owned()))
}

/// The TCP listener's TLS, from the flags; refuses plain HTTP on an
/// address other than loopback unless asked (`--insecure-http`, said on
/// stderr).
fn tls(args: &ServeArgs) -> anyhow::Result<Option<std::sync::Arc<orch_server::ServerTls>>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        if let Some(addr) = args.listen {
            if !addr.ip().is_loopback() {
                anyhow::ensure!(
                    args.insecure_http,
                    "--listen {addr} is not a loopback address: serve it over TLS (--tls-cert, --tls-key), or pass --insecure-http to send the token in the clear"
                );
                say(&format!(
                    "orch: warning: --listen {addr} serves plain HTTP: the token crosses the network in the clear"
                ));
            }
        }
        return Ok(None);
    };
    anyhow::ensure!(args.listen.is_some(), "--tls-cert needs --listen");
    let files = orch_server::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: args.tls_client_ca.clone(),
    };
    Ok(Some(orch_server::ServerTls::load(files)?))
}

pub(crate) async fn run(
    args: ServeArgs,
    watchdog: Option<WatchdogLink>,
) -> anyhow::Result<ExitCode> {
    let config = GlobalConfig::load(GlobalConfig::default_path().as_deref())?;
    let home = super::open_home()?;
    super::note_tightened(&home);
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| home.path().join("orch.sock"));
    let tls = tls(&args)?;
    let read_token = token_file("ORCH_READ_TOKEN_FILE")?;
    let bound = orch_server::bind(orch_server::Listeners {
        socket: socket.clone(),
        tcp: args.listen,
        tls: tls.clone(),
        read_token,
    })
    .await?;
    // Only once the socket is ours: a daemon refused for a live one's
    // writes nothing.
    let token = match args.listen {
        Some(_) => token(&home)?,
        None => String::new(),
    };
    let orch = Orchestrator::connect_as(home.clone(), args.node_name.as_deref()).await?;
    let orch = match watchdog {
        Some(link) => orch.with_watchdog(link),
        None => orch,
    };
    let concurrency = args.concurrency.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n as usize,
    );
    let supervisor = Supervisor::new(
        &orch,
        SupervisorConfig {
            concurrency,
            cleanup_interval: setting(
                "ORCH_CLEANUP_INTERVAL",
                config.cleanup.interval,
                DEFAULT_INTERVAL,
            )?,
            thresholds: Thresholds::resolve(&config.cleanup)?,
            config_path: GlobalConfig::default_path(),
            stuck_after: setting("ORCH_STUCK_AFTER", config.stuck_after, DEFAULT_STUCK_AFTER)?,
            labels: args.labels.clone(),
            advertise: args.advertise.clone(),
        },
    );
    // The one signal adapter, as `orch task` has it: the first signal
    // stops (no new tasks; running ones stop gracefully), a second forces.
    let shutdown = Shutdown::new();
    // With TLS, a hang-up reads the certificate again (as a daemon's
    // SIGHUP does); without, it stops the daemon as SIGTERM does.
    let hangup = match &tls {
        Some(tls) => {
            let tls = std::sync::Arc::clone(tls);
            Hangup::Reload(Box::new(move || match tls.reload() {
                Ok(()) => say("orch: SIGHUP: certificate and key read again"),
                Err(e) => say(&format!(
                    "orch: error: SIGHUP: {e}; the certificate in use stays"
                )),
            }))
        }
        None => Hangup::Stop,
    };
    let signals = SignalWatch::start(&shutdown, CtrlZ::Default, hangup)
        .context("failed to install signal handlers")?;
    // The HTTP listeners stop taking connections at the first signal.
    let stop = CancellationToken::new();
    {
        let (stop, shutdown) = (stop.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.stopping().await;
            say(&format!(
                "orch: {} received: no new tasks; running tasks stop gracefully; press Ctrl+C again to force",
                shutdown.reason().unwrap_or_else(|| "stop".into())
            ));
            stop.cancel();
            shutdown.forced().await;
            say("orch: forcing: killing and removing the running tasks now");
        });
    }
    say(&format!(
        "orch: serving on {}{}; {concurrency} task(s) at once",
        socket.display(),
        bound
            .tcp_addr()
            .map(|a| format!(
                " and {}://{a}",
                if tls.is_some() { "https" } else { "http" }
            ))
            .unwrap_or_default()
    ));
    // Webhooks go out until every task has ended, then drain (bounded).
    let tasks_over = CancellationToken::new();
    let webhooks = orch_server::Webhooks::start(&config.webhooks, &supervisor, tasks_over.clone())?;
    let server = tokio::spawn(bound.serve(supervisor.clone(), stop.clone(), token));
    supervisor.run(shutdown.clone()).await;
    stop.cancel();
    tasks_over.cancel();
    let served = server.await;
    webhooks.finish().await;
    drop(signals);
    if !orch.wind_down(WIND_DOWN).await {
        tracing::warn!("background work did not finish in time");
    }
    orch.watchdog_clean_exit();
    match served {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("the API server failed: {e}")),
    }
}
