//! The command line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Run tasks in throwaway Docker containers; nothing they own outlives its
/// policy.
/// Shown after `orch --help`.
const EXAMPLES: &str = "\
Examples:
  orch task . \"make test\"                 run in the foreground; Ctrl+C stops it and cleans up
  orch task -d ./api \"cargo build\"        in the background: prints the id
  orch ps -a                              every task; orch show <id> for one
  orch logs -f <id>                       follow its output; exits with the task's code
  orch serve & orch submit ./api \"lint\"   the daemon and its queue
  orch cleanup --dry-run                  what retention would remove; orch cleanup --all
  orch completions bash > ~/.local/share/bash-completion/completions/orch

Exit codes: orch task exits with the task's own code; 124 timed out; 130, 143, 129
stopped by SIGINT, SIGTERM, SIGHUP; 125 orch itself failed; 126/127 the command
could not be invoked / was not found. Other commands: 0, 1 failed, 2 bad usage.";

/// Shown after `orch task --help`.
const TASK_HELP: &str = "\
Examples:
  orch task . \"make test\"                       the project here, in the foreground
  orch task -d --name login ./api \"fix login\"   in the background, named; prints the id
  orch task --from-worktree . \"finish this\"     from your tree as it is, uncommitted edits too
  echo prompt | orch task -i . agent            the task reads your input
  orch task -it . bash                          a terminal of its own, as docker run -it
  orch task --timeout 30m --memory 4g --cpus 2 . \"cargo build\"

Exit codes: the task's own; 124 timed out; 130, 143, 129 stopped by SIGINT,
SIGTERM, SIGHUP (a second Ctrl+C forces); 125 orch itself failed before or
around the task; 126/127 the command could not be invoked / was not found.";

/// The exit codes of the commands but `task` and `wait`.
macro_rules! exit_codes {
    () => {
        "\n\nExit codes: 0 done; 1 failed; 2 bad usage."
    };
}

const PS_HELP: &str = concat!(
    "Examples:
  orch ps                          live tasks
  orch ps -a --project api         every task of one project
  orch ps --state failed -q        ids of the failed ones, to script with
  orch ps --name login --json",
    exit_codes!()
);
const SHOW_HELP: &str = concat!(
    "Examples:
  orch show login                  by name, short id or full id
  orch show --json 01a24e38",
    exit_codes!()
);
const LOGS_HELP: &str = concat!(
    "Examples:
  orch logs -f login               follow it; exits with the task's code when it ends
  orch logs --tail 50 01a24e38
  orch logs --since 10m login",
    exit_codes!()
);
const CANCEL_HELP: &str = concat!(
    "Examples:
  orch cancel login                stops it gracefully; its work reaches its branch
  orch ps -q --project api | xargs -r orch cancel   every task of a project",
    exit_codes!()
);
const WAIT_HELP: &str = "\
Examples:
  orch wait login                  prints its exit code, exits with it
  orch task -d . build >id && orch wait $(cat id)

Exit codes: the last task's, as orch task gave it; 1 failed; 2 bad usage.";
const PUSH_HELP: &str = concat!(
    "Examples:
  orch push login                  its branch, to its project's git server",
    exit_codes!()
);
const DIFF_HELP: &str = concat!(
    "Examples:
  orch diff login                  what the task changed (what orch merge brings)
  orch diff --stat 01a24e38",
    exit_codes!()
);
const MERGE_HELP: &str = concat!(
    "Examples:
  orch merge login                 a merge commit \"Merge task <id>: <description>\"
  orch merge --squash login        one commit of its changes, with its description
  orch cleanup --branches          then delete the merged branch",
    exit_codes!()
);
const RM_HELP: &str = concat!(
    "Examples:
  orch rm login                    record, log and kept workspace; the branch stays
  orch rm $(orch ps -q --state succeeded)
  orch rm --dry-run login",
    exit_codes!()
);
const CLEANUP_HELP: &str = concat!(
    "Examples:
  orch cleanup --dry-run           what retention would remove
  orch cleanup                     remove it
  orch cleanup --branches --dry-run   also task branches that lose nothing
  orch cleanup --all               everything of this instance, live tasks cancelled first",
    exit_codes!()
);
const DU_HELP: &str = concat!(
    "Examples:
  orch du
  orch du --json",
    exit_codes!()
);
const SERVE_HELP: &str = concat!(
    "Examples:
  orch serve                       on $ORCH_HOME/orch.sock
  orch serve --listen 127.0.0.1:7070 --concurrency 4
  orch serve --listen 0.0.0.0:7070 --tls-cert cert.pem --tls-key key.pem
  ORCH_REGISTRY=postgres://orch@db/orch orch serve --node-name a   a node of a cluster",
    exit_codes!()
);
const COMPLETIONS_HELP: &str = concat!(
    "Examples:
  orch completions bash > ~/.local/share/bash-completion/completions/orch
  orch completions zsh > ~/.zfunc/_orch      (with fpath+=~/.zfunc in .zshrc)
  orch completions fish > ~/.config/fish/completions/orch.fish",
    exit_codes!()
);
const MAN_HELP: &str = concat!(
    "Examples:
  orch man > orch.1 && man ./orch.1
  orch man | gzip > /usr/local/share/man/man1/orch.1.gz",
    exit_codes!()
);
const SUBMIT_HELP: &str = "\
Examples:
  orch submit ./api \"cargo test\"   queue it; prints the id
  orch submit --priority 10 --retries 2 --name nightly ./api \"cargo bench\"
  orch --host https://ci:7070 submit api \"lint\"

