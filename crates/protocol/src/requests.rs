//! What clients send.

use std::collections::BTreeMap;

use orch_registry::State;
use serde::{Deserialize, Serialize};

/// A task submitted to a daemon (`POST /v1/tasks`, `orch submit`); stored
/// with the queued task until it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitSpec {
    /// A project directory (absolute) or a configured project's name.
    pub project: String,
    /// What to do; replaces `{desc}` in the project's command.
    pub desc: String,
    /// A name for the task, unique among live tasks; accepted wherever an
    /// id is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Image, instead of the project's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Deadline (`90s`, `3m`, or seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    /// SIGTERM-to-SIGKILL grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<DurationText>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Where the workspace branch starts.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Keep (true) or remove (false) the workspace however the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_workspace: Option<bool>,
    /// Who the task runs as: `host`, `root` or `UID[:GID]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run without a workspace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_workspace: bool,
    /// Memory limit (`512m`, `2g`, or bytes), instead of the project's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU limit, instead of the project's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Docker network mode or name, instead of the project's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Higher runs first (default 0); ties in submission order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
    /// How many times it may run again when the node running it dies (in
    /// a cluster).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    /// Labels (`key=value`) a node must have to run it (in a cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Where a log is read from (`GET /v1/tasks/{id}/logs`): `?tail=N` or
/// `?since=<unix ms>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFrom {
    /// All of it.
    #[default]
    Start,
    /// Its last this many lines.
    Tail(usize),
    /// What came at or after this time (Unix ms), by the log's time index.
    Since(i64),
}

impl LogFrom {
    /// The query parameter saying so, if any.
    pub fn query(self) -> Option<String> {
        match self {
            LogFrom::Start => None,
            LogFrom::Tail(lines) => Some(format!("tail={lines}")),
            LogFrom::Since(at) => Some(format!("since={at}")),
        }
    }
}

/// A duration as text (`90s`) or seconds (`90`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationText {
    /// Whole seconds.
    Seconds(u64),
    /// humantime or seconds, as text.
    Text(String),
}

/// Which tasks `GET /v1/tasks` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// All of them, not only the live ones.
    pub all: bool,
    /// Only those in this state.
    pub state: Option<State>,
    /// Only this project's.
    pub project: Option<String>,
    /// Only the tasks of this name.
    pub name: Option<String>,
}

impl TaskQuery {
    /// The query string (with its `?`, or empty).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if self.all {
            parts.push("all=1".to_owned());
        }
        if let Some(state) = self.state {
            parts.push(format!("state={}", state.as_str()));
        }
        if let Some(project) = &self.project {
            parts.push(format!("project={}", percent_encode(project)));
        }
        if let Some(name) = &self.name {
            parts.push(format!("name={}", percent_encode(name)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// Every byte but the unreserved ones of RFC 3986, `%`-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `POST /v1/cleanup`: a cleanup as `orch cleanup` runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupRequest {
    /// `all` (default), `orphans`, `completed`, `stale` or `old`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Replaces every threshold for this run (`90s`, `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
    /// Only tasks in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Plan only.
    #[serde(default)]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_body_reads_as_the_spec_says() {
        let spec: SubmitSpec = serde_json::from_str(
            r#"{"project": "/p", "desc": "d", "timeout": "90s", "stop_grace": 5, "env": {"A": "1"},
                "ref": "main", "keep_workspace": true, "user": "root"}"#,
        )
        .unwrap();
        assert_eq!(spec.timeout, Some(DurationText::Text("90s".into())));
        assert_eq!(spec.stop_grace, Some(DurationText::Seconds(5)));
        assert_eq!(spec.git_ref.as_deref(), Some("main"));
        let err =
            serde_json::from_str::<SubmitSpec>(r#"{"project": "/p", "desc": "d", "imgae": "x"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `imgae`"), "{err}");
        let round: SubmitSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(round, spec);
    }

    #[test]
    fn queries_are_encoded() {
        let q = TaskQuery {
            all: true,
            state: Some(State::Queued),
            project: Some("a b/c".into()),
            name: Some("fix-login".into()),
        };
        assert_eq!(
            q.to_query(),
            "?all=1&state=queued&project=a%20b%2Fc&name=fix-login"
        );
        assert_eq!(TaskQuery::default().to_query(), "");
    }
}
