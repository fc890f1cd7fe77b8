//! `orch logs`: a task's captured output, followed with `-f` until it ends.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::args::{LogsArgs, WaitArgs};
use orch_orchestrator::cluster::LogSource;

/// How often a followed log is looked at.
const POLL: Duration = Duration::from_millis(100);

/// Prints the log; with `-f`, follows it until the task ends and exits
/// with the code `orch task` gave for it (its own exit code, 124 timed
/// out, 128+N stopped by signal N, 125 lost), so that scripts can follow
/// a task as they would run it.
pub(crate) async fn run(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let registry = super::blocking(super::ps::require_registry)?;
    let id = super::blocking(|| registry.resolve(&args.id))?;
    let home = super::home_path()?;
    let node = if registry.shared() {
        let home = orch_orchestrator::Home::open(&home)?;
        Some(home.node_id()?)
    } else {
        None
    };
    let record = super::blocking(|| registry.get(&id))?;
    if let Some(task) = &record {
        let source = super::blocking(|| {
            orch_orchestrator::cluster::log_source(&*registry, &home, node.as_deref(), task)
        })?;
        match source {
            LogSource::Local(_) => {}
            LogSource::Kept(bytes) => {
                // A kept copy has no time index: `--since` gives all of it.
                let from = args.tail.map_or(0, |lines| {
                    orch_orchestrator::cluster::tail_start(&bytes, lines)
                });
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes[from..])?;
                out.flush()?;
                return Ok(if args.follow {
                    crate::exit::for_record(task)
                } else {
                    ExitCode::SUCCESS
                });
            }
            LogSource::Remote { url } => {
                relay(&url, &id.to_string(), args.follow, args.from()).await?;
                if !args.follow {
                    return Ok(ExitCode::SUCCESS);
                }
                let ended = super::blocking(|| registry.get(&id))?;
                return Ok(ended.map_or(ExitCode::SUCCESS, |r| crate::exit::for_record(&r)));
            }
            LogSource::Unreachable { node } => {
                anyhow::bail!(
                    "task {id} runs on node {node}, which advertises no URL (orch serve --advertise) to read its output from"
                );
            }
        }
    }
    let path = home.join("logs").join(format!("{id}.log"));
    let mut offset = match args.from() {
        orch_protocol::LogFrom::Tail(lines) => {
            orch_orchestrator::cluster::tail_offset(&path, lines)?
        }
        orch_protocol::LogFrom::Since(at) => orch_orchestrator::since_offset(&path, at)?,
        orch_protocol::LogFrom::Start => 0,
    };
    loop {
        // Whether it had ended *before* this read: then the read gets all.
        // A live record whose owner is gone will not end by itself.
        let record = super::blocking(|| registry.get(&id))?;
        let ended = record.as_ref().is_none_or(|t| {
            t.state.is_terminal() || !orch_orchestrator::cluster::runs(t, node.as_deref())
        });
        offset = copy_new(&path, offset)?;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        if ended {
            return Ok(record.map_or(ExitCode::SUCCESS, |r| crate::exit::for_record(&r)));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `orch wait`: until every task named has ended (or its owner is gone);
/// prints each one's exit code as `orch task` gave it, and exits with the
/// last one's.
pub(crate) async fn wait(args: &WaitArgs) -> anyhow::Result<ExitCode> {
    let registry = super::blocking(super::ps::require_registry)?;
    let ids = args
        .ids
        .iter()
        .map(|given| super::blocking(|| registry.resolve(given)))
        .collect::<Result<Vec<_>, _>>()?;
    let node = if registry.shared() {
        Some(orch_orchestrator::Home::open(&super::home_path()?)?.node_id()?)
    } else {
        None
    };
    let mut last = 0;
    for id in ids {
        last = loop {
            let record = super::blocking(|| registry.get(&id))?
                .ok_or_else(|| anyhow::anyhow!("task {id} is gone from the registry"))?;
            if record.state.is_terminal()
                || !orch_orchestrator::cluster::runs(&record, node.as_deref())
            {
                break crate::exit::code_of(&record);
            }
            tokio::time::sleep(POLL).await;
        };
        crate::outln!("{last}")?;
    }
    Ok(ExitCode::from(last))
}

/// Copies a task's output from the node that runs it, as it comes.
async fn relay(
    url: &str,
    id: &str,
    follow: bool,
    from: orch_protocol::LogFrom,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let mut body = super::remote::client(url)?
        .open_logs(id, follow, from)
        .await
        .map_err(|e| {
            anyhow::anyhow!("task {id} runs on {url}, whose output could not be read: {e}")
        })?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("the output from {url} broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Copies what the log holds past `offset` to stdout; returns the new
/// offset. A log not written yet reads as empty.
fn copy_new(path: &std::path::Path, offset: u64) -> anyhow::Result<u64> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => return Err(anyhow::anyhow!("failed to open {}: {e}", path.display())),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(offset + buf.len() as u64)
}