Exit codes: 0 queued; 125 refused (bad project, image, name...) or failed; 2 bad usage.";

#[derive(Debug, Parser)]
#[command(
    name = "orch",
    version,
    about,
    max_term_width = 100,
    after_help = EXAMPLES
)]
pub(crate) struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    /// Talk to the daemon at this address instead of the local home:
    /// https://host:port, http://host:port or unix:///path/orch.sock (with
    /// ORCH_TOKEN or ORCH_TOKEN_FILE; ORCH_TLS_CA to trust a CA of your
    /// own, ORCH_TLS_CERT and ORCH_TLS_KEY for a client certificate). For
    /// ps, show, logs, wait, cancel, submit, cleanup, du and task.
    #[arg(long, global = true, env = "ORCH_HOST", value_name = "URL")]
    pub(crate) host: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run one task in the foreground, streaming its output (or in the
    /// background with -d).
    Task(TaskCommand),
    /// List live tasks (all with -a).
    #[command(after_help = PS_HELP)]
    Ps(PsArgs),
    /// Show one task in full.
    #[command(after_help = SHOW_HELP)]
    Show(ShowArgs),
    /// Print a task's captured output (-f follows it until it ends).
    #[command(after_help = LOGS_HELP)]
    Logs(LogsArgs),
    /// Stop tasks gracefully from any terminal.
    #[command(after_help = CANCEL_HELP)]
    Cancel(CancelArgs),
    /// Wait until tasks end; print each one's exit code (as `orch task`
    /// gave it) and exit with the last one's.
    #[command(after_help = WAIT_HELP)]
    Wait(WaitArgs),
    /// Push a finished task's branch to its project's git server again
    /// (after a push that failed; the work waits in this node's mirror).
    #[command(after_help = PUSH_HELP)]
    Push(PushArgs),
    /// Show what a task changed on its branch against where it started.
    #[command(after_help = DIFF_HELP)]
    Diff(DiffArgs),
    /// Bring a task's branch into your current branch (a merge commit, or
    /// one squashed commit); refused while tracked files have changes.
    #[command(after_help = MERGE_HELP)]
    Merge(MergeArgs),
    /// Remove ended tasks: record, log and workspace (their work saved to
    /// their branches first), as retention would.
    #[command(after_help = RM_HELP)]
    Rm(RmArgs),
    /// Remove what orch left behind, by retention policy.
    #[command(after_help = CLEANUP_HELP)]
    Cleanup(CleanupArgs),
    /// Disk use of workspaces: each, per project, in total.
    #[command(after_help = DU_HELP)]
    Du(DuArgs),
    /// Run the daemon: many tasks from a durable queue, behind an HTTP API.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Queue a task with the daemon; print its id.
    #[command(after_help = SUBMIT_HELP)]
    Submit(SubmitArgs),
    /// Print a shell's completion script for orch (bash, zsh, fish,
    /// elvish, powershell), e.g. `orch completions bash >
    /// ~/.local/share/bash-completion/completions/orch`.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print orch's man page (roff), e.g. `orch man > orch.1; man ./orch.1`.
    #[command(after_help = MAN_HELP)]
    Man,
    /// Run a detached task (started by `orch task -d`).
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
    /// Guard a session from outside (started by orch itself).
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
    /// Relay a task's allowed connections (inside its egress forwarder).
    #[command(name = "__egress", hide = true)]
    Egress {
        /// The allowed `host:port` entries.
        #[arg(required = true)]
        entries: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    /// All tasks, finished ones included.
    #[arg(short, long)]
    pub(crate) all: bool,
    /// Only ids, one per line (as the ID column shows them).
    #[arg(short, long, conflicts_with = "json")]
    pub(crate) quiet: bool,
    /// Only tasks in this state (queued, creating, running, paused,
    /// succeeded, failed, cancelled, timed_out, lost), as STATUS shows it;
    /// a finished state implies -a.
    #[arg(long, value_name = "STATE", value_parser = state_filter)]
    pub(crate) state: Option<StateFilter>,
    /// Only this project's tasks (its name, as the PROJECT column shows it).
    #[arg(long, value_name = "NAME")]
    pub(crate) project: Option<String>,
    /// Only the tasks of this name (live or not: implies -a).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

impl PsArgs {
    /// The listing asked for, as the API takes it.
    pub(crate) fn query(&self) -> orch_protocol::TaskQuery {
        let state = self.state.map(|s| match s {
            StateFilter::Is(state) => state,
            StateFilter::Paused => orch_registry::State::Running,
        });
        orch_protocol::TaskQuery {
            all: self.all
                || state.is_some_and(orch_registry::State::is_terminal)
                || self.name.is_some(),
            state,
            project: self.project.clone(),
            name: self.name.clone(),
        }
    }
}

/// What `ps --state` picks: a state, or `paused` (running, frozen by
/// Ctrl+Z), as the STATUS column shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateFilter {
    Is(orch_registry::State),
    Paused,
}

fn state_filter(text: &str) -> Result<StateFilter, String> {
    if text == "paused" {
        return Ok(StateFilter::Paused);
    }
    text.parse().map(StateFilter::Is).map_err(|_| {
        format!(
            "unknown task state {text:?} (queued, creating, running, paused, succeeded, failed, cancelled, timed_out, lost)"
        )
    })
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Task id, short id (as ps shows it), name, or a unique prefix of at
    /// least 4 hex digits.
    pub(crate) id: String,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// Task id, short id (as ps shows it), name, or a unique prefix of at
    /// least 4 hex digits.
    pub(crate) id: String,
    /// Keep printing new output until the task ends.
    #[arg(short, long)]
    pub(crate) follow: bool,
    /// Only the last N lines of what was written so far (then, with -f,
    /// everything new).
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "since")]
    pub(crate) tail: Option<usize>,
    /// Only what the task wrote since a time: a duration ago (10m, 2h) or
    /// an RFC 3339 time (2026-12-07T10:00:00Z).
    #[arg(long, value_name = "WHEN", value_parser = since)]
    pub(crate) since: Option<i64>,
}

