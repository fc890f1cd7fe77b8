//! `orch logs`: a task's captured output, followed with `-f` until it ends.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::args::LogsArgs;
use orch_registry::Store;

/// How often a followed log is looked at.
const POLL: Duration = Duration::from_millis(100);

/// Prints the log; with `-f`, follows it until the task ends and exits
/// with the code `orch task` gave for it (its own exit code, 124 timed
/// out, 128+N stopped by signal N, 125 lost), so that scripts can follow
/// a task as they would run it.
pub(crate) async fn run(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let registry = super::ps::require_registry()?;
    let id = registry.resolve(&args.id)?;
    let path = super::home_path()?.join("logs").join(format!("{id}.log"));
    let mut offset = 0u64;
    loop {
        // Whether it had ended *before* this read: then the read gets all.
        // A live record whose owner is dead will not end by itself.
        let record = registry.get(&id)?;
        let ended = record
            .as_ref()
            .is_none_or(|t| t.state.is_terminal() || !orch_orchestrator::Owner::from(t).is_alive());
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
