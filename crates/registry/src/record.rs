//! A task as the registry records it: plain data, grouped by what each part
//! is about (who owns the task, its workspace, its progress, how it ended,
//! what was queued), with one constructor. Every backend reads and writes
//! exactly this; serialised, the parts are flat (`orch show --json`, the
//! API), as they always were.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::State;

/// What becomes of a task's workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceState {
    /// It exists and its task may still use it.
    Present,
    /// Its task is over and its work is being brought home (its owner
    /// still holds it).
    Saving,
    /// Kept after the task ended (failed, timed out, lost, or asked).
    Kept,
    /// Removed.
    Removed,
}

impl WorkspaceState {
    /// Its name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceState::Present => "present",
            WorkspaceState::Saving => "saving",
            WorkspaceState::Kept => "kept",
            WorkspaceState::Removed => "removed",
        }
    }

    /// The state a stored name says, if it is one.
    pub fn parse(text: &str) -> Option<WorkspaceState> {
        match text {
            "present" => Some(WorkspaceState::Present),
            "saving" => Some(WorkspaceState::Saving),
            "kept" => Some(WorkspaceState::Kept),
            "removed" => Some(WorkspaceState::Removed),
            _ => None,
        }
    }
}

/// Who runs a task, and how anyone can tell they still do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOwner {
    /// The owning session (empty while queued).
    pub session: String,
    /// Its pid.
    #[serde(rename = "owner_pid")]
    pub pid: i64,
    /// Its start time (clock ticks since boot).
    #[serde(rename = "owner_start")]
    pub start: i64,
    /// Its boot id.
    #[serde(rename = "owner_boot")]
    pub boot: String,
    /// The owner renews this while the task runs.
    pub lease_until: Option<i64>,
    /// Runs under a background supervisor.
    pub detached: bool,
    /// How many times it was claimed (a task recorded by `orch task` is on
    /// its first): the fencing token every write about it carries.
    #[serde(default)]
    pub attempt: i64,
    /// The node that runs it, in a cluster: its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// That node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A task's workspace, the repository it belongs to, and its fate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskWorkspace {
    /// The workspace path, if it has one.
    #[serde(rename = "workspace")]
    pub path: Option<String>,
    /// The workspace branch.
    pub branch: Option<String>,
    /// The repository top the workspace belongs to.
    pub repo: Option<String>,
    /// What became of the workspace.
    #[serde(rename = "workspace_state")]
    pub state: Option<WorkspaceState>,
    /// Keep the workspace if the task fails, times out or is lost.
    pub keep_failed_workspace: bool,
    /// The task's own choice, overriding the policy: keep (`Some(true)`) or
    /// remove (`Some(false)`) the workspace however the task ends.
    pub keep_workspace: Option<bool>,
    /// The commit the workspace's branch started from.
    pub base: Option<String>,
    /// The repository's common git directory.
    pub git_dir: Option<String>,
    /// For a project from a git server: the URL its branch is pushed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// For a project from a git server: whether its branch reached the
    /// URL (`false`: the work waits in this node's mirror, and `orch push`
    /// delivers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<bool>,
}

/// A task's last progress report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// 0-100.
    #[serde(rename = "progress")]
    pub percent: Option<i64>,
    /// Its message.
    #[serde(rename = "progress_message")]
    pub message: Option<String>,
    /// When it was reported.
    #[serde(rename = "progress_at")]
    pub at: Option<i64>,
}

/// How a task ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// When a terminal state was reached.
    pub finished_at: Option<i64>,
    /// The task's exit code, if it exited.
    pub exit_code: Option<i64>,
    /// Why it ended: exit code, signal, error text.
    pub reason: Option<String>,
    /// What the user should know of its end that its state and reason do
    /// not say (files left out of its save, why its workspace was kept),
    /// one note per line.
    pub notes: Option<String>,
}

