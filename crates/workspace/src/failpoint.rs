//! Failure injection for tests: `ORCH_FAIL_POINT=<point>:<action>` makes this
//! process fail at a named point, the way a bug or a kill would.
//!
//! Points: `after-workspace` (record and workspace made, no container),
//! `after-create` (container created, not started), `after-start`,
//! `unwind-after-branch` (a workspace being unwound: its branch deleted,
//! its directory not yet removed), `in-save` (a task's work being brought
//! home).
//! Actions: `panic`, `abort`, `sigkill` (of this very process), `pause` (sleep
//! 30 s, so a test can kill the process at that exact point), `pause-N`
//! (sleep N seconds).
//! Unset, it costs one environment lookup per process. Only debug builds
//! (what `cargo test` builds) have fail points: a release binary ignores
//! `ORCH_FAIL_POINT`.

#[cfg(debug_assertions)]
use std::sync::OnceLock;

#[cfg(debug_assertions)]
static POINT: OnceLock<Option<(String, String)>> = OnceLock::new();

/// Fails here if `ORCH_FAIL_POINT` names this point.
#[cfg(debug_assertions)]
pub fn hit(point: &str) {
    let configured = POINT.get_or_init(|| {
        let spec = std::env::var("ORCH_FAIL_POINT").ok()?;
        let (point, action) = spec.split_once(':')?;
        Some((point.to_owned(), action.to_owned()))
    });
    let Some((name, action)) = configured else {
        return;
    };
    if name != point {
        return;
    }
    match action.as_str() {
        "panic" => panic!("fail point {point} reached"),
        "abort" => std::process::abort(),
        "sigkill" => {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
        "pause" => std::thread::sleep(std::time::Duration::from_secs(30)),
        other => match other.strip_prefix("pause-").and_then(|n| n.parse().ok()) {
            Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs)),
            None => tracing::warn!(point, action = other, "unknown fail point action"),
        },
    }
}

/// Release builds have no fail points.
#[cfg(not(debug_assertions))]
pub fn hit(_point: &str) {}