impl LogsArgs {
    /// Where the log is read from.
    pub(crate) fn from(&self) -> orch_protocol::LogFrom {
        match (self.tail, self.since) {
            (Some(lines), _) => orch_protocol::LogFrom::Tail(lines),
            (None, Some(at)) => orch_protocol::LogFrom::Since(at),
            (None, None) => orch_protocol::LogFrom::Start,
        }
    }
}

/// `--since`: a duration ago, or an RFC 3339 time; Unix ms.
fn since(text: &str) -> Result<i64, String> {
    let now = orch_registry::now_ms();
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX).min(now));
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(at) => Ok(at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        Err(_) => Err(format!(
            "expected a duration ago (10m, 2h) or an RFC 3339 time (2026-12-07T10:00:00Z), not {text:?}"
        )),
    }
}

#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// Task ids, short ids, names, or unique prefixes of at least 4 hex
    /// digits.
    #[arg(required = true)]
    pub(crate) ids: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RmArgs {
    /// Task ids, short ids, names, or unique prefixes of at least 4 hex
    /// digits.
    #[arg(required = true)]
    pub(crate) ids: Vec<String>,
    /// Only show what would be removed.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The task's id, short id, name, or a unique prefix of at least 4
    /// hex digits.
    pub(crate) id: String,
    /// Only a summary of the changed files (as `git diff --stat`).
    #[arg(long)]
    pub(crate) stat: bool,
}

