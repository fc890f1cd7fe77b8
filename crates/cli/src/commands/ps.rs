//! `orch ps` and `orch show`: the registry, read from any terminal.

use std::io::Write;
use std::process::ExitCode;

use orch_orchestrator::{GlobalConfig, Overrides};
use orch_registry::{Listing, Postgres, Registry, Store, TaskRecord, WorkspaceState, now_ms};

use crate::args::{PsArgs, ShowArgs};

/// The registry this home uses, if there is one yet: a cluster's database
/// (`ORCH_REGISTRY`, `[registry] url`), else the home's own. Its calls
/// block: call them on a blocking thread (see [`super::blocking`]).
pub(crate) fn open_registry() -> anyhow::Result<Option<Box<dyn Store>>> {
    let config = GlobalConfig::load(GlobalConfig::default_path().as_deref())?;
    if let Some(url) = orch_orchestrator::cluster::registry_url(&config)? {
        return Ok(Some(Box::new(Postgres::open(&url)?)));
    }
    let home = super::home_path()?;
    let db = home.join("orch.db");
    if !super::exists_in_home(&home, &db)? {
        return Ok(None);
    }
    Registry::open(&db)
        .map(|r| Some(Box::new(r) as Box<dyn Store>))
        .map_err(|e| super::unusable_home(&home, e.into()))
}

/// The registry, or an error saying there are no tasks.
pub(crate) fn require_registry() -> anyhow::Result<Box<dyn Store>> {
    open_registry()?.ok_or_else(|| anyhow::anyhow!("no tasks yet: this orch home has no registry"))
}

