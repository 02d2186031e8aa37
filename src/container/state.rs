//! A container's lifecycle state and the transitions the CRI allows:
//! CREATED → RUNNING → EXITED, CREATED → EXITED (a start that failed or
//! was cut off, a stop before any start), and nothing out of EXITED. Every
//! state change of a record goes through [`State::next`] (by way of
//! `ContainerRecord::apply`); kept apart from I/O so the rules are tested
//! alone.

use serde::{Deserialize, Serialize};

use crate::monitor::{ExitStatus, Started};

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
    /// An exit the monitor recorded.
    pub fn from_status(status: &ExitStatus) -> Self {
        Self {
            code: status.exit_code,
            finished_at: status.finished_at_unix_nano,
            reason: crate::monitor::exit_reason(status.exit_code, status.oom_killed).into(),
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

    /// A container stopped before it ever started.
    pub fn stopped_unstarted(finished_at: i64) -> Self {
        Self {
            code: 0,
            finished_at,
            reason: "Stopped".into(),
            message: "stopped before it started".into(),
        }
    }

    /// A running container whose monitor and process are gone without an
    /// exit file (both killed while ketch was down).
    pub fn unknown(finished_at: i64) -> Self {
        Self {
            code: 255,
            finished_at,
            reason: "Unknown".into(),
            message: "the container's monitor ended without recording an exit status".into(),
        }
    }
}

/// What moves a container from one state to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The process runs (CREATED → RUNNING).
    Start(Started),
    /// The start failed or was cut off (CREATED → EXITED).
    FailStart(Exit),
    /// The process ended (RUNNING → EXITED).
    Exit(Exit),
    /// StopContainer before any start (CREATED → EXITED).
    StopUnstarted(Exit),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("container is {}: {}", .from.cri_name(), .why)]
pub struct TransitionError {
    pub from: State,
    pub why: &'static str,
}

impl State {
    /// The state `transition` leads to from this one, or why it may not
    /// happen.
    pub fn next(self, transition: &Transition) -> Result<State, TransitionError> {
        let refuse = |why| Err(TransitionError { from: self, why });
        match (self, transition) {
            (_, Transition::Start(_)) => self.startable().map(|()| State::Running),
            (_, Transition::FailStart(_)) => self.startable().map(|()| State::Exited),
            (State::Created, Transition::StopUnstarted(_)) => Ok(State::Exited),
            (State::Running, Transition::Exit(_)) => Ok(State::Exited),
            (_, Transition::StopUnstarted(_)) => refuse("only a created container is unstarted"),
            (_, Transition::Exit(_)) => refuse("only a running container can exit"),
        }
    }

    /// May StartContainer run now? Only from CREATED.
    pub fn startable(self) -> Result<(), TransitionError> {
        match self {
            State::Created => Ok(()),
            from => Err(TransitionError {
                from,
                why: "only a created container can be started",
            }),
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

    fn started() -> Started {
        Started {
            monitor_pid: 1,
            monitor_start_time: 2,
            container_pid: 3,
            container_start_time: 4,
            started_at_unix_nano: 5,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn only_created_starts() {
        let start = Transition::Start(started());
        assert_eq!(State::Created.next(&start), Ok(State::Running));
        let err = State::Running.next(&start).unwrap_err();
        assert_eq!(err.from, State::Running);
        assert!(err.to_string().contains("CONTAINER_RUNNING"), "{err}");
        assert!(State::Exited.next(&start).is_err());
        let failed = Transition::FailStart(Exit::start_error("x".into(), 1));
        assert_eq!(State::Created.next(&failed), Ok(State::Exited));
        assert!(State::Exited.next(&failed).is_err());
    }

    #[test]
    fn only_running_exits_and_nothing_leaves_exited() {
        let exit = Transition::Exit(Exit::unknown(1));
        assert_eq!(State::Running.next(&exit), Ok(State::Exited));
        assert!(State::Created.next(&exit).is_err());
        assert!(State::Exited.next(&exit).is_err());
        let stop = Transition::StopUnstarted(Exit::stopped_unstarted(1));
        assert_eq!(State::Created.next(&stop), Ok(State::Exited));
        assert!(State::Running.next(&stop).is_err());
        assert!(State::Exited.next(&stop).is_err());
    }

    #[test]
    fn reasons() {
        let status =
            |code, oom| ExitStatus::new(code, None, std::time::SystemTime::UNIX_EPOCH, oom);
        assert_eq!(Exit::from_status(&status(0, false)).reason, "Completed");
        assert_eq!(Exit::from_status(&status(2, false)).reason, "Error");
        assert_eq!(Exit::from_status(&status(137, true)).reason, "OOMKilled");
        let e = Exit::start_error("exec: no such file".into(), 5);
        assert_eq!((e.code, e.reason.as_str()), (128, "StartError"));
        assert_eq!(Exit::unknown(1).code, 255);
        assert_eq!(Exit::stopped_unstarted(1).reason, "Stopped");
    }
}
