//! Running one CNI plugin: find its binary, pass the CNI environment and
//! its config on stdin, read its result or error from stdout, and never
//! wait on it longer than the configured timeout.
//!
//! A plugin runs in its own process group, so a timeout kills whatever it
//! started too (a hung `iptables`, a shell script's children), and the
//! plugin itself is always reaped: no zombie stays behind.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::NetworkError;

/// A plugin's stdout larger than this is cut: no result is this large.
const STDOUT_LIMIT: u64 = 16 << 20;
/// Only the end of stderr is worth quoting in an error.
const STDERR_LIMIT: u64 = 64 << 10;
const STDERR_QUOTE: usize = 2048;
/// How long to wait for a killed plugin to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        }
    }
}

impl std::fmt::Display for CniCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything of one call but the plugin and its config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Invocation<'a> {
    pub command: CniCommand,
    pub container_id: &'a str,
    /// May be empty (DEL of a namespace that is gone).
    pub netns: &'a OsStr,
    pub ifname: &'a str,
    pub cni_args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// The plugin binary `plugin` (a `type`), first match in `bin_dirs`.
pub(crate) fn find_plugin(plugin: &str, bin_dirs: &[PathBuf]) -> Result<PathBuf, NetworkError> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(NetworkError::InvalidArgument(format!(
            "CNI plugin type {plugin:?} is not a plain file name"
        )));
    }
    bin_dirs
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|path| is_executable(path))
        .ok_or_else(|| NetworkError::PluginNotFound {
            plugin: plugin.to_owned(),
            dirs: join_paths(bin_dirs, ", "),
        })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub(crate) fn join_paths(paths: &[PathBuf], sep: &str) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

/// The error object a failing plugin prints (CNI spec, "Error").
#[derive(Deserialize)]
struct PluginErrorJson {
    #[serde(default)]
    code: Option<u64>,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Runs `plugin` once. For ADD, returns the result it printed.
pub(crate) async fn invoke(
    plugin: &str,
    inv: &Invocation<'_>,
    config: &Value,
) -> Result<Option<Value>, NetworkError> {
    let path = find_plugin(plugin, inv.bin_dirs)?;
    let input = config.to_string().into_bytes();
    tracing::debug!(plugin, command = %inv.command, id = inv.container_id, "running CNI plugin");

    let mut child = tokio::process::Command::new(&path)
        .env("CNI_COMMAND", inv.command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.cni_args)
        .env("CNI_PATH", join_paths(inv.bin_dirs, ":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NetworkError::Spawn {
            path: path.clone(),
            source,
        })?;
    let pgid = child.id();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let io = async {
        let write = async {
            if let Some(mut pipe) = stdin {
                // A plugin may exit without reading; its status says why.
                let _ = pipe.write_all(&input).await;
            }
        };
        let (_, out, err, status) = tokio::join!(
            write,
            read_limited(stdout, STDOUT_LIMIT),
            read_limited(stderr, STDERR_LIMIT),
            child.wait()
        );
        (out, err, status)
    };
    let outcome = tokio::time::timeout(inv.timeout, io).await;
    let Ok((stdout, stderr, status)) = outcome else {
        if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
            // The whole group: the plugin and anything it started.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let _ = child.start_kill();
        if tokio::time::timeout(REAP_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                plugin,
                "killed CNI plugin not reaped yet; left to the runtime"
            );
        }
        return Err(NetworkError::Timeout {
            plugin: plugin.to_owned(),
            command: inv.command,
            timeout: inv.timeout,
        });
    };
    let status = status.map_err(|source| NetworkError::Spawn {
        path: path.clone(),
        source,
    })?;

    if !status.success() {
        let message = failure_message(&stdout, &stderr, status);
        return Err(NetworkError::PluginFailed {
            plugin: plugin.to_owned(),
            command: inv.command,
            code: message.1,
            message: message.0,
        });
    }
    if inv.command != CniCommand::Add {
        return Ok(None);
    }
    let bad = |reason: String| NetworkError::BadResult {
        plugin: plugin.to_owned(),
        command: inv.command,
        reason,
    };
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("no result on stdout".into()));
    }
    let result: Value = serde_json::from_slice(&stdout).map_err(|e| bad(e.to_string()))?;
    if !result.is_object() {
        return Err(bad("result is not a JSON object".into()));
    }
    Ok(Some(result))
}

async fn read_limited<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, limit: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.take(limit).read_to_end(&mut buf).await;
    }
    buf
}

/// The plugin's own words for its failure, and its CNI error code.
fn failure_message(
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> (String, Option<u64>) {
    if let Ok(err) = serde_json::from_slice::<PluginErrorJson>(stdout)
        && !err.msg.is_empty()
    {
        let mut message = err.msg;
        if !err.details.is_empty() {
            message = format!("{message}: {}", err.details);
        }
        return (message, err.code);
    }
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    };
    let quote = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        let start = text.len().saturating_sub(STDERR_QUOTE);
        let start = (start..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    };
    let said = [quote(stderr), quote(stdout)]
        .into_iter()
        .find(|s| !s.is_empty());
    match said {
        Some(text) => (format!("{how}: {text}"), None),
        None => (how, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_message_prefers_cni_error() {
        let status = std::process::ExitStatus::from_raw(1 << 8);
        let (msg, code) = failure_message(
            br#"{"cniVersion":"1.0.0","code":11,"msg":"no IPs left","details":"range full"}"#,
            b"noise",
            status,
        );
        assert_eq!(msg, "no IPs left: range full");
        assert_eq!(code, Some(11));
        let (msg, code) = failure_message(b"", b"  panic: oops\n", status);
        assert_eq!(msg, "exit status 1: panic: oops");
        assert_eq!(code, None);
        let (msg, _) = failure_message(b"", b"", std::process::ExitStatus::from_raw(9));
        assert_eq!(msg, "killed by signal 9");
    }

    #[test]
    fn lookup_refuses_paths_and_names_dirs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            find_plugin("../bridge", &[dir.path().to_owned()]),
            Err(NetworkError::InvalidArgument(_))
        ));
        let err = find_plugin(
            "nonexistent-plugin",
            &[dir.path().to_owned(), "/nope".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nonexistent-plugin"), "{err}");
        assert!(
            err.contains(&dir.path().display().to_string()) && err.contains("/nope"),
            "{err}"
        );
        // Present but not executable: not a plugin.
        std::fs::write(dir.path().join("plain"), "").unwrap();
        assert!(find_plugin("plain", &[dir.path().to_owned()]).is_err());
    }
}
