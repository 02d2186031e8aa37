//! The error of one setup step inside a container's process, and the pipe
//! that carries it to the parent.
//!
//! A child that fails writes `"<step>: <cause>"` (for example `exec
//! "/bin/nope": no such file or directory`) to a close-on-exec pipe and
//! exits; a successful execve closes the pipe empty. The parent reads to
//! end of file: nothing means the program runs, anything is the reason it
//! does not. This is how runc and crun report start errors too.

use std::fmt;
use std::io::Read;
use std::os::fd::OwnedFd;

use nix::errno::Errno;

/// Longest report read back: a cause is one line, this only bounds a
/// misbehaving child.
const MAX_REPORT: u64 = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub step: String,
    pub cause: String,
}

impl StepError {
    pub fn errno(step: impl Into<String>, errno: Errno) -> Self {
        Self {
            step: step.into(),
            cause: errno_text(errno),
        }
    }

    pub fn io(step: impl Into<String>, err: &std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(code) => Self::errno(step, Errno::from_raw(code)),
            None => Self::msg(step, err.to_string()),
        }
    }

    pub fn msg(step: impl Into<String>, cause: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            cause: cause.into(),
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.cause)
    }
}

/// `No such file or directory` → `no such file or directory`, the way Go
/// runtimes word it (users grep for these texts).
pub fn errno_text(errno: Errno) -> String {
    let desc = errno.desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {}", errno as i32),
    }
}

/// Writes a report; a failure to report cannot itself be reported.
pub fn report(pipe: &OwnedFd, err: &StepError) {
    crate::sys::write_all(std::os::fd::AsFd::as_fd(pipe), err.to_string().as_bytes());
}

/// Reads a child's report to end of file. `Ok(None)`: the child exec'd.
pub fn read_report(pipe: OwnedFd) -> std::io::Result<Option<String>> {
    let mut text = String::new();
    std::fs::File::from(pipe)
        .take(MAX_REPORT)
        .read_to_string(&mut text)?;
    Ok(if text.is_empty() { None } else { Some(text) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_is_lowercase_go_style() {
        assert_eq!(errno_text(Errno::ENOENT), "no such file or directory");
        let e = StepError::errno("exec \"/bin/nope\"", Errno::ENOENT);
        assert_eq!(
            e.to_string(),
            "exec \"/bin/nope\": no such file or directory"
        );
    }

    #[test]
    fn report_round_trips_through_a_pipe() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        report(&w, &StepError::msg("chdir to /x", "permission denied"));
        drop(w);
        assert_eq!(
            read_report(r).unwrap().as_deref(),
            Some("chdir to /x: permission denied")
        );
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(w);
        assert_eq!(read_report(r).unwrap(), None);
    }
}
