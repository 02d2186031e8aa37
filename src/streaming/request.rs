//! The requests the CRI layer turns into streaming URLs, and their
//! validation (the rules kubelet's streaming library applies). Whether the
//! container or pod exists and runs is the caller's check, made before.

use super::error::StreamError;

/// What `Exec` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What `Attach` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What `PortForward` asks for. `ports` may be empty: SPDY clients name the
/// port per stream; WebSocket clients then name them in the URL's `port`
/// query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
    pub ports: Vec<u16>,
}

fn invalid(msg: &str) -> StreamError {
    StreamError::InvalidRequest(msg.to_string())
}

fn check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), StreamError> {
    if tty && stderr {
        // A terminal has one output; stderr cannot be told apart from it.
        return Err(invalid("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(invalid("one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}

impl ExecRequest {
    pub fn validate(&self) -> Result<(), StreamError> {
        if self.container_id.is_empty() {
            return Err(invalid("missing required container_id"));
        }
        if self.cmd.is_empty() || self.cmd[0].is_empty() {
            return Err(invalid("cmd must not be empty"));
        }
        check_stdio(self.tty, self.stdin, self.stdout, self.stderr)
    }
}

impl AttachRequest {
    pub fn validate(&self) -> Result<(), StreamError> {
        if self.container_id.is_empty() {
            return Err(invalid("missing required container_id"));
        }
        check_stdio(self.tty, self.stdin, self.stdout, self.stderr)
    }
}

impl PortForwardRequest {
    /// Builds the request from the CRI's `int32` ports, refusing any that is
    /// not a TCP port.
    pub fn from_cri(pod_sandbox_id: &str, ports: &[i32]) -> Result<Self, StreamError> {
        let ports = ports
            .iter()
            .map(|&p| match u16::try_from(p) {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(StreamError::InvalidRequest(format!(
                    "invalid port {p}: must be 1-65535"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            ports,
        })
    }

    pub fn validate(&self) -> Result<(), StreamError> {
        if self.pod_sandbox_id.is_empty() {
            return Err(invalid("missing required pod_sandbox_id"));
        }
        if self.ports.contains(&0) {
            return Err(invalid("port 0 cannot be forwarded"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> ExecRequest {
        ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["sh".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        }
    }

    #[test]
    fn exec_rules() {
        assert!(exec().validate().is_ok());
        let e = ExecRequest {
            cmd: vec![],
            ..exec()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("cmd"), "{e}");
        let e = ExecRequest {
            tty: true,
            ..exec()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("tty and stderr"), "{e}");
        let e = ExecRequest {
            stdout: false,
            stderr: false,
            ..exec()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("one of stdin"), "{e}");
        let e = ExecRequest {
            container_id: String::new(),
            ..exec()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("container_id"), "{e}");
        assert!(
            ExecRequest {
                tty: true,
                stderr: false,
                stdin: true,
                ..exec()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn attach_rules() {
        let a = AttachRequest {
            container_id: "c".into(),
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        };
        assert!(a.validate().is_ok());
        assert!(
            AttachRequest {
                stderr: true,
                ..a.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            AttachRequest {
                stdin: false,
                stdout: false,
                ..a
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn port_forward_rules() {
        let p = PortForwardRequest::from_cri("pod", &[80, 8080]).unwrap();
        assert_eq!(p.ports, vec![80, 8080]);
        assert!(p.validate().is_ok());
        for bad in [0, -1, 65536] {
            let e = PortForwardRequest::from_cri("pod", &[bad]).unwrap_err();
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
        assert!(
            PortForwardRequest::from_cri("", &[])
                .unwrap()
                .validate()
                .is_err()
        );
    }
}
