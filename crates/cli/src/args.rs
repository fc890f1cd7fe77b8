//! The command line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Run tasks in throwaway Docker containers; nothing they own outlives its
/// policy.
#[derive(Debug, Parser)]
#[command(name = "orch", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run one task in the foreground, streaming its output.
    Task(TaskArgs),
    /// Remove what orch left behind.
    Cleanup(CleanupArgs),
    /// Disk use of workspaces: each, per project, in total.
    Du(DuArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DuArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TaskArgs {
    /// A project directory (a path: contains '/' or is '.') or the name of a
    /// configured project.
    pub(crate) project: String,

    /// What to do; replaces {desc} in the project's command.
    pub(crate) desc: String,

    /// Image to run, instead of the project's.
    #[arg(long)]
    pub(crate) image: Option<String>,

    /// Deadline of the task (90s, 3m, 2h, or seconds); 0 means none.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub(crate) timeout: Option<Duration>,

    /// Time between SIGTERM and SIGKILL when the task is stopped.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub(crate) stop_grace: Option<Duration>,

    /// Set an environment variable in the task (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = env_pair)]
    pub(crate) env: Vec<(String, String)>,

    /// Who the task runs as: host (your uid:gid), root, or UID[:GID].
    #[arg(long)]
    pub(crate) user: Option<String>,

    /// Run without a workspace.
    #[arg(long)]
    pub(crate) no_workspace: bool,

    /// Start the workspace branch from this commit, branch or tag instead of
    /// the project's HEAD.
    #[arg(long = "ref", value_name = "REF")]
    pub(crate) git_ref: Option<String>,

    /// Keep the workspace however the task ends.
    #[arg(long, conflicts_with = "rm_workspace")]
    pub(crate) keep_workspace: bool,

    /// Remove the workspace however the task ends (its work is still
    /// committed to its branch first).
    #[arg(long)]
    pub(crate) rm_workspace: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Remove every container of this instance, live tasks included.
    #[arg(long)]
    pub(crate) all: bool,

    /// Only show what would be removed.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    orch_orchestrator::parse_duration(text)
}

fn env_pair(text: &str) -> Result<(String, String), String> {
    orch_orchestrator::parse_env_pair(text)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
