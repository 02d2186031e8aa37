//! What the CRI may name: the checks on every name, namespace, uid and log
//! path that ends up in a file system path.
//!
//! kubelet builds a pod's log directory from its namespace, name and uid
//! (`/var/log/pods/<namespace>_<name>_<uid>`) and a container's log path
//! from its name (`<name>/<attempt>.log`), and ketch joins them with its
//! own directories. A name of `..`, one with a `/`, or a NUL or newline
//! would lead such a path out of where it belongs (or cut it short), so
//! every such value is checked here before anything is made. The rules
//! are pure functions, so they are tested without root; the one helper
//! that touches the file system, [`create_dir_nofollow`], creates a log
//! directory without following a symlink planted in its way. Beside them
//! sits [`mount_propagation`], the rule that keeps an unprivileged
//! container's mounts from propagating to the host.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, mkdirat};

/// The longest name one path component may have (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Directories ketch never writes a log into (nor under): the system's
/// configuration, kernel interfaces and programs. `/` itself is refused
/// too, but only as such: every directory is under it.
pub const SYSTEM_DIRS: &[&str] = &["/etc", "/proc", "/sys", "/dev", "/boot", "/usr"];

/// A refused value: the CRI field it came in and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct NameError {
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("is required")]
    Empty,
    #[error("{0:?} must not contain '/': it becomes one path component")]
    Slash(String),
    #[error("{0:?} is not a name: '.' and '..' are path navigation")]
    Dots(String),
    #[error("{0:?} must not contain control characters (NUL, newline, ...)")]
    ControlCharacter(String),
    #[error("is {0} bytes long; at most {NAME_MAX} fit in one path component")]
    TooLong(usize),
    #[error("{0:?} must be an absolute path")]
    NotAbsolute(String),
    #[error("{0:?} must be a relative path (inside the pod's log directory)")]
    NotRelative(String),
    #[error("{0:?} must not contain '..' components")]
    ParentComponent(String),
    #[error("{0:?} does not name a file inside the pod's log directory")]
    Escapes(String),
    #[error("{value:?} is a system directory ketch must not write into ({system})")]
    SystemDirectory { value: String, system: &'static str },
    #[error("Bidirectional propagation is only for privileged containers")]
    BidirectionalUnprivileged,
}

impl NameError {
    fn new(field: &str, problem: Problem) -> Self {
        Self {
            field: field.to_owned(),
            problem,
        }
    }
}

/// Checks a value that becomes one path component (a pod's name,
/// namespace or uid, a container's name): not empty, no `/`, not `.` or
/// `..`, no control character, at most [`NAME_MAX`] bytes.
pub fn path_component(field: &str, value: &str) -> Result<(), NameError> {
    let problem = if value.is_empty() {
        Problem::Empty
    } else if value.contains('/') {
        Problem::Slash(value.to_owned())
    } else if value == "." || value == ".." {
        Problem::Dots(value.to_owned())
    } else if has_control_character(value) {
        Problem::ControlCharacter(value.to_owned())
    } else if value.len() > NAME_MAX {
        Problem::TooLong(value.len())
    } else {
        return Ok(());
    };
    Err(NameError::new(field, problem))
}

/// Checks a pod's `log_directory` and returns it normalised (no `.`
/// components, no repeated or trailing `/`). Empty means the pod keeps no
/// logs and is returned as is. Otherwise it must be absolute, without
/// `..` or control characters, and neither `/` nor inside one of the
/// [`SYSTEM_DIRS`].
pub fn log_directory(value: &str) -> Result<PathBuf, NameError> {
    const FIELD: &str = "log_directory";
    if value.is_empty() {
        return Ok(PathBuf::new());
    }
    let fail = |problem| Err(NameError::new(FIELD, problem));
    if has_control_character(value) {
        return fail(Problem::ControlCharacter(value.to_owned()));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return fail(Problem::NotAbsolute(value.to_owned()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return fail(Problem::ParentComponent(value.to_owned()));
    }
    // `components` drops `.` and collapses repeated separators.
    let normal: PathBuf = path.components().collect();
    if normal == Path::new("/") {
        return fail(Problem::SystemDirectory {
            value: value.to_owned(),
            system: "/",
        });
    }
    if let Some(system) = SYSTEM_DIRS.iter().find(|s| normal.starts_with(s)) {
        return fail(Problem::SystemDirectory {
            value: value.to_owned(),
            system,
        });
    }
    Ok(normal)
}

/// Resolves a container's `log_path` inside the pod's log directory `dir`
/// (already checked by [`log_directory`]). `relative` must be relative and
/// stay inside `dir` once normalised (`a/../b.log` is `b.log`;
/// `../x` is refused), name a file below `dir` (not `dir` itself), and
/// hold no control characters.
pub fn log_path(dir: &Path, relative: &str) -> Result<PathBuf, NameError> {
    const FIELD: &str = "log_path";
    let fail = |problem| Err(NameError::new(FIELD, problem));
    if relative.is_empty() {
        return fail(Problem::Empty);
    }
    if has_control_character(relative) {
        return fail(Problem::ControlCharacter(relative.to_owned()));
    }
    let mut inside: Vec<&OsStr> = Vec::new();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(name) => inside.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                if inside.pop().is_none() {
                    return fail(Problem::Escapes(relative.to_owned()));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return fail(Problem::NotRelative(relative.to_owned()));
            }
        }
    }
    if inside.is_empty() {
        return fail(Problem::Escapes(relative.to_owned()));
    }
    if let Some(long) = inside.iter().find(|n| n.len() > NAME_MAX) {
        return fail(Problem::TooLong(long.len()));
    }
    let mut path = dir.to_path_buf();
    path.extend(inside);
    Ok(path)
}

