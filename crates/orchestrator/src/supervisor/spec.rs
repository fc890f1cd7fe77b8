//! What a client submits to a daemon, as `POST /v1/tasks` takes it and
//! `orch submit` sends it; stored with the queued task until it runs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{GlobalConfig, Overrides, valid_env_key};
use crate::run::TaskRequest;
use crate::{ConfigError, parse_duration};

/// A task submitted to a daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitSpec {
    /// A project directory (absolute) or a configured project's name.
    pub project: String,
    /// What to do; replaces `{desc}` in the project's command.
    pub desc: String,
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
    /// Higher runs first (default 0); ties in submission order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
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

impl DurationText {
    fn parse(&self, key: &str) -> Result<Duration, ConfigError> {
        match self {
            DurationText::Seconds(s) => Ok(Duration::from_secs(*s)),
            DurationText::Text(t) => parse_duration(t).map_err(|message| ConfigError::Flag {
                flag: key.to_owned(),
                message,
            }),
        }
    }
}

impl SubmitSpec {
    /// The request `orch task` would make of it, resolved against the
    /// global config now: a refused project or setting is the same error.
    pub fn request(
        &self,
        config: &GlobalConfig,
        task_id: Option<Uuid>,
    ) -> Result<TaskRequest, ConfigError> {
        let flag = |flag: &str, message: String| ConfigError::Flag {
            flag: flag.to_owned(),
            message,
        };
        if self.desc.trim().is_empty() {
            return Err(flag("desc", "must not be empty".into()));
        }
        if self.project.trim().is_empty() {
            return Err(flag("project", "must not be empty".into()));
        }
        let mut env = Vec::new();
        for (key, value) in &self.env {
            // As orch.toml's env table: the name alone must be valid (an
            // "A=B" name would pass as A with the value "B=...").
            if !valid_env_key(key) {
                return Err(flag("env", format!("invalid variable name {key:?}")));
            }
            env.push((key.clone(), value.clone()));
        }
        let overrides = Overrides {
            image: self.image.clone(),
            timeout: self
                .timeout
                .as_ref()
                .map(|t| t.parse("timeout"))
                .transpose()?,
            stop_grace: self
                .stop_grace
                .as_ref()
                .map(|t| t.parse("stop_grace"))
                .transpose()?,
            user: self.user.clone(),
            env,
            no_workspace: self.no_workspace,
        };
        let project = config.resolve_project(&self.project, &overrides)?;
        Ok(TaskRequest {
            project,
            desc: self.desc.clone(),
            git_ref: self.git_ref.clone(),
            keep_workspace: self.keep_workspace,
            detached: true,
            task_id,
        })
    }
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
}