/// What was submitted for a task that waits in a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskQueue {
    /// What was submitted (JSON). The values of its environment are kept
    /// only while the task can still start, and never shown: serialised,
    /// `env` lists the keys alone.
    #[serde(serialize_with = "redacted_spec", deserialize_with = "spec_from_json")]
    pub spec: Option<String>,
    /// Higher runs first; ties in submission order.
    pub priority: i64,
    /// At most this many tasks of its project run at once (from its
    /// project's settings when submitted).
    pub max_parallel: Option<i64>,
    /// How many times it may run again when the node running it dies.
    #[serde(default)]
    pub retries: i64,
    /// Labels (`key=value`) a node must have to run it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
}

/// One task as recorded. Times are Unix milliseconds; as JSON, each
/// (`created_at`, `started_at`, `finished_at`, `progress_at`) also comes as
/// RFC 3339 text without the `_at` (`created`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TaskRecord {
    /// UUID v7.
    pub id: Uuid,
    /// Project name.
    pub project: String,
    /// The task description.
    pub description: String,
    /// The name it was given (`--name`), unique among live tasks.
    pub name: Option<String>,
    /// Lifecycle state.
    pub state: State,
    /// Frozen by its owner (Ctrl+Z: `docker pause`); shown as `paused`.
    #[serde(default)]
    pub paused: bool,
    /// When the record was written.
    pub created_at: i64,
    /// When the container started.
    pub started_at: Option<i64>,
    /// The container's (planned) name.
    pub container: String,
    /// The image.
    pub image: String,
    /// SIGTERM-to-SIGKILL grace.
    pub stop_grace_ms: i64,
    /// `orch cancel` asked the owner to stop it.
    pub cancel_requested: bool,
    /// Who runs it.
    #[serde(flatten)]
    pub owner: TaskOwner,
    /// Its workspace.
    #[serde(flatten)]
    pub workspace: TaskWorkspace,
    /// Its progress.
    #[serde(flatten)]
    pub progress: TaskProgress,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: TaskOutcome,
    /// What was queued.
    #[serde(flatten)]
    pub queue: TaskQueue,
}

impl Serialize for TaskRecord {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        /// The record as JSON shows it.
        #[derive(Serialize)]
        struct Shown<'a> {
            id: &'a Uuid,
            project: &'a str,
            description: &'a str,
            name: &'a Option<String>,
            state: State,
            paused: bool,
            created_at: i64,
            started_at: Option<i64>,
            container: &'a str,
            image: &'a str,
            stop_grace_ms: i64,
            cancel_requested: bool,
            #[serde(flatten)]
            owner: &'a TaskOwner,
            #[serde(flatten)]
            workspace: &'a TaskWorkspace,
            #[serde(flatten)]
            progress: &'a TaskProgress,
            #[serde(flatten)]
            outcome: &'a TaskOutcome,
            #[serde(flatten)]
            queue: &'a TaskQueue,
            created: String,
            started: Option<String>,
            finished: Option<String>,
            progress_time: Option<String>,
        }
        // Every field named: a new one cannot be left out of the JSON.
        let TaskRecord {
            id,
            project,
            description,
            name,
            state,
            paused,
            created_at,
            started_at,
            container,
            image,
            stop_grace_ms,
            cancel_requested,
            owner,
            workspace,
            progress,
            outcome,
            queue,
        } = self;
        Shown {
            id,
            project,
            description,
            name,
            state: *state,
            paused: *paused,
            created_at: *created_at,
            started_at: *started_at,
            container,
            image,
            stop_grace_ms: *stop_grace_ms,
            cancel_requested: *cancel_requested,
            owner,
            workspace,
            progress,
            outcome,
            queue,
            created: rfc3339(*created_at),
            started: started_at.map(rfc3339),
            finished: outcome.finished_at.map(rfc3339),
            progress_time: progress.at.map(rfc3339),
        }
        .serialize(out)
    }
}

/// Unix milliseconds as RFC 3339 text in UTC (`2026-12-07T02:17:46.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0).unsigned_abs());
    humantime::format_rfc3339_millis(at).to_string()
}