#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    /// The task's id, short id, name, or a unique prefix of at least 4
    /// hex digits.
    pub(crate) id: String,
    /// One new commit with the branch's changes instead of a merge commit.
    #[arg(long)]
    pub(crate) squash: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// The task's id, short id, name, or a unique prefix of at least 4
    /// hex digits.
    pub(crate) id: String,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// Task ids, short ids, names, or unique prefixes of at least 4 hex
    /// digits.
    #[arg(required = true)]
    pub(crate) ids: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SuperviseArgs {
    /// The id the parent announced.
    #[arg(long)]
    pub(crate) task_id: uuid::Uuid,
    #[command(flatten)]
    pub(crate) task: TaskArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// At most this many tasks run at once (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: Option<u32>,
    /// Also serve the API (and the dashboard) on this TCP address; every
    /// request but GET /healthz needs the token (ORCH_TOKEN, else
    /// $ORCH_HOME/api-token).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// The unix socket to serve on (default $ORCH_HOME/orch.sock): several
    /// daemons can share one home and its queue, each on its own socket.
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<std::path::PathBuf>,
    /// In a cluster (ORCH_REGISTRY): this node's name (default: the host's).
    #[arg(long, value_name = "NAME")]
    pub(crate) node_name: Option<String>,
    /// In a cluster: a label of this node, key=value (repeatable); it runs
    /// only tasks whose constraints are all among its labels.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    pub(crate) labels: Vec<String>,
    /// In a cluster: the URL other nodes reach this one's API at (its
    /// --listen address as they see it), for logs and progress relayed
    /// from it.
    #[arg(long, value_name = "URL")]
    pub(crate) advertise: Option<String>,
    /// Serve --listen over TLS with this certificate chain (PEM); SIGHUP
    /// reads it and the key again, open connections keep theirs.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_key: Option<std::path::PathBuf>,
    /// Require a client certificate this CA (PEM) signed (mutual TLS).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<std::path::PathBuf>,
    /// Serve plain HTTP on a --listen address other than loopback (the
    /// token then crosses the network in the clear).
    #[arg(long)]
    pub(crate) insecure_http: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The daemon's socket (default $ORCH_HOME/orch.sock).
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<std::path::PathBuf>,
    /// Higher runs first (default 0); ties in submission order.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i64,
    /// In a cluster: run it again up to N times if the node running it
    /// dies (default 0: it ends lost).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) retries: u32,
    /// In a cluster: only a node with this label (key=value) may run it
    /// (repeatable).
    #[arg(long = "constraint", value_name = "KEY=VALUE", value_parser = label)]
    pub(crate) constraints: Vec<String>,
    #[command(flatten)]
    pub(crate) task: TaskArgs,
}

/// A `key=value` label or constraint.
fn label(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, value))
            if !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
                && !value.contains(char::is_control) =>
        {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "invalid label {text:?}: expected key=value (key of letters, digits, '.', '_', '-', '/')"
        )),
    }
}

#[derive(Debug, Args)]
pub(crate) struct DuArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Args)]
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

    /// Set an environment variable in the task (repeatable); KEY alone
    /// takes its value from orch's own environment, as `docker run -e`.
    /// Values are never shown or logged.
    #[arg(short, long = "env", value_name = "KEY[=VALUE]", value_parser = env_arg)]
    pub(crate) env: Vec<EnvArg>,

    /// Read environment variables from a file: KEY=VALUE or KEY lines, `#`
    /// comments (repeatable; --env wins over it).
    #[arg(long, value_name = "FILE")]
    pub(crate) env_file: Vec<std::path::PathBuf>,

    /// Who the task runs as: host (your uid:gid), root, or UID[:GID].
    #[arg(long)]
    pub(crate) user: Option<String>,

    /// Run without a workspace.
    #[arg(long)]
    pub(crate) no_workspace: bool,

    /// Memory limit (512m, 2g), instead of the project's.
    #[arg(long, value_name = "SIZE")]
    pub(crate) memory: Option<String>,

    /// CPU limit (1.5), instead of the project's.
    #[arg(long, value_name = "N")]
    pub(crate) cpus: Option<f64>,

    /// Network: bridge, none, host or a network name, instead of the
    /// project's.
    #[arg(long, value_name = "NETWORK")]
    pub(crate) network: Option<String>,

    /// Keep the task's standard input open and feed it orch's (as
    /// `docker run -i`): a prompt on stdin for an agent.
    #[arg(short, long)]
    pub(crate) interactive: bool,

    /// Give the task a terminal (as `docker run -t`; its output is then
    /// one stream). With -i, orch's terminal becomes the task's while it
    /// runs: keys go to it as typed, Ctrl+C included, and its size follows
    /// the window's.
    #[arg(short, long)]
    pub(crate) tty: bool,

    /// A name for the task, unique among live tasks, accepted wherever an
    /// id is (letters, digits, '_', '.', '-').
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// Start the workspace branch from this commit, branch or tag instead of
    /// the project's HEAD.
    #[arg(long = "ref", value_name = "REF")]
    pub(crate) git_ref: Option<String>,

    /// Start the workspace from the project's working tree as it is:
    /// tracked changes and untracked files that are not ignored, committed
    /// apart (your tree, index and branches stay as they are).
    #[arg(long, conflicts_with = "git_ref")]
    pub(crate) from_worktree: bool,

    /// Keep the workspace however the task ends.
    #[arg(long, conflicts_with = "rm_workspace")]
    pub(crate) keep_workspace: bool,

    /// Remove the workspace however the task ends (its work is still
    /// committed to its branch first).
    #[arg(long)]
    pub(crate) rm_workspace: bool,
}

