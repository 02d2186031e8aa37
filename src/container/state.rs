//! A container's lifecycle state and the transitions the CRI allows:
//! CREATED → RUNNING → EXITED, CREATED → EXITED (a start that failed), and
//! nothing out of EXITED. Kept apart from I/O so the rules are tested alone.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Created,
    Running,
    Exited,
}

/// How a container ended, as ContainerStatus reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub code: i32,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`...
    pub reason: String,
    pub message: String,
}

impl Exit {
    /// The CRI reason for an exit code, as containerd words it.
    pub fn from_code(code: i32, finished_at: i64, oom_killed: bool) -> Self {
        let reason = if oom_killed {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        Self {
            code,
            finished_at,
            reason: reason.into(),
            message: String::new(),
        }
    }

    /// A start that failed: the process never ran.
    pub fn start_error(message: String, finished_at: i64) -> Self {
        Self {
            code: 128,
            finished_at,
            reason: "StartError".into(),
            message,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("container is {0:?}, not created: only a created container can start")]
    NotCreated(State),
}

impl State {
    /// May StartContainer run now?
    pub fn check_start(self) -> Result<(), TransitionError> {
        match self {
            State::Created => Ok(()),
            other => Err(TransitionError::NotCreated(other)),
        }
    }

    pub fn cri_name(self) -> &'static str {
        match self {
            State::Created => "CONTAINER_CREATED",
            State::Running => "CONTAINER_RUNNING",
            State::Exited => "CONTAINER_EXITED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_created_starts() {
        assert!(State::Created.check_start().is_ok());
        assert_eq!(
            State::Running.check_start(),
            Err(TransitionError::NotCreated(State::Running))
        );
        assert!(State::Exited.check_start().is_err());
    }

    #[test]
    fn reasons() {
        assert_eq!(Exit::from_code(0, 1, false).reason, "Completed");
        assert_eq!(Exit::from_code(2, 1, false).reason, "Error");
        assert_eq!(Exit::from_code(137, 1, true).reason, "OOMKilled");
        let e = Exit::start_error("exec: no such file".into(), 5);
        assert_eq!((e.code, e.reason.as_str()), (128, "StartError"));
    }
}