impl TaskRecord {
    /// A record of a task in `state` written now: nothing owned, planned,
    /// reported or ended yet; the parts are filled in by whoever knows them.
    pub fn new(
        id: Uuid,
        project: &str,
        description: &str,
        state: State,
        container: &str,
        image: &str,
    ) -> TaskRecord {
        TaskRecord {
            id,
            project: project.to_owned(),
            description: description.to_owned(),
            name: None,
            state,
            paused: false,
            created_at: crate::now_ms(),
            started_at: None,
            container: container.to_owned(),
            image: image.to_owned(),
            stop_grace_ms: 10_000,
            cancel_requested: false,
            // Recorded to run now, it is on its first attempt; queued, a
            // claim makes it so.
            owner: TaskOwner {
                attempt: i64::from(state != State::Queued),
                ..TaskOwner::default()
            },
            workspace: TaskWorkspace::default(),
            progress: TaskProgress::default(),
            outcome: TaskOutcome::default(),
            queue: TaskQueue::default(),
        }
    }

    /// True once its workspace is dealt with: kept, removed, or never
    /// planned. A planned one with no state yet may exist (or its branch
    /// may): its owner died before settling it.
    pub fn workspace_settled(&self) -> bool {
        self.workspace.path.is_none()
            || matches!(
                self.workspace.state,
                Some(WorkspaceState::Kept | WorkspaceState::Removed)
            )
    }
}

/// Serialises a submitted task (JSON text) with the values of its
/// environment left out: every output of a record (`show --json`, the API,
/// events, webhooks) goes through this, and names only the keys.
fn redacted_spec<S: serde::Serializer>(spec: &Option<String>, out: S) -> Result<S::Ok, S::Error> {
    let Some(text) = spec else {
        return out.serialize_none();
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(mut value) => {
            if let Some(env) = value.get_mut("env") {
                let keys: Vec<serde_json::Value> = env
                    .as_object()
                    .map(|o| o.keys().cloned().map(serde_json::Value::String).collect())
                    .unwrap_or_default();
                *env = serde_json::Value::Array(keys);
            }
            // As JSON text, as it is stored: whoever reads it back (a
            // client of the API) gets what was shown.
            out.serialize_some(&value)
        }
        Err(_) => out.serialize_none(),
    }
}

/// A submitted task as JSON (an object, as shown, or text), read back as
/// the text it is stored as.
fn spec_from_json<'de, D: serde::Deserializer<'de>>(input: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(input)?;
    Ok(value.map(|v| match v {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    }))
}

/// A branch orch made in a repository, as the registry remembers it after
/// its task's record is gone (`cleanup --branches`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownBranch {
    /// The commit the branch started from.
    pub base: String,
    /// Its task's description.
    pub description: Option<String>,
    /// Its task's record is still there (`orch show` tells of it).
    pub recorded: bool,
}

/// The few columns `orch ps` shows, read without the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskBrief {
    /// The task id, as stored (hyphenated).
    pub id: String,
    /// Project name.
    pub project: String,
    /// The task's name, if it has one.
    pub name: Option<String>,
    /// Frozen by its owner (Ctrl+Z).
    pub paused: bool,
    /// Lifecycle state.
    pub state: State,
    /// When the record was written.
    pub created_at: i64,
    /// Last reported progress.
    pub progress: Option<i64>,
    /// The workspace path, if it has one.
    pub workspace: Option<String>,
    /// What became of the workspace.
    pub workspace_state: Option<WorkspaceState>,
}

/// How a task ended, for [`crate::Store::finish`].
#[derive(Debug, Clone)]
pub struct Finish {
    /// The terminal state.
    pub state: State,
    /// Exit code, if it exited.
    pub exit_code: Option<i64>,
    /// Why, in words.
    pub reason: String,
    /// When.
    pub at: i64,
}