/// Checks a mount's propagation: Bidirectional (`rshared`) lets the
/// container's mounts appear on the host, so only a privileged container
/// may ask for it (as kubelet and containerd require). `field` names the
/// mount, e.g. `mounts[0].propagation`.
pub fn mount_propagation(
    field: &str,
    bidirectional: bool,
    privileged: bool,
) -> Result<(), NameError> {
    if bidirectional && !privileged {
        return Err(NameError::new(field, Problem::BidirectionalUnprivileged));
    }
    Ok(())
}

fn has_control_character(value: &str) -> bool {
    value.chars().any(char::is_control)
}

/// A directory [`create_dir_nofollow`] could not make or open.
#[derive(Debug, thiserror::Error)]
#[error("cannot create directory {path} without following symlinks: {source}")]
pub struct CreateDirError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Creates the absolute directory `path` and its missing parents (mode
/// `mode`), walking down from `/` one component at a time with `mkdirat`
/// and `openat(O_NOFOLLOW | O_DIRECTORY)`, so a symlink anywhere on the
/// way fails the call instead of redirecting it (`ELOOP`/`ENOTDIR`; see
/// open(2)). Returns the opened directory, for creating files in it with
/// `openat` as safely. `path` must be absolute and free of `..` (what
/// [`log_directory`] and [`log_path`] return).
pub fn create_dir_nofollow(path: &Path, mode: u32) -> Result<OwnedFd, CreateDirError> {
    let fail = |source: std::io::Error| CreateDirError {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_absolute() {
        return Err(fail(std::io::Error::from(Errno::EINVAL)));
    }
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = open("/", dir_flags, Mode::empty()).map_err(|e| fail(e.into()))?;
    for component in path.components() {
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(fail(std::io::Error::from(Errno::EINVAL)));
            }
        };
        match mkdirat(&dir, name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail(e.into())),
        }
        dir = openat(&dir, name, dir_flags, Mode::empty()).map_err(|e| fail(e.into()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(r: Result<impl std::fmt::Debug, NameError>) -> Problem {
        r.expect_err("must be refused").problem
    }

    #[test]
    fn path_components_refuse_navigation_separators_and_controls() {
        for ok in [
            "nginx",
            "kube-system",
            "0b5a-11",
            "a.b",
            "...",
            "a..b",
            "UPPER_case",
        ] {
            assert_eq!(path_component("metadata.name", ok), Ok(()), "{ok}");
        }
        assert_eq!(problem(path_component("f", "")), Problem::Empty);
        assert_eq!(
            problem(path_component("f", "..")),
            Problem::Dots("..".into())
        );
        assert_eq!(problem(path_component("f", ".")), Problem::Dots(".".into()));
        for slashed in ["a/../../b", "../..", "../../../etc", "a/b", "/"] {
            assert_eq!(
                problem(path_component("f", slashed)),
                Problem::Slash(slashed.into())
            );
        }
        for control in ["a\0b", "a\nb", "tab\t", "\u{7f}", "\u{85}"] {
            assert_eq!(
                problem(path_component("f", control)),
                Problem::ControlCharacter(control.into())
            );
        }
        let long = "x".repeat(NAME_MAX + 1);
        assert_eq!(
            problem(path_component("f", &long)),
            Problem::TooLong(NAME_MAX + 1)
        );
        assert_eq!(path_component("f", &"x".repeat(NAME_MAX)), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let e = path_component("metadata.namespace", "../..").unwrap_err();
        assert_eq!(e.field, "metadata.namespace");
        let text = e.to_string();
        assert!(text.starts_with("metadata.namespace: "), "{text}");
        assert!(text.contains("\"../..\""), "{text}");
    }

    #[test]
    fn log_directories_are_absolute_and_outside_the_system() {
        assert_eq!(log_directory(""), Ok(PathBuf::new()));
        assert_eq!(
            log_directory("/var/log/pods/default_web_1234"),
            Ok(PathBuf::from("/var/log/pods/default_web_1234"))
        );
        assert_eq!(
            log_directory("/var//log/./pods/"),
            Ok(PathBuf::from("/var/log/pods"))
        );
        // A sibling whose name only starts like a system directory.
        assert_eq!(log_directory("/etcetera"), Ok(PathBuf::from("/etcetera")));
        for system in [
            "/etc", "/etc/", "/etc/x", "/proc/1", "/sys", "/dev/shm", "/boot", "/usr/lib",
        ] {
            assert!(
                matches!(
                    problem(log_directory(system)),
                    Problem::SystemDirectory { .. }
                ),
                "{system}"
            );
        }
        for root in ["/", "//", "/./"] {
            assert_eq!(
                problem(log_directory(root)),
                Problem::SystemDirectory {
                    value: root.into(),
                    system: "/"
                }
            );
        }
        assert_eq!(
            problem(log_directory("var/log")),
            Problem::NotAbsolute("var/log".into())
        );
        assert_eq!(
            problem(log_directory("/var/log/../../etc")),
            Problem::ParentComponent("/var/log/../../etc".into())
        );
        assert_eq!(
            problem(log_directory("/var/log\0")),
            Problem::ControlCharacter("/var/log\0".into())
        );
        assert_eq!(log_directory("/etc").unwrap_err().field, "log_directory");
    }

    #[test]
    fn log_paths_stay_inside_the_log_directory() {
        let dir = Path::new("/var/log/pods/p");
        assert_eq!(
            log_path(dir, "web/0.log"),
            Ok(PathBuf::from("/var/log/pods/p/web/0.log"))
        );
        assert_eq!(
            log_path(dir, "./a/../b.log"),
            Ok(PathBuf::from("/var/log/pods/p/b.log"))
        );
        for escaping in ["../../../etc/x", "..", "a/../..", "a/../../b", ".", "a/.."] {
            assert_eq!(
                problem(log_path(dir, escaping)),
                Problem::Escapes(escaping.into()),
                "{escaping}"
            );
        }
        assert_eq!(
            problem(log_path(dir, "/etc/passwd")),
            Problem::NotRelative("/etc/passwd".into())
        );
        assert_eq!(problem(log_path(dir, "")), Problem::Empty);
        assert_eq!(
            problem(log_path(dir, "a\nb.log")),
            Problem::ControlCharacter("a\nb.log".into())
        );
        assert_eq!(log_path(dir, "..").unwrap_err().field, "log_path");
    }

    #[test]
    fn bidirectional_propagation_needs_a_privileged_container() {
        assert_eq!(
            mount_propagation("mounts[0].propagation", false, false),
            Ok(())
        );
        assert_eq!(
            mount_propagation("mounts[0].propagation", true, true),
            Ok(())
        );
        let e = mount_propagation("mounts[1].propagation", true, false).unwrap_err();
        assert_eq!(e.field, "mounts[1].propagation");
        assert_eq!(e.problem, Problem::BidirectionalUnprivileged);
    }

    #[test]
    fn create_dir_nofollow_makes_parents_and_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let deep = base.join("a/b/c");
        create_dir_nofollow(&deep, 0o755).unwrap();
        assert!(deep.is_dir());
        // Again: the directories exist, which is fine.
        create_dir_nofollow(&deep, 0o755).unwrap();

        let target = base.join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, base.join("link")).unwrap();
        let err = create_dir_nofollow(&base.join("link/logs"), 0o755).unwrap_err();
        assert!(
            matches!(err.source.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{err}"
        );
        assert!(
            !target.join("logs").exists(),
            "nothing made through the link"
        );

        let relative = create_dir_nofollow(Path::new("rel/dir"), 0o755).unwrap_err();
        assert_eq!(relative.source.raw_os_error(), Some(libc::EINVAL));
    }
}
