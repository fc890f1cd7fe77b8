//! What a client submits to a daemon (`POST /v1/tasks`, `orch submit`), as
//! the request `orch task` would make of it; stored with the queued task
//! until it runs.

use std::time::Duration;

pub use orch_protocol::{DurationText, SubmitSpec};
use uuid::Uuid;

use crate::config::{GlobalConfig, Overrides, valid_env_key};
use crate::run::TaskRequest;
use crate::{ConfigError, parse_duration};

/// A submitted duration, checked.
fn parse_text(text: &DurationText, key: &str) -> Result<Duration, ConfigError> {
    match text {
        DurationText::Seconds(s) => Ok(Duration::from_secs(*s)),
        DurationText::Text(t) => parse_duration(t).map_err(|message| ConfigError::Flag {
            flag: key.to_owned(),
            message,
        }),
    }
}

/// The request `orch task` would make of a submission, resolved against
/// the global config now: a refused project or setting is the same error.
pub fn request_of(
    spec: &SubmitSpec,
    config: &GlobalConfig,
    task_id: Option<Uuid>,
) -> Result<TaskRequest, ConfigError> {
    let flag = |flag: &str, message: String| ConfigError::Flag {
        flag: flag.to_owned(),
        message,
    };
    if spec.desc.trim().is_empty() {
        return Err(flag("desc", "must not be empty".into()));
    }
    if spec.project.trim().is_empty() {
        return Err(flag("project", "must not be empty".into()));
    }
    let mut env = Vec::new();
    for (key, value) in &spec.env {
        // As orch.toml's env table: the name alone must be valid (an "A=B"
        // name would pass as A with the value "B=...").
        if !valid_env_key(key) {
            return Err(flag("env", format!("invalid variable name {key:?}")));
        }
        env.push((key.clone(), value.clone()));
    }
    let overrides = Overrides {
        image: spec.image.clone(),
        timeout: spec
            .timeout
            .as_ref()
            .map(|t| parse_text(t, "timeout"))
            .transpose()?,
        stop_grace: spec
            .stop_grace
            .as_ref()
            .map(|t| parse_text(t, "stop_grace"))
            .transpose()?,
        user: spec.user.clone(),
        env,
        no_workspace: spec.no_workspace,
        memory: spec.memory.clone(),
        cpus: spec.cpus,
        network: spec.network.clone(),
    };
    let project = config.resolve_project(&spec.project, &overrides)?;
    Ok(TaskRequest {
        project,
        desc: spec.desc.clone(),
        name: spec.name.clone(),
        stdin: false,
        tty: false,
        git_ref: spec.git_ref.clone(),
        keep_workspace: spec.keep_workspace,
        detached: true,
        task_id,
    })
}