/// Who claims a queued task: a daemon's session and process, and in a
/// cluster its node.
#[derive(Debug, Clone, Default)]
pub struct Claimant {
    /// The daemon's session.
    pub session: String,
    /// Its pid.
    pub pid: i64,
    /// Its start time (clock ticks since boot).
    pub start: i64,
    /// Its boot id.
    pub boot: String,
    /// Its node (id and name), in a cluster.
    pub node: Option<(String, String)>,
    /// The node's labels (`key=value`): a task is claimed only if all its
    /// constraints are among them.
    pub labels: Vec<String>,
}

/// A task and the attempt a write about it is made under: its fencing
/// token. Once another attempt holds the task (a rescuer queued it again
/// and someone claimed it), the write is refused ([`crate::Error::Fenced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempt {
    /// The task.
    pub id: Uuid,
    /// The attempt, as the writer holds it.
    pub number: i64,
}

impl TaskRecord {
    /// The attempt this record is on.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            id: self.id,
            number: self.owner.attempt,
        }
    }
}

/// What the lease renewal of a process's live tasks found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewal {
    /// Tasks whose cancellation was requested.
    pub cancel: Vec<Uuid>,
    /// Tasks this attempt no longer holds: ended or queued again by
    /// someone else (a rescuer), or gone.
    pub lost: Vec<Uuid>,
}

/// A task a rescuer took back from a dead owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// The task.
    pub id: Uuid,
    /// Its project.
    pub project: String,
    /// The state it was found in.
    pub from: State,
    /// The state it was given: `queued` (to run again) or `lost`.
    pub to: State,
    /// Why, in words (names the node).
    pub reason: String,
}

/// Which tasks [`crate::Store::list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Queued, creating and running, and those whose work is being saved.
    Live,
    /// Everything.
    All,
}

/// What `UPDATE tasks SET` puts a live task back in the queue with: held
/// by no one, no container, its next claim its next attempt.
pub(crate) const QUEUED_AGAIN: &str = "state = 'queued', session = '', owner_pid = 0, \
    owner_start = 0, owner_boot = '', lease_until = NULL, node_id = NULL, node = NULL, \
    started_at = NULL, container = ''";

/// Puts a task back in the queue (`reason` `$1`) if it is still on the
/// attempt (`$3`) of the task (`$2`) and `condition` holds: the same text
/// for both backends (SQLite numbers `$n` in order of appearance).
pub(crate) fn queue_again_sql(condition: &str) -> String {
    format!(
        "UPDATE tasks SET {QUEUED_AGAIN}, reason = $1 \
         WHERE id = $2 AND attempt = $3 AND {condition}"
    )
}

/// The branches orch knows in a repository (`$1`), but those of tasks that
/// may still use theirs (`Store::branches`): name, base, description, and
/// whether the task's record is still there.
pub(crate) const BRANCHES: &str = "SELECT b.name, b.base, b.description, \
    EXISTS (SELECT 1 FROM tasks t WHERE t.repo = b.repo AND t.branch = b.name) \
    FROM branches b WHERE b.repo = $1 AND NOT EXISTS \
    (SELECT 1 FROM tasks t WHERE t.repo = b.repo AND t.branch = b.name \
     AND (t.state IN ('queued', 'creating', 'running') \
          OR t.workspace_state IS NULL OR t.workspace_state = 'kept'))";

/// The tasks `Store::requeue` puts back in the queue: claimed, never started.
pub(crate) const REQUEUE_WHEN: &str = "state = 'creating'";

/// The tasks `Store::retry` puts back in the queue: live, submitted to a
/// queue, with retries left and no cancel asked for.
pub(crate) const RETRY_WHEN: &str = "state IN ('creating', 'running') AND spec IS NOT NULL \
    AND attempt <= retries AND NOT cancel_requested";