#[derive(Debug, Args)]
#[command(after_help = TASK_HELP)]
pub(crate) struct TaskCommand {
    /// Run in the background under a supervising orch process; print the
    /// task id and return.
    #[arg(short, long)]
    pub(crate) detach: bool,
    #[command(flatten)]
    pub(crate) task: TaskArgs,
}

/// One `--env`: a value given, or one to take from orch's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvArg {
    /// `KEY=VALUE`
    Set(String, String),
    /// `KEY`
    Inherit(String),
}

impl TaskArgs {
    /// The task's environment from `--env-file` and `--env`, in that order
    /// (a later key wins); `KEY` alone is taken from this process's
    /// environment, and left out if it has none there (as `docker run`).
    pub(crate) fn environment(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut pairs = Vec::new();
        for file in &self.env_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!("failed to read the env file {}: {e}", file.display())
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_start();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let arg = env_arg(line)
                    .map_err(|e| anyhow::anyhow!("{}, line {}: {e}", file.display(), n + 1))?;
                pairs.extend(resolve(arg));
            }
        }
        for arg in &self.env {
            pairs.extend(resolve(arg.clone()));
        }
        Ok(pairs)
    }
}

fn resolve(arg: EnvArg) -> Option<(String, String)> {
    match arg {
        EnvArg::Set(key, value) => Some((key, value)),
        EnvArg::Inherit(key) => std::env::var(&key).ok().map(|value| (key, value)),
    }
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// What to clean: orphans (reconcile registry, Docker and disk),
    /// completed, stale, old, or all of them in that order.
    #[arg(long, value_enum, default_value_t = StrategyArg::All)]
    pub(crate) strategy: StrategyArg,

    /// Use this age for every threshold instead of the configured ones.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub(crate) older_than: Option<Duration>,

    /// Only tasks in this state.
    #[arg(long, value_name = "STATE", value_parser = state)]
    pub(crate) status: Option<orch_registry::State>,

    /// Everything of this instance, live tasks included (cancelled first).
    #[arg(long)]
    pub(crate) all: bool,

    /// Only show what would be removed, with reasons and sizes.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,

    /// Also delete orch/* branches that have no commits beyond their base.
    #[arg(long)]
    pub(crate) branches: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum StrategyArg {
    All,
    Orphans,
    Completed,
    Stale,
    Old,
}

impl StrategyArg {
    pub(crate) fn strategy(self) -> orch_orchestrator::Strategy {
        use orch_orchestrator::Strategy;
        match self {
            StrategyArg::All => Strategy::All,
            StrategyArg::Orphans => Strategy::Orphans,
            StrategyArg::Completed => Strategy::Completed,
            StrategyArg::Stale => Strategy::Stale,
            StrategyArg::Old => Strategy::Old,
        }
    }
}

fn state(text: &str) -> Result<orch_registry::State, String> {
    text.parse()
        .map_err(|e: orch_registry::UnknownState| e.to_string())
}

fn duration(text: &str) -> Result<Duration, String> {
    orch_orchestrator::parse_duration(text)
}

fn env_arg(text: &str) -> Result<EnvArg, String> {
    if text.contains('=') {
        return orch_orchestrator::parse_env_pair(text).map(|(k, v)| EnvArg::Set(k, v));
    }
    let key = text.trim_end();
    if orch_orchestrator::valid_env_key(key) {
        Ok(EnvArg::Inherit(key.to_owned()))
    } else {
        Err(format!("invalid environment variable name {key:?}"))
    }
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