pub(crate) fn ps(args: &PsArgs) -> anyhow::Result<ExitCode> {
    let mut query = args.query();
    // A project given by its path, as `orch task` takes it: its name.
    if let Some(path) = query
        .project
        .as_deref()
        .filter(|p| orch_orchestrator::is_project_path(p))
    {
        let config = GlobalConfig::load(GlobalConfig::default_path().as_deref())?;
        // Its name is all the filter needs: a project with no image yet
        // has one too.
        let name = match config.resolve_project(path, &Overrides::default()) {
            Ok(project) => project.name,
            Err(orch_orchestrator::ConfigError::NoImage { project, .. }) => project,
            Err(e) => return Err(e.into()),
        };
        query.project = Some(name);
    }
    let listing = if query.all {
        Listing::All
    } else {
        Listing::Live
    };
    let registry = open_registry()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let filtered = query.state.is_some() || query.project.is_some() || query.name.is_some();
    let shared = registry.as_ref().is_some_and(|r| r.shared());
    if args.json || args.quiet || filtered || shared {
        // A project named by its URL: the tasks whose work goes there.
        let url = query
            .project
            .as_deref()
            .filter(|p| orch_orchestrator::is_url(p));
        let by_name = query.project.as_deref().filter(|_| url.is_none());
        let mut tasks = match &registry {
            Some(registry) => registry.list_where(listing, query.state, by_name)?,
            None => Vec::new(),
        };
        if let Some(url) = url {
            tasks.retain(|t| t.workspace.remote.as_deref() == Some(url));
        }
        if let Some(name) = &query.name {
            tasks.retain(|t| t.name.as_ref() == Some(name));
        }
        return print_listing(&tasks, args, shared, &mut out);
    }
    let now = now_ms();
    header(&mut out, false)?;
    let mut written = Ok(());
    if let Some(registry) = &registry {
        registry.for_each_brief(listing, &mut |task| {
            if written.is_err() {
                return;
            }
            written = row(
                &mut out,
                &Row {
                    id: &task.id,
                    name: task.name.as_deref(),
                    project: &task.project,
                    state: task.state,
                    paused: task.paused,
                    progress: task.progress,
                    created_at: task.created_at,
                    workspace: task.workspace.as_deref(),
                    workspace_state: task.workspace_state,
                    node: None,
                },
                now,
            );
        })?;
    }
    written?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `orch ps` of records read whole (filtered, a cluster's, or a remote
/// daemon's) as `args` asks: JSON, ids only, or the table (with the node
/// that runs each if `nodes`).
pub(crate) fn print_listing(
    tasks: &[TaskRecord],
    args: &PsArgs,
    nodes: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let paused: Vec<TaskRecord>;
    let tasks = if args.state == Some(crate::args::StateFilter::Paused) {
        paused = tasks.iter().filter(|t| t.paused).cloned().collect();
        &paused
    } else {
        tasks
    };
    if args.json {
        serde_json::to_writer(&mut *out, &tasks)?;
        writeln!(out)?;
    } else if args.quiet {
        for task in tasks {
            writeln!(out, "{}", orch_registry::short_id(&task.id))?;
        }
    } else {
        return print_table(tasks, nodes, out, now_ms());
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The table of `orch ps`, with the node that runs each if `nodes`.
pub(crate) fn print_table(
    tasks: &[TaskRecord],
    nodes: bool,
    out: &mut impl Write,
    now: i64,
) -> anyhow::Result<ExitCode> {
    header(out, nodes)?;
    for task in tasks {
        let id = task.id.to_string();
        row(
            out,
            &Row {
                id: &id,
                name: task.name.as_deref(),
                project: &task.project,
                state: task.state,
                paused: task.paused,
                progress: task.progress.percent,
                created_at: task.created_at,
                workspace: task.workspace.path.as_deref(),
                workspace_state: task.workspace.state,
                node: nodes.then_some(task.owner.node.as_deref()),
            },
            now,
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One line of `orch ps`, from a whole record or a brief one.
struct Row<'a> {
    /// The id, hyphenated.
    id: &'a str,
    name: Option<&'a str>,
    project: &'a str,
    state: orch_registry::State,
    paused: bool,
    progress: Option<i64>,
    created_at: i64,
    workspace: Option<&'a str>,
    workspace_state: Option<WorkspaceState>,
    /// The node that runs it, when the table has a NODE column.
    node: Option<Option<&'a str>>,
}

fn header(out: &mut impl Write, nodes: bool) -> std::io::Result<()> {
    let node = if nodes {
        format!("{:<16}  ", "NODE")
    } else {
        String::new()
    };
    writeln!(
        out,
        "{:<8}  {:<16}  {:<16}  {:<10}  {:>8}  {:>5}  {node}WORKSPACE",
        "ID", "NAME", "PROJECT", "STATUS", "PROGRESS", "AGE"
    )
}

fn row(out: &mut impl Write, task: &Row<'_>, now: i64) -> std::io::Result<()> {
    // The short id: the last digits of the id (its first ones are the
    // clock, shared by tasks started together).
    let short = task
        .id
        .get(task.id.len().saturating_sub(orch_registry::SHORT_ID_LEN)..)
        .unwrap_or(task.id);
    let workspace = match (task.workspace, task.workspace_state) {
        (None, _) => "-",
        (Some(_), Some(WorkspaceState::Removed)) => "(removed)",
        (Some(path), _) => path,
    };
    let column = |text: Option<&str>| truncate(&crate::output::safe(text.unwrap_or("-")), 16);
    let node = match task.node {
        Some(node) => format!("{:<16}  ", column(node)),
        None => String::new(),
    };
    writeln!(
        out,
        "{short:<8}  {:<16}  {:<16}  {:<10}  {:>8}  {:>5}  {node}{workspace}",
        column(task.name),
        column(Some(task.project)),
        status(task.state, task.paused, task.workspace_state),
        task.progress
            .map_or_else(|| "-".into(), |p| format!("{p}%")),
        age(now - task.created_at),
    )
}

pub(crate) fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let registry = require_registry()?;
    let id = registry.resolve(&args.id)?;
    let task = registry
        .get(&id)?
        .ok_or_else(|| anyhow::anyhow!("no task {id}"))?;
    let log = super::home_path()?
        .join("logs")
        .join(format!("{}.log", task.id))
        .display()
        .to_string();
    print_show(&task, args.json, &log)
}

/// `orch show` of `task`, whose log is at `log`.
pub(crate) fn print_show(task: &TaskRecord, json: bool, log: &str) -> anyhow::Result<ExitCode> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&task)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let time = |t: Option<i64>| {
        t.map(|t| format!("{} ago", age(now_ms() - t)))
            .unwrap_or_else(|| "-".into())
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows = [
        ("id", task.id.to_string()),
        ("short id", orch_registry::short_id(&task.id)),
        ("name", opt(&task.name)),
        ("project", task.project.clone()),
        ("description", task.description.clone()),
        (
            "status",
            status(task.state, task.paused, task.workspace.state).to_owned(),
        ),
        ("reason", opt(&task.outcome.reason)),
        (
            "exit code",
            task.outcome.exit_code.map_or("-".into(), |c| c.to_string()),
        ),
        ("created", time(Some(task.created_at))),
        ("started", time(task.started_at)),
        ("finished", time(task.outcome.finished_at)),
        (
            "progress",
            task.progress.percent.map_or("-".into(), |p| {
                format!("{p}% {}", task.progress.message.clone().unwrap_or_default())
            }),
        ),
        ("image", task.image.clone()),
        ("container", task.container.clone()),
        ("workspace", workspace(task)),
        ("branch", opt(&task.workspace.branch)),
        (
            "owner",
            match &task.owner.node {
                Some(node) => format!(
                    "node {node}, pid {} (session {}), attempt {}",
                    task.owner.pid, task.owner.session, task.owner.attempt
                ),
                None => format!("pid {} (session {})", task.owner.pid, task.owner.session),
            },
        ),
        ("detached", task.owner.detached.to_string()),
        ("log", log.to_owned()),
    ];
    for (key, value) in rows {
        crate::outln!("{key:<12} {}", crate::output::safe(&value))?;
    }
    for (i, note) in task
        .outcome
        .notes
        .iter()
        .flat_map(|n| n.lines())
        .enumerate()
    {
        let key = if i == 0 { "notes" } else { "" };
        crate::outln!("{key:<12} {}", crate::output::safe(note))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn workspace(task: &TaskRecord) -> String {
    match (&task.workspace.path, task.workspace.state) {
        (None, _) => "-".into(),
        (Some(_), Some(WorkspaceState::Removed)) => "(removed)".into(),
        (Some(path), _) => path.clone(),
    }
}

fn truncate(text: &str, width: usize) -> std::borrow::Cow<'static, str> {
    if text.chars().count() <= width {
        text.to_owned().into()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('~');
        cut.into()
    }
}

/// A compact age: `42s`, `5m`, `3h`, `2d`.
pub(crate) fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// What STATUS says of a task: its state, or `saving` while its work is
/// brought home, or `paused` while Ctrl+Z freezes it.
fn status(
    state: orch_registry::State,
    paused: bool,
    workspace: Option<WorkspaceState>,
) -> &'static str {
    if workspace == Some(WorkspaceState::Saving) {
        "saving"
    } else if paused && state == orch_registry::State::Running {
        "paused"
    } else {
        state.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_truncation() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(3 * 86_400_000), "3d");
        assert_eq!(truncate("abcdef", 4), "abc~");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