/// What a rescuer makes of a live task whose owner (`owner`, in words)
/// stopped renewing its lease: the state it was in, the one it gets (queued
/// again if `again`: it was submitted to a queue, and either never started
/// or has retries left; else lost), and why.
pub(crate) fn rescue_fate(
    from: State,
    again: bool,
    cancelled: bool,
    owner: &str,
) -> (State, State, String) {
    if cancelled {
        // A cancel asked for while its owner was gone: never run again.
        return (
            from,
            State::Cancelled,
            format!("cancelled (orch cancel); {owner} had stopped renewing its lease"),
        );
    }
    match (from, again) {
        (State::Creating, true) => (
            from,
            State::Queued,
            format!("{owner} stopped renewing its lease before the task started; queued again"),
        ),
        (_, true) => (
            from,
            State::Queued,
            format!("{owner} stopped renewing its lease while the task ran; queued again to retry"),
        ),
        (_, false) => (
            from,
            State::Lost,
            format!("{owner} stopped renewing its lease while the task ran"),
        ),
    }
}

/// The hyphenated form a task id prefix (at least 4 hex digits, hyphens
/// optional) takes as stored, to look it up by range.
/// How many hex digits a task's short id has.
pub const SHORT_ID_LEN: usize = 8;

/// A task's short id: the last [`SHORT_ID_LEN`] hex digits of its id. A
/// UUID v7 begins with the clock (tasks started together share their
/// first digits) and ends with random bits, so its end tells tasks apart.
pub fn short_id(id: &Uuid) -> String {
    let hex = id.simple().to_string();
    hex[hex.len() - SHORT_ID_LEN..].to_owned()
}

/// Whether `name` can name a task: 1 to 64 of letters, digits, `_`, `.`
/// and `-`, starting with a letter or digit, and not all hex digits and
/// hyphens (it would read as an id). The reason if not.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name.is_empty() || name.len() > 64 || !valid_chars {
        return Err(format!(
            "{name:?}: use 1 to 64 letters, digits, '_', '.' or '-'"
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("{name:?}: it must start with a letter or digit"));
    }
    if name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(format!(
            "{name:?}: it reads as a task id; use a letter past f"
        ));
    }
    Ok(())
}

/// What a user typed to name a task: a name, or hex digits that are a
/// prefix of an id or of a short id.
pub(crate) enum Lookup {
    /// A task name.
    Name(String),
    /// A prefix of a hyphenated id (`pattern`), and, for at most
    /// [`SHORT_ID_LEN`] digits, a prefix of a short id.
    Id {
        pattern: String,
        short: Option<String>,
    },
}

impl Lookup {
    pub(crate) fn of(text: &str) -> Result<Lookup, crate::Error> {
        if check_name(text).is_ok() {
            return Ok(Lookup::Name(text.to_owned()));
        }
        let pattern = id_pattern(text)?;
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        let short =
            (hex.len() <= SHORT_ID_LEN && !text.contains('-')).then(|| hex.to_ascii_lowercase());
        Ok(Lookup::Id { pattern, short })
    }
}

pub(crate) fn id_pattern(prefix: &str) -> Result<String, crate::Error> {
    let hex: String = prefix
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() < 4 || hex.len() > 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(crate::Error::InvalidId(prefix.to_owned()));
    }
    // Stored ids are hyphenated: put the hyphens where they go.
    let mut pattern = String::new();
    for (i, c) in hex.chars().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            pattern.push('-');
        }
        pattern.push(c);
    }
    Ok(pattern)
}

/// The one id among those a prefix matched (at most eleven read).
pub(crate) fn one_id(prefix: &str, ids: &[String], place: &str) -> Result<Uuid, crate::Error> {
    match ids {
        [] => Err(crate::Error::NotFound(prefix.to_owned())),
        [one] => one.parse().map_err(|_| crate::Error::Corrupt {
            path: place.into(),
            reason: format!("task id {one:?} is not a uuid"),
        }),
        many => Err(crate::Error::Ambiguous {
            prefix: prefix.to_owned(),
            candidates: many.iter().take(10).cloned().collect(),
        }),
    }
}
