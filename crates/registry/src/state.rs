//! The task lifecycle (SPEC 4) as a state machine.
//!
//! `queued -> creating -> running -> succeeded | failed | cancelled |
//! timed_out | lost`. A terminal state is final. `lost` is set by
//! reconciliation when the owner and/or the container vanished.

use std::fmt;
use std::str::FromStr;

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Accepted and waiting for a daemon to run it; nothing created yet.
    Queued,
    /// Its record exists; its workspace and container are being created.
    Creating,
    /// Its container runs.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, or could not be started.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Stopped at its deadline.
    TimedOut,
    /// Its owner and/or container vanished while it was live.
    Lost,
}

/// Every state, in lifecycle order.
pub const ALL_STATES: [State; 8] = [
    State::Queued,
    State::Creating,
    State::Running,
    State::Succeeded,
    State::Failed,
    State::Cancelled,
    State::TimedOut,
    State::Lost,
];

impl State {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Creating => "creating",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::TimedOut => "timed_out",
            State::Lost => "lost",
        }
    }

    /// True for the final states.
    pub fn is_terminal(self) -> bool {
        !matches!(self, State::Queued | State::Creating | State::Running)
    }

    /// True for states a task can be live in.
    pub fn is_live(self) -> bool {
        !self.is_terminal()
    }

    /// Succeeded or cancelled: the task's workspace goes at once and its
    /// record after `completed_age`.
    pub fn is_completed(self) -> bool {
        matches!(self, State::Succeeded | State::Cancelled)
    }

    /// Whether `self -> next` is a legal transition.
    pub fn can_become(self, next: State) -> bool {
        use State::*;
        match self {
            Queued => matches!(next, Creating | Cancelled | Failed | Lost),
            Creating => matches!(next, Running | Failed | Cancelled | TimedOut | Lost),
            Running => matches!(next, Succeeded | Failed | Cancelled | TimedOut | Lost),
            Succeeded | Failed | Cancelled | TimedOut | Lost => false,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`ALL_STATES`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown task state {0:?}: expected one of queued, creating, running, succeeded, failed, cancelled, timed_out, lost"
)]
pub struct UnknownState(pub String);

impl FromStr for State {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<State, UnknownState> {
        ALL_STATES
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownState(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition() {
        use State::*;
        let legal = [
            (Queued, Creating),
            (Queued, Cancelled),
            (Queued, Failed),
            (Queued, Lost),
            (Creating, Running),
            (Creating, Failed),
            (Creating, Cancelled),
            (Creating, TimedOut),
            (Creating, Lost),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
            (Running, TimedOut),
            (Running, Lost),
        ];
        for from in ALL_STATES {
            for to in ALL_STATES {
                assert_eq!(
                    from.can_become(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_are_final_and_names_round_trip() {
        for state in ALL_STATES {
            assert_eq!(state.as_str().parse::<State>().unwrap(), state);
            if state.is_terminal() {
                assert!(ALL_STATES.iter().all(|next| !state.can_become(*next)));
            }
        }
        assert!("done".parse::<State>().is_err());
    }
}
